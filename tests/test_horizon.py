"""The run horizon — the schedule's first fire time after the as-of instant — is one function,
and ``dispatch run`` and the DAG's runs both take it from the same schedule."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pendulum
import pytest
from dispatch.errors import DispatchError
from dispatch.rules.horizon import DEFAULT_CRON, Schedule, configured_schedule, run_horizon
from dispatch.runtime import airflow_tasks as steps
from dispatch.runtime.runs import RunContext
from hypothesis import given
from hypothesis import strategies as st

UTC = dt.UTC
MONDAY = dt.datetime(2026, 11, 23, 5, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("as_of", "horizon"),
    [
        ("2026-12-03T05:00:00+00:00", "2026-12-04T05:00:00+00:00"),  # Thursday -> Friday
        ("2026-12-04T05:00:00+00:00", "2026-12-07T05:00:00+00:00"),  # Friday -> Monday
        ("2026-12-05T11:15:30+00:00", "2026-12-07T05:00:00+00:00"),  # Saturday -> Monday's run
        ("2026-12-06T23:59:00+00:00", "2026-12-07T05:00:00+00:00"),  # Sunday -> Monday's run
        ("2026-12-04T23:30:00-05:00", "2026-12-07T05:00:00+00:00"),  # that is Sat 04:30Z
        ("2026-12-07T04:59:59.999999+00:00", "2026-12-07T05:00:00+00:00"),  # just before a run
        ("2026-12-07T05:00:00.000001+00:00", "2026-12-08T05:00:00+00:00"),  # just after one
        ("2026-11-23T14:37:00+00:00", "2026-11-24T05:00:00+00:00"),  # a manual run: the next run
        ("2026-12-24T05:00:00+00:00", "2026-12-25T05:00:00+00:00"),  # holidays are not skipped
    ],
)
def test_the_horizon_is_the_next_run_of_the_default_schedule(as_of: str, horizon: str) -> None:
    result = run_horizon(dt.datetime.fromisoformat(as_of))
    assert result == dt.datetime.fromisoformat(horizon)
    assert result.tzinfo is UTC


def test_a_naive_as_of_is_taken_as_utc() -> None:
    assert run_horizon(dt.datetime(2026, 12, 4, 5, 0)) == dt.datetime(2026, 12, 7, 5, 0, tzinfo=UTC)


def test_the_cron_is_read_in_its_time_zone_across_a_dst_change() -> None:
    # Friday 06:30 in Paris (CET, UTC+1); the next run is Monday 06:30 CEST (UTC+2).
    friday = dt.datetime(2026, 3, 27, 5, 30, tzinfo=UTC)
    paris = Schedule("30 6 * * 1-5", "Europe/Paris")
    assert run_horizon(friday, paris) == dt.datetime(2026, 3, 30, 4, 30, tzinfo=UTC)


def test_the_schedule_comes_from_the_environment_or_is_refused_in_one_line() -> None:
    assert configured_schedule({}) == Schedule(DEFAULT_CRON, "UTC") == Schedule()
    assert configured_schedule({"DISPATCH_SCHEDULE_CRON": "", "DISPATCH_SCHEDULE_TZ": ""}) == Schedule()
    custom = {"DISPATCH_SCHEDULE_CRON": "0 7 * * 1-6", "DISPATCH_SCHEDULE_TZ": "Asia/Tokyo"}
    assert configured_schedule(custom) == Schedule("0 7 * * 1-6", "Asia/Tokyo")
    with pytest.raises(DispatchError, match=r"^DISPATCH_SCHEDULE_CRON='every day': not a cron expression$"):
        configured_schedule({"DISPATCH_SCHEDULE_CRON": "every day"})
    with pytest.raises(DispatchError, match=r"^DISPATCH_SCHEDULE_TZ='Mars/Olympus': unknown time zone$"):
        configured_schedule({"DISPATCH_SCHEDULE_TZ": "Mars/Olympus"})


@pytest.mark.parametrize(
    "env",
    [{}, {"DISPATCH_SCHEDULE_CRON": "30 6 * * 1-6", "DISPATCH_SCHEDULE_TZ": "Europe/Paris"}],
)
def test_the_cli_and_the_dag_cover_the_same_time(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Changing the cron changes the horizon of ``dispatch run`` as well as the DAG's."""
    for name in ("DISPATCH_SCHEDULE_CRON", "DISPATCH_SCHEDULE_TZ"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = steps.dag_config(env)
    for hours in range(0, 24 * 8, 5):
        as_of = MONDAY + dt.timedelta(hours=hours, minutes=7)
        context = {"run_id": "manual__x", "logical_date": pendulum.instance(as_of)}
        dag_run = steps.run_from_context(context, config)
        cli_run = RunContext.new(as_of)
        assert cli_run.horizon == dag_run.horizon == run_horizon(as_of, configured_schedule(env))
    # Saturday noon UTC: Monday 05:00 UTC by default; with the Paris schedule Saturday's 06:30
    # run has passed, the next is Monday 06:30 CET.
    expected = (5, 30) if env else (5, 0)
    saturday_noon = dt.datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    assert RunContext.new(saturday_noon).horizon == dt.datetime(2026, 11, 30, *expected, tzinfo=UTC)


def test_a_given_horizon_is_kept() -> None:
    given_horizon = dt.datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    assert RunContext.new(MONDAY, horizon=given_horizon).horizon == given_horizon


# --- properties ---------------------------------------------------------------------------------

ZONES = ("UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo", "Pacific/Auckland", "America/Sao_Paulo")
# Daytime fire times: the wall clock of every zone above exists exactly once at these hours.
CRONS = ("0 5 * * 1-5", "30 6 * * 1-5", "15 7 * * *", "0 9 * * 1,3,5", "45 5 * * 6")

instants = st.datetimes(
    min_value=dt.datetime(1990, 1, 1), max_value=dt.datetime(2150, 1, 1), timezones=st.just(UTC)
)
schedules = st.builds(Schedule, st.sampled_from(CRONS), st.sampled_from(ZONES))


def _is_fire_time(instant: dt.datetime, schedule: Schedule) -> bool:
    minute, hour, _, _, weekdays = schedule.cron.split()
    local = instant.astimezone(ZoneInfo(schedule.timezone))
    days = range(7) if weekdays == "*" else _weekdays(weekdays)
    return (
        (local.minute, local.hour) == (int(minute), int(hour))
        and local.second == local.microsecond == 0
        and (local.isoweekday() % 7) in days
    )


def _weekdays(field: str) -> set[int]:
    out: set[int] = set()
    for part in field.split(","):
        low, _, high = part.partition("-")
        out.update(range(int(low), int(high or low) + 1))
    return out


@given(instants, schedules)
def test_the_horizon_is_the_first_fire_time_strictly_after_the_as_of(
    as_of: dt.datetime, schedule: Schedule
) -> None:
    horizon = run_horizon(as_of, schedule)
    assert horizon.tzinfo is UTC
    assert horizon > as_of
    assert _is_fire_time(horizon, schedule)
    # no fire time in between: from any instant before the horizon the next run is the horizon
    assert run_horizon(horizon - dt.timedelta(microseconds=1), schedule) == horizon
    assert run_horizon(as_of + (horizon - as_of) / 2, schedule) == horizon
    # and a run at the horizon covers until the following one
    assert run_horizon(horizon, schedule) > horizon


@given(instants)
def test_on_the_default_schedule_a_run_covers_at_most_until_the_next_weekday_run(as_of: dt.datetime) -> None:
    horizon = run_horizon(as_of)
    assert horizon.weekday() < 5 and (horizon.hour, horizon.minute) == (5, 0)
    assert horizon - as_of <= dt.timedelta(days=3)
    if _is_fire_time(as_of, Schedule()):  # the DAG's own runs: the next weekday, same time
        days = 3 if as_of.weekday() == 4 else 1
        assert horizon == as_of + dt.timedelta(days=days)
