"""The DAG run by ``dag.test()`` (Airflow 3: ``dag.test(logical_date=…)``, tasks run in this
process against SQLite metadata) on the demo data, judged against the CLI's ``run_pipeline``
on an identical copy: the same outbox files, statuses and to-do list for the same as-of
instants; nothing sent twice when a date is run again, when a batch dies midway and is
retried, or when a batch fails for good and the next run settles what it left."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
import pytest
from dispatch.runtime import airflow_tasks as steps
from dispatch.runtime.pipeline import run_pipeline

from tests.dags.conftest import (
    DemoCopy,
    demo_days,
    dying_channels,
    load_dag,
    outbox_files,
    outcome_snapshot,
    sends_per_action,
    table,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("airflow_db")]

#: Three of the demo's weekdays — the first import, a Monday after a weekend, the day of the
#: late void — so the runs cover sends, scheduled sends, manual tasks, cancellations and
#: rejected rows in a few seconds each. (A skipped day is caught up by the next run.)
DAYS = [demo_days()[i] for i in (0, 2, 5)]


def run_dag(dag: Any, as_of: dt.datetime, expect: str = "success") -> Any:
    dag_run = dag.test(logical_date=as_of)
    assert dag_run.state == expect, f"{as_of}: DAG run {dag_run.state}"
    return dag_run


def dispatch_run_of(copy: DemoCopy, dag_run: Any) -> dict:
    """The dispatch database's record of a DAG run (typed: aware instants, counts as a dict)."""
    import sqlalchemy as sa
    from dispatch.storage.schema import dispatch_runs

    engine = sa.create_engine(copy.dispatch_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(dispatch_runs).where(dispatch_runs.c.run_id == dag_run.run_id)
            ).all()
    finally:
        engine.dispose()
    assert len(rows) == 1, f"no dispatch run {dag_run.run_id}"
    return dict(rows[0]._mapping)


def cli_counts(copy: DemoCopy, as_of: dt.datetime, batch_size: int | None = None) -> dict:
    settings = copy.settings()
    if batch_size:
        settings = settings.with_(batch_size=batch_size)
    return run_pipeline(settings, as_of).counts


def task_instances(dag_run: Any, task_id: str) -> list:
    return sorted(
        (ti for ti in dag_run.get_task_instances() if ti.task_id == task_id), key=lambda ti: ti.map_index
    )


def assert_same_outcomes(dag_copy: DemoCopy, cli_copy: DemoCopy, ignore: Sequence[str] = ()) -> None:
    """Same statuses, actions (recipients included, even of actions settled after a crash)
    and to-do list."""
    ours, theirs = outcome_snapshot(dag_copy), outcome_snapshot(cli_copy)
    for name in ours:
        left = ours[name].drop(columns=[c for c in ignore if c in ours[name]])
        right = theirs[name].drop(columns=[c for c in ignore if c in theirs[name]])
        pd.testing.assert_frame_equal(left, right, obj=name)


def test_dag_runs_produce_what_the_cli_produces_and_a_rerun_sends_nothing_more(
    backend: str, demo_pair: tuple[DemoCopy, DemoCopy], dag_env: Any
) -> None:
    dag_copy, cli_copy = demo_pair
    dag_env(dag_copy)
    dag = load_dag()
    for as_of in DAYS:
        dag_copy.advance_accounting(as_of)
        cli_copy.advance_accounting(as_of)
        dag_run = run_dag(dag, as_of)
        ours = dispatch_run_of(dag_copy, dag_run)
        theirs = cli_counts(cli_copy, as_of)
        assert ours["as_of"] == as_of
        assert ours["status"] == "succeeded"
        assert ours["counts"]["run"] == theirs["run"], as_of
        assert ours["counts"]["totals"] == theirs["totals"], as_of

    assert outbox_files(dag_copy.outbox) == outbox_files(cli_copy.outbox)
    assert_same_outcomes(dag_copy, cli_copy)
    snapshot = outcome_snapshot(dag_copy)
    # the comparison covers every kind of outcome, not an empty run
    statuses = set(snapshot["actions"]["status"])
    assert {"sent", "manual", "cancelled", "scheduled"} <= statuses
    assert len(snapshot["todo"]) > 0 and len(snapshot["rejected"]) > 0

    # The same logical date again (a re-run), then an earlier one (as a backfill would):
    files = outbox_files(dag_copy.outbox)
    for as_of in (DAYS[-1], DAYS[0]):
        again = run_dag(dag, as_of)
        assert dispatch_run_of(dag_copy, again)["counts"]["run"].get("events.sent", 0) == 0
    assert outbox_files(dag_copy.outbox) == files
    after = outcome_snapshot(dag_copy)
    pd.testing.assert_frame_equal(after["actions"], snapshot["actions"])
    pd.testing.assert_frame_equal(after["invoices"], snapshot["invoices"])
    assert (sends_per_action(dag_copy) == 1).all()


# --- a batch that dies midway -------------------------------------------------------------------


BATCH = 40


def test_a_batch_that_dies_midway_is_retried_and_sends_each_invoice_once(
    demo_copy: DemoCopy, tmp_path: Any, dag_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.dags.conftest import build_demo_copy

    twin = build_demo_copy(
        tmp_path / "twin", f"sqlite:///{tmp_path / 't.db'}", f"sqlite:///{tmp_path / 'ta.db'}"
    )
    dag_env(demo_copy, DISPATCH_BATCH_SIZE=str(BATCH))
    dag = load_dag()
    as_of = DAYS[0]
    state = {"left": 1, "after": 5, "handed_over": 0}
    with dying_channels(monkeypatch, state):
        dag_run = run_dag(dag, as_of)
    assert state == {"left": 0, "after": 5, "handed_over": 5}

    # Airflow mapped one task per staged batch, and retried the one that died
    due = table(demo_copy.dispatch_url, "SELECT batch_no, count(*) AS n FROM due_sends GROUP BY batch_no")
    batches = task_instances(dag_run, "dispatch_batch")
    assert len(batches) == len(due) == math.ceil(due["n"].sum() / BATCH) > 1
    assert sorted(ti.try_number for ti in batches) == [1] * (len(batches) - 1) + [2]
    assert all(ti.state == "success" for ti in batches)

    # the retry settled what the dead try left: the 5 handed over as sent, the rest sent now
    events = table(demo_copy.dispatch_url, "SELECT event, count(*) AS n FROM action_events GROUP BY event")
    events = dict(zip(events["event"], events["n"], strict=True))
    assert events["settled_sent"] == 5
    assert events["claim_released"] >= 1
    assert (sends_per_action(demo_copy) == 1).all()

    # …and the end state is the one of a run where nothing died
    cli_counts(twin, as_of, batch_size=BATCH)
    assert outbox_files(demo_copy.outbox) == outbox_files(twin.outbox)
    settled = table(
        demo_copy.dispatch_url, "SELECT action_id FROM action_events WHERE event = 'settled_sent'"
    )
    assert not settled.empty  # the crash really left actions for the retry to settle
    assert_same_outcomes(demo_copy, twin, ignore=["attempts"])


def test_a_failed_batch_does_not_block_the_others_and_the_next_run_settles_its_claims(
    demo_copy: DemoCopy, dag_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    dag_env(demo_copy, DISPATCH_BATCH_SIZE=str(BATCH), DISPATCH_TASK_RETRIES="1")
    dag = load_dag()
    real_task = steps.dispatch_batch_task
    state = {"left": 99, "after": 3, "handed_over": 0}

    def batch_one_always_dies(ctx, batch_no, **kwargs):  # type: ignore[no-untyped-def]
        if batch_no != 1:
            return real_task(ctx, batch_no, **kwargs)
        with dying_channels(monkeypatch, state):
            return real_task(ctx, batch_no, **kwargs)

    monkeypatch.setattr(steps, "dispatch_batch_task", batch_one_always_dies)
    first = run_dag(dag, DAYS[0], expect="failed")
    monkeypatch.setattr(steps, "dispatch_batch_task", real_task)

    batches = task_instances(first, "dispatch_batch")
    assert [ti.state for ti in batches] == ["success", "failed"] + ["success"] * (len(batches) - 2)
    assert batches[1].try_number == 2  # retried once, died again
    assert {
        ti.task_id: ti.state for ti in first.get_task_instances() if ti.task_id in ("write_back", "report")
    } == {
        "write_back": "success",
        "report": "failed",
    }
    run = dispatch_run_of(demo_copy, first)
    assert run["status"] == "failed"
    assert run["counts"]["run"]["events.sent"] > 0  # the other batches sent theirs
    left = table(demo_copy.dispatch_url, "SELECT action_id FROM invoice_actions WHERE status = 'sending'")
    assert len(left) > 0  # batch 1's claims, left by the dead tries

    second = run_dag(dag, DAYS[1])
    assert dispatch_run_of(demo_copy, second)["status"] == "succeeded"
    after = table(demo_copy.dispatch_url, "SELECT action_id, status FROM invoice_actions")
    assert not (after["status"] == "sending").any()
    settled = after.set_index("action_id").loc[left["action_id"], "status"]
    assert (settled == "sent").all()
    assert (sends_per_action(demo_copy) == 1).all()
    messages = [name for name in outbox_files(demo_copy.outbox) if not name.startswith("letter-manifests/")]
    assert len(messages) == (after["status"] == "sent").sum()
