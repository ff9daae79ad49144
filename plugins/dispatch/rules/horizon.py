"""The run horizon: until when a run is responsible for what falls due (SPEC "Time", due rule).

A run hands over everything due before the *next* run of the schedule, so the horizon is the
schedule's first fire time strictly after the run's as-of instant. The schedule is defined
here once — the DAG's timetable (``dags/invoice_dispatch.py``) and ``dispatch run`` both take
it from :func:`configured_schedule` — so changing the cron changes what the DAG runs *and*
what every run covers, from Airflow or from the command line alike.

Pure functions: the environment is passed in as a mapping. Light imports only (croniter and
the standard library): the DAG file imports this module on every parse.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import NamedTuple
from zoneinfo import ZoneInfo

from croniter import croniter

from dispatch.errors import DispatchError

#: The default schedule: weekdays at 05:00 UTC (SPEC "Time": one run per business day).
DEFAULT_CRON = "0 5 * * 1-5"
DEFAULT_TIMEZONE = "UTC"
CRON_ENV = "DISPATCH_SCHEDULE_CRON"
TIMEZONE_ENV = "DISPATCH_SCHEDULE_TZ"


class Schedule(NamedTuple):
    """A cron expression read in ``timezone``'s wall clock (as Airflow's CronTriggerTimetable)."""

    cron: str = DEFAULT_CRON
    timezone: str = DEFAULT_TIMEZONE


def configured_schedule(environ: Mapping[str, str]) -> Schedule:
    """``DISPATCH_SCHEDULE_CRON`` and ``DISPATCH_SCHEDULE_TZ`` (empty or unset: the defaults);
    a bad value is refused in one line naming the variable."""
    cron = environ.get(CRON_ENV) or DEFAULT_CRON
    if not croniter.is_valid(cron):
        raise DispatchError(f"{CRON_ENV}={cron!r}: not a cron expression")
    tz = environ.get(TIMEZONE_ENV) or DEFAULT_TIMEZONE
    try:
        ZoneInfo(tz)
    except (ValueError, KeyError) as exc:
        raise DispatchError(f"{TIMEZONE_ENV}={tz!r}: unknown time zone") from exc
    return Schedule(cron, tz)


def run_horizon(as_of: dt.datetime, schedule: Schedule = Schedule()) -> dt.datetime:
    """The schedule's first fire time strictly after ``as_of``, as an aware UTC ``datetime``.

    A naive ``as_of`` is taken as UTC. The cron is matched against the wall clock of the
    schedule's time zone, so a 06:30 Paris schedule stays at 06:30 across a DST change.
    Public holidays are not skipped: the DAG runs on them too.
    """
    zone = ZoneInfo(schedule.timezone)
    utc = as_of.replace(tzinfo=dt.UTC) if as_of.tzinfo is None else as_of.astimezone(dt.UTC)
    local = utc.astimezone(zone).replace(tzinfo=None)
    fire = croniter(schedule.cron, local).get_next(dt.datetime)
    return fire.replace(tzinfo=zone).astimezone(dt.UTC)
