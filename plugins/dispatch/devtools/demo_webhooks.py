"""Demo delivery events: SendGrid-signed *delivered*, *opened* and one *bounce*, posted to the
demo's web app, so that its invoice pages show what happened after "sent".

The demo sends through the outbox and has no SendGrid; this module stands in for SendGrid's
Event Webhook. :func:`demo_keys` makes a P-256 key pair; the demo's web app is started with
its public half (:meth:`DemoKeys.env`: ``SENDGRID_WEBHOOK_PUBLIC_KEY``), and
:func:`post_demo_events` signs events about the demo's sent e-mails with the private half,
exactly as SendGrid signs them, and posts them in one batch to
``/dispatch/webhooks/sendgrid`` — the same route, signature check and storage as in
production. The events name each e-mail by the message id its send recorded.

``python -m dispatch.devtools.demo_webhooks`` does it on its own: it starts ``dispatch web``
on the configured database with a fresh key, posts, reads one invoice page back, and stops.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from dispatch.config.settings import Settings, load_settings
from dispatch.delivery import sendgrid as sendgrid_events
from dispatch.storage.engine import make_engine
from dispatch.storage.schema import invoice_actions

#: e-mails the demo reports on at most (the newest sent ones)
MAX_MESSAGES = 500
DELIVERED_AFTER = dt.timedelta(minutes=2)
OPENED_AFTER = dt.timedelta(hours=3)


@dataclass(frozen=True)
class DemoKeys:
    """The stand-in SendGrid's signing key; the web app verifies with its public half."""

    private_key: ec.EllipticCurvePrivateKey = field(repr=False)

    @property
    def public_key(self) -> str:
        der = self.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode("ascii")

    def env(self) -> dict[str, str]:
        """The setting the demo's web app must be started with."""
        return {"SENDGRID_WEBHOOK_PUBLIC_KEY": self.public_key}

    def sign(self, body: bytes, timestamp: int) -> dict[str, str]:
        """SendGrid's headers: base64 ECDSA/SHA-256 signature of ``<timestamp><body>``."""
        stamp = str(timestamp)
        signature = self.private_key.sign(stamp.encode("ascii") + body, ec.ECDSA(hashes.SHA256()))
        return {
            "Content-Type": "application/json",
            sendgrid_events.SIGNATURE_HEADER: base64.b64encode(signature).decode("ascii"),
            sendgrid_events.TIMESTAMP_HEADER: stamp,
        }


def demo_keys() -> DemoKeys:
    return DemoKeys(ec.generate_private_key(ec.SECP256R1()))


@dataclass
class DemoEvents:
    """What was posted: the invoices reported delivered, opened and bounced, and the answer."""

    delivered: list[str] = field(default_factory=list)
    opened: list[str] = field(default_factory=list)
    bounced: str | None = None
    answer: dict = field(default_factory=dict)

    def line(self) -> str:
        example = f"; e.g. /dispatch/invoices/{self.opened[0]}" if self.opened else ""
        return (
            f"delivery webhooks: {len(self.delivered)} e-mails delivered, {len(self.opened)} opened, "
            f"bounced: {self.bounced or 'none'} (stored {self.answer.get('stored', 0)}, "
            f"matched {self.answer.get('matched', 0)}){example}"
        )


def sent_emails(dispatch_db_url: str, now: dt.datetime, limit: int = MAX_MESSAGES) -> list[dict]:
    """The newest e-mails handed over by ``now``: invoice, message id, recipients, time."""
    a = invoice_actions.c
    engine = make_engine(dispatch_db_url, readonly=True, name="DISPATCH_DB_URL")
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(a.invoice_id, a.provider_message_id, a.recipient, a.deliver_at)
                .where(
                    a.status == "sent",
                    a.channel == "email",
                    a.provider_message_id.is_not(None),
                    a.deliver_at <= now,
                )
                .order_by(a.deliver_at.desc(), a.invoice_id)
                .limit(limit)
            ).all()
    finally:
        engine.dispose()
    return [dict(r._mapping) for r in reversed(rows)]


def demo_batch(emails: Sequence[dict]) -> tuple[list[dict], DemoEvents]:
    """SendGrid events for ``emails``: each processed; the last one bounces, the others are
    delivered, and every other one is opened a few hours later."""
    events: list[dict] = []
    story = DemoEvents()
    for n, mail in enumerate(emails):
        sent_at: dt.datetime = mail["deliver_at"]
        address = (mail["recipient"] or "").split(",")[0].strip()
        bounce = n == len(emails) - 1 and len(emails) > 1
        steps: list[tuple[str, dt.datetime, dict[str, str]]] = [("processed", sent_at, {})]
        if bounce:
            reason = "550 5.1.1 The email account that you tried to reach does not exist"
            steps.append(("bounce", sent_at + DELIVERED_AFTER, {"reason": reason, "type": "bounce"}))
            story.bounced = mail["invoice_id"]
        else:
            steps.append(("delivered", sent_at + DELIVERED_AFTER, {"response": "250 2.0.0 OK"}))
            story.delivered.append(mail["invoice_id"])
            if n % 2 == 0:
                steps.append(("open", sent_at + OPENED_AFTER, {"useragent": "Mozilla/5.0"}))
                story.opened.append(mail["invoice_id"])
        for name, at, extra in steps:
            events.append(
                {
                    "email": address,
                    "timestamp": int(at.timestamp()),
                    "event": name,
                    "sg_event_id": secrets.token_urlsafe(16),
                    "sg_message_id": f"{mail['provider_message_id']}.filterdrecv-demo-0",
                    "category": ["invoice"],
                    **extra,
                }
            )
    return events, story


def post_demo_events(
    base_url: str,
    dispatch_db_url: str,
    keys: DemoKeys,
    *,
    now: dt.datetime | None = None,
    client: httpx.Client | None = None,
) -> DemoEvents:
    """Post the demo's events to the web app at ``base_url`` (``http://host:port``, the app
    under ``/dispatch``) for the e-mails sent by ``now``; raises when it does not accept them."""
    now = now or dt.datetime.now(dt.UTC)
    events, story = demo_batch(sent_emails(dispatch_db_url, now))
    if not events:
        return story
    body = json.dumps(events).encode("utf-8")
    own = client is None
    client = client or httpx.Client(timeout=60)
    try:
        answer = client.post(
            f"{base_url.rstrip('/')}/dispatch/webhooks/sendgrid",
            content=body,
            headers=keys.sign(body, int(time.time())),
        )
    finally:
        if own:
            client.close()
    if answer.status_code != 200:
        raise RuntimeError(f"the web app refused the demo events ({answer.status_code}): {answer.text[:300]}")
    story.answer = answer.json()
    return story


def same_code_env() -> dict[str, str]:
    """``PYTHONPATH`` for a child ``dispatch`` process that runs this very code (a worktree's,
    not whichever copy is installed)."""
    import dispatch

    here = str(Path(dispatch.__file__).resolve().parents[1])
    return {"PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)}


_URL_LINE = re.compile(r"dispatch web: (?P<base>http://\S+?)/dispatch/todo\?token=")


@contextmanager
def own_web(db_url: str, keys: DemoKeys) -> Iterator[str]:
    """A ``dispatch web`` of its own on ``db_url``, checking signatures with ``keys``, on a free
    port; yields its base URL and stops it on the way out."""
    env = {**os.environ, **same_code_env(), "DISPATCH_DB_URL": db_url, **keys.env()}
    cmd = [sys.executable, "-m", "dispatch.cli", "web", "--host", "127.0.0.1", "--port", "0"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        match = _URL_LINE.search(proc.stdout.readline())
        if match is None:
            raise RuntimeError("dispatch web did not print its URL")
        yield match["base"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run_with_own_web(settings: Settings | None = None) -> DemoEvents:
    """Start ``dispatch web`` on the database of ``settings`` (default: the environment's)
    with a fresh key, post the demo's events, stop it; prints one line. What was posted stays
    in the database: any later ``dispatch web`` on it shows it on the invoice pages."""
    settings = settings or load_settings()
    keys = demo_keys()
    with own_web(settings.dispatch_db_url, keys) as base:
        story = post_demo_events(base, settings.dispatch_db_url, keys)
    print(story.line())
    return story


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m dispatch.devtools.demo_webhooks", description=__doc__.split("\n")[0]
    )
    parser.parse_args(argv)
    run_with_own_web()


if __name__ == "__main__":
    main()
