"""What the chaos runs share: a world with many invoices, a local SendGrid that counts what
it receives (and injects a random mix of faults), ``dispatch run`` as a real subprocess that
can be ``kill -9``'d, and the figures of SPEC B1/B2 read from the provider and the database.

The provider's side is the truth: a message is *received* when the fake SendGrid accepted it
(answered or not). Duplicates, phantom sends and unknowns are counted against it.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from dispatch.storage import accounting_schema as acc

from tests.builders import World
from tests.fakes import Fault
from tests.fakes.sendgrid_server import FakeSendGrid

REPO = Path(__file__).resolve().parents[2]
UTC = dt.UTC
#: (name, figures) of every chaos scenario run in this session, printed at its end
FIGURES: list[tuple[str, dict[str, Any]]] = []
MAIL_FROM = "billing@acme.example"


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


# --- instants -------------------------------------------------------------------------------


def weekday_run(on_or_before: dt.date) -> dt.datetime:
    """05:00 UTC of the last weekday on or before ``on_or_before``."""
    day = on_or_before
    while day.weekday() >= 5:
        day -= dt.timedelta(days=1)
    return dt.datetime.combine(day, dt.time(5), tzinfo=UTC)


def next_weekday_run(after: dt.datetime) -> dt.datetime:
    day = after + dt.timedelta(days=1)
    while day.weekday() >= 5:
        day += dt.timedelta(days=1)
    return day


def iso(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def first_run() -> dt.datetime:
    """Today's (or the last weekday's) run: SendGrid's real clock accepts its send_at and the
    next weekday's, both within 72 hours."""
    return weekday_run(dt.datetime.now(UTC).date())


# --- the provider -----------------------------------------------------------------------------


@dataclass
class FaultMix:
    """A random fault per Mail Send request: ``p500`` 500s, ``p429`` 429s with Retry-After,
    ``phang`` hangs after the message was accepted, and one burst of ``burst`` 401s starting
    at request ``burst_at``."""

    p500: float = 0.0
    p429: float = 0.0
    phang: float = 0.0
    retry_after: str = "1"
    hang: float = 1.0
    burst_at: int | None = None
    burst: int = 0
    rng: random.Random = field(default_factory=lambda: random.Random(9))
    injected: Counter = field(default_factory=Counter)

    def pick(self, n: int) -> Fault | None:
        if self.burst_at is not None and self.burst_at <= n < self.burst_at + self.burst:
            self.injected["401"] += 1
            return Fault(status=401)
        r = self.rng.random()
        if r < self.p500:
            self.injected["500"] += 1
            return Fault(status=500)
        if r < self.p500 + self.p429:
            self.injected["429"] += 1
            return Fault(status=429, headers={"Retry-After": self.retry_after})
        if r < self.p500 + self.p429 + self.phang:
            self.injected["hang"] += 1
            return Fault(hang=self.hang, accepted=True, close_after_hang=True)
        return None


class ChaosSendGrid(FakeSendGrid):
    """The local SendGrid, counting Mail Send requests as they arrive, with a fault mix."""

    def __init__(self, *, mix: FaultMix | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.mix = mix
        self.sends_received = 0

    def _take_fault(self, method: str, path: str) -> Fault | None:
        if path.endswith("/mail/send"):
            with self._lock:
                self.sends_received += 1
                n = self.sends_received
                fault = self.mix.pick(n) if self.mix is not None else None
            if fault is not None:
                return fault
        return super()._take_fault(method, path)

    def received(self) -> Counter:
        """Per action id, how many messages SendGrid accepted (the truth about duplicates)."""
        return Counter(
            p.get("custom_args", {}).get("action_id")
            for m in self.mails
            for p in m.body.get("personalizations", [])[:1]
        )


# --- the world ------------------------------------------------------------------------------------


def set_up(w: World, customers: int = 20) -> None:
    w.org().plan("p_mail", delay=0)
    for c in range(customers):
        w.customer(f"c{c:02d}", plan="p_mail")
    w.load_config()


def add_invoices(w: World, n: int, *, issued: dt.date, updated: dt.datetime, prefix: str) -> list[str]:
    """``n`` invoices in one insert, updated at ``updated`` (the run as of it or later imports them)."""
    ids = [f"{prefix}{k:05d}" for k in range(n)]
    rows = [
        {
            "invoice_id": inv,
            "org_id": "acme",
            "customer_id": f"c{k % 20:02d}",
            "number": inv.upper(),
            "issue_date": issued,
            "due_date": issued + dt.timedelta(days=30),
            "currency": "EUR",
            "total_amount": 120,
            "status": "open",
            "pdf_path": None,
            "updated_at": updated.astimezone(UTC).replace(tzinfo=None),
        }
        for k, inv in enumerate(ids)
    ]
    with w.accounting.begin() as conn:
        conn.execute(sa.insert(acc.invoices), rows)
    return ids


def run_env(w: World, server: FakeSendGrid | None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    settings = {"DISPATCH_MAIL_FROM": MAIL_FROM}
    if server is not None:
        settings |= {"DISPATCH_EMAIL_BACKEND": "sendgrid", **server.env()}
    env.update(w.env(**settings, **extra))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "plugins"), str(REPO)])
    env.pop("CHAOS", None)
    return env


def spawn(env: dict[str, str], at: dt.datetime, log: Path) -> subprocess.Popen:
    """``dispatch run --at AT`` as its own process (what an operator or a worker runs)."""
    out = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "dispatch.cli", "run", "--at", iso(at)],
        cwd=REPO,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def run_to_end(env: dict[str, str], at: dt.datetime, log: Path, timeout: float = 600) -> int:
    p = spawn(env, at, log)
    return p.wait(timeout=timeout)


def kill9(p: subprocess.Popen) -> bool:
    """SIGKILL if still running; always reaped. True when it was killed."""
    killed = p.poll() is None
    if killed:
        p.send_signal(signal.SIGKILL)
    p.wait()
    return killed


def wait_until(cond: Callable[[], bool], timeout: float, step: float = 0.002) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()


# --- figures -------------------------------------------------------------------------------------


def count(w: World, where: str) -> int:
    with w.dispatch.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM invoice_actions WHERE {where}")).scalar() or 0)


def outcome_figures(w: World, received: Counter, invoice_ids: list[str]) -> dict[str, int]:
    """SPEC B1/B2 read from the provider and the database."""
    with w.dispatch.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT action_id, invoice_id, status, manual_reason FROM invoice_actions")
        ).all()
        invoices = {
            r[0]: r[1] for r in conn.execute(sa.text("SELECT invoice_id, sending_status FROM invoices")).all()
        }
    by_invoice = {r.invoice_id: r for r in rows}
    sent = [r for r in rows if r.status == "sent"]
    unknown = [r for r in rows if r.status == "manual" and r.manual_reason == "delivery_unknown"]
    return {
        "invoices": len(invoice_ids),
        "imported": sum(1 for i in invoice_ids if i in invoices),
        "received by the provider": sum(1 for i in invoice_ids if received[_aid(by_invoice, i)] > 0),
        "duplicates": sum(c - 1 for c in received.values() if c > 1),
        "lost": sum(
            1
            for i in invoice_ids
            if i not in by_invoice or by_invoice[i].status not in ("sent", "manual", "sending")
        ),
        "stuck in sending": sum(1 for r in rows if r.status == "sending"),
        "phantom sent": sum(1 for r in sent if received[r.action_id] == 0),
        "sent": len(sent),
        "sent but invoice not marked sent": sum(1 for r in sent if invoices.get(r.invoice_id) != "sent"),
        "delivery_unknown": len(unknown),
        "unknown the provider never received": sum(1 for r in unknown if received[r.action_id] == 0),
        "manual (other reasons)": sum(
            1 for r in rows if r.status == "manual" and r.manual_reason != "delivery_unknown"
        ),
    }


TARGETS = ("duplicates", "lost", "stuck in sending", "phantom sent")


def misses(figures: dict[str, Any]) -> dict[str, Any]:
    """The B1/B2 figures that are not 0 (the targets): ``{}`` when all are met."""
    return {k: figures[k] for k in TARGETS if figures[k] != 0}


def _aid(by_invoice: dict, invoice_id: str) -> str | None:
    row = by_invoice.get(invoice_id)
    return row.action_id if row is not None else None


def record(name: str, figures: dict[str, Any]) -> dict[str, Any]:
    FIGURES.append((name, figures))
    print(f"\n[chaos] {name}: {figures}", flush=True)
    return figures


# --- the kill -9 campaign --------------------------------------------------------------------------


@dataclass
class KillCampaign:
    """``kills`` times: start ``dispatch run --at AT``, wait for a random point of its dispatch
    (a random number of Mail Send requests received, plus up to 30 ms; one kill in five at a
    random moment of the whole run instead), ``kill -9`` it. New invoices are added whenever
    fewer than ``refill_below`` are left to send, so every kill meets a dispatch at work."""

    w: World
    server: ChaosSendGrid
    env: dict[str, str]
    at: dt.datetime
    log: Path
    kills: int
    in_flight: int
    rng: random.Random
    wave: int = 300
    refill_below: int = 64
    invoice_ids: list[str] = field(default_factory=list)
    per_kill_unknown: list[int] = field(default_factory=list)
    in_flight_at_kill: list[int] = field(default_factory=list)
    kills_done: int = 0
    completed_runs: int = 0
    _waves: int = 0

    def refill(self) -> None:
        if count(self.w, "status IN ('scheduled', 'sending')") + self._unimported() >= self.refill_below:
            return
        # inside the extract's one-hour look-back before the as-of (what a run at the same
        # instant reads again), and before it: a wave stamped earlier is never read
        updated = self.at - dt.timedelta(minutes=30) + dt.timedelta(seconds=self._waves)
        self.invoice_ids += add_invoices(
            self.w, self.wave, issued=self.at.date(), updated=updated, prefix=f"w{self._waves:02d}_"
        )
        self._waves += 1

    def _unimported(self) -> int:
        with self.w.dispatch.connect() as conn:
            seen = int(conn.execute(sa.text("SELECT count(*) FROM invoices")).scalar() or 0)
        return len(self.invoice_ids) - seen

    def run(self, deadline: float) -> None:
        unknown_before = count(self.w, "manual_reason = 'delivery_unknown'")
        while self.kills_done < self.kills and time.monotonic() < deadline:
            self.refill()
            base = self.server.sends_received
            p = spawn(self.env, self.at, self.log)
            if self.rng.random() < 0.2:
                wait_until(lambda p=p: p.poll() is not None, self.rng.uniform(0.0, 3.0))
            else:
                target = base + self.rng.randint(0, 2 * self.in_flight)
                wait_until(
                    lambda p=p, target=target: p.poll() is not None or self.server.sends_received >= target,
                    60,
                )
                time.sleep(self.rng.uniform(0.0, 0.03))
            if kill9(p):
                self.kills_done += 1
                self.in_flight_at_kill.append(count(self.w, "status = 'sending' AND handover_at IS NOT NULL"))
            else:
                self.completed_runs += 1
            unknown = count(self.w, "manual_reason = 'delivery_unknown'")
            self.per_kill_unknown.append(unknown - unknown_before)
            unknown_before = unknown
