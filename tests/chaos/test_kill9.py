"""``kill -9`` at random points of dispatch, then a clean re-run of the same instant, then
the next weekday: nothing twice (B1), nothing lost (B2), nothing left ``sending``, and a kill
costs at most the requests in flight (SPEC "Time", claims).

``dispatch run`` is a real subprocess against the local SendGrid with 20 ms of latency and
``DISPATCH_SEND_CONCURRENCY`` requests in flight. The kills are ≥ 100 per database under
``make chaos`` (``CHAOS_KILLS``); the slice in ``make test`` kills a few times.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.builders import World, open_world
from tests.chaos.harness import (
    ChaosSendGrid,
    KillCampaign,
    env_int,
    first_run,
    misses,
    next_weekday_run,
    outcome_figures,
    record,
    run_env,
    run_to_end,
    set_up,
)

IN_FLIGHT = 16


@pytest.fixture
def w(backend: str, tmp_path: Path) -> Iterator[World]:
    with open_world(backend, tmp_path) as world:
        yield world


def campaign(w: World, tmp_path: Path, *, kills: int, lookup: str, budget: float, name: str) -> dict:
    started = time.monotonic()
    set_up(w)
    at = first_run()
    log = tmp_path / "runs.log"
    with ChaosSendGrid(latency=0.02) as server:
        env = run_env(
            w,
            server,
            DISPATCH_SEND_CONCURRENCY=str(IN_FLIGHT),
            SENDGRID_ACTIVITY_LOOKUP=lookup,
            DISPATCH_HTTP_TIMEOUT="10",
        )
        c = KillCampaign(w, server, env, at, log, kills, IN_FLIGHT, random.Random(kills * 7 + len(lookup)))
        c.run(deadline=started + budget)
        assert run_to_end(env, at, log) == 0, log.read_text()[-3000:]  # the same instant, clean
        after_rerun = outcome_figures(w, server.received(), c.invoice_ids)
        assert run_to_end(env, next_weekday_run(at), log) == 0, log.read_text()[-3000:]
        final = outcome_figures(w, server.received(), c.invoice_ids)
    figures = {
        "database": w.backend,
        "SENDGRID_ACTIVITY_LOOKUP": lookup,
        "kill -9": c.kills_done,
        "runs that finished before their kill": c.completed_runs,
        "requests in flight (DISPATCH_SEND_CONCURRENCY)": IN_FLIGHT,
        "max actions in the window at a kill": max(c.in_flight_at_kill, default=0),
        "max new delivery_unknown per run after a kill": max(c.per_kill_unknown, default=0),
        "left sending after the clean re-run": after_rerun["stuck in sending"],
        **final,
        "seconds": round(time.monotonic() - started, 1),
    }
    record(name, figures)
    assert c.kills_done >= kills, f"only {c.kills_done} kills within the time budget"
    assert final["imported"] == final["invoices"]
    assert misses(final) == {}
    assert after_rerun["stuck in sending"] == 0
    assert final["sent but invoice not marked sent"] == 0
    assert figures["max actions in the window at a kill"] <= IN_FLIGHT
    assert figures["max new delivery_unknown per run after a kill"] <= IN_FLIGHT
    assert final["delivery_unknown"] <= IN_FLIGHT * c.kills_done
    assert final["sent"] + final["delivery_unknown"] == final["invoices"]
    if lookup == "full":
        assert final["delivery_unknown"] == 0  # SendGrid told which of each window it had
    return figures


def test_a_few_kills_during_dispatch_cost_only_the_window_in_flight(w: World, tmp_path: Path) -> None:
    """The slice in ``make test``."""
    campaign(w, tmp_path, kills=2, lookup="off", budget=120, name=f"kill -9 x2 ({w.backend}, slice)")


@pytest.mark.chaos
@pytest.mark.timeout(3600)
def test_chaos_kill9_at_random_points_of_dispatch(w: World, tmp_path: Path) -> None:
    kills = env_int("CHAOS_KILLS", 100)
    campaign(w, tmp_path, kills=kills, lookup="off", budget=1500, name=f"kill -9 x{kills} ({w.backend})")


@pytest.mark.chaos
@pytest.mark.timeout(3600)
def test_chaos_kill9_with_sendgrids_activity_look_up_leaves_nothing_unknown(w: World, tmp_path: Path) -> None:
    kills = env_int("CHAOS_KILLS_LOOKUP", 30)
    name = f"kill -9 x{kills}, look-up full ({w.backend})"
    campaign(w, tmp_path, kills=kills, lookup="full", budget=900, name=name)
