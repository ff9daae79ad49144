"""Resolve templates' bulk load (``storage.bulk_load``): a first run builds the actions' and
events' indexes and foreign key after its load, in its own transaction.

The threshold is lowered to one row so that these small worlds take the bulk path; pages of
three rows force every page boundary. PostgreSQL only does anything; on SQLite the same
calls are a no-op and the run is the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from dispatch.stages import resolve_templates as resolve
from dispatch.storage import bulk_load
from dispatch.storage.schema import metadata

from tests.builders import World, open_world


@pytest.fixture
def w(backend: str, tmp_path: Path) -> Iterator[World]:
    with open_world(backend, tmp_path) as world:
        yield world


def _scenario(w: World, n: int = 5) -> World:
    w.org()
    w.plan("p_mail").plan("p_manual", automatic=False, owner="u_bob")
    w.user("u_bob")
    w.customer("c_mail", plan="p_mail").customer("c_manual", plan="p_manual").customer("c_none")
    w.load_config()
    for i in range(n):
        w.invoice(f"i_mail_{i}", "c_mail", issued="2026-12-02")
        w.invoice(f"i_manual_{i}", "c_manual", issued="2026-12-02")
    w.invoice("i_none", "c_none", issued="2026-12-02")
    return w


def _outcome(w: World) -> tuple[dict, list]:
    actions = {
        a["invoice_id"]: (a["action_id"], a["status"], a["channel"], a["scheduled_for"], a["owner_user_id"])
        for a in w.actions()
    }
    with w.dispatch.connect() as conn:
        events = conn.execute(
            sa.text(
                "SELECT action_id, invoice_id, event, detail FROM action_events ORDER BY action_id, event"
            )
        ).all()
    # the created events in full; the later ones' details name the run (its random part)
    return actions, [tuple(e) if e.event == "created" else tuple(e)[:3] for e in events]


def _schema(w: World) -> tuple[list, set]:
    with w.dispatch.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), metadata)
        inspector = sa.inspect(conn)
        shape = (
            {
                (t, "fk", tuple(fk["constrained_columns"]), fk["referred_table"])
                for t in ("invoice_actions", "action_events")
                for fk in inspector.get_foreign_keys(t)
            }
            | {
                (t, "ix", tuple(ix["column_names"]), bool(ix["unique"]))
                for t in ("invoice_actions", "action_events")
                for ix in inspector.get_indexes(t)
            }
            | {
                (t, "pk", tuple(inspector.get_pk_constraint(t)["constrained_columns"]), True)
                for t in ("invoice_actions", "action_events")
            }
        )
    return diffs, shape


def test_a_bulk_first_run_creates_what_the_row_by_row_one_does(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "rows").mkdir()
    (tmp_path / "bulk").mkdir()
    monkeypatch.setattr(resolve, "CHUNK_ROWS", 3)
    with open_world(backend, tmp_path / "rows") as rows:
        _scenario(rows).run("2026-12-02T05:00Z")
        expected, expected_schema = _outcome(rows), _schema(rows)
    monkeypatch.setattr(bulk_load, "BULK_MIN_ROWS", 1)
    deferred: list[list[str]] = []
    real = bulk_load.deferred_indexes

    def spy(conn, tables, **kw):  # type: ignore[no-untyped-def]
        deferred.append(list(tables))
        return real(conn, tables, **kw)

    monkeypatch.setattr(bulk_load, "deferred_indexes", spy)
    with open_world(backend, tmp_path / "bulk") as bulk:
        report = _scenario(bulk).run("2026-12-02T05:00Z")
        assert report.stages["resolve_templates"] == {"created": 10, "without_template": 1}
        assert _outcome(bulk) == expected
        # every index, key and the foreign key are back, as the migrations made them
        assert _schema(bulk) == expected_schema
        assert _schema(bulk)[0] == []
    assert deferred[0] == (["invoice_actions", "action_events"] if backend == "postgres" else [])


def test_a_day_over_a_bigger_history_does_not_take_the_bulk_path(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    _scenario(w).run("2026-12-02T05:00Z")
    monkeypatch.setattr(bulk_load, "BULK_MIN_ROWS", 1)
    w.invoice("i_new", "c_mail", issued="2026-12-03")
    seen: list[list[str]] = []
    real = bulk_load.deferred_indexes

    def spy(conn, tables, **kw):  # type: ignore[no-untyped-def]
        seen.append(list(tables))
        return real(conn, tables, **kw)

    monkeypatch.setattr(bulk_load, "deferred_indexes", spy)
    w.run("2026-12-03T05:00Z")
    assert seen == [[]]  # 1 queued invoice against 10 actions and 10 events
    assert w.action("i_new") is not None


@pytest.mark.postgres
def test_a_failure_mid_load_leaves_the_indexes_and_no_action(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import require_postgres

    require_postgres()
    with open_world("postgres", tmp_path) as w:
        _scenario(w)
        before = _schema(w)
        monkeypatch.setattr(bulk_load, "BULK_MIN_ROWS", 1)
        monkeypatch.setattr(resolve, "CHUNK_ROWS", 3)
        real = resolve._settle_queue
        calls: list[int] = []

        def fail_on_second_page(*args, **kw):  # type: ignore[no-untyped-def]
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("crash mid-load")
            return real(*args, **kw)

        monkeypatch.setattr(resolve, "_settle_queue", fail_on_second_page)
        with pytest.raises(RuntimeError, match="crash mid-load"):
            w.run("2026-12-02T05:00Z")
        assert w.actions() == []
        assert _schema(w) == before
        monkeypatch.setattr(resolve, "_settle_queue", real)
        assert w.run("2026-12-02T06:00Z").stages["resolve_templates"]["created"] == 10
        assert _schema(w) == before


def test_worth_deferring_compares_the_load_with_the_table(w: World) -> None:
    _scenario(w).run("2026-12-02T05:00Z")
    with w.dispatch.begin() as conn:
        if conn.dialect.name != "postgresql":
            assert not bulk_load.worth_deferring(conn, "invoice_actions", 1_000_000, min_rows=1)
            return
        assert bulk_load.count_up_to(conn, "invoice_actions", 3) == 3
        assert bulk_load.worth_deferring(conn, "invoice_actions", 11, min_rows=1)
        assert not bulk_load.worth_deferring(conn, "invoice_actions", 10, min_rows=1)
        assert not bulk_load.worth_deferring(conn, "invoice_actions", 11, min_rows=12)


def test_the_message_id_index_leaves_the_created_actions_out_after_a_bulk_load(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk_load, "BULK_MIN_ROWS", 1)
    _scenario(w).run("2026-12-02T05:00Z")  # rebuilt from its own definition (0009)
    query = {
        "postgresql": "SELECT indexdef FROM pg_indexes WHERE indexname = :n",
        "sqlite": "SELECT sql FROM sqlite_master WHERE name = :n",
    }
    with w.dispatch.connect() as conn:
        definition = conn.execute(
            sa.text(query[conn.dialect.name]), {"n": "ix_invoice_actions_provider_message_id"}
        ).scalar_one()
    assert "WHERE provider_message_id IS NOT NULL" in definition.replace("(", "").replace(")", "")
