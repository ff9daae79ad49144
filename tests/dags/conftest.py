"""Airflow for the DAG tests, and the demo data the end-to-end runs use.

Airflow reads its configuration when it is first imported, so this module points it, before
anything imports it, at a throw-away ``AIRFLOW_HOME`` (SQLite metadata), at this
repository's ``dags/`` and at no example DAGs. The DAG's retry delays are shrunk to a second
so that a task that fails and is retried inside ``dag.test()`` does not wait minutes.
"""

from __future__ import annotations

import atexit
import csv
import datetime as dt
import io
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from email import message_from_bytes, policy
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from dispatch.channels.base import Channel, ChannelError, OutgoingMessage, SendResult

REPO = Path(__file__).resolve().parents[2]
DAGS_DIR = REPO / "dags"
POOLS_FILE = REPO / "include" / "airflow" / "pools.json"

if "airflow" in sys.modules:
    raise pytest.UsageError(
        "airflow was imported before tests/dags/conftest.py could point it at a throw-away "
        "AIRFLOW_HOME: import it inside the test that needs it, not at module level"
    )
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="invoice-dispatch-airflow-")
atexit.register(shutil.rmtree, _AIRFLOW_HOME, True)
os.environ.update(
    {
        "AIRFLOW_HOME": _AIRFLOW_HOME,
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "DISPATCH_RETRY_DELAY_SECONDS": "0",
        "DISPATCH_MAX_RETRY_DELAY_SECONDS": "1",
    }
)

#: The demo is built for this day (a Friday) so that every run of the tests sees the same story.
DEMO_TODAY = dt.date(2026, 11, 27)
DEMO_CONFIG_LOADED_AT = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """Airflow's metadata schema in the throw-away SQLite file (as ``airflow db migrate``),
    and the pools of include/airflow/pools.json (as include/airflow/setup.sh)."""
    from airflow.models.pool import Pool
    from airflow.utils.db import initdb

    initdb()
    for name, spec in json.loads(POOLS_FILE.read_text()).items():
        Pool.create_or_update_pool(
            name, spec["slots"], spec["description"], spec.get("include_deferred", False)
        )


def load_dag(dag_id: str = "invoice_dispatch"):  # type: ignore[no-untyped-def]
    """The DAG as Airflow parses it from dags/ (a fresh parse: it reads the environment)."""
    from airflow.models import DagBag

    bag = DagBag(dag_folder=str(DAGS_DIR))
    assert bag.import_errors == {}, bag.import_errors
    return bag.dags[dag_id]


# --- demo data in temporary databases -----------------------------------------------------------


@dataclass
class DemoCopy:
    """One dispatch database + outbox loaded with the demo, and the accounting source it reads."""

    dispatch_url: str
    accounting_url: str
    outbox: Path
    changes: tuple
    pdf_root: Path

    def environ(self) -> dict[str, str]:
        return {
            "DISPATCH_DB_URL": self.dispatch_url,
            "ACCOUNTING_DB_URL": self.accounting_url,
            "DISPATCH_OUTBOX_DIR": str(self.outbox),
            "DISPATCH_PDF_ROOT": str(self.pdf_root),
        }

    def settings(self):  # type: ignore[no-untyped-def]
        from dispatch.config.settings import load_settings

        return load_settings(environ=self.environ())

    def advance_accounting(self, as_of: dt.datetime) -> None:
        """What the accounting system did by ``as_of`` (the demo's late void), as the demo does."""
        from dispatch.devtools.demo_data import apply_accounting_changes

        apply_accounting_changes(self.accounting_url, self.changes, upto=as_of)


def build_demo_copy(root: Path, dispatch_url: str, accounting_url: str) -> DemoCopy:
    from dispatch.config.load import load_config_file
    from dispatch.devtools.demo_data import build_demo
    from dispatch.storage.engine import make_engine
    from dispatch.storage.migrate import upgrade

    summary = build_demo(accounting_url, root / "pdfs", DEMO_TODAY, config_out=root / "config.yaml")
    engine = make_engine(dispatch_url)
    accounting = make_engine(accounting_url)
    try:
        upgrade(engine)
        load_config_file(summary.config_path, engine, accounting_engine=accounting, now=DEMO_CONFIG_LOADED_AT)
    finally:
        engine.dispose()
        accounting.dispose()
    return DemoCopy(dispatch_url, accounting_url, root / "outbox", summary.changes, summary.pdf_dir)


def demo_days() -> list[dt.datetime]:
    """The demo's weekday runs at 05:00 UTC around DEMO_TODAY."""
    from dispatch.devtools.demo_runner import demo_days as days

    return days(DEMO_TODAY)


@pytest.fixture
def demo_pair(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[DemoCopy, DemoCopy]:
    """Two identical demo set-ups: one for the DAG, one for the CLI's ``run_pipeline``."""
    copies = []
    for name in ("dag", "cli"):
        root = tmp_path / name
        root.mkdir()
        if backend == "sqlite":
            urls = (f"sqlite:///{root / 'dispatch.db'}", f"sqlite:///{root / 'accounting.db'}")
        else:
            dbs = request.getfixturevalue("pg_databases")
            urls = (dbs.new(f"t_{name}_dispatch"), dbs.new(f"t_{name}_accounting"))
        copies.append(build_demo_copy(root, *urls))
    return copies[0], copies[1]


@pytest.fixture
def demo_copy(tmp_path: Path) -> DemoCopy:
    """One demo set-up on SQLite."""
    return build_demo_copy(
        tmp_path, f"sqlite:///{tmp_path / 'dispatch.db'}", f"sqlite:///{tmp_path / 'a.db'}"
    )


@pytest.fixture
def dag_env(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Point the DAG's tasks (which read the environment, CONTRACT §1) at a demo copy."""

    def use(copy: DemoCopy, **extra: str) -> None:
        for key, value in {**copy.environ(), **extra}.items():
            monkeypatch.setenv(key, value)

    return use


# --- what a run left behind, for comparisons ----------------------------------------------------

_BOUNDARY = re.compile(rb"={15}\d+==")


def _rows_sorted(data: bytes) -> bytes:
    """A CSV with its data rows in a canonical order (a print manifest lists letters in the
    order they were handed over, which depends on batching and retries, not on the outcome)."""
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    out = io.StringIO()
    csv.writer(out).writerows([rows[0], *sorted(rows[1:])])
    return out.getvalue().encode("utf-8")


def outbox_files(outbox: Path) -> dict[str, bytes]:
    """Every outbox file by relative path; e-mails with their random MIME boundaries masked
    (the only bytes that differ between two renderings of the same message), print
    manifests with their rows in a canonical order."""
    files = {}
    for path in sorted(outbox.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            data = path.read_bytes()
            if path.suffix == ".eml":
                data = _BOUNDARY.sub(b"BOUNDARY", data)
                assert message_from_bytes(data, policy=policy.default)["To"]
            elif path.suffix == ".csv":
                data = _rows_sorted(data)
            files[str(path.relative_to(outbox))] = data
    return files


def table(url: str, sql: str) -> pd.DataFrame:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return pd.read_sql(sa.text(sql), conn)
    finally:
        engine.dispose()


def outcome_snapshot(copy: DemoCopy) -> dict[str, pd.DataFrame]:
    """What users and analysts see: invoice statuses, actions, the to-do list."""
    return {
        "invoices": table(
            copy.dispatch_url,
            "SELECT invoice_id, sending_status, sent_at, sent_how, first_seen_at FROM invoices "
            "ORDER BY invoice_id",
        ),
        "actions": table(
            copy.dispatch_url,
            "SELECT action_id, invoice_id, channel, status, manual_reason, recipient, deliver_at, "
            "provider, provider_message_id, attempts FROM invoice_actions ORDER BY action_id",
        ),
        "todo": table(copy.dispatch_url, "SELECT * FROM todo_invoicing ORDER BY action_id"),
        "rejected": table(
            copy.dispatch_url, "SELECT invoice_id, reason FROM rejected_invoices ORDER BY 1, 2"
        ),
    }


def sends_per_action(copy: DemoCopy) -> pd.Series:
    """How many times each action was recorded as handed over (sent, or settled as sent)."""
    df = table(
        copy.dispatch_url,
        "SELECT action_id, count(*) AS n FROM action_events "
        "WHERE event IN ('sent', 'settled_sent', 'sent_manually') GROUP BY action_id",
    )
    return df.set_index("action_id")["n"]


# --- a worker that dies in the middle of handing messages over -------------------------------


class DiesMidway:
    """Wraps a real backend: hands ``after`` messages over, then the worker "dies" (an
    exception that is none of the channel's typed errors) — on every try of the task, or on
    the first one only (``state['left']`` counts the deaths still to come)."""

    def __init__(self, inner: Channel, state: dict) -> None:
        self.inner = inner
        self.state = state
        self.provider = inner.provider
        self.channel = inner.channel

    def max_schedule_ahead(self) -> dt.timedelta | None:
        return self.inner.max_schedule_ahead()

    def was_handed_over(self, action_id: str) -> SendResult | bool | None:
        return self.inner.was_handed_over(action_id)

    def send_many(self, messages: Sequence[OutgoingMessage]) -> list[SendResult | ChannelError]:
        if self.state["left"] > 0 and len(messages) > self.state["after"]:
            self.state["left"] -= 1
            self.inner.send_many(messages[: self.state["after"]])
            self.state["handed_over"] += self.state["after"]
            raise RuntimeError("worker lost in the middle of a batch")
        return self.inner.send_many(messages)


@contextmanager
def dying_channels(monkeypatch: pytest.MonkeyPatch, state: dict):  # type: ignore[no-untyped-def]
    import dispatch.channels.factory as factory

    real = factory.build_channels
    with monkeypatch.context() as patch:
        patch.setattr(
            factory,
            "build_channels",
            lambda settings: {name: DiesMidway(ch, state) for name, ch in real(settings).items()},
        )
        yield
