"""A first run's bulk load (``storage.bulk_extract.bulk_load_of_invoices``): on PostgreSQL, a large
window into an (almost) empty ``invoices`` is COPYed into the table with its secondary
indexes dropped and built again before the commit. The rows, statuses, queue and rejections
are those of the row-by-row load; the indexes come back exactly as they were; an error
mid-way rolls everything back, indexes included; a table that holds history is never loaded
that way. SQLite always loads row by row."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dispatch.runtime.pipeline import Engines
from dispatch.runtime.runs import RunContext
from dispatch.stages import extract_invoices as extract
from dispatch.storage import bulk_extract
from dispatch.storage.session import Database

from tests.builders import World, instant, open_world

AS_OF = "2026-12-02T05:00Z"


@pytest.fixture
def w(backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    # a "large" window: 3 rows in the first chunk, into a table holding at most a tenth of that
    monkeypatch.setattr(bulk_extract, "BULK_MIN_ROWS", 3)
    with open_world(backend, tmp_path) as world:
        world.org().org("off", enabled_at=None, default_owner="u_off").plan("p_mail")
        world.customer("c1", plan="p_mail").customer("c_off", org="off").load_config()
        for n in range(8):
            world.invoice(f"i{n}", "c1", number=f"N-{n}")
        world.invoice("i_void", "c1", status="void").invoice("i_off", "c_off")
        world.invoice("i_dup", "c1", number="N-3")  # N-3 is i3's: rejected
        world.invoice("i_nocust", "c_unknown")  # rejected: unknown customer
        yield world


def _extract(w: World, run_id: str = "r1", **kwargs: Any) -> extract.ExtractSummary:
    settings = w.settings()
    engines = Engines.from_settings(settings)
    try:
        ctx = RunContext.new(instant(AS_OF), run_id=run_id)
        return extract.extract_invoices(
            Database(engines.dispatch), engines.accounting, ctx, settings.extract_lookback, **kwargs
        )
    finally:
        engines.dispatch.dispose()
        engines.accounting.dispose()


def _indexes(w: World) -> list[tuple[str, str]]:
    if w.dispatch.dialect.name != "postgresql":
        return []
    return [
        (r["indexname"], r["indexdef"])
        for r in w.rows("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'invoices' ORDER BY 1")
    ]


def _state(w: World) -> dict[str, Any]:
    return {
        "invoices": w.rows(
            "SELECT invoice_id, org_id, customer_id, number, issue_date, due_date, currency, total_amount,"
            " accounting_status, sending_status, first_seen_run_id FROM invoices ORDER BY invoice_id"
        ),
        "queue": [r["invoice_id"] for r in w.rows("SELECT invoice_id FROM template_queue ORDER BY 1")],
        "rejected": w.rows("SELECT invoice_id, reason FROM rejected_invoices ORDER BY invoice_id"),
    }


EXPECTED_REJECTED = [
    {"invoice_id": "i_dup", "reason": "duplicate_number"},
    {"invoice_id": "i_nocust", "reason": "unknown_customer"},
]


def test_a_first_run_loads_in_bulk_on_postgres_with_the_same_result(w: World) -> None:
    before = _indexes(w)
    summary = _extract(w, chunk_rows=4)
    assert summary.bulk_load is (w.dispatch.dialect.name == "postgresql")
    assert (summary.imported, summary.rejected) == (10, 2)
    assert _indexes(w) == before  # built again, exactly as they were
    state = _state(w)
    assert state["rejected"] == EXPECTED_REJECTED
    statuses = {r["invoice_id"]: r["sending_status"] for r in state["invoices"]}
    expected = {f"i{n}": "to_send" for n in range(8)} | {"i_void": "cancelled", "i_off": "not_required"}
    assert statuses == expected
    assert state["queue"] == [f"i{n}" for n in range(8)]
    assert {r["first_seen_run_id"] for r in state["invoices"]} == {"r1"}

    # the next run re-reads the window over the history it left: row by row, nothing changes
    again = _extract(w, run_id="r2", chunk_rows=4)
    assert not again.bulk_load
    assert (again.imported, again.updated) == (0, 10)
    assert _state(w) == state


def test_the_bulk_load_matches_the_row_by_row_load(w: World, monkeypatch: pytest.MonkeyPatch) -> None:
    bulk = _extract(w, chunk_rows=4)
    loaded = _state(w)
    with w.dispatch.begin() as conn:
        for t in ("template_queue", "rejected_invoices", "invoices", "watermarks"):
            conn.execute(sa.text(f"DELETE FROM {t}"))
    monkeypatch.setattr(bulk_extract, "BULK_MIN_ROWS", 10**9)
    row_by_row = _extract(w, chunk_rows=4)
    assert not row_by_row.bulk_load
    assert (row_by_row.imported, row_by_row.rejected) == (bulk.imported, bulk.rejected)
    assert _state(w) == loaded


def test_an_error_mid_load_rolls_back_rows_and_indexes(w: World, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _indexes(w)
    real = extract._import_chunk
    calls = {"n": 0}

    def failing(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("the worker died mid-load")
        real(*args, **kwargs)

    monkeypatch.setattr(extract, "_import_chunk", failing)
    with pytest.raises(RuntimeError, match="mid-load"):
        _extract(w, chunk_rows=4)
    assert w.rows("SELECT count(*) AS n FROM invoices")[0]["n"] == 0
    assert w.rows("SELECT count(*) AS n FROM template_queue")[0]["n"] == 0
    assert _indexes(w) == before
    monkeypatch.setattr(extract, "_import_chunk", real)
    assert _extract(w, chunk_rows=4).imported == 10  # and the next try loads it all


def test_a_table_with_history_is_not_loaded_in_bulk(w: World) -> None:
    _extract(w, run_id="r1", chunk_rows=100)  # 10 invoices of history
    for n in range(8, 14):
        w.invoice(f"i{n}", "c1", number=f"N-{n}")
    # a first chunk of 14 rows: the table holds 10, more than a tenth of them
    summary = _extract(w, run_id="r2", chunk_rows=100)
    assert not summary.bulk_load
    assert summary.imported == 6


def test_a_queue_that_holds_rows_is_filled_with_on_conflict(w: World) -> None:
    with w.dispatch.begin() as conn:  # a queue entry left over for an invoice not imported yet
        stale = "INSERT INTO template_queue (invoice_id, queued_at) VALUES ('i1', CURRENT_TIMESTAMP)"
        conn.execute(sa.text(stale))
    summary = _extract(w, chunk_rows=4)
    assert summary.bulk_load is (w.dispatch.dialect.name == "postgresql")
    assert summary.imported == 10
    assert _state(w)["queue"] == [f"i{n}" for n in range(8)]
