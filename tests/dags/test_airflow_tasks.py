"""The DAG's task bodies as plain functions, without an Airflow deployment: which instant a
run acts as of, until when it is responsible, where its settings come from, how a failed
batch closes the run, and how a rate-limited batch asks Airflow for a later try."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import pendulum
import pytest
from dispatch.channels.base import ChannelError, OutgoingMessage, SendResult, TransientError
from dispatch.config.settings import load_settings, reveal
from dispatch.errors import DispatchError
from dispatch.runtime import airflow_tasks as steps
from dispatch.runtime.runs import RunContext

from tests.dags.conftest import DemoCopy, demo_days, dying_channels, sends_per_action, table

UTC = dt.UTC


# --- as of when, until when ---------------------------------------------------------------------


def test_as_of_is_the_logical_date_or_run_after_when_there_is_none() -> None:
    logical = pendulum.datetime(2026, 11, 23, 6, 0, tz="Europe/Paris")
    as_of = steps.as_of_from_context({"logical_date": logical, "dag_run": None})
    assert as_of == dt.datetime(2026, 11, 23, 5, 0, tzinfo=UTC)
    assert type(as_of) is dt.datetime and as_of.tzinfo is UTC

    run_after = pendulum.datetime(2026, 11, 24, 9, 15, tz="UTC")
    manual = steps.as_of_from_context({"dag_run": SimpleNamespace(run_after=run_after)})
    assert manual == dt.datetime(2026, 11, 24, 9, 15, tzinfo=UTC)
    none = steps.as_of_from_context({"logical_date": None, "dag_run": SimpleNamespace(run_after=run_after)})
    assert none == manual


def test_run_context_is_the_dag_run_with_its_as_of_and_horizon() -> None:
    context = {
        "run_id": "scheduled__2026-11-27T05:00:00+00:00",
        "logical_date": pendulum.datetime(2026, 11, 27, 5, tz="UTC"),
    }
    ctx = steps.run_from_context(context, steps.dag_config({}))
    assert ctx.run_id == "scheduled__2026-11-27T05:00:00+00:00"
    assert ctx.as_of == dt.datetime(2026, 11, 27, 5, tzinfo=UTC)
    assert ctx.horizon == dt.datetime(2026, 11, 30, 5, tzinfo=UTC)


def test_dag_config_defaults_overrides_and_refusals() -> None:
    default = steps.dag_config({})
    assert (default.cron, default.timezone, default.retries) == ("0 5 * * 1-5", "UTC", 3)
    assert (default.retry_delay, default.max_retry_delay) == (
        dt.timedelta(minutes=2),
        dt.timedelta(minutes=30),
    )
    custom = steps.dag_config(
        {
            "DISPATCH_SCHEDULE_CRON": "0 7 * * 1-6",
            "DISPATCH_SCHEDULE_TZ": "Asia/Tokyo",
            "DISPATCH_TASK_RETRIES": "5",
        }
    )
    assert (custom.cron, custom.timezone, custom.retries) == ("0 7 * * 1-6", "Asia/Tokyo", 5)
    for env, name in (
        ({"DISPATCH_SCHEDULE_CRON": "every day"}, "DISPATCH_SCHEDULE_CRON"),
        ({"DISPATCH_SCHEDULE_TZ": "Europe/Atlantis"}, "DISPATCH_SCHEDULE_TZ"),
        ({"DISPATCH_TASK_RETRIES": "-1"}, "DISPATCH_TASK_RETRIES"),
        ({"DISPATCH_RETRY_DELAY_SECONDS": "soon"}, "DISPATCH_RETRY_DELAY_SECONDS"),
    ):
        with pytest.raises(DispatchError, match=name):
            steps.dag_config(env)


def test_retries_left_counts_the_tries_airflow_still_gives() -> None:
    assert steps.retries_left(SimpleNamespace(max_tries=3, try_number=1)) == 3
    assert steps.retries_left(SimpleNamespace(max_tries=3, try_number=4)) == 0
    assert steps.retries_left(SimpleNamespace(max_tries=0, try_number=1)) == 0


def test_run_ids_too_long_for_the_dispatch_tables_are_shortened_deterministically() -> None:
    assert (
        steps.dispatch_run_id("scheduled__2026-11-27T05:00:00+00:00")
        == "scheduled__2026-11-27T05:00:00+00:00"
    )
    custom = "manual_" + "x" * 240
    short = steps.dispatch_run_id(custom)
    assert len(short) <= 64 and short == steps.dispatch_run_id(custom)
    assert short != steps.dispatch_run_id(custom + "y")


# --- settings from Airflow Connections ----------------------------------------------------------


def test_connections_become_settings_and_environment_variables_win(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk import BaseHook, Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    defined = {
        "dispatch_db": Connection(
            conn_id="dispatch_db",
            conn_type="postgres",
            host="db.internal",
            port=5432,
            login="dispatch",
            password="s3cr et",
            schema="dispatch",
        ),
        "sendgrid_default": Connection(conn_id="sendgrid_default", conn_type="http", password="SG.key"),
    }

    def get_connection(conn_id: str):  # type: ignore[no-untyped-def]
        if conn_id in defined:
            return defined[conn_id]
        raise AirflowNotFoundException(f"The conn_id `{conn_id}` isn't defined")

    monkeypatch.setattr(BaseHook, "get_connection", classmethod(lambda cls, conn_id: get_connection(conn_id)))
    assert steps.airflow_connection_lookup("twilio_default") is None
    looked_up = steps.airflow_connection_lookup("dispatch_db")
    assert looked_up is not None and looked_up["conn_type"] == "postgres" and looked_up["extra"] == {}

    from_connections = load_settings(environ={}, airflow_lookup=steps.airflow_connection_lookup)
    assert (
        from_connections.dispatch_db_url
        == "postgresql+psycopg://dispatch:s3cr%20et@db.internal:5432/dispatch"
    )
    assert reveal(from_connections.sendgrid_api_key) == "SG.key"
    assert "SG.key" not in repr(from_connections)

    env_wins = load_settings(
        environ={"DISPATCH_DB_URL": "sqlite:////srv/dispatch.db"},
        airflow_lookup=steps.airflow_connection_lookup,
    )
    assert env_wins.dispatch_db_url == "sqlite:////srv/dispatch.db"


def test_a_connection_backend_failure_is_not_mistaken_for_a_missing_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow.sdk import BaseHook

    def broken(cls, conn_id: str):  # type: ignore[no-untyped-def]
        raise ConnectionError("API server unreachable")

    monkeypatch.setattr(BaseHook, "get_connection", classmethod(broken))
    with pytest.raises(ConnectionError):
        steps.airflow_connection_lookup("dispatch_db")


# --- closing the run ----------------------------------------------------------------------------


@pytest.fixture
def empty_dispatch(tmp_path: Path):  # type: ignore[no-untyped-def]
    from dispatch.storage.engine import make_engine
    from dispatch.storage.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'dispatch.db'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return load_settings(
        environ={"DISPATCH_DB_URL": url, "ACCOUNTING_DB_URL": f"sqlite:///{tmp_path / 'a.db'}"}
    )


def _run_status(settings, run_id: str) -> str:  # type: ignore[no-untyped-def]
    return table(settings.dispatch_db_url, f"SELECT status FROM dispatch_runs WHERE run_id = '{run_id}'")[
        "status"
    ].item()


def _started(settings, run_id: str) -> RunContext:  # type: ignore[no-untyped-def]
    from dispatch.runtime.runs import start_run
    from dispatch.storage.engine import make_engine
    from dispatch.storage.session import Database

    ctx = RunContext.new(dt.datetime(2026, 11, 27, 5, tzinfo=UTC), run_id=run_id)
    engine = make_engine(settings.dispatch_db_url)
    start_run(Database(engine), ctx)
    engine.dispose()
    return ctx


def test_write_back_closes_the_run_succeeded_when_every_batch_finished(empty_dispatch) -> None:  # type: ignore[no-untyped-def]
    ctx = _started(empty_dispatch, "scheduled__ok")
    out = steps.write_back_task(ctx, expected_batches=2, finished_batches=2, settings=empty_dispatch)
    assert (out["failed"], out["failed_batches"]) == (False, 0)
    assert _run_status(empty_dispatch, ctx.run_id) == "succeeded"
    report = steps.report_task(ctx, out, settings=empty_dispatch)
    assert report["failed"] is False and "succeeded" in report["message"]


def test_write_back_closes_the_run_failed_when_a_batch_did_not_finish(empty_dispatch) -> None:  # type: ignore[no-untyped-def]
    ctx = _started(empty_dispatch, "scheduled__one_batch_died")
    out = steps.write_back_task(ctx, expected_batches=3, finished_batches=2, settings=empty_dispatch)
    assert (out["failed"], out["failed_batches"]) == (True, 1)
    assert _run_status(empty_dispatch, ctx.run_id) == "failed"
    report = steps.report_task(ctx, out, settings=empty_dispatch)
    assert report["failed"] is True and "1 batch(es) failed" in report["message"]


def test_write_back_closes_the_run_failed_when_a_stage_before_the_batches_failed(empty_dispatch) -> None:  # type: ignore[no-untyped-def]
    ctx = _started(empty_dispatch, "scheduled__extract_died")
    out = steps.write_back_task(ctx, expected_batches=None, finished_batches=0, settings=empty_dispatch)
    assert out["failed"] is True
    assert _run_status(empty_dispatch, ctx.run_id) == "failed"


def test_report_marks_the_run_failed_when_write_back_never_finished(empty_dispatch) -> None:  # type: ignore[no-untyped-def]
    ctx = _started(empty_dispatch, "scheduled__write_back_died")
    assert _run_status(empty_dispatch, ctx.run_id) == "running"
    report = steps.report_task(ctx, None, settings=empty_dispatch)
    assert report["failed"] is True
    assert _run_status(empty_dispatch, ctx.run_id) == "failed"


def test_the_first_task_refuses_an_uninitialized_dispatch_database(tmp_path: Path) -> None:
    settings = load_settings(
        environ={
            "DISPATCH_DB_URL": f"sqlite:///{tmp_path / 'empty.db'}",
            "ACCOUNTING_DB_URL": f"sqlite:///{tmp_path / 'a.db'}",
        }
    )
    ctx = RunContext.new(dt.datetime(2026, 11, 27, 5, tzinfo=UTC))
    with pytest.raises(DispatchError, match="dispatch db init"):
        steps.extract_invoices_task(ctx, settings)
    # the tasks that run whatever happened upstream fail as fast (the retry policy does not
    # retry a DispatchError) instead of retrying SQL errors for minutes
    with pytest.raises(DispatchError, match="dispatch db init"):
        steps.write_back_task(ctx, None, 0, settings=settings)
    with pytest.raises(DispatchError, match="dispatch db init"):
        steps.report_task(ctx, None, settings=settings)


# --- a rate-limited batch asks for another try --------------------------------------------------


class RateLimitedEmail:
    """An e-mail backend that answers 429 to every message (nothing accepted)."""

    provider = "ratelimited"
    channel = "email"

    def max_schedule_ahead(self) -> dt.timedelta | None:
        return dt.timedelta(days=3650)

    def send_many(self, messages: Sequence[OutgoingMessage]) -> list[SendResult | ChannelError]:
        return [TransientError("429 Too Many Requests", retry_after=30) for _ in messages]

    def was_handed_over(self, action_id: str) -> SendResult | bool | None:
        return False


def test_a_rate_limited_batch_is_retried_by_airflow_and_then_sends_each_invoice_once(
    demo_copy: DemoCopy, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dispatch.channels.factory as factory

    real_build = factory.build_channels
    settings = demo_copy.settings()
    ctx = RunContext.new(demo_days()[0], run_id="scheduled__rate_limited")
    steps.extract_invoices_task(ctx, settings)
    steps.tag_new_invoices_task(ctx, settings)
    steps.resolve_templates_task(ctx, settings)
    assert steps.compute_due_sends_task(ctx, settings=settings)["batch_numbers"] == [0]

    monkeypatch.setattr(factory, "build_channels", lambda s: {**real_build(s), "email": RateLimitedEmail()})
    # last try: nothing to retry within the run; the e-mails stay scheduled for the next run
    last = steps.dispatch_batch_task(ctx, 0, retries_left=0, settings=settings)
    assert last["events"]["retry_later"] > 0
    # a try with retries left asks Airflow for a later try
    with pytest.raises(steps.ProviderBackoff, match="transient provider error"):
        steps.dispatch_batch_task(ctx, 0, retries_left=2, settings=settings)
    emails = table(settings.dispatch_db_url, "SELECT status FROM invoice_actions WHERE channel = 'email'")
    assert set(emails["status"]) <= {"scheduled", "manual"}

    monkeypatch.setattr(factory, "build_channels", real_build)  # the provider recovered
    retried = steps.dispatch_batch_task(ctx, 0, retries_left=1, settings=settings)
    assert retried["events"]["sent"] > 0
    sent = table(settings.dispatch_db_url, "SELECT action_id FROM invoice_actions WHERE status = 'sent'")
    assert len(list((demo_copy.outbox / "email").glob("*.eml"))) == len(
        table(
            settings.dispatch_db_url,
            "SELECT 1 FROM invoice_actions WHERE status = 'sent' AND channel = 'email'",
        )
    )
    assert (sends_per_action(demo_copy).reindex(sent["action_id"]) == 1).all()


def test_task_results_are_small_json_for_xcom(demo_copy: DemoCopy) -> None:
    import json

    settings = demo_copy.settings()
    ctx = RunContext.new(demo_days()[0], run_id="scheduled__xcom")
    outs = [
        steps.extract_invoices_task(ctx, settings),
        steps.tag_new_invoices_task(ctx, settings),
        steps.resolve_templates_task(ctx, settings),
        steps.compute_due_sends_task(ctx, settings=settings),
        steps.dispatch_batch_task(ctx, 0, settings=settings),
        steps.write_back_task(ctx, 1, 1, settings=settings),
    ]
    for out in outs:
        text = json.dumps(out)
        assert json.loads(text) == out
        assert len(text) < 4000  # counts, never rows
    assert outs[0]["imported"] > 0 and outs[4]["events"]["sent"] > 0


# --- a try that died midway, settled by the next try of the same batch --------------------------


def _died_midway_then_retried(copy: DemoCopy, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Batch 0 hands 4 messages over, dies, and is tried again; returns the settled actions."""
    settings = copy.settings()
    ctx = RunContext.new(demo_days()[0], run_id="scheduled__died_midway")
    steps.extract_invoices_task(ctx, settings)
    steps.tag_new_invoices_task(ctx, settings)
    steps.resolve_templates_task(ctx, settings)
    steps.compute_due_sends_task(ctx, settings=settings)
    state = {"left": 1, "after": 4, "handed_over": 0}
    with dying_channels(monkeypatch, state), pytest.raises(RuntimeError, match="worker lost"):
        steps.dispatch_batch_task(ctx, 0, retries_left=3, settings=settings)
    steps.dispatch_batch_task(ctx, 0, retries_left=2, settings=settings)
    settled = table(copy.dispatch_url, "SELECT action_id FROM action_events WHERE event = 'settled_sent'")
    assert len(settled) == state["handed_over"] == 4
    assert (sends_per_action(copy) == 1).all()
    return settled["action_id"].tolist()


def test_the_next_try_of_a_batch_settles_what_the_dead_try_handed_over(
    demo_copy: DemoCopy, monkeypatch: pytest.MonkeyPatch
) -> None:
    settled = _died_midway_then_retried(demo_copy, monkeypatch)
    actions = table(demo_copy.dispatch_url, "SELECT action_id, status, provider FROM invoice_actions")
    mine = actions.set_index("action_id").loc[settled]
    assert (mine["status"] == "sent").all() and (mine["provider"] == "outbox").all()
    assert not (actions["status"] == "sending").any()


def test_an_action_settled_after_a_crash_keeps_the_recipient_it_was_sent_to(
    demo_copy: DemoCopy, monkeypatch: pytest.MonkeyPatch
) -> None:
    settled = _died_midway_then_retried(demo_copy, monkeypatch)
    actions = table(demo_copy.dispatch_url, "SELECT action_id, recipient FROM invoice_actions")
    assert actions.set_index("action_id").loc[settled, "recipient"].notna().all()
