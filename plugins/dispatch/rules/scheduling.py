"""When an invoicing action is scheduled, and which run sends it (SPEC R10, B4, "Time").

Pure functions over whole columns: no database, no clock. Every instant comes in and goes
out as tz-aware UTC; days and sending times are reckoned in the org's IANA zone. The work
is grouped by the org's calendar parameters (time zone, sending time, holiday country) —
a handful of groups — and never loops over rows, because a run may hold a whole backlog.

Public surface:

- :func:`scheduled_instants` — ``scheduled_for`` (UTC) and ``scheduled_local_date`` of each
  action from its invoice's issue date, import instant, template delay and org calendar.
- :func:`classify_due` — which actions a run hands over (``due``, ``deliver_at``) and which
  manual ones enter the to-do list (``enters_todo``).
- :func:`business_day_calendar` — the cached public-holiday dates of a country.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping
from typing import Final, NamedTuple, cast

import holidays as holidays_lib
import numpy as np
import pandas as pd

from dispatch.rules.horizon import run_horizon

WEEKMASK = "Mon Tue Wed Thu Fri"
"""Business days are Monday to Friday (SPEC R10); public holidays are added per country (B4)."""

_TS_UNIT: Final = "ns"
_TS_UTC: Final = "datetime64[ns, UTC]"  # the dtype of instants, _TS_UNIT in UTC
_NO_COUNTRY = ""

SUPPORTED_FROM = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
SUPPORTED_UNTIL = dt.datetime(2200, 1, 1, tzinfo=dt.UTC)
"""The instants the scheduler computes with, ``[SUPPORTED_FROM, SUPPORTED_UNTIL)`` UTC.

Nanosecond timestamps, which pandas computes with, overflow outside 1677–2262 and then wrap
around silently (a year-2926 typo became a date in 1757 and was sent at once). Every
instant is checked against this window before it reaches one: ``--at`` and the
configuration's instants are refused outside it, and :func:`scheduled_instants` gives the
rows that would leave it no instant and a ``schedule_error`` instead.
"""
SUPPORTED_RANGE_TEXT = "the supported range 1970-01-01T00:00:00Z to 2200-01-01T00:00:00Z"
MAX_DELAY_DAYS = 3650
"""The longest template delay the configuration accepts (ten years)."""

_FIRST_DAY = np.datetime64("1970-01-01", "D")
_LAST_DAY = np.datetime64("2199-12-31", "D")
# Delays are clipped to this before any arithmetic: beyond the window anyway, and small
# enough that issue date + delay cannot overflow a datetime64[D].
_DELAY_CLIP = 200_000

SCHEDULE_INPUT_COLUMNS = ("issue_date", "first_seen_at", "delay_days", "timezone", "send_time", "holidays")
OUT_OF_RANGE = "issue date, delay or import instant outside " + SUPPORTED_RANGE_TEXT
"""The ``schedule_error`` of a row :func:`scheduled_instants` cannot schedule."""
DUE_INPUT_COLUMNS = ("scheduled_for", "scheduled_local_date", "timezone", "channel", "automatic")

UNSCHEDULABLE_CHANNELS = frozenset({"letter"})
"""Channels that never send ahead of the scheduled local day, whatever their backend (SPEC "Time")."""


class ChannelScheduling(NamedTuple):
    """What a channel backend can do about delivery time.

    A NamedTuple so that callers may equally pass a plain ``(can_schedule, max_ahead)`` tuple.
    ``max_ahead`` bounds how far ahead the provider accepts a delivery time (SendGrid's
    ``send_at``: 72 h); ``None`` means no bound.
    """

    can_schedule: bool
    max_ahead: dt.timedelta | None = None


# --------------------------------------------------------------------------- calendars


@functools.lru_cache(maxsize=256)
def business_day_calendar(country: str | None, years: range) -> np.ndarray:
    """Public holidays of ``country`` in ``years`` as a sorted, read-only ``datetime64[D]`` array.

    Cached per ``(country, years)`` because building a ``holidays`` calendar costs
    milliseconds per year and every run asks for the same few. ``None``/``""`` means the org
    names no holiday country: no holidays, only weekends are skipped. An unknown country code
    raises ``ValueError`` (the configuration loader refuses those before they get here).
    """
    if not country:
        dates = np.array([], dtype="datetime64[D]")
    else:
        try:
            calendar = holidays_lib.country_holidays(country, years=list(years))
        except NotImplementedError as exc:
            raise ValueError(f"unknown holiday country {country!r}") from exc
        dates = np.array(sorted(calendar.keys()), dtype="datetime64[D]")
    dates.setflags(write=False)
    return dates


@functools.lru_cache(maxsize=256)
def _busdaycalendar(country: str | None, years: range) -> np.busdaycalendar:
    """NumPy's business-day calendar for a country; cached since it is rebuilt per call otherwise."""
    return np.busdaycalendar(weekmask=WEEKMASK, holidays=business_day_calendar(country, years))


def _roll_to_business_day(days: np.ndarray, country: str | None) -> np.ndarray:
    """Move every ``datetime64[D]`` forward to the first business day on or after it.

    The holiday years span the data plus one year, so that a day rolled past 31 December
    still skips the holidays of early January.
    """
    if days.size == 0:
        return days
    years = days.astype("datetime64[Y]").astype(int) + 1970
    span = range(int(years.min()), int(years.max()) + 2)
    return np.busday_offset(days, 0, roll="forward", busdaycal=_busdaycalendar(country or None, span))


# --------------------------------------------------------------------------- scheduled instants


def _parse_send_time(value: object) -> pd.Timedelta:
    """'HH:MM' (or 'HH:MM:SS', or a ``datetime.time``) as an offset from local midnight."""
    if isinstance(value, dt.time):
        return pd.Timedelta(hours=value.hour, minutes=value.minute, seconds=value.second)
    text = str(value).strip()
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts):
        raise ValueError(f"send_time must be 'HH:MM', got {value!r}")
    hours, minutes = int(parts[0]), int(parts[1])
    seconds = int(parts[2]) if len(parts) == 3 else 0
    if not (0 <= hours < 24 and 0 <= minutes < 60 and 0 <= seconds < 60):
        raise ValueError(f"send_time must be 'HH:MM', got {value!r}")
    return pd.Timedelta(hours=hours, minutes=minutes, seconds=seconds)


def _as_days(values: pd.Series) -> np.ndarray:
    """Dates (``date`` objects, strings or datetime64, naive) as ``datetime64[D]``; missing -> NaT."""
    stamps = pd.to_datetime(values)
    if isinstance(stamps.dtype, pd.DatetimeTZDtype):
        stamps = stamps.dt.tz_localize(None)
    return stamps.to_numpy(dtype="datetime64[D]")


def _as_utc(values: pd.Series) -> pd.Series:
    """Instants as tz-aware UTC; naive values are taken as UTC (the storage convention)."""
    return pd.to_datetime(values, utc=True).dt.as_unit(_TS_UNIT)


def in_supported_range(instant: dt.datetime) -> bool:
    """Whether an aware instant lies in ``[SUPPORTED_FROM, SUPPORTED_UNTIL)``."""
    return SUPPORTED_FROM <= instant < SUPPORTED_UNTIL


def _instants_in_window(values: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Instants as tz-aware UTC nanoseconds, NaT outside the supported window, and the mask of
    the values that were outside it. Read at the values' own resolution first, so that a
    far-future instant is seen as such and not wrapped around by the conversion."""
    stamps = pd.to_datetime(values, utc=True)
    low, high = pd.Timestamp(SUPPORTED_FROM), pd.Timestamp(SUPPORTED_UNTIL)
    outside = (stamps.notna() & ((stamps < low) | (stamps >= high))).to_numpy()
    return stamps.where(~outside).dt.as_unit(_TS_UNIT), outside


def local_wall_time_to_utc(local: pd.Series, timezone: str) -> pd.Series:
    """Naive local wall times in ``timezone`` -> tz-aware UTC, DST handled.

    A wall time that does not exist (spring forward gap) is shifted forward to the first
    instant after the gap (02:30 on a Paris spring-forward day -> 03:00 local); an ambiguous
    one (autumn fall back) takes its first occurrence, the one still on summer time. Both
    choices keep the message on the intended day and never send it twice.
    """
    first_occurrence = np.ones(len(local), dtype=bool)
    aware = local.dt.tz_localize(timezone, ambiguous=first_occurrence, nonexistent="shift_forward")
    return aware.dt.tz_convert("UTC").dt.as_unit(_TS_UNIT)


def scheduled_instants(df: pd.DataFrame) -> pd.DataFrame:
    """Scheduled instant of each automatic (or manual) action, per SPEC "Time" and R10/B4.

    Input columns: ``issue_date`` (dates: ``date`` objects or naive datetime64),
    ``first_seen_at`` (the import instant; tz-aware UTC, naive taken as UTC), ``delay_days``
    (int >= 0), ``timezone`` (IANA), ``send_time`` ('HH:MM'), ``holidays`` (ISO country code,
    or None/NaN/'' for none).

    Returns a frame on the same index with:

    - ``scheduled_for`` — ``datetime64[ns, UTC]``;
    - ``scheduled_local_date`` — ``datetime64[ns]``, naive midnight of the scheduled day in
      the org's zone (a normalized date, not a ``datetime.date``, so it compares as a column).

    Rules:

    - delay 0 and issue date on or before the import date in the org's zone: the import
      instant itself, on the import's local date (the importing run sends it);
    - delay 0 and issue date after it: the issue date moved forward to a business day, at
      the sending time;
    - delay d >= 1: issue date + d calendar days moved forward to a business day, at the
      sending time — even when that instant already passed at import (the next run sends it
      late, which :func:`classify_due` treats as overdue).

    A business day is Monday–Friday and not a public holiday of the ``holidays`` country.
    Wall time -> UTC follows :func:`local_wall_time_to_utc`. Rows with a missing issue date
    or import instant get NaT (callers reject such invoices at import, SPEC B6); a negative
    or missing delay raises ``ValueError`` because the configuration forbids it.

    - ``schedule_error`` — None, or :data:`OUT_OF_RANGE` for a row whose issue date, issue
      date + delay or import instant lies outside ``[SUPPORTED_FROM, SUPPORTED_UNTIL)``; such
      a row gets NaT (never due) instead of a wrapped-around instant.
    """
    missing = [c for c in SCHEDULE_INPUT_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"scheduled_instants: missing columns {missing}")

    delay = pd.to_numeric(df["delay_days"], errors="coerce").astype(float)
    if delay.isna().any() or (delay < 0).any() or (delay % 1 != 0).any():
        raise ValueError("delay_days must be an integer >= 0 on every row")
    # Whole-day arithmetic on datetime64[D] cannot overflow once the delay is clipped; the
    # window check below then keeps every row that reaches nanoseconds inside 1970..2200.
    delay_days = delay.clip(upper=_DELAY_CLIP).to_numpy(dtype="int64").astype("timedelta64[D]")
    issue = _as_days(df["issue_date"])
    target = issue + delay_days
    first_seen_utc, first_outside = _instants_in_window(df["first_seen_at"])
    outside = (
        first_outside
        | (~np.isnat(issue) & ((issue < _FIRST_DAY) | (issue > _LAST_DAY)))
        | (~np.isnat(target) & (target > _LAST_DAY))
    )
    issue = np.where(outside, np.datetime64("NaT", "D"), issue)
    # UTC instants as naive numpy values while computing; made tz-aware once at the end.
    first_seen = first_seen_utc.dt.tz_localize(None).to_numpy(dtype=f"datetime64[{_TS_UNIT}]")
    first_seen = np.where(outside, np.datetime64("NaT", _TS_UNIT), first_seen)

    scheduled_for = np.full(len(df), np.datetime64("NaT"), dtype=f"datetime64[{_TS_UNIT}]")
    local_date = np.full(len(df), np.datetime64("NaT"), dtype="datetime64[D]")

    country = df["holidays"].astype(object).where(df["holidays"].notna(), _NO_COUNTRY).astype(str)
    org_calendar = pd.DataFrame(
        {
            "timezone": df["timezone"].astype(str).to_numpy(),
            "send_time": df["send_time"].astype(str).to_numpy(),
            "country": country.to_numpy(),
        }
    )
    groups = cast(
        "dict[tuple[str, str, str], np.ndarray]",
        org_calendar.groupby(["timezone", "send_time", "country"], sort=False).indices,
    )
    for (timezone, send_time, holiday_country), rows in groups.items():
        g_first, g_issue, g_delay = first_seen[rows], issue[rows], delay_days[rows]
        known = ~np.isnat(g_issue) & ~np.isnat(g_first)

        import_local = _as_days(
            pd.Series(g_first).dt.tz_localize("UTC").dt.tz_convert(timezone).dt.tz_localize(None)
        )
        at_import = known & (g_delay == np.timedelta64(0, "D")) & (g_issue <= import_local)
        later = known & ~at_import

        scheduled_for[rows[at_import]] = g_first[at_import]
        local_date[rows[at_import]] = import_local[at_import]

        if later.any():
            days = _roll_to_business_day(g_issue[later] + g_delay[later], holiday_country)
            wall = pd.Series(days.astype(f"datetime64[{_TS_UNIT}]")) + _parse_send_time(send_time)
            utc = local_wall_time_to_utc(wall, timezone)
            scheduled_for[rows[later]] = utc.dt.tz_localize(None).to_numpy(dtype=f"datetime64[{_TS_UNIT}]")
            local_date[rows[later]] = days

    return pd.DataFrame(
        {
            "scheduled_for": pd.Series(scheduled_for, index=df.index).dt.tz_localize("UTC"),
            "scheduled_local_date": pd.Series(local_date.astype(f"datetime64[{_TS_UNIT}]"), index=df.index),
            "schedule_error": pd.Series(OUT_OF_RANGE, index=df.index, dtype=object).where(outside, None),
        },
        index=df.index,
    )


# --------------------------------------------------------------------------- runs and due rule


def _utc_timestamp(value: dt.datetime | pd.Timestamp) -> pd.Timestamp:
    """An instant as a UTC ``Timestamp``; naive values are taken as UTC (the storage convention)."""
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _channel_rules(
    channels: pd.Series, rules: Mapping[str, ChannelScheduling | tuple[bool, dt.timedelta | None]]
) -> tuple[np.ndarray, pd.Series]:
    """Per row: can the channel schedule, and its furthest delivery time ahead (NaT = no bound).

    Letters never schedule whatever the mapping says (SPEC: "letters whatever their
    backend"); a channel missing from the mapping is treated as unable to schedule, which at
    worst sends on the scheduled day instead of ahead of it — never early.
    """
    can: dict[str, bool] = {}
    ahead_seconds: dict[str, float] = {}
    for name, rule in rules.items():
        can_schedule, ahead = ChannelScheduling(*rule)
        can[name] = bool(can_schedule) and name not in UNSCHEDULABLE_CHANNELS
        if ahead is not None:
            ahead_seconds[name] = pd.Timedelta(ahead).total_seconds()
    can_mask = channels.isin([name for name, ok in can.items() if ok]).to_numpy()
    max_ahead = pd.to_timedelta(channels.map(ahead_seconds).astype(float), unit="s")
    return can_mask, max_ahead


def _run_local_dates(as_of: pd.Timestamp, timezones: pd.Series) -> pd.Series:
    """The run's local date (naive midnight) in each row's zone; one conversion per distinct zone."""
    per_zone = {
        tz: as_of.tz_convert(tz).tz_localize(None).normalize() for tz in pd.unique(timezones.astype(str))
    }
    return pd.to_datetime(timezones.astype(str).map(per_zone)).dt.as_unit(_TS_UNIT)


def classify_due(
    actions: pd.DataFrame,
    as_of: dt.datetime,
    channels: Mapping[str, ChannelScheduling | tuple[bool, dt.timedelta | None]],
    horizon: dt.datetime | None = None,
) -> pd.DataFrame:
    """Decide what the run as of ``as_of`` does with each scheduled action (SPEC "Time", due rule).

    ``actions`` needs ``scheduled_for`` (UTC), ``scheduled_local_date`` (date or naive
    datetime), ``timezone`` (the org's IANA zone), ``channel`` and ``automatic`` (bool).
    ``channels`` maps a channel name to ``(can_schedule, max_ahead)`` for the backend in use
    (e.g. ``{"email": (True, timedelta(hours=72)), "sms": (True, None), "letter": (False,
    None)}``). ``horizon`` defaults to
    :func:`dispatch.rules.horizon.run_horizon` of ``as_of`` on the default schedule.

    Returns a frame on the same index with:

    - ``due`` (bool) — automatic actions to hand over now. A channel that can schedule takes
      every action scheduled before the horizon, overdue ones included, and within its
      ``max_ahead`` of ``as_of``; one that cannot (SMTP, letters) only those whose scheduled
      local date is on or before the run's local date in the org's zone — never ahead of the
      day, even when the instant is before the horizon.
    - ``deliver_at`` (``datetime64[ns, UTC]``) — for due actions the later of the scheduled
      instant and ``as_of`` (the hand-over); NaT otherwise.
    - ``enters_todo`` (bool) — manual actions (``automatic`` False) whose scheduled local
      date has come (the rule of channels that cannot schedule); they are never ``due``.
    """
    missing = [c for c in DUE_INPUT_COLUMNS if c not in actions.columns]
    if missing:
        raise ValueError(f"classify_due: missing columns {missing}")

    now = _utc_timestamp(as_of).as_unit(_TS_UNIT)
    until = _utc_timestamp(horizon if horizon is not None else run_horizon(as_of)).as_unit(_TS_UNIT)

    scheduled_for = _as_utc(actions["scheduled_for"])
    local_date = pd.to_datetime(actions["scheduled_local_date"]).dt.as_unit(_TS_UNIT)
    run_local_date = _run_local_dates(now, actions["timezone"])
    automatic = actions["automatic"].astype(object).fillna(False).astype(bool).to_numpy()
    can_schedule, max_ahead = _channel_rules(actions["channel"].astype(str), channels)

    day_has_come = (local_date <= run_local_date).to_numpy()  # NaT compares False
    before_horizon = (scheduled_for < until).to_numpy()
    within_reach = (max_ahead.isna() | (scheduled_for <= now + max_ahead)).to_numpy()

    due = automatic & np.where(can_schedule, before_horizon & within_reach, day_has_come)
    due &= scheduled_for.notna().to_numpy()
    enters_todo = ~automatic & day_has_come

    deliver_at = scheduled_for.where(scheduled_for > now, now).where(due)
    return pd.DataFrame(
        {
            "due": due,
            "deliver_at": deliver_at.astype(_TS_UTC),
            "enters_todo": enters_todo,
        },
        index=actions.index,
    )
