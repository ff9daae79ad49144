"""The extract's window and chunks, end to end on SQLite and PostgreSQL: a day reads what
changed since the last read — not the history a bulk import stamped with one ``updated_at``
— without losing a row committed late, nor the rows stamped after a run "as of" the future;
and a window read in many chunks imports exactly what one chunk would."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from dispatch.stages import extract_invoices as extract

from tests.builders import World, instant, open_world


@pytest.fixture
def w(backend: str, tmp_path: Path) -> Iterator[World]:
    with open_world(backend, tmp_path) as world:
        world.org().plan("p_mail").customer("c1", plan="p_mail").customer("c2", plan="p_mail").load_config()
        yield world


def clock(monkeypatch: pytest.MonkeyPatch, at: str) -> None:
    """The wall clock the extract compares the as-of instant with."""
    monkeypatch.setattr(extract, "wall_clock", lambda: instant(at))


def sent(w: World) -> set[str]:
    return {a["invoice_id"] for a in w.actions() if a["status"] == "sent"}


def test_after_a_bulk_import_the_next_day_reads_only_what_changed_and_late_rows(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock(monkeypatch, "2100-01-01T00:00Z")  # runs as of the past: the window follows the as-of
    history = [f"i_hist_{n:02d}" for n in range(30)]
    for iid in history:  # a bulk import: the whole history carries one updated_at
        w.invoice(iid, "c1" if int(iid[-2:]) % 2 else "c2", issued="2026-11-20", updated="2026-12-01T23:00Z")
    first = w.run("2026-12-02T05:00Z")
    assert first.stages["extract"]["read"] == 30
    assert sent(w) == set(history)

    w.invoice("i_new_a", "c1", updated="2026-12-02T18:00Z").invoice(
        "i_new_b", "c2", updated="2026-12-02T19:00Z"
    )
    # stamped within the look-back before the first run read, committed after it
    w.invoice("i_late", "c1", updated="2026-12-02T04:30Z")
    w.update_invoice("i_hist_07", updated="2026-12-02T09:00Z", status="void")  # a change to history
    second = w.run("2026-12-03T05:00Z")

    assert second.stages["extract"]["read"] == 4  # not the 30 rows of the bulk import again
    assert second.stages["extract"]["imported"] == 3 and second.stages["extract"]["updated"] == 1
    assert sent(w) == set(history) | {"i_new_a", "i_new_b", "i_late"}
    assert w.invoice_row("i_hist_07")["accounting_status"] == "void"
    totals = second.counts["totals"]
    assert totals["imported"] == 33 == totals["sent"]

    third = w.run("2026-12-03T05:20Z")  # the same morning again: only the look-back, idempotent
    assert third.stages["extract"]["read"] == 0
    assert third.counts["totals"] == totals


def test_a_run_as_of_the_future_does_not_hide_rows_committed_before_that_instant(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock(monkeypatch, "2026-12-02T05:00Z")
    w.invoice("i_first", "c1", updated="2026-12-02T01:00Z")
    w.run("2026-12-10T05:00Z")  # someone tried a date ahead of the clock
    assert sent(w) == {"i_first"}

    w.invoice("i_meanwhile", "c2", issued="2026-12-02", updated="2026-12-02T20:00Z")  # stamped before 12-10
    clock(monkeypatch, "2026-12-03T05:00Z")
    report = w.run("2026-12-03T05:00Z")
    assert report.stages["extract"]["imported"] == 1
    assert sent(w) == {"i_first", "i_meanwhile"}


def test_a_window_read_in_many_chunks_imports_what_one_chunk_would(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunk boundaries never split an invoice's rows nor hide a duplicate number: the same
    rows, read three at a time, give the same invoices and rejections as one read."""
    monkeypatch.setattr(extract, "CHUNK_ROWS", 3)
    for n in range(11):
        w.invoice(f"i_{n:02d}", "c1" if n % 2 else "c2", number=f"N-{n:02d}", updated="2026-12-02T04:00Z")
    w.invoice("i_99", "c1", number="N-01", updated="2026-12-02T04:00Z")  # another chunk's number
    w.invoice("i_00b", "c2", number="N-00", updated="2026-12-02T04:00Z")  # the next id, same number
    report = w.run("2026-12-02T05:00Z")

    assert report.stages["extract"]["chunks"] >= 4
    assert report.stages["extract"]["read"] == 13
    rejected = {
        r["invoice_id"]: r["reason"] for r in w.rows("SELECT invoice_id, reason FROM rejected_invoices")
    }
    assert rejected == {"i_99": "duplicate_number", "i_00b": "duplicate_number"}
    assert sent(w) == {f"i_{n:02d}" for n in range(11)}
    assert report.counts["totals"]["imported"] == 11 and report.counts["totals"]["rejected"] == 2
    assert {r["customer_id"] for r in w.rows("SELECT customer_id FROM customers")} == {"c1", "c2"}
    assert dt.datetime.fromisoformat(report.stages["extract"]["watermark"]) == instant("2026-12-02T04:00Z")
