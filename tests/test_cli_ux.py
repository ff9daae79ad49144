"""Issue 11 items 2, 5, 6 and the CLI side of 9: one line and the right exit code for what a
user can get wrong, checked filters, listings that fit 120 columns with --json / --csv
giving everything, readable run progress, `dispatch runs`, `dispatch config dump`, `--by`
(SQLite and PostgreSQL where a database is involved)."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from dispatch.cli import main

from tests.builders import World, open_world

T1 = "2026-12-02T05:00Z"


@pytest.fixture
def w(backend: str, tmp_path: Path) -> Iterator[World]:
    with open_world(backend, tmp_path) as world:
        yield world


def _one_line(result, code: int) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def _cli(*args: str, **env: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def _scenario(w: World) -> None:
    w.org().user("u_bob").plan("p_mail").plan("p_manual", automatic=False, owner="u_bob")
    w.customer("c1", plan="p_mail", name="A customer with a rather long name " * 3)
    w.customer("c2", plan="p_manual").customer("c3", email=None, plan="p_mail").load_config()
    w.invoice("i1", "c1").invoice("i2", "c2").invoice("i3", "c3")


# --- item 2: one line, never a traceback ------------------------------------------------------


@pytest.mark.parametrize("command", [["todo"], ["invoices"], ["runs"], ["config", "dump"]])
def test_listing_an_uninitialised_sqlite_database_says_so_and_creates_no_file(
    tmp_path: Path, command: list[str]
) -> None:
    db = tmp_path / "nowhere" / "dispatch.db"
    line = _one_line(_cli(*command, DISPATCH_DB_URL=f"sqlite:///{db}"), 2)
    assert str(db) in line and "dispatch db init" in line
    assert not db.exists() and not db.parent.exists()


def test_listing_an_empty_postgresql_database_says_to_run_db_init(pg_databases) -> None:  # type: ignore[no-untyped-def]
    url = pg_databases.new("t_empty")
    for command in (["todo"], ["invoices"], ["runs"]):
        assert "dispatch db init" in _one_line(_cli(*command, DISPATCH_DB_URL=url), 2)


def test_a_mistyped_sqlite_accounting_url_is_an_error_and_creates_nothing(w: World) -> None:
    typo = w.root / "acounting.db"
    line = _one_line(w.cli("run", "--at", T1, ACCOUNTING_DB_URL=f"sqlite:///{typo}"), 2)
    assert str(typo) in line and "never created" in line
    assert not typo.exists()
    assert w.rows("SELECT count(*) AS n FROM invoices") == [{"n": 0}]


def test_an_unreachable_postgresql_is_one_line(tmp_path: Path) -> None:
    url = "postgresql+psycopg://postgres@127.0.0.1:1/nothing"
    for command in (["todo"], ["db", "init"]):
        line = _one_line(_cli(*command, DISPATCH_DB_URL=url), 2)
        assert "cannot connect" in line and "127.0.0.1" in line


@pytest.mark.parametrize("drop", ["table", "column"])
def test_a_missing_source_table_or_column_is_named_with_where_the_schema_is_documented(
    w: World, drop: str, request: pytest.FixtureRequest
) -> None:
    w.org().plan("p1").customer("c1", plan="p1").load_config()
    # a separate accounting database lacking the table or the column (the world's is reused)
    if w.backend == "sqlite":
        url = f"sqlite:///{w.root / 'other_accounting.db'}"
    else:
        url = request.getfixturevalue("pg_databases").new("t_acc")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE customers (customer_id TEXT, org_id TEXT, name TEXT)"))
        if drop == "column":
            conn.execute(
                sa.text("CREATE TABLE invoices (invoice_id TEXT, org_id TEXT, updated_at TIMESTAMP)")
            )
    engine.dispose()
    line = _one_line(w.cli("run", "--at", T1, ACCOUNTING_DB_URL=url), 2)
    assert ("table invoices" if drop == "table" else "no column") in line
    assert re.search(r"\(query sql/[a-z_]+\.sql\)", line) and "docs/data-dictionary.md" in line


def test_an_unexpected_failure_is_one_line_exit_1_and_debug_shows_the_traceback(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_args, **_kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr("dispatch.people.operations.todo_list", boom)
    line = _one_line(w.cli("todo"), 1)
    assert (
        line == "dispatch: unexpected error: RuntimeError: disk on fire (run with --debug for the traceback)"
    )
    with pytest.raises(RuntimeError, match="disk on fire"):
        CliRunner().invoke(main, ["--debug", "todo"], env=w.env(), catch_exceptions=False)


def test_a_bad_environment_value_is_one_line(w: World) -> None:
    assert "DISPATCH_BATCH_SIZE" in _one_line(w.cli("todo", DISPATCH_BATCH_SIZE="many"), 2)


# --- item 5: filters are checked -------------------------------------------------------------


def test_unknown_filter_values_are_refused_with_the_allowed_ones(w: World) -> None:
    _scenario(w)
    w.run(T1)
    line = _one_line(w.cli("invoices", "--status", "bogus"), 2)
    assert "'bogus'" in line and "overdue" in line and "to_send" in line
    line = _one_line(w.cli("todo", "--owner", "nobody"), 2)
    assert "'nobody'" in line and "u_alice" in line and "u_bob" in line
    ok = w.cli("todo", "--owner", "u_bob", "--json")
    assert ok.exit_code == 0 and {r["invoice_id"] for r in json.loads(ok.stdout)} == {"i2"}
    assert w.cli("invoices", "--status", "overdue").exit_code == 0


# --- item 6: output a person can read ---------------------------------------------------------


def test_listings_fit_120_columns_and_json_csv_give_every_column(w: World) -> None:
    _scenario(w)
    w.run(T1)
    for command in (["todo"], ["invoices"], ["runs"], ["preview", "--at", "2026-12-03T05:00Z"]):
        table = w.cli(*command)
        assert table.exit_code == 0, table.output
        assert max(len(line) for line in table.stdout.splitlines()) <= 120, command
    as_json = json.loads(w.cli("todo", "--json").stdout)
    rows = list(csv.DictReader(io.StringIO(w.cli("todo", "--csv").stdout)))
    assert len(rows) == len(as_json) == 2
    assert set(rows[0]) == set(as_json[0]) >= {"detail", "recipient", "customer_name", "manual_since"}
    by_id = {r["invoice_id"]: r for r in as_json}
    assert {r["invoice_id"]: r["customer_name"] for r in rows} == {
        k: v["customer_name"] for k, v in by_id.items()
    }
    assert rows[0]["created_at"].endswith("Z")
    assert w.cli("todo", "--json", "--csv").exit_code == 2


def test_run_prints_one_readable_line_per_stage_and_v_adds_detail(w: World) -> None:
    _scenario(w)
    result = w.cli("run", "--at", T1)
    assert result.exit_code == 0, result.output
    stages = result.stderr.strip().splitlines()
    names = ("extract", "tag", "resolve templates", "compute due", "dispatch", "write back", "pull bounces")
    assert len(stages) >= len(names) and all(s.startswith(n) for s, n in zip(stages, names, strict=False))
    assert "{" not in result.stderr  # no Python dicts
    assert "3 new" in stages[0] and "1 sent" in next(s for s in stages if s.startswith("dispatch"))
    verbose = w.cli("-v", "run", "--at", "2026-12-03T05:00Z")
    assert verbose.exit_code == 0 and '"read"' in verbose.stderr


def test_runs_lists_each_run_with_status_counts_and_duration(w: World) -> None:
    _scenario(w)
    w.run(T1)
    w.run("2026-12-03T05:00Z")
    runs = json.loads(w.cli("runs", "--json").stdout)
    assert [r["as_of"] for r in runs] == ["2026-12-03T05:00:00Z", "2026-12-02T05:00:00Z"]
    assert runs[1]["status"] == "succeeded" and runs[1]["sent"] == 1 and runs[1]["imported"] == 3
    assert runs[1]["to_do"] == 2 and runs[1]["duration_s"] >= 0
    assert runs[1]["counts"]["totals"]["imported"] == 3
    assert len(json.loads(w.cli("runs", "--limit", "1", "--json").stdout)) == 1


def test_config_dump_loads_back_unchanged(w: World) -> None:
    _scenario(w)
    out = w.root / "dump.yaml"
    assert w.cli("config", "dump", "-o", str(out)).exit_code == 0
    text = out.read_text(encoding="utf-8")
    assert "p_manual" in text and "u_bob" in text and "c3" in text
    before = w.dump()
    loaded = w.cli("config", "load", str(out))
    assert loaded.exit_code == 0, loaded.output
    assert "0 new, 0 updated" in loaded.stdout and "templates 0 new" in loaded.stdout
    assert w.dump() == before


# --- item 9: --by -----------------------------------------------------------------------------


def test_by_is_recorded_as_the_actor(w: World) -> None:
    _scenario(w)
    w.run(T1)
    action = w.action("i2")["action_id"]
    assert w.cli("todo", "ignore", action, "--by", "claire", "--at", "2026-12-02T10:00Z").exit_code == 0
    assert w.cli("invoices", "mark-sent", "i3", DISPATCH_ACTOR="julien").exit_code == 0
    assert w.events("i2")[-1]["actor"] == "claire"
    assert w.events("i3")[-1]["actor"] == "julien"
    bad = w.cli("invoices", "mark-sent", "i1", "--by", "")
    assert "actor" in _one_line(bad, 2)
