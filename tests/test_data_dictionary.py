"""Issue 11 item 10: docs/data-dictionary.md names every table, view, column, status,
manual reason, event and run-count key (it cannot drift), and the counts carry every key,
zeros included (SQLite and PostgreSQL)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from dispatch.sending.events import EVENTS
from dispatch.stages.write_back import OUTCOMES
from dispatch.storage import schema

from tests.builders import World, open_world

DOC = (Path(__file__).parents[1] / "docs/data-dictionary.md").read_text(encoding="utf-8")
CODE = set(re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", DOC, flags=re.S)))


def _named(word: str) -> bool:
    return word in CODE or any(word in re.split(r"[\s,()=→:]+", c) for c in CODE)


@pytest.fixture
def w(backend: str, tmp_path: Path) -> Iterator[World]:
    with open_world(backend, tmp_path) as world:
        yield world


def test_every_table_column_and_value_is_documented() -> None:
    missing = [t.name for t in schema.metadata.sorted_tables if not _named(t.name)]
    missing += [
        f"{t.name}.{c.name}" for t in schema.metadata.sorted_tables for c in t.columns if not _named(c.name)
    ]
    values = (
        schema.SENDING_STATUSES + schema.SENT_HOW + schema.ACTION_STATUSES + schema.MANUAL_REASONS
        + schema.CHANNELS + schema.ACCOUNTING_STATUSES + schema.PLAN_LEVELS + schema.RUN_STATUSES
        + EVENTS + OUTCOMES + schema.STUCK_REASONS + schema.DELIVERY_PROVIDERS + schema.DELIVERY_STATES
    )  # fmt: skip
    missing += [v for v in values if not _named(v)]
    assert missing == []
    for reason in schema.MANUAL_REASONS:
        assert f"| `{reason}` |" in DOC, reason
    for event in EVENTS:
        assert f"| `{event}` |" in DOC, event
    for state in schema.DELIVERY_STATES:
        assert f"| `{state}` |" in DOC, state


def test_every_view_and_its_columns_are_documented(w: World) -> None:
    insp = sa.inspect(w.dispatch)
    for view in insp.get_view_names():
        assert _named(view), view
        for column in insp.get_columns(view):
            assert _named(column["name"]), f"{view}.{column['name']}"


def test_run_counts_carry_every_key_with_zeros(w: World) -> None:
    w.org().plan("p1").customer("c1", plan="p1").load_config()
    w.invoice("i1", "c1")
    report = w.run("2026-12-02T05:00Z")
    quiet = w.run("2026-12-03T05:00Z")  # a day with nothing to do
    for counts in (report.counts, quiet.counts):
        run = counts["run"]
        assert {f"events.{e}" for e in EVENTS} | {f"manual.{r}" for r in schema.MANUAL_REASONS} <= set(run)
        assert {"imported", "rejected"} <= set(run)
        assert set(OUTCOMES) | {"imported", "rejected"} <= set(counts["totals"])
    assert report.counts["run"]["events.sent"] == 1 and quiet.counts["run"]["events.sent"] == 0
    assert quiet.counts["run"]["manual.template_error"] == 0
    stored = w.rows("SELECT counts FROM dispatch_runs WHERE run_id = :r", r=quiet.run_id)[0]["counts"]
    stored = stored if isinstance(stored, dict) else __import__("json").loads(stored)
    assert stored["run"]["events.bounced"] == 0
