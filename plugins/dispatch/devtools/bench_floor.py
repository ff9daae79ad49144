"""The references ``make bench`` measures itself, in the same run as the figures it judges.

* :func:`copy_limit` — the fastest the database can take a first run's rows: ``COPY … TO
  STDOUT`` of the source invoices, plus three ``COPY … FROM STDIN`` of as many rows (the
  run's own invoices, actions and events) into logged tables with a primary key. No
  pipeline can import and plan invoices faster than it can copy them.
* :func:`email_floor` — the fastest one process can produce the same e-mails with no
  database at all: render the template (Jinja2's sandbox, compiled once), build the MIME
  message with the standard library (the same headers and parts as the outbox's), write the
  file durably the outbox's way (each chunk of messages to temporary files, fsynced
  concurrently, linked into place, and the directory fsynced once per chunk —
  :func:`dispatch.channels.outbox.write_all`).
* :func:`letter_floor` — the same for letters: the PDF built by
  :func:`dispatch.channels.formats.letter_pdf.letter_for_message`, written durably.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from jinja2 import Template
from jinja2.sandbox import ImmutableSandboxedEnvironment

from dispatch.channels.base import OutgoingMessage
from dispatch.channels.formats.letter_pdf import letter_for_message
from dispatch.channels.formats.mime import email_bytes
from dispatch.channels.outbox import _fsync_directory, write_all
from dispatch.stages.dispatch_batch import SEND_CHUNK
from dispatch.storage.engine import make_engine

LIMIT_TABLES = (
    ("invoices", "invoice_id"),
    ("invoice_actions", "action_id"),
    ("action_events", "event_id"),
)


@dataclass(frozen=True)
class CopyLimit:
    rows: int
    out_seconds: float  # COPY … TO STDOUT of the source invoices
    in_seconds: float  # three COPY … FROM STDIN into logged tables with a primary key

    @property
    def seconds(self) -> float:
        return self.out_seconds + self.in_seconds


def copy_limit(dispatch_url: str, accounting_url: str) -> CopyLimit:
    """Time the COPY limit on PostgreSQL, after a first run (its rows are what is copied in)."""
    source, target = make_engine(accounting_url, readonly=True), make_engine(dispatch_url)
    try:
        with source.connect() as conn:
            cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            started = time.perf_counter()
            blocks: list[bytes] = []
            with cur.copy("COPY (SELECT * FROM invoices) TO STDOUT") as copy:
                blocks.extend(bytes(b) for b in copy)
            out_seconds = time.perf_counter() - started
            rows = cur.rowcount
        del blocks
        payloads: list[tuple[str, bytes]] = []
        with target.begin() as conn:
            cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            for table, key in LIMIT_TABLES:
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS limit_{table}")
                conn.exec_driver_sql(f"CREATE TABLE limit_{table} (LIKE {table} INCLUDING DEFAULTS)")
                conn.exec_driver_sql(f"ALTER TABLE limit_{table} ADD PRIMARY KEY ({key})")
                chunks: list[bytes] = []
                with cur.copy(f"COPY {table} TO STDOUT") as copy:
                    chunks.extend(bytes(b) for b in copy)
                payloads.append((table, b"".join(chunks)))
        with target.connect() as conn:
            dbapi = conn.connection.driver_connection
            cur = dbapi.cursor()  # type: ignore[union-attr]
            started = time.perf_counter()
            for table, payload in payloads:
                with cur.copy(f"COPY limit_{table} FROM STDIN") as copy:
                    view = memoryview(payload)
                    for start in range(0, len(view), 1 << 20):
                        copy.write(view[start : start + (1 << 20)])
            dbapi.commit()  # type: ignore[union-attr]
            in_seconds = time.perf_counter() - started
        with target.begin() as conn:
            for table, _key in LIMIT_TABLES:
                conn.exec_driver_sql(f"DROP TABLE limit_{table}")
        return CopyLimit(int(rows), out_seconds, in_seconds)
    finally:
        source.dispose()
        target.dispose()


# --- the messages the run sent, read back (not timed) -------------------------------------------

_SENT = sa.text(
    """
    SELECT a.action_id, a.invoice_id, a.org_id, a.recipient, a.deliver_at, i.number,
           i.total_amount, i.currency, i.due_date, c.name AS customer_name, o.name AS org_name,
           o.mail_from, t.subject, t.body
    FROM invoice_actions a
    JOIN invoices i ON i.invoice_id = a.invoice_id
    LEFT JOIN customers c ON c.customer_id = i.customer_id
    JOIN organizations o ON o.org_id = a.org_id
    JOIN invoice_templates t ON t.template_id = a.template_id
    WHERE a.status = 'sent' AND a.channel = :channel
    ORDER BY a.action_id
    """
)


def sent_messages(dispatch_url: str, channel: str) -> pd.DataFrame:
    engine = make_engine(dispatch_url, readonly=True)
    try:
        with engine.connect() as conn:
            frame = pd.read_sql(_SENT, conn, params={"channel": channel})
    finally:
        engine.dispose()
    frame["deliver_at"] = pd.to_datetime(frame["deliver_at"], utc=True)
    return frame


def _contexts(frame: pd.DataFrame) -> list[dict]:
    return [
        {
            "customer": {"name": r.customer_name},
            "invoice": {
                "number": r.number,
                "total_amount": r.total_amount,
                "currency": r.currency,
                "due_date": r.due_date,
            },
            "organization": {"name": r.org_name},
        }
        for r in frame.itertuples(index=False)
    ]


@dataclass(frozen=True)
class Floor:
    messages: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else float("nan")


def email_floor(frame: pd.DataFrame, out_dir: Path, *, direct: bool = False) -> Floor:
    """Render, build with the standard library and write durably the e-mails of ``frame``.

    ``direct``: build them with :func:`dispatch.channels.formats.mime.email_bytes` instead,
    the outbox's own writer of plain messages (the standard library's bytes without its
    header parsing). The benchmark prints the dispatch rate against both floors: the issue's
    target is judged against the standard library's; the direct one says how much of what
    remains is the pipeline's own work (database, rendering with limits, checks)."""
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    contexts = _contexts(frame)
    env = ImmutableSandboxedEnvironment(autoescape=False)
    compiled: dict[str, Template] = {}
    rows: list[Any] = list(frame.itertuples(index=False))  # a frame row: its columns are untyped
    chunk: list[tuple[Path, bytes]] = []
    started = time.perf_counter()
    for r, ctx in zip(rows, contexts, strict=True):
        for source in (r.subject, r.body):
            if source not in compiled:  # each template compiled once, as the pipeline caches them
                compiled[source] = env.from_string(source)
        subject_t, body_t = compiled[r.subject], compiled[r.body]
        subject, body = subject_t.render(ctx), body_t.render(ctx)
        if direct:
            message = OutgoingMessage(
                action_id=r.action_id,
                invoice_id=r.invoice_id,
                org_id=r.org_id,
                channel="email",
                recipients=(r.recipient,),
                deliver_at=r.deliver_at.to_pydatetime().astimezone(dt.UTC),
                subject=subject,
                body_text=body,
                body_html=f"<p>{escape(body)}</p>",
                sender=r.mail_from,
                sender_name=r.org_name,
            )
            chunk.append((out_dir / f"{r.action_id}.eml", email_bytes(message, default_sender=None)))
            _durably(out_dir, chunk)
            continue
        msg = EmailMessage(policy=SMTP)  # the headers the outbox writes, set directly
        msg["From"] = Address(r.org_name, addr_spec=r.mail_from)
        msg["To"] = r.recipient
        msg["Subject"] = subject
        msg["Date"] = format_datetime(r.deliver_at.to_pydatetime())
        msg["Message-ID"] = f"<{r.action_id}@floor.invalid>"
        msg["X-Deliver-At"] = r.deliver_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        msg["X-Invoice-Dispatch-Action"] = r.action_id
        msg["X-Invoice-Dispatch-Invoice"] = r.invoice_id
        msg["X-Invoice-Dispatch-Org"] = r.org_id
        msg.set_content(body)
        msg.add_alternative(f"<p>{escape(body)}</p>", subtype="html")
        chunk.append((out_dir / f"{r.action_id}.eml", msg.as_bytes()))
        _durably(out_dir, chunk)
    _durably(out_dir, chunk, last=True)
    return Floor(len(rows), time.perf_counter() - started)


def _durably(folder: Path, chunk: list[tuple[Path, bytes]], *, last: bool = False) -> None:
    """The outbox's durable write, once ``chunk`` holds :data:`dispatch.stages.dispatch_batch.SEND_CHUNK`
    files (the outbox's window) or the last ones: the files written, fsynced together and
    linked into place (:func:`dispatch.channels.outbox.write_all`), then the directory
    fsynced; the chunk is emptied."""
    if chunk and (last or len(chunk) >= SEND_CHUNK):
        write_all(chunk)
        _fsync_directory(folder)
        chunk.clear()


def letter_floor(frame: pd.DataFrame, out_dir: Path) -> Floor:
    """Render the body and build and write durably the PDF letter of each row of ``frame``."""
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    contexts = _contexts(frame)
    env = ImmutableSandboxedEnvironment(autoescape=False)
    rows: list[Any] = list(frame.itertuples(index=False))  # a frame row: its columns are untyped
    compiled: dict[str, Template] = {}
    chunk: list[tuple[Path, bytes]] = []
    started = time.perf_counter()
    for r, ctx in zip(rows, contexts, strict=True):
        if r.body not in compiled:
            compiled[r.body] = env.from_string(r.body)
        body_t = compiled[r.body]
        message = OutgoingMessage(
            action_id=r.action_id,
            invoice_id=r.invoice_id,
            org_id=r.org_id,
            channel="letter",
            recipients=(r.recipient or "",),
            deliver_at=r.deliver_at.to_pydatetime().astimezone(dt.UTC),
            body_text=body_t.render(ctx),
            sender_name=r.org_name,
        )
        chunk.append((out_dir / f"{r.action_id}.pdf", letter_for_message(message)))
        _durably(out_dir, chunk)
    _durably(out_dir, chunk, last=True)
    return Floor(len(rows), time.perf_counter() - started)
