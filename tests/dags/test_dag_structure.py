"""The DAG's shape: the stage list of SPEC as tasks, one mapped task per batch (never more
than Airflow's ``max_map_length``), write-back and report that run whatever happened to the
batches, result tables as Assets, retries by kind of failure."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from dispatch.stages.compute_due_sends import batch_plan
from hypothesis import given
from hypothesis import strategies as st

from tests.dags.conftest import DemoCopy, demo_days

STAGES = [
    "extract_invoices",
    "tag_new_invoices",
    "resolve_templates",
    "compute_due_sends",
    "dispatch_batch",
    "write_back",
    "pull_bounces",
    "report",
]


@pytest.fixture(scope="module")
def dag():  # type: ignore[no-untyped-def]
    from tests.dags.conftest import load_dag

    return load_dag()


def test_tasks_are_the_stages_in_order(dag) -> None:  # type: ignore[no-untyped-def]
    assert sorted(dag.task_ids) == sorted(STAGES)
    upstream = {t.task_id: set(t.upstream_task_ids) for t in dag.tasks}
    assert upstream == {
        "extract_invoices": set(),
        "tag_new_invoices": {"extract_invoices"},
        "resolve_templates": {"tag_new_invoices"},
        "compute_due_sends": {"resolve_templates"},
        "dispatch_batch": {"compute_due_sends"},
        # write_back also reads the batch list, to know how many batches should have finished
        "write_back": {"compute_due_sends", "dispatch_batch"},
        "pull_bounces": {"write_back"},
        # report runs whatever happened (ALL_DONE) and reads write_back's counts
        "report": {"write_back", "pull_bounces"},
    }
    assert [t.task_id for t in dag.topological_sort()] == STAGES


def test_dispatch_batch_is_mapped_over_the_batches_compute_due_sends_returns(dag) -> None:  # type: ignore[no-untyped-def]
    from airflow.sdk.definitions.mappedoperator import MappedOperator
    from airflow.sdk.definitions.xcom_arg import PlainXComArg

    batch = dag.get_task("dispatch_batch")
    assert isinstance(batch, MappedOperator)
    mapped = batch.op_kwargs_expand_input.value["batch_no"]
    assert isinstance(mapped, PlainXComArg)
    assert mapped.operator.task_id == "compute_due_sends"
    assert mapped.key == "return_value"
    assert batch.pool == "dispatch_providers"
    assert all(dag.get_task(t).pool == "default_pool" for t in STAGES if t != "dispatch_batch")


def test_write_back_and_report_run_whatever_happened_upstream(dag) -> None:  # type: ignore[no-untyped-def]
    assert dag.get_task("write_back").trigger_rule == "all_done"
    assert dag.get_task("report").trigger_rule == "all_done"
    for task_id in STAGES[:5]:
        assert dag.get_task(task_id).trigger_rule == "all_success", task_id


def test_the_last_task_writing_the_result_tables_declares_them_as_assets(dag) -> None:  # type: ignore[no-untyped-def]
    # pull_bounces writes invoice_actions and action_events after write_back has finished
    assert "write_back" in dag.get_task("pull_bounces").upstream_task_ids
    outlets = dag.get_task("pull_bounces").outlets
    assert sorted(a.uri for a in outlets) == sorted(
        f"dispatch://dispatch_db/{t}"
        for t in ("invoices", "invoice_actions", "action_events", "rejected_invoices", "dispatch_runs")
    )
    assert all(not dag.get_task(t).outlets for t in STAGES if t != "pull_bounces")


# --- batches -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_due", "batch_size", "max_batches", "expected"),
    [
        (0, 500, 1024, (0, 500)),
        (1, 500, 1024, (1, 500)),
        (500, 500, 1024, (1, 500)),
        (501, 500, 1024, (2, 500)),
        (173, 20, 1024, (9, 20)),
        (173, 20, 4, (4, 44)),  # capped: batches grow instead
        (1_000_000, 500, 1024, (1024, 977)),
    ],
)
def test_batch_plan(n_due: int, batch_size: int, max_batches: int, expected: tuple[int, int]) -> None:
    assert batch_plan(n_due, batch_size, max_batches) == expected


@given(st.integers(1, 10**7), st.integers(1, 5000), st.integers(1, 4096))
def test_batch_plan_covers_every_due_action_within_the_map_limit(n: int, size: int, cap: int) -> None:
    batches, effective = batch_plan(n, size, cap)
    assert 1 <= batches <= cap
    assert effective >= size
    assert (batches - 1) * effective < n <= batches * effective


def _prepare_run(copy: DemoCopy, as_of: dt.datetime):  # type: ignore[no-untyped-def]
    from dispatch.runtime import airflow_tasks as steps
    from dispatch.runtime.runs import RunContext

    ctx = RunContext.new(as_of, run_id="scheduled__structure")
    settings = copy.settings()
    steps.extract_invoices_task(ctx, settings)
    steps.tag_new_invoices_task(ctx, settings)
    steps.resolve_templates_task(ctx, settings)
    return ctx, settings


def test_compute_due_sends_returns_one_batch_number_per_batch_of_the_configured_size(
    demo_copy: DemoCopy,
) -> None:
    from dispatch.runtime import airflow_tasks as steps
    from sqlalchemy import create_engine, text

    ctx, settings = _prepare_run(demo_copy, demo_days()[0])
    plans = {}
    for size, cap in ((500, 1024), (7, 1024), (7, 3)):
        out = steps.compute_due_sends_task(ctx, max_batches=cap, settings=settings.with_(batch_size=size))
        plans[(size, cap)] = out
        assert out["due"] > 0
        expected, effective = (
            math.ceil(out["due"] / max(size, math.ceil(out["due"] / cap))),
            out["batch_size"],
        )
        assert out["batch_numbers"] == list(range(expected))
        assert out["batches"] == expected <= cap
        engine = create_engine(demo_copy.dispatch_url)
        with engine.connect() as conn:
            per_batch = dict(
                conn.execute(
                    text("SELECT batch_no, count(*) FROM due_sends WHERE run_id = :r GROUP BY batch_no"),
                    {"r": ctx.run_id},
                ).all()
            )
        engine.dispose()
        assert sorted(per_batch) == out["batch_numbers"]
        assert sum(per_batch.values()) == out["due"]
        assert max(per_batch.values()) <= effective
    due = plans[(500, 1024)]["due"]
    assert plans[(500, 1024)]["batches"] == 1
    assert plans[(7, 1024)]["batches"] == math.ceil(due / 7)
    assert plans[(7, 3)]["batches"] == 3  # never more maps than max_map_length


def test_max_map_length_is_read_from_airflow_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk import conf
    from dispatch.runtime import airflow_tasks as steps

    assert steps.max_map_length() == conf.getint("core", "max_map_length") == 1024
    monkeypatch.setenv("AIRFLOW__CORE__MAX_MAP_LENGTH", "16")
    assert steps.max_map_length() == 16


# --- retries -----------------------------------------------------------------------------------


def test_every_task_retries_by_kind_of_failure_with_the_dag_back_off(dag) -> None:  # type: ignore[no-untyped-def]
    from dispatch.runtime.airflow_tasks import DispatchRetryPolicy, dag_config

    for task in dag.tasks:
        policy = task.retry_policy
        assert isinstance(policy, DispatchRetryPolicy), task.task_id
        assert (policy.base, policy.cap) == (task.retry_delay, dag_config().max_retry_delay)
        # one back-off: the policy's, not Airflow's own exponential one beside it
        assert not task.retry_exponential_backoff, task.task_id


def test_retry_policy_fails_fast_on_configuration_errors_and_backs_off_on_rate_limits() -> None:
    from airflow.sdk import RetryAction
    from dispatch.channels.base import FatalChannelError, TransientError
    from dispatch.errors import DispatchError
    from dispatch.runtime.airflow_tasks import DispatchRetryPolicy, ProviderBackoff

    policy = DispatchRetryPolicy(dt.timedelta(minutes=2), dt.timedelta(minutes=30))
    fatal = policy.evaluate(FatalChannelError("401 from SendGrid"), try_number=1, max_tries=3)
    assert fatal.action == RetryAction.FAIL
    schema = policy.evaluate(DispatchError("run `dispatch db init`"), try_number=1, max_tries=3)
    assert schema.action == RetryAction.FAIL

    backoff = [policy.evaluate(ProviderBackoff("429"), try_number=n, max_tries=5) for n in (1, 2, 3, 5)]
    assert all(d.action == RetryAction.RETRY for d in backoff)
    assert [d.retry_delay for d in backoff] == [dt.timedelta(minutes=m) for m in (2, 4, 8, 30)]
    honour = policy.evaluate(TransientError("429", retry_after=600), try_number=1, max_tries=3)
    assert (honour.action, honour.retry_delay) == (RetryAction.RETRY, dt.timedelta(minutes=10))

    other = [policy.evaluate(RuntimeError("worker lost"), try_number=n, max_tries=5) for n in (1, 2, 9)]
    assert all(d.action == RetryAction.RETRY for d in other)
    assert [d.retry_delay for d in other] == [dt.timedelta(minutes=m) for m in (2, 4, 30)]


def test_the_one_back_off_honours_retry_after_and_the_cap() -> None:
    from dispatch.channels.retry import RetryPolicy, exponential_backoff

    assert exponential_backoff(1, 120, 1800) == 120
    assert exponential_backoff(3, 120, 1800) == 480
    assert exponential_backoff(1, 120, 1800, retry_after=600) == 600
    assert exponential_backoff(9, 120, 1800) == 1800
    assert exponential_backoff(1, 120, 1800, retry_after=7200) == 1800
    within_a_run = RetryPolicy(base_delay=0.5, max_delay=30.0)  # the same curve, with jitter
    assert 1.0 <= within_a_run.delay(3, None) <= 2.0  # type: ignore[operator]
    assert within_a_run.delay(1, 5.0) == 5.0 and within_a_run.delay(1, 600.0) is None
