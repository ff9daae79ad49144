"""A small, explicit builder of end-to-end scenarios: accounting data + configuration + runs.

Each test gets a :class:`World`: a real dispatch database (migrated) and a real accounting
database (``dispatch.storage.accounting_schema``), on SQLite files or throwaway PostgreSQL databases
(the ``db_urls`` fixture), and an outbox directory of its own. A scenario reads like the
story it tells::

    w.org("acme")                                   # Europe/Paris, 08:30, FR holidays
    w.plan("p_mail", channel="email", delay=0)
    w.customer("c1", plan="p_mail")                 # with a billing e-mail contact
    w.load_config()
    w.invoice("i1", "c1", issued="2026-12-02")      # updated_at: 00:00 UTC on its issue day
    w.run("2026-12-02T05:00Z")
    assert w.action("i1")["status"] == "sent"

Configuration goes through the real loader (``load_config_file``) and runs through the real
pipeline (``run_pipeline``) or the real CLI (``w.cli(...)``, click's CliRunner with the
environment of CONTRACT §1): no stage is bypassed, and nothing is written behind the
library's back except the accounting rows, which are the input.
"""

from __future__ import annotations

import atexit
import datetime as dt
import gc
import json
import shutil
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
import yaml
from click.testing import CliRunner, Result
from dispatch.config.load import load_config_file
from dispatch.config.settings import Settings, load_settings
from dispatch.config.write import LoadSummary
from dispatch.runtime.pipeline import RunReport, run_pipeline
from dispatch.storage import accounting_schema as acc
from dispatch.storage.engine import make_engine
from dispatch.storage.migrate import is_current, upgrade
from sqlalchemy.pool import NullPool

from tests.conftest import PgDatabases

UTC = dt.UTC

#: The switch-on instant of every org unless a test says otherwise: early enough for the
#: summer worked example, so that what a test imports is ``to_send`` (R1).
DEFAULT_ENABLED_AT = "2026-01-01T00:00:00+01:00"
DEFAULT_SUBJECT = "Invoice {{ invoice.number }} from {{ organization.name }}"
DEFAULT_BODY = "Dear {{ customer.name }}, please find invoice {{ invoice.number }} attached."
#: Marker: "use the default billing e-mail of this customer".
DEFAULT = object()


def instant(value: str | dt.datetime) -> dt.datetime:
    """An aware UTC instant from ISO text ('2026-12-02T05:00Z', '2026-12-02T05:00:00+01:00')."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


def day(value: str | dt.date) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(value)


def weekday_runs(first: str, last: str, at: str = "05:00") -> list[dt.datetime]:
    """The daily runs (Monday–Friday, ``at`` UTC) from ``first`` to ``last`` inclusive."""
    days = pd.bdate_range(first, last)
    return [instant(f"{d.date().isoformat()}T{at}Z") for d in days]


def parse_eml(path: Path) -> EmailMessage:
    with path.open("rb") as handle:
        return BytesParser(policy=policy.default).parse(handle)  # type: ignore[return-value]


def eml_parts(message: EmailMessage) -> dict[str, Any]:
    """The parts a test looks at: text, html, and the attachments (filename -> bytes)."""
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    attachments = {
        part.get_filename(): (part.get_content_type(), part.get_payload(decode=True))
        for part in message.iter_attachments()
    }
    return {
        "text": text.get_content() if text is not None else None,
        "html": html.get_content() if html is not None else None,
        "attachments": attachments,
    }


class _PgPool:
    """Pairs of PostgreSQL databases (dispatch + accounting) reused across tests.

    Creating and dropping a database costs about a second each on this machine; emptying
    one costs milliseconds. So a test process creates (and migrates) a pair the first time
    one is asked for, empties it between tests (TRUNCATE, identities restarted: the state of
    a fresh migrated database) and drops every pair at exit.
    """

    def __init__(self) -> None:
        self.free: list[dict[str, str]] = []
        self.dbs: PgDatabases | None = None

    def acquire(self) -> dict[str, str]:
        if self.dbs is None:
            self.dbs = PgDatabases()
            atexit.register(self.dbs.drop_all)
        if not self.free:
            return {"dispatch": self.dbs.new("t_dispatch"), "accounting": self.dbs.new("t_accounting")}
        urls = self.free.pop()
        for url in urls.values():
            engine = sa.create_engine(url, poolclass=NullPool)
            try:
                with engine.begin() as conn:
                    tables = [t for t in sa.inspect(conn).get_table_names() if t != "alembic_version"]
                    if tables:
                        conn.execute(sa.text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
            finally:
                engine.dispose()
        return urls

    def release(self, urls: dict[str, str]) -> None:
        self.free.append(urls)


_PG_POOL = _PgPool()
_SQLITE_TEMPLATE: list[Path] = []


def _migrated_sqlite(target: Path) -> None:
    """A migrated dispatch database at ``target``: a copy of one migrated once per process
    (through SQLite's backup API, which copies a consistent database whatever the WAL holds)."""
    if not _SQLITE_TEMPLATE:
        template = Path(tempfile.mkdtemp(prefix="dispatch_template_")) / "dispatch.db"
        engine = make_engine(f"sqlite:///{template}")
        upgrade(engine)
        engine.dispose()
        atexit.register(shutil.rmtree, template.parent, True)
        _SQLITE_TEMPLATE.append(template)
    src, dst = sqlite3.connect(_SQLITE_TEMPLATE[0]), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


@contextmanager
def open_world(backend: str, root: Path) -> Iterator[World]:
    """A World on empty, migrated databases of ``backend`` (the ``backend`` fixture's value),
    reused from earlier tests where that is cheaper than creating them."""
    if backend == "sqlite":
        _migrated_sqlite(root / "dispatch.db")
        urls = {
            "dispatch": f"sqlite:///{root / 'dispatch.db'}",
            "accounting": f"sqlite:///{root / 'accounting.db'}",
        }
        pooled = None
    else:
        urls = pooled = _PG_POOL.acquire()
    world = World.create(urls, root)
    try:
        yield world
    finally:
        world.dispatch.dispose()
        world.accounting.dispose()
        gc.collect()  # engines the CLI made: close their pooled connections before reuse
        if pooled is not None:
            _PG_POOL.release(pooled)


@dataclass
class World:
    """One scenario's databases, configuration, outbox and helpers."""

    urls: dict[str, str]
    root: Path
    dispatch: sa.Engine
    accounting: sa.Engine
    config: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {"organizations": [], "users": [], "plans": [], "assignments": []}
    )
    org_of_customer: dict[str, str] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)
    _config_no: int = 0

    # --- set-up ---------------------------------------------------------------------------

    @classmethod
    def create(cls, db_urls: dict[str, str], root: Path, *, migrate: bool = True) -> World:
        """Empty accounting tables and a migrated dispatch database (left as it is with
        ``migrate=False``, for tests of ``dispatch db init``)."""
        dispatch = make_engine(db_urls["dispatch"])
        accounting = make_engine(db_urls["accounting"])
        acc.create_accounting_schema(accounting, drop_existing=False)
        if migrate and not is_current(dispatch):
            upgrade(dispatch)
        return cls(urls=dict(db_urls), root=root, dispatch=dispatch, accounting=accounting)

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def pdf_root(self) -> Path:
        """The invoice folder (``DISPATCH_PDF_ROOT``) the world's PDFs are written to."""
        return self.root / "pdfs"

    @property
    def backend(self) -> str:
        return self.dispatch.dialect.name

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of CONTRACT §1 pointing at this world."""
        return {
            "DISPATCH_DB_URL": self.urls["dispatch"],
            "ACCOUNTING_DB_URL": self.urls["accounting"],
            "DISPATCH_OUTBOX_DIR": str(self.outbox),
            "DISPATCH_PDF_ROOT": str(self.pdf_root),
            "DISPATCH_EMAIL_BACKEND": "outbox",
            "DISPATCH_SMS_BACKEND": "outbox",
            "DISPATCH_LETTER_BACKEND": "outbox",
            **self.extra_env,
            **extra,
        }

    def settings(self, **extra: str) -> Settings:
        return load_settings(environ=self.env(**extra))

    # --- configuration (CONTRACT §3) -------------------------------------------------------

    def org(
        self,
        org_id: str = "acme",
        *,
        timezone: str = "Europe/Paris",
        send_time: str = "08:30",
        holidays: str | None = "FR",
        country: object = DEFAULT,
        enabled_at: str | None = DEFAULT_ENABLED_AT,
        default_owner: str | None = "u_alice",
        name: str | None = None,
        mail_from: str | None = "billing@acme.example",
    ) -> World:
        """An organization; its default owner is declared as a user when not yet known."""
        entry: dict[str, Any] = {
            "id": org_id,
            "name": name or f"{org_id.upper()} SAS",
            "timezone": timezone,
            "send_time": send_time,
            "invoice_sending_enabled_at": enabled_at,
        }
        if holidays:
            entry["holidays"] = holidays
        country = holidays if country is DEFAULT else country  # the same country unless told
        if country:
            entry["country"] = country
        if mail_from:
            entry["mail_from"] = mail_from
        if default_owner:
            entry["default_owner"] = default_owner
        self._put("organizations", entry)
        if default_owner and not any(u["id"] == default_owner for u in self.config["users"]):
            self.user(default_owner, org_id)
        return self

    def user(
        self, user_id: str, org: str = "acme", *, name: str | None = None, email: str | None = None
    ) -> World:
        self._put(
            "users",
            {
                "id": user_id,
                "org": org,
                "name": name or user_id.removeprefix("u_").title(),
                "email": email or f"{user_id}@staff.example",
            },
        )
        return self

    def plan(
        self,
        plan_id: str,
        org: str = "acme",
        *,
        channel: str | None = "email",
        delay: int = 0,
        automatic: bool = True,
        owner: str | None = None,
        subject: str | None = DEFAULT_SUBJECT,
        body: str | None = DEFAULT_BODY,
        template: str | None = None,
        level: str = "customer",
    ) -> World:
        """A plan; ``channel=None`` gives a plan without invoice-sending template."""
        entry: dict[str, Any] = {"id": plan_id, "org": org, "name": f"Plan {plan_id}", "level": level}
        if channel is not None:
            sending: dict[str, Any] = {"channel": channel, "delay_days": delay, "automatic": automatic}
            if owner:
                sending["owner"] = owner
            if channel == "email" and subject is not None:
                sending["subject"] = subject
            if template is not None:
                sending["template"] = template
            elif body is not None:
                sending["body"] = body
            entry["invoice_sending"] = sending
        self._put("plans", entry)
        return self

    def assign(self, customer_id: str, plan_id: str) -> World:
        self.config["assignments"] = [a for a in self.config["assignments"] if a["customer"] != customer_id]
        self.config["assignments"].append({"customer": customer_id, "plan": plan_id})
        return self

    def config_file(self) -> Path:
        """The accumulated configuration written as a YAML file (a new file per call)."""
        self._config_no += 1
        path = self.root / f"config_{self._config_no}.yaml"
        body = {k: v for k, v in self.config.items() if v}
        path.write_text(yaml.safe_dump(body, sort_keys=False, allow_unicode=True), encoding="utf-8")
        return path

    def load_config(self) -> LoadSummary:
        """Load the whole accumulated configuration through the real loader (an upsert)."""
        return load_config_file(
            self.config_file(), self.dispatch, accounting_engine=self.accounting, now=dt.datetime.now(UTC)
        )

    def _put(self, section: str, entry: dict[str, Any]) -> None:
        rows = [e for e in self.config[section] if e["id"] != entry["id"]]
        self.config[section] = [*rows, entry]

    # --- accounting source (CONTRACT §2) ---------------------------------------------------

    def customer(
        self,
        customer_id: str,
        org: str = "acme",
        *,
        name: str | None = None,
        parent: str | None = None,
        language: str | None = None,
        email: object = DEFAULT,
        phone: str | None = None,
        address: str | None = None,
        plan: str | None = None,
    ) -> World:
        """A customer with one billing contact holding ``email``/``phone``/``address``
        (``email`` defaults to ``<id>@customers.example``; ``email=None`` and no phone or
        address: no contact at all). ``plan`` assigns a plan (in the config, loaded later)."""
        if email is DEFAULT:
            email = f"{customer_id}@customers.example"
        self._insert(
            acc.customers,
            {
                "customer_id": customer_id,
                "org_id": org,
                "name": name if name is not None else f"Customer {customer_id}",
                "parent_customer_id": parent,
                "language": language,
            },
        )
        self.org_of_customer[customer_id] = org
        if email is not None or phone is not None or address is not None:
            self.contact(customer_id, email=email, phone=phone, address=address)  # type: ignore[arg-type]
        if plan is not None:
            self.assign(customer_id, plan)
        return self

    def contact(
        self,
        customer_id: str,
        contact_id: str | None = None,
        *,
        email: str | None = None,
        phone: str | None = None,
        address: str | None = None,
        is_billing: bool = True,
        name: str | None = "Accounts payable",
    ) -> World:
        with self.accounting.connect() as conn:
            n = conn.execute(
                sa.select(sa.func.count())
                .select_from(acc.contacts)
                .where(acc.contacts.c.customer_id == customer_id)
            ).scalar()
        self._insert(
            acc.contacts,
            {
                "contact_id": contact_id or f"{customer_id}_k{int(n or 0) + 1}",
                "customer_id": customer_id,
                "name": name,
                "email": email,
                "phone": phone,
                "postal_address": address,
                "is_billing": is_billing,
            },
        )
        return self

    def update_contacts(self, customer_id: str, **values: Any) -> World:
        """Change every contact of a customer (``email=…``, ``phone=…``, ``postal_address=…``)."""
        with self.accounting.begin() as conn:
            conn.execute(
                sa.update(acc.contacts).where(acc.contacts.c.customer_id == customer_id).values(**values)
            )
        return self

    def invoice(
        self,
        invoice_id: str,
        customer_id: str,
        *,
        issued: str = "2026-12-02",
        updated: str | None = None,
        number: str | None = None,
        due: str | None = None,
        currency: str = "EUR",
        total: str = "120.00",
        status: str = "open",
        pdf: bool = False,
        org: str | None = None,
    ) -> World:
        """An invoice; ``updated`` (its ``updated_at``, UTC) defaults to 00:00 UTC of its issue
        day, so the first run on or after that instant imports it."""
        issue = day(issued)
        pdf_path = None
        if pdf:
            from dispatch.channels.formats.letter_pdf import build_invoice_placeholder_pdf

            path = self.pdf_root / f"{invoice_id}.pdf"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(build_invoice_placeholder_pdf(number or invoice_id.upper(), ["1 x Widget"]))
            pdf_path = str(path)
        self._insert(
            acc.invoices,
            {
                "invoice_id": invoice_id,
                "org_id": org or self.org_of_customer.get(customer_id, "acme"),
                "customer_id": customer_id,
                "number": number or invoice_id.upper(),
                "issue_date": issue,
                "due_date": day(due) if due else issue + dt.timedelta(days=30),
                "currency": currency,
                "total_amount": Decimal(total),
                "status": status,
                "pdf_path": pdf_path,
                "updated_at": self._naive(updated or f"{issue.isoformat()}T00:00Z"),
            },
        )
        return self

    def raw_invoice(self, **row: Any) -> World:
        """An accounting row exactly as given (malformed input); ``updated_at`` is ISO text."""
        row = dict(row)
        row["updated_at"] = self._naive(row.get("updated_at", "2026-12-02T00:00Z"))
        for key in ("issue_date", "due_date"):
            if isinstance(row.get(key), str) and self.backend_of(self.accounting) != "sqlite":
                row[key] = day(row[key])
        if (
            isinstance(row.get("total_amount"), str | int | float)
            and self.backend_of(self.accounting) != "sqlite"
        ):
            row["total_amount"] = Decimal(str(row["total_amount"]))
        columns = ", ".join(row)
        values = ", ".join(f":{k}" for k in row)
        with self.accounting.begin() as conn:
            conn.execute(sa.text(f"INSERT INTO invoices ({columns}) VALUES ({values})"), row)
        return self

    def update_invoice(self, invoice_id: str, *, updated: str, **values: Any) -> World:
        """Change an invoice in accounting (``status="void"``…) with a new ``updated_at``."""
        with self.accounting.begin() as conn:
            conn.execute(
                sa.update(acc.invoices)
                .where(acc.invoices.c.invoice_id == invoice_id)
                .values(updated_at=self._naive(updated), **values)
            )
        return self

    def delete_invoice(self, invoice_id: str) -> World:
        with self.accounting.begin() as conn:
            conn.execute(sa.delete(acc.invoices).where(acc.invoices.c.invoice_id == invoice_id))
        return self

    def _insert(self, table: sa.Table, row: dict[str, Any]) -> None:
        with self.accounting.begin() as conn:
            conn.execute(sa.insert(table), [row])

    @staticmethod
    def _naive(value: str | dt.datetime) -> dt.datetime:
        return instant(value).replace(tzinfo=None)

    @staticmethod
    def backend_of(engine: sa.Engine) -> str:
        return engine.dialect.name

    # --- running ----------------------------------------------------------------------------

    def run(self, at: str | dt.datetime, **kwargs: Any) -> RunReport:
        """One pipeline run as of ``at`` through the library (what ``dispatch run`` does)."""
        settings = kwargs.pop("settings", None) or self.settings()
        return run_pipeline(settings, instant(at), **kwargs)

    def run_days(
        self, runs: Iterable[str | dt.datetime], watch: Iterable[str], **kwargs: Any
    ) -> dict[str, dt.datetime | None]:
        """Run each instant in turn; for each watched invoice, the run after which its outbox
        file first exists (None: never). A file appears once, so this is "sent by that run,
        not before"."""
        first: dict[str, dt.datetime | None] = dict.fromkeys(watch)
        for at in runs:
            self.run(at, **kwargs)
            for invoice_id, seen in first.items():
                if seen is None and self.action(invoice_id) and self.outbox_path(invoice_id).exists():
                    first[invoice_id] = instant(at)
        return first

    def cli(self, *args: str, **env: str) -> Result:
        """``dispatch ARGS…`` through click's CliRunner with this world's environment."""
        from dispatch.cli import main

        runner = CliRunner()
        return runner.invoke(main, list(args), env=self.env(**env), catch_exceptions=False)

    # --- looking at the result ----------------------------------------------------------------

    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        with self.dispatch.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.text(sql), params)]

    def action(self, invoice_id: str) -> dict[str, Any] | None:
        """The invoice's action with instants as aware UTC datetimes, or None."""
        from dispatch.storage.schema import invoice_actions

        with self.dispatch.connect() as conn:
            row = conn.execute(
                sa.select(invoice_actions).where(invoice_actions.c.invoice_id == invoice_id)
            ).first()
        return dict(row._mapping) if row else None

    def actions(self) -> list[dict[str, Any]]:
        from dispatch.storage.schema import invoice_actions

        with self.dispatch.connect() as conn:
            rows = conn.execute(sa.select(invoice_actions).order_by(invoice_actions.c.invoice_id)).all()
        return [dict(r._mapping) for r in rows]

    def invoice_row(self, invoice_id: str) -> dict[str, Any] | None:
        from dispatch.storage.schema import invoices

        with self.dispatch.connect() as conn:
            row = conn.execute(sa.select(invoices).where(invoices.c.invoice_id == invoice_id)).first()
        return dict(row._mapping) if row else None

    def sending_status(self, invoice_id: str) -> str | None:
        row = self.invoice_row(invoice_id)
        return row["sending_status"] if row else None

    def events(self, invoice_id: str | None = None) -> list[dict[str, Any]]:
        """The event log (of one invoice), oldest first, ``at`` as aware UTC."""
        from dispatch.storage.schema import action_events

        stmt = sa.select(action_events).order_by(action_events.c.event_id)
        if invoice_id is not None:
            stmt = stmt.where(action_events.c.invoice_id == invoice_id)
        with self.dispatch.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    def event_names(self, invoice_id: str) -> list[str]:
        return [e["event"] for e in self.events(invoice_id)]

    def view_ids(self, view: str, column: str = "invoice_id") -> set[str]:
        return {r[column] for r in self.rows(f"SELECT {column} FROM {view}")}

    def _files(self) -> list[str]:
        if not self.outbox.exists():
            return []
        return sorted(
            str(p.relative_to(self.outbox))
            for p in self.outbox.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )

    def outbox_files(self) -> list[str]:
        """Every message handed over, as 'email/<action_id>.eml' (CONTRACT §6): the files of
        the channel directories, without temp files or the letters' print manifests."""
        return [f for f in self._files() if f.split("/", 1)[0] in ("email", "sms", "letter")]

    def outbox_state(self) -> dict[str, tuple[int, int]]:
        """Every file of the outbox (manifests included) with (size, mtime in ns): proof that
        nothing was written or rewritten."""
        return {
            name: ((self.outbox / name).stat().st_size, (self.outbox / name).stat().st_mtime_ns)
            for name in self._files()
        }

    def outbox_path(self, invoice_id: str) -> Path:
        """Where the outbox file of this invoice's action is (or would be)."""
        a = self.action(invoice_id)
        assert a is not None, f"{invoice_id} has no action"
        suffix = {"email": ".eml", "sms": ".json", "letter": ".pdf"}[a["channel"]]
        return self.outbox / a["channel"] / f"{a['action_id']}{suffix}"

    def email_of(self, invoice_id: str) -> EmailMessage:
        return parse_eml(self.outbox_path(invoice_id))

    def sms_of(self, invoice_id: str) -> dict[str, Any]:
        return json.loads(self.outbox_path(invoice_id).read_text(encoding="utf-8"))

    def dump(self) -> dict[str, list[tuple]]:
        """Every row of every table and view of the dispatch database, in a stable order."""
        insp = sa.inspect(self.dispatch)
        names = sorted(set(insp.get_table_names()) | set(insp.get_view_names()))
        out: dict[str, list[tuple]] = {}
        with self.dispatch.connect() as conn:
            for name in names:
                rows = conn.execute(sa.text(f'SELECT * FROM "{name}"')).all()
                out[name] = sorted(tuple(map(repr, r)) for r in rows)
        return out

    def counts(self, report: RunReport) -> dict[str, int]:
        return report.counts["totals"]


def only(items: Iterable[Any]) -> Any:
    """The single element of ``items`` (fails loudly otherwise)."""
    items = list(items)
    assert len(items) == 1, items
    return items[0]
