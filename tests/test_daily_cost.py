"""A day costs what is new: the stages that page through their rows decide exactly as if
they read everything at once, and the run's counts still cover every invoice (SPEC B2).

Pages of two or three rows force every page boundary a real run meets at 50,000.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from dispatch.stages import compute_due_sends as due
from dispatch.stages import resolve_templates as template_resolution
from dispatch.storage.schema import metadata

from tests.builders import World, open_world


@pytest.fixture
def w(backend: str, tmp_path: Path) -> Iterator[World]:
    with open_world(backend, tmp_path) as world:
        yield world


def _scenario(w: World) -> World:
    w.org()
    w.plan("p_mail").plan("p_later", delay=2).plan("p_manual", automatic=False, owner="u_bob")
    w.user("u_bob")
    w.customer("c_mail", plan="p_mail").customer("c_later", plan="p_later")
    w.customer("c_manual", plan="p_manual").customer("c_none")
    w.load_config()
    for i in range(4):
        w.invoice(f"i_mail_{i}", "c_mail", issued="2026-12-02")
        w.invoice(f"i_later_{i}", "c_later", issued="2026-12-02")
        w.invoice(f"i_manual_{i}", "c_manual", issued="2026-12-02")
    w.invoice("i_none", "c_none", issued="2026-12-02")
    return w


def _statuses(w: World) -> dict[str, tuple]:
    return {a["invoice_id"]: (a["status"], a["manual_reason"], a["scheduled_for"]) for a in w.actions()}


def test_pages_decide_as_one_read_would(backend: str, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "whole").mkdir()
    (tmp_path / "paged").mkdir()
    with open_world(backend, tmp_path / "whole") as whole:
        report_whole = _scenario(whole).run("2026-12-02T05:00Z")
        expected, expected_files = _statuses(whole), whole.outbox_files()
    monkeypatch.setattr(due, "CHUNK_ROWS", 2)
    monkeypatch.setattr(template_resolution, "CHUNK_ROWS", 3)
    with open_world(backend, tmp_path / "paged") as paged:
        report = _scenario(paged).run("2026-12-02T05:00Z")
        assert _statuses(paged) == expected
        assert paged.outbox_files() == expected_files
        assert paged.view_ids("todo_invoicing") == {f"i_manual_{i}" for i in range(4)}
    assert report.stages["resolve_templates"] == {"created": 12, "without_template": 1}
    assert {k: report.stages["compute_due"][k] for k in ("due", "not_due", "entered_todo")} == {
        "due": 4,
        "not_due": 4,
        "entered_todo": 4,
    }
    assert report.counts["totals"] == report_whole.counts["totals"]
    totals = report.counts["totals"]
    assert (totals["sent"], totals["scheduled"], totals["manual"], totals["without_template"]) == (4, 4, 4, 1)
    assert totals["imported"] == 13


def test_actions_scheduled_beyond_the_run_are_not_due_and_go_out_on_their_day(w: World) -> None:
    _scenario(w)
    first = w.run("2026-12-02T05:00Z")  # Wednesday: delay 2 lands on Friday the 4th
    assert first.stages["compute_due"]["not_due"] == 4
    thursday = w.run("2026-12-03T05:00Z")  # its horizon is Friday 05:00 UTC, before 08:30 Paris
    assert thursday.stages["compute_due"]["due"] == 0
    assert thursday.stages["compute_due"]["not_due"] == 4
    friday = w.run("2026-12-04T05:00Z")
    assert friday.stages["compute_due"]["due"] == 4
    assert {w.action(f"i_later_{i}")["status"] for i in range(4)} == {"sent"}
    assert w.action("i_later_0")["deliver_at"] == dt.datetime(2026, 12, 4, 7, 30, tzinfo=dt.UTC)


def test_totals_cover_every_invoice_after_people_settle_some(w: World) -> None:
    _scenario(w)
    w.run("2026-12-02T05:00Z")
    manual = w.action("i_manual_0")["action_id"]
    assert w.cli("todo", "ignore", manual).exit_code == 0
    assert w.cli("invoices", "mark-sent", "i_later_0").exit_code == 0
    totals = w.run("2026-12-03T05:00Z").counts["totals"]
    assert totals["ignored_or_marked_sent"] == 2
    assert (totals["sent"], totals["manual"], totals["scheduled"], totals["without_template"]) == (4, 3, 3, 1)
    assert totals["imported"] == sum(
        totals[k] for k in ("sent", "manual", "ignored_or_marked_sent", "cancelled", "scheduled",
                            "without_template", "not_required")
    ) == 13  # fmt: skip


def test_migrated_schema_matches_the_metadata_indexes_included(w: World) -> None:
    with w.dispatch.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), metadata)
        indexes = {
            (t, tuple(ix["column_names"]))
            for t in ("invoices", "action_events", "rejected_invoices", "invoice_actions")
            for ix in sa.inspect(conn).get_indexes(t)
        }
    assert diffs == []
    assert {
        ("action_events", ("run_id", "event")),
        ("invoices", ("first_seen_run_id",)),
        ("invoices", ("sending_status", "sent_how")),
        ("rejected_invoices", ("run_id",)),
        ("invoice_actions", ("status", "scheduled_for")),
    } <= indexes
