"""The DAG on a real distributed deployment (docs/airflow.md, "Without Docker"): an
api-server, a scheduler, a dag-processor and two Celery workers, Redis as the broker,
PostgreSQL for Airflow's metadata and for the dispatch database, e-mails to the local
SendGrid. Over a Monday–Friday backfill, five triggered logical dates, a worker killed
(SIGKILL, with its tasks) in the middle of a batch and a cleared re-run, every due invoice
is received by SendGrid exactly once, none is lost, the mapped batches ran on both workers
and never more of them at once than the pool ``dispatch_providers`` has slots.

Needs ``make install-celery`` and Redis at 127.0.0.1:6379 (it skips without them); runs in
``make chaos`` only (several minutes: Airflow starts a process per task).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.builders import World, open_world
from tests.chaos.celery_deployment import (
    BROKER_URL,
    POOLS_FILE,
    CeleryDeployment,
    broker_reachable,
    max_overlap,
)
from tests.chaos.harness import (
    ChaosSendGrid,
    add_invoices,
    misses,
    outcome_figures,
    record,
    run_env,
    set_up,
)

UTC = dt.UTC
BATCH = 40
PER_DAY = 80
#: the day whose run loses a worker: enough batches to fill the pool several times
KILL_DAY_INVOICES = 400


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[World]:
    from tests.conftest import require_postgres

    require_postgres()
    pytest.importorskip("airflow.providers.celery", reason="the Celery deployment: make install-celery")
    if not broker_reachable():
        pytest.skip(f"no Redis at {BROKER_URL} for the Celery broker")
    with open_world("postgres", tmp_path) as world:
        yield world


def weekdays_of_week(monday: dt.date) -> list[dt.datetime]:
    return [dt.datetime.combine(monday + dt.timedelta(days=k), dt.time(5), tzinfo=UTC) for k in range(5)]


@pytest.mark.chaos
@pytest.mark.timeout(2400)
def test_celery_deployment_sends_each_invoice_once(pg: World, tmp_path: Path) -> None:
    started = time.monotonic()
    set_up(pg)
    this_monday = dt.datetime.now(UTC).date() - dt.timedelta(days=dt.datetime.now(UTC).weekday())
    backfill_days = weekdays_of_week(this_monday - dt.timedelta(days=14))
    trigger_days = weekdays_of_week(this_monday - dt.timedelta(days=7))
    kill_day = trigger_days[2]
    invoice_ids: list[str] = []
    for day in backfill_days + trigger_days:
        n = KILL_DAY_INVOICES if day == kill_day else PER_DAY
        invoice_ids += add_invoices(
            pg, n, issued=day.date(), updated=day - dt.timedelta(hours=1), prefix=f"d{day:%m%d}_"
        )
    slots = json.loads(POOLS_FILE.read_text())["dispatch_providers"]["slots"]
    figures: dict = {"invoices": len(invoice_ids), "pool slots": slots}

    with ChaosSendGrid(latency=0.2) as server:
        env = run_env(
            pg,
            server,
            DISPATCH_BATCH_SIZE=str(BATCH),
            DISPATCH_SEND_CONCURRENCY="4",
            SENDGRID_ACTIVITY_LOOKUP="full",
            DISPATCH_HTTP_TIMEOUT="10",
        )
        airflow = CeleryDeployment(tmp_path / "deployment", env)
        try:
            airflow.start()
            figures["seconds to start"] = round(time.monotonic() - started, 1)
            most_running = 0

            def watch() -> bool:
                nonlocal most_running
                most_running = max(most_running, len(airflow.running_batches()))
                return False

            # 1. a Monday–Friday backfill, the documented way (the end of the Friday as bound)
            airflow.airflow(
                "backfill", "create", "--dag-id", "invoice_dispatch",
                "--from-date", backfill_days[0].date().isoformat(),
                "--to-date", f"{backfill_days[-1].date().isoformat()}T23:59:59",
                "--max-active-runs", "1",
            )  # fmt: skip
            airflow.wait_for(lambda: len(airflow.dag_runs()) == 5, 120, "the backfill's five runs")
            backfill_runs = [r.run_id for r in airflow.dag_runs()]
            airflow.wait_for(
                lambda: watch() or airflow.runs_finished(backfill_runs), 900, "the backfill", step=0.5
            )
            figures["backfill: received"] = len(server.received())

            # 2. five triggered logical dates; one worker dies in the middle of Wednesday's batches
            triggered = [airflow.trigger(day) for day in trigger_days]
            kill_run = triggered[2]
            handing_over: list[str] = []
            kill_day_actions: list[tuple[int, str]] = []

            def batch_actions() -> list[tuple[int, str]]:
                if not kill_day_actions:
                    with pg.dispatch.connect() as conn:
                        kill_day_actions.extend(
                            conn.execute(
                                sa.text("SELECT batch_no, action_id FROM due_sends WHERE run_id = :r"),
                                {"r": kill_run},
                            ).all()
                        )
                return kill_day_actions

            def a_batch_handing_over() -> bool:
                """A running batch of Wednesday's run whose actions are being handed over
                (claimed, window recorded, not yet all recorded sent)."""
                watch()
                running = {r.map_index: r.hostname for r in airflow.running_batches() if r.run_id == kill_run}
                if not running:
                    return False
                with pg.dispatch.connect() as conn:
                    sending = conn.execute(
                        sa.text(
                            "SELECT d.batch_no, a.action_id FROM due_sends d JOIN invoice_actions a "
                            "ON a.action_id = d.action_id WHERE d.run_id = :r "
                            "AND a.status = 'sending' AND a.handover_at IS NOT NULL"
                        ),
                        {"r": kill_run},
                    ).all()
                received = server.received()
                # a batch SendGrid has started to receive from, with some of it still to come
                started = {b for b, action in batch_actions() if received[action] > 0}
                hosts = [running[b] for b, _ in sending if b in running and b in started]
                handing_over[:] = hosts
                return bool(hosts)

            airflow.wait_for(a_batch_handing_over, 900, "a batch of Wednesday handing over", step=0.05)
            victim = Counter(handing_over).most_common(1)[0][0]
            killed = sorted(r.map_index for r in airflow.running_batches() if r.hostname == victim)
            received_before_kill = server.sends_received
            mails_at_kill = server.mails
            airflow.kill9(victim)
            figures["killed"] = f"{victim} (SIGKILL of its process group) running batches {killed}"
            airflow.start_worker(victim)  # the machine comes back
            airflow.wait_for(
                lambda: watch() or airflow.runs_finished(triggered), 1200, "the triggered runs", step=0.5
            )

            # 3. the killed day cleared and run again: nothing more goes out
            received_before_clear = Counter(server.received())
            airflow.airflow(
                "tasks", "clear", "invoice_dispatch", "--yes",
                "--start-date", kill_day.isoformat(), "--end-date", kill_day.isoformat(),
            )  # fmt: skip

            def rerun_finished() -> bool:
                report = airflow.query(
                    "SELECT try_number FROM task_instance WHERE run_id = :r AND task_id = 'report' "
                    "AND state IN ('success', 'failed')",
                    r=kill_run,
                )
                return bool(report) and report[0].try_number >= 2 and airflow.runs_finished([kill_run])

            airflow.wait_for(
                rerun_finished,
                900,
                "the cleared re-run",
            )
            assert server.received() == received_before_clear, "the cleared re-run sent again"

            runs = airflow.dag_runs()
            tries = airflow.tries()
        finally:
            airflow.stop()

        got = outcome_figures(pg, server.received(), invoice_ids)

    states = Counter((r.run_type, r.state) for r in runs)
    figures["dag runs (type, state)"] = dict(states)
    assert states == {("backfill", "success"): 5, ("manual", "success"): 5}, states
    assert [r.logical_date for r in runs if r.run_type == "backfill"] == backfill_days  # Friday included

    by_worker = Counter(t.hostname for t in tries)
    figures["batch tries per worker"] = dict(by_worker)
    figures["batch tries"] = len(tries)
    assert set(by_worker) == {"worker1", "worker2"}, by_worker
    killed_tries = [t for t in tries if t.run_id == kill_run and t.map_index in killed]
    figures["tries of the killed batches"] = sorted(
        (t.map_index, t.try_number, t.state, t.hostname) for t in killed_tries
    )
    figures["mails SendGrid had received when the worker was killed"] = received_before_kill
    with pg.dispatch.connect() as conn:
        events = conn.execute(sa.text("SELECT event, count(*) FROM action_events GROUP BY event")).all()
    # the staging of the killed day as it was at the kill (the cleared re-run staged it anew)
    killed_actions = {action for b, action in kill_day_actions if b in killed}
    early = [m.body.get("personalizations", [{}])[0].get("custom_args", {}) for m in mails_at_kill]
    figures["mails of the killed batches received before the kill"] = sum(
        1 for args in early if args.get("action_id") in killed_actions
    )
    figures["action events"] = dict(sorted((e, int(n)) for e, n in events))
    assert all(max(t.try_number for t in killed_tries if t.map_index == m) >= 2 for m in killed)

    timed = [t for t in tries if t.start_date and t.end_date]
    overlap, moment = max_overlap([(t.start_date, t.end_date) for t in timed])
    at_once = sorted(
        (t.run_id, t.map_index, t.try_number, t.state, t.hostname, str(t.start_date), str(t.end_date))
        for t in timed
        if t.start_date <= moment < t.end_date
    )
    figures["most batches at once (task instance intervals / sampled running)"] = (
        f"{overlap} / {most_running}"
    )
    assert most_running <= slots
    assert overlap <= slots, at_once
    assert all(t.pool == "dispatch_providers" for t in tries)

    figures |= {k: got[k] for k in ("received by the provider", "duplicates", "lost", "stuck in sending")}
    figures |= {k: got[k] for k in ("phantom sent", "sent", "delivery_unknown", "manual (other reasons)")}
    figures["seconds"] = round(time.monotonic() - started, 1)
    record("Celery deployment: backfill, 5 dates, worker killed, cleared re-run (postgres)", figures)
    assert misses(got) == {}
    assert got["received by the provider"] == got["invoices"] == got["sent"]
    assert got["delivery_unknown"] == 0
