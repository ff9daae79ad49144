"""2, 4 and 8 ``dispatch run`` processes started at once on PostgreSQL, all importing and
sending the same new invoices: each due action is handed over once (SPEC B1), none is lost."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.builders import World, open_world
from tests.chaos.harness import (
    ChaosSendGrid,
    add_invoices,
    first_run,
    misses,
    outcome_figures,
    record,
    run_env,
    set_up,
    spawn,
)


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[World]:
    from tests.conftest import require_postgres

    require_postgres()
    with open_world("postgres", tmp_path) as world:
        yield world


def concurrent_rounds(w: World, tmp_path: Path, processes: list[int], per_round: int, name: str) -> None:
    started = time.monotonic()
    set_up(w)
    at = first_run()
    log = tmp_path / "runs.log"
    figures: dict = {"database": w.backend}
    all_ids: list[str] = []
    with ChaosSendGrid(latency=0.02) as server:
        env = run_env(w, server, DISPATCH_SEND_CONCURRENCY="16", DISPATCH_BATCH_SIZE="50")
        for k, n in enumerate(processes):
            # each round: new invoices, then n runs of one instant started together
            round_at = at + dt.timedelta(minutes=10 * k)
            all_ids += add_invoices(
                w, per_round, issued=at.date(), updated=round_at - dt.timedelta(minutes=1), prefix=f"r{n}_"
            )
            runs = [spawn(env, round_at, log) for _ in range(n)]
            codes = [p.wait(timeout=600) for p in runs]
            assert codes == [0] * n, log.read_text()[-3000:]
            got = outcome_figures(w, server.received(), all_ids)
            figures[f"{n} processes: duplicates / lost / sending"] = (
                f"{got['duplicates']} / {got['lost']} / {got['stuck in sending']}"
            )
            assert misses(got) == {}
            assert got["sent"] == got["invoices"] == got["received by the provider"]
        figures["invoices"] = len(all_ids)
        figures["seconds"] = round(time.monotonic() - started, 1)
    record(name, figures)


def test_two_runs_at_once_send_each_invoice_once(pg: World, tmp_path: Path) -> None:
    """The slice in ``make test``."""
    concurrent_rounds(pg, tmp_path, [2], 120, "2 concurrent runs (postgres, slice)")


@pytest.mark.chaos
@pytest.mark.timeout(1800)
def test_chaos_2_4_8_concurrent_runs(pg: World, tmp_path: Path) -> None:
    concurrent_rounds(pg, tmp_path, [2, 4, 8], 600, "2, 4, 8 concurrent runs (postgres)")
