"""Webhook throughput: a burst of signed SendGrid events posted to a real ``dispatch web``.

``python -m dispatch.devtools.bench_webhooks [--events 10000] [--in-flight 32] [--batch 10]
[--db-url URL]``

A fresh dispatch database (a SQLite file in a temporary folder, or ``--db-url``, which must
name an empty database: it is migrated and filled) gets ``events / 4`` sent e-mail actions.
A ``dispatch web`` process is started on it with a fresh verification key; then ``--events``
events about those e-mails (processed, delivered, open, and a bounce for one in a hundred
instead of an open) are signed as SendGrid signs them — before the clock starts: signing is
the sender's cost — and posted ``--batch`` per request with ``--in-flight`` requests at once.

It prints the events per second (first request sent to last answer received) and what the
database holds afterwards: every event stored once, matched to its action, and the bounces
made manual. Figures only; nothing is judged. The burst must be stored completely: the
command exits 1 when a request failed or the stored count is not ``--events``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import secrets
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import func, insert, select

from dispatch.devtools.demo_webhooks import DemoKeys, demo_keys, own_web
from dispatch.storage.engine import make_engine
from dispatch.storage.migrate import upgrade
from dispatch.storage.schema import delivery_events, invoice_actions, invoices

EVENTS_PER_MESSAGE = 4  # processed, delivered, open or bounce, and a second open


@dataclass
class Figures:
    events: int
    requests: int
    in_flight: int
    seconds: float
    failed: int
    stored: int
    matched: int
    bounced: int

    def lines(self) -> list[str]:
        rate = self.events / self.seconds if self.seconds else float("nan")
        return [
            f"webhooks: {self.events} events in {self.requests} requests, {self.in_flight} in flight: "
            f"{self.seconds:.2f} s, {rate:,.0f} events/s",
            f"stored {self.stored} of {self.events} events, matched {self.matched}, "
            f"actions bounced {self.bounced}, failed requests {self.failed}",
        ]


def seed_sent_emails(db_url: str, n: int) -> list[str]:
    """``n`` invoices with a sent e-mail action each (bench set-up, written directly); returns
    their message ids."""
    now = dt.datetime.now(dt.UTC)
    ids = [f"bench{i:07d}{secrets.token_hex(4)}" for i in range(n)]
    engine = make_engine(db_url)
    try:
        upgrade(engine)
        with engine.begin() as conn:
            conn.execute(
                insert(invoices),
                [
                    {
                        "invoice_id": f"inv_{i}", "org_id": "bench", "customer_id": f"c_{i}",
                        "number": f"B-{i:07d}", "issue_date": now.date(), "currency": "EUR",
                        "total_amount": 100, "accounting_status": "open", "first_seen_at": now,
                        "sending_status": "sent", "sent_at": now, "sent_how": "automatic",
                    }
                    for i in range(n)
                ],
            )  # fmt: skip
            conn.execute(
                insert(invoice_actions),
                [
                    {
                        "action_id": f"act_{i}", "invoice_id": f"inv_{i}", "org_id": "bench",
                        "plan_id": "p", "template_id": "t", "channel": "email", "automatic": True,
                        "owner_user_id": "u_bench", "status": "sent", "recipient": f"c{i}@bench.example",
                        "deliver_at": now, "provider": "sendgrid", "provider_message_id": ids[i],
                        "created_at": now, "updated_at": now,
                    }
                    for i in range(n)
                ],
            )  # fmt: skip
    finally:
        engine.dispose()
    return ids


def burst(message_ids: Sequence[str], n_events: int, batch: int, keys: DemoKeys) -> list[tuple[bytes, dict]]:
    """The signed request bodies: ``n_events`` events, ``batch`` per request."""
    now = int(time.time())
    events = []
    for i in range(n_events):
        n, step = divmod(i, EVENTS_PER_MESSAGE)
        message = message_ids[n % len(message_ids)]
        name = ("processed", "delivered", "bounce" if n % 100 == 0 else "open", "open")[step]
        events.append(
            {
                "email": f"c{n}@bench.example",
                "timestamp": now + step,
                "event": name,
                "sg_event_id": f"bench-{i}-{secrets.token_hex(6)}",
                "sg_message_id": f"{message}.filterdrecv-bench-0",
                **({"reason": "550 5.1.1 unknown user"} if name == "bounce" else {}),
            }
        )
    bodies = []
    for start in range(0, len(events), batch):
        body = json.dumps(events[start : start + batch]).encode("utf-8")
        bodies.append((body, keys.sign(body, now)))
    return bodies


async def post_all(url: str, bodies: Sequence[tuple[bytes, dict]], in_flight: int) -> tuple[float, int]:
    """Post every body, ``in_flight`` at a time; returns (seconds, failed requests)."""
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    gate = asyncio.Semaphore(in_flight)
    failed = 0
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:

        async def one(body: bytes, headers: dict) -> None:
            nonlocal failed
            async with gate:
                try:
                    answer = await client.post(url, content=body, headers=headers)
                    failed += answer.status_code != 200
                except httpx.HTTPError:
                    failed += 1

        started = time.perf_counter()
        await asyncio.gather(*(one(b, h) for b, h in bodies))
        return time.perf_counter() - started, failed


def counts(db_url: str) -> tuple[int, int, int]:
    d, a = delivery_events.c, invoice_actions.c
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            stored = conn.execute(select(func.count()).select_from(delivery_events)).scalar_one()
            matched = conn.execute(select(func.count()).where(d.action_id.is_not(None))).scalar_one()
            bounced = conn.execute(select(func.count()).where(a.manual_reason == "bounced")).scalar_one()
    finally:
        engine.dispose()
    return int(stored), int(matched), int(bounced)


def run(db_url: str, n_events: int, in_flight: int, batch: int) -> Figures:
    keys = demo_keys()
    ids = seed_sent_emails(db_url, max(1, n_events // EVENTS_PER_MESSAGE))
    bodies = burst(ids, n_events, batch, keys)
    with own_web(db_url, keys) as base:
        seconds, failed = asyncio.run(post_all(f"{base}/dispatch/webhooks/sendgrid", bodies, in_flight))
    stored, matched, bounced = counts(db_url)
    return Figures(n_events, len(bodies), in_flight, seconds, failed, stored, matched, bounced)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dispatch.devtools.bench_webhooks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--batch", type=int, default=10, help="events per request (default 10)")
    parser.add_argument("--db-url", help="an EMPTY dispatch database (default: a fresh SQLite file)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if min(args.events, args.in_flight, args.batch) < 1:
        parser.error("--events, --in-flight and --batch must be at least 1")
    with tempfile.TemporaryDirectory(prefix="bench_webhooks_") as folder:
        url = args.db_url or f"sqlite:///{Path(folder) / 'dispatch.db'}"
        figures = run(url, args.events, args.in_flight, args.batch)
    print(json.dumps(figures.__dict__) if args.json else "\n".join(figures.lines()))
    return 0 if figures.failed == 0 and figures.stored == figures.events else 1


if __name__ == "__main__":
    raise SystemExit(main())
