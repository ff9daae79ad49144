"""Database faults during ``dispatch run``: the dispatch connection killed by the server
(``pg_terminate_backend``), the accounting source unreachable (from the start, and in the
middle of a run), PostgreSQL restarted during a batch. Each time the run fails loudly (exit
1, the error in its output) and cleanly (nothing half-written that the next run cannot
settle); the next run completes; nothing is sent twice or lost.

The restart is written but runs only with ``CHAOS_PG_RESTART=1`` (it restarts the local
cluster with ``pg_ctlcluster``, which every other user of that server would feel).
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.builders import World, open_world
from tests.chaos.harness import (
    ChaosSendGrid,
    add_invoices,
    first_run,
    kill9,
    misses,
    next_weekday_run,
    outcome_figures,
    record,
    run_env,
    run_to_end,
    set_up,
    spawn,
    wait_until,
)


@pytest.fixture
def w(backend: str, tmp_path: Path) -> Iterator[World]:
    with open_world(backend, tmp_path) as world:
        yield world


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[World]:
    from tests.conftest import require_postgres

    require_postgres()
    with open_world("postgres", tmp_path) as world:
        yield world


def _finish_and_check(w: World, server: ChaosSendGrid, env: dict, at, log: Path, ids: list[str]) -> dict:
    assert run_to_end(env, at, log) == 0, log.read_text()[-3000:]
    assert run_to_end(env, next_weekday_run(at), log) == 0, log.read_text()[-3000:]
    got = outcome_figures(w, server.received(), ids)
    assert misses(got) == {}
    # the window in flight at the failure was settled through SendGrid's activity look-up
    assert got["sent"] == got["invoices"] == got["received by the provider"]
    return got


def _terminate(admin: sa.Engine, where: str, **params: str) -> int:
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        return len(
            conn.execute(
                sa.text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {where}"), params
            ).all()
        )


def test_the_dispatch_connection_killed_mid_run_fails_the_run_and_the_next_completes(
    pg: World, tmp_path: Path
) -> None:
    set_up(pg)
    at = first_run()
    ids = add_invoices(pg, 300, issued=at.date(), updated=at.replace(hour=0), prefix="t")
    log = tmp_path / "runs.log"
    name = f"victim_{uuid.uuid4().hex[:8]}"
    victim_url = make_url(pg.urls["dispatch"]).update_query_dict({"application_name": name})
    with ChaosSendGrid(latency=0.02) as server:
        env = run_env(pg, server, DISPATCH_BATCH_SIZE="100", SENDGRID_ACTIVITY_LOOKUP="full")
        p = spawn({**env, "DISPATCH_DB_URL": victim_url.render_as_string(hide_password=False)}, at, log)
        assert wait_until(lambda: server.sends_received >= 60 or p.poll() is not None, 120)
        # kill its connections again and again for a second: one is caught inside a statement
        terminated = 0
        end = time.monotonic() + 1.0
        while time.monotonic() < end and p.poll() is None:
            terminated += _terminate(pg.dispatch, "application_name = :name", name=name)
            time.sleep(0.01)
        code = p.wait(timeout=120)
        sends_at_failure = server.sends_received
        assert terminated >= 1
        assert code == 1, log.read_text()[-3000:]
        # loud: the cause is in the run's output; psycopg words it by when the kill lands
        # ("terminating connection due to administrator command" or "server closed the
        # connection unexpectedly")
        said = log.read_text().lower()
        assert "terminat" in said or "closed the connection" in said, said[-3000:]
        got = _finish_and_check(pg, server, env, at, log, ids)
    figures = {"backends terminated": terminated, "exit code": code, "sends at the failure": sends_at_failure}
    record("dispatch connection killed mid-run (postgres)", {**figures, **got})


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.chaos)])
def test_an_unreachable_accounting_source_fails_the_run_and_changes_nothing(w: World, tmp_path: Path) -> None:
    set_up(w)
    at = first_run()
    ids = add_invoices(w, 50, issued=at.date(), updated=at.replace(hour=0), prefix="u")
    log = tmp_path / "runs.log"
    unreachable = (
        f"sqlite:///{tmp_path}/no/such/dir/accounting.db"
        if w.backend == "sqlite"
        else "postgresql+psycopg://postgres@127.0.0.1:1/accounting?connect_timeout=2"
    )
    with ChaosSendGrid() as server:
        env = run_env(w, server)
        before = w.dump()
        code = run_to_end({**env, "ACCOUNTING_DB_URL": unreachable}, at, log)
        assert code in (1, 2), log.read_text()[-3000:]
        assert server.sends_received == 0
        assert {k: v for k, v in w.dump().items() if k != "dispatch_runs"} == {
            k: v for k, v in before.items() if k != "dispatch_runs"
        }
        got = _finish_and_check(w, server, env, at, log, ids)
    record(f"accounting source unreachable at start ({w.backend})", {"exit code": code, **got})


@pytest.mark.chaos
@pytest.mark.timeout(1200)
def test_chaos_the_accounting_source_lost_in_the_middle_of_a_run(pg: World, tmp_path: Path) -> None:
    set_up(pg)
    at = first_run()
    ids = add_invoices(pg, 600, issued=at.date(), updated=at.replace(hour=0), prefix="m")
    log = tmp_path / "runs.log"
    accounting_db = make_url(pg.urls["accounting"]).database
    with ChaosSendGrid(latency=0.02) as server:
        env = run_env(pg, server, DISPATCH_BATCH_SIZE="100", SENDGRID_ACTIVITY_LOOKUP="full")
        p = spawn(env, at, log)
        assert wait_until(lambda: server.sends_received >= 150 or p.poll() is not None, 120)
        admin = pg.dispatch
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{accounting_db}" ALLOW_CONNECTIONS false'))
        try:
            _terminate(admin, "datname = :db", db=accounting_db)
            code = p.wait(timeout=300)
            sends_at_failure = server.sends_received
        finally:
            with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(sa.text(f'ALTER DATABASE "{accounting_db}" ALLOW_CONNECTIONS true'))
        pg.accounting.dispose()
        assert code == 1, log.read_text()[-3000:]
        got = _finish_and_check(pg, server, env, at, log, ids)
    record(
        "accounting source lost mid-run (postgres)",
        {"exit code": code, "sends before the failure": sends_at_failure, **got},
    )


@pytest.mark.chaos
@pytest.mark.timeout(1200)
@pytest.mark.skipif(
    os.environ.get("CHAOS_PG_RESTART") != "1", reason="restarts the shared server: CHAOS_PG_RESTART=1"
)
def test_chaos_postgresql_restarted_during_a_batch(pg: World, tmp_path: Path) -> None:
    set_up(pg)
    at = first_run()
    ids = add_invoices(pg, 600, issued=at.date(), updated=at.replace(hour=0), prefix="r")
    log = tmp_path / "runs.log"
    with ChaosSendGrid(latency=0.02) as server:
        env = run_env(pg, server, DISPATCH_BATCH_SIZE="100", SENDGRID_ACTIVITY_LOOKUP="full")
        p = spawn(env, at, log)
        assert wait_until(lambda: server.sends_received >= 150 or p.poll() is not None, 120)
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", "15", "main", "restart"], check=True)
        try:
            code = p.wait(timeout=300)
        except subprocess.TimeoutExpired:
            kill9(p)
            code = None
        pg.dispatch.dispose()
        pg.accounting.dispose()
        time.sleep(1)
        got = _finish_and_check(pg, server, env, at, log, ids)
    record("PostgreSQL restarted during a batch", {"exit code": code, **got})
