"""Scheduling rules (SPEC R10, B4, "Time"): scheduled instants, run horizon, due rule.

The worked examples of SPEC are replayed one by one: each asserts the exact UTC instant and
which of the daily runs (weekdays at 05:00Z) hands the message over.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import holidays as holidays_lib
import numpy as np
import pandas as pd
import pytest
from dispatch.rules.horizon import run_horizon
from dispatch.rules.scheduling import (
    MAX_DELAY_DAYS,
    OUT_OF_RANGE,
    SUPPORTED_FROM,
    SUPPORTED_UNTIL,
    ChannelScheduling,
    business_day_calendar,
    classify_due,
    local_wall_time_to_utc,
    scheduled_instants,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

UTC = dt.UTC
PARIS = "Europe/Paris"

# Channel capabilities of the backends the SPEC names.
OUTBOX = {"email": (True, None), "sms": (True, None), "letter": (False, None)}
SENDGRID = {"email": ChannelScheduling(True, dt.timedelta(hours=72)), "letter": (False, None)}
SMTP = {"email": (False, None), "letter": (False, None)}


def ts(text: str) -> pd.Timestamp:
    """A UTC instant from ISO text such as '2026-12-07T07:30Z'."""
    return pd.Timestamp(text).tz_convert("UTC")


def run_at(day: str) -> dt.datetime:
    """The daily run of ``day`` (YYYY-MM-DD): 05:00 UTC."""
    return dt.datetime.fromisoformat(f"{day}T05:00:00+00:00")


def schedule(
    issue: str,
    first_seen: str,
    delay: int,
    *,
    timezone: str = PARIS,
    send_time: str = "08:30",
    country: str | None = "FR",
) -> pd.Series:
    """scheduled_instants of one invoice, as a row with scheduled_for / scheduled_local_date."""
    frame = pd.DataFrame(
        {
            "issue_date": [dt.date.fromisoformat(issue)],
            "first_seen_at": [ts(first_seen)],
            "delay_days": [delay],
            "timezone": [timezone],
            "send_time": [send_time],
            "holidays": [country],
        }
    )
    return scheduled_instants(frame).iloc[0]


def action(
    scheduled: pd.Series,
    *,
    channel: str = "email",
    automatic: bool = True,
    timezone: str = PARIS,
) -> pd.DataFrame:
    """A one-row frame of actions as the dispatcher passes them to classify_due."""
    return pd.DataFrame(
        {
            "scheduled_for": [scheduled["scheduled_for"]],
            "scheduled_local_date": [scheduled["scheduled_local_date"]],
            "timezone": [timezone],
            "channel": [channel],
            "automatic": [automatic],
        }
    )


def at_run(actions: pd.DataFrame, day: str, channels=OUTBOX) -> pd.Series:
    """classify_due of a one-action frame at the 05:00Z run of ``day``, default horizon."""
    as_of = run_at(day)
    return classify_due(actions, as_of, channels, run_horizon(as_of)).iloc[0]


def sending_run(actions: pd.DataFrame, first_day: str, channels=OUTBOX) -> str:
    """Date of the first weekday 05:00Z run, from ``first_day`` on, that hands the action over."""
    for day in pd.bdate_range(first_day, periods=30):
        if at_run(actions, day.date().isoformat(), channels)["due"]:
            return day.date().isoformat()
    raise AssertionError("no run within 30 weekdays sends the action")


# --------------------------------------------------------------------------- SPEC worked examples


def test_example_delay0_issued_on_import_day_is_sent_by_the_importing_run():
    row = schedule("2026-12-02", "2026-12-02T05:00Z", 0)
    assert row["scheduled_for"] == ts("2026-12-02T05:00Z")
    assert row["scheduled_local_date"] == pd.Timestamp("2026-12-02")
    decision = at_run(action(row), "2026-12-02")
    assert decision["due"]
    assert decision["deliver_at"] == ts("2026-12-02T05:00Z")


def test_example_delay0_future_issue_date_is_sent_on_issue_day_not_before():
    row = schedule("2026-12-07", "2026-12-02T05:00Z", 0)
    assert row["scheduled_for"] == ts("2026-12-07T07:30Z")
    assert not at_run(action(row), "2026-12-02")["due"]
    assert not at_run(action(row), "2026-12-04")["due"]  # Friday covers only until Monday 05:00Z
    assert sending_run(action(row), "2026-12-02") == "2026-12-07"
    assert at_run(action(row), "2026-12-07")["deliver_at"] == ts("2026-12-07T07:30Z")


def test_example_delay3_weekend_moves_to_monday():
    row = schedule("2026-12-02", "2026-12-02T05:00Z", 3)  # Wed + 3 = Sat -> Mon
    assert row["scheduled_for"] == ts("2026-12-07T07:30Z")
    assert row["scheduled_local_date"] == pd.Timestamp("2026-12-07")
    friday = at_run(action(row), "2026-12-04")
    assert not friday["due"]
    assert pd.isna(friday["deliver_at"])
    monday = at_run(action(row), "2026-12-07")
    assert monday["due"]
    assert monday["deliver_at"] == ts("2026-12-07T07:30Z")
    assert sending_run(action(row), "2026-12-02") == "2026-12-07"


def test_example_delay3_christmas_holiday_moves_to_monday_28():
    row = schedule("2026-12-22", "2026-12-22T05:00Z", 3)  # Tue + 3 = Fri 25 Dec (holiday)
    assert row["scheduled_for"] == ts("2026-12-28T07:30Z")
    assert row["scheduled_local_date"] == pd.Timestamp("2026-12-28")
    assert not at_run(action(row), "2026-12-25")["due"]  # the DAG runs on holidays too
    assert sending_run(action(row), "2026-12-22") == "2026-12-28"
    assert at_run(action(row), "2026-12-28")["deliver_at"] == ts("2026-12-28T07:30Z")


def test_example_sms_delay1_summer_time_is_0630_utc():
    row = schedule("2026-07-06", "2026-07-06T05:00Z", 1)
    assert row["scheduled_for"] == ts("2026-07-07T06:30Z")
    sms = action(row, channel="sms")
    assert not at_run(sms, "2026-07-06")["due"]
    assert sending_run(sms, "2026-07-06") == "2026-07-07"
    assert at_run(sms, "2026-07-07")["deliver_at"] == ts("2026-07-07T06:30Z")


def test_example_new_york_delay1_after_dst_end_is_1400_utc():
    ny = "America/New_York"
    row = schedule("2026-11-02", "2026-11-02T05:00Z", 1, timezone=ny, send_time="09:00", country=None)
    assert row["scheduled_for"] == ts("2026-11-03T14:00Z")
    assert row["scheduled_local_date"] == pd.Timestamp("2026-11-03")
    assert sending_run(action(row, timezone=ny), "2026-11-02") == "2026-11-03"
    assert at_run(action(row, timezone=ny), "2026-11-03")["deliver_at"] == ts("2026-11-03T14:00Z")


def test_example_tokyo_delay1_handed_over_by_monday_run_with_delivery_time():
    tokyo = "Asia/Tokyo"
    row = schedule("2026-11-30", "2026-11-30T05:00Z", 1, timezone=tokyo, country=None)
    assert row["scheduled_for"] == ts("2026-11-30T23:30Z")  # 08:30 on Tue 1 Dec in Tokyo
    assert row["scheduled_local_date"] == pd.Timestamp("2026-12-01")
    monday = at_run(action(row, timezone=tokyo), "2026-11-30")
    assert monday["due"]
    assert monday["deliver_at"] == ts("2026-11-30T23:30Z")
    # SendGrid accepts it too: 18h30 ahead is within send_at's 72 h.
    assert at_run(action(row, timezone=tokyo), "2026-11-30", SENDGRID)["deliver_at"] == ts(
        "2026-11-30T23:30Z"
    )


# --------------------------------------------------------------------------- R10: delay 0


def test_delay0_issue_date_before_import_is_sent_at_import_instant():
    row = schedule("2026-11-20", "2026-12-02T05:00Z", 0)
    assert row["scheduled_for"] == ts("2026-12-02T05:00Z")
    assert row["scheduled_local_date"] == pd.Timestamp("2026-12-02")


def test_delay0_compares_issue_date_with_the_local_import_date_not_the_utc_one():
    # 20:00Z on 1 Dec is already 2 Dec 05:00 in Tokyo: an invoice issued 2 Dec is not "future".
    tokyo = schedule("2026-12-02", "2026-12-01T20:00Z", 0, timezone="Asia/Tokyo", country=None)
    assert tokyo["scheduled_for"] == ts("2026-12-01T20:00Z")
    assert tokyo["scheduled_local_date"] == pd.Timestamp("2026-12-02")
    # 03:00Z on 2 Dec is still 1 Dec in New York: issued 2 Dec is in the future there.
    ny = schedule("2026-12-02", "2026-12-02T03:00Z", 0, timezone="America/New_York", send_time="09:00")
    assert ny["scheduled_for"] == ts("2026-12-02T14:00Z")
    assert ny["scheduled_local_date"] == pd.Timestamp("2026-12-02")


def test_delay0_future_issue_date_on_weekend_moves_to_monday_send_time():
    row = schedule("2026-12-05", "2026-12-02T05:00Z", 0)  # Saturday
    assert row["scheduled_for"] == ts("2026-12-07T07:30Z")


def test_delay0_future_issue_date_on_holiday_moves_to_next_business_day():
    row = schedule("2026-11-11", "2026-11-02T05:00Z", 0)  # Armistice, Wednesday
    assert row["scheduled_for"] == ts("2026-11-12T07:30Z")


def test_delay_already_passed_at_import_is_sent_late_by_the_importing_run():
    row = schedule("2026-11-02", "2026-12-02T05:00Z", 3)
    assert row["scheduled_for"] == ts("2026-11-05T07:30Z")  # the instant is kept, not moved
    decision = at_run(action(row), "2026-12-02", SMTP)
    assert decision["due"]
    assert decision["deliver_at"] == ts("2026-12-02T05:00Z")


# --------------------------------------------------------------------------- B4: public holidays


def test_holidays_fr_skips_may_day_only_when_the_org_names_france():
    with_fr = schedule("2026-04-30", "2026-04-30T05:00Z", 1)  # Thu + 1 = Fri 1 May
    without = schedule("2026-04-30", "2026-04-30T05:00Z", 1, country=None)
    assert with_fr["scheduled_for"] == ts("2026-05-04T06:30Z")
    assert without["scheduled_for"] == ts("2026-05-01T06:30Z")


def test_holidays_roll_across_the_new_year_uses_next_years_calendar():
    row = schedule("2026-12-31", "2026-12-31T05:00Z", 1)  # Fri 1 Jan 2027, holiday
    assert row["scheduled_for"] == ts("2027-01-04T07:30Z")


def test_holidays_of_the_orgs_country_not_another():
    # 4 July 2030 is a Thursday: a US holiday, a working day in France.
    us = schedule(
        "2030-07-03", "2030-07-03T05:00Z", 1, timezone="America/New_York", send_time="09:00", country="US"
    )
    fr = schedule("2030-07-03", "2030-07-03T05:00Z", 1)
    assert us["scheduled_for"] == ts("2030-07-05T13:00Z")
    assert fr["scheduled_for"] == ts("2030-07-04T06:30Z")


def test_business_day_calendar_is_cached_and_read_only():
    first = business_day_calendar("FR", range(2026, 2028))
    assert business_day_calendar("FR", range(2026, 2028)) is first
    assert np.datetime64("2026-12-25") in first
    assert np.datetime64("2027-01-01") in first
    assert not first.flags.writeable
    assert business_day_calendar(None, range(2026, 2027)).size == 0


def test_business_day_calendar_refuses_unknown_country():
    with pytest.raises(ValueError, match="ZZ"):
        business_day_calendar("ZZ", range(2026, 2027))


# --------------------------------------------------------------------------- DST


def test_paris_summer_and_winter_send_time_map_to_different_utc_hours():
    summer = schedule("2026-03-27", "2026-03-27T05:00Z", 3)  # Fri + 3 = Mon 30 Mar, after spring forward
    winter = schedule("2026-10-23", "2026-10-23T05:00Z", 3)  # Fri + 3 = Mon 26 Oct, after fall back
    assert summer["scheduled_for"] == ts("2026-03-30T06:30Z")
    assert winter["scheduled_for"] == ts("2026-10-26T07:30Z")


def test_new_york_spring_forward_changes_the_utc_hour():
    before = schedule("2026-03-05", "2026-03-05T05:00Z", 1, timezone="America/New_York", send_time="09:00")
    after = schedule("2026-03-06", "2026-03-06T05:00Z", 3, timezone="America/New_York", send_time="09:00")
    assert before["scheduled_for"] == ts("2026-03-06T14:00Z")  # EST
    assert after["scheduled_for"] == ts("2026-03-09T13:00Z")  # EDT since Sun 8 Mar


def test_nonexistent_wall_time_shifts_forward_and_ambiguous_takes_first_occurrence():
    wall = pd.Series(pd.to_datetime(["2026-03-29 02:30", "2026-10-25 02:30"]))
    utc = local_wall_time_to_utc(wall, PARIS)
    assert utc[0] == ts("2026-03-29T01:00Z")  # 02:30 does not exist: 03:00 CEST
    assert utc[1] == ts("2026-10-25T00:30Z")  # 02:30 happens twice: the first, CEST


# --------------------------------------------------------------------------- frame behaviour


def test_mixed_orgs_in_one_frame_keep_their_own_zone_and_index():
    frame = pd.DataFrame(
        {
            "issue_date": pd.to_datetime(["2026-11-30", "2026-11-30", "2026-11-30"]),
            "first_seen_at": [ts("2026-11-30T05:00Z")] * 3,
            "delay_days": [1, 1, 0],
            "timezone": ["Asia/Tokyo", PARIS, "Asia/Tokyo"],
            "send_time": ["08:30", "08:30", "08:30"],
            "holidays": [np.nan, "FR", None],
        },
        index=["t1", "p1", "t0"],
    )
    result = scheduled_instants(frame)
    assert list(result.index) == ["t1", "p1", "t0"]
    assert list(result["scheduled_for"]) == [
        ts("2026-11-30T23:30Z"),
        ts("2026-12-01T07:30Z"),
        ts("2026-11-30T05:00Z"),
    ]
    assert str(result["scheduled_for"].dtype) == "datetime64[ns, UTC]"
    assert str(result["scheduled_local_date"].dtype) == "datetime64[ns]"


def test_missing_issue_date_gives_nat_and_negative_delay_is_refused():
    frame = pd.DataFrame(
        {
            "issue_date": [None, dt.date(2026, 12, 2)],
            "first_seen_at": [ts("2026-12-02T05:00Z")] * 2,
            "delay_days": [1, 1],
            "timezone": [PARIS] * 2,
            "send_time": ["08:30"] * 2,
            "holidays": ["FR"] * 2,
        }
    )
    result = scheduled_instants(frame)
    assert pd.isna(result["scheduled_for"][0])
    assert result["scheduled_for"][1] == ts("2026-12-03T07:30Z")
    with pytest.raises(ValueError, match="delay_days"):
        scheduled_instants(frame.assign(delay_days=[1, -1]))


def test_empty_frame_gives_empty_typed_result():
    frame = pd.DataFrame(
        columns=["issue_date", "first_seen_at", "delay_days", "timezone", "send_time", "holidays"]
    )
    result = scheduled_instants(frame)
    assert result.empty
    assert list(result.columns) == ["scheduled_for", "scheduled_local_date", "schedule_error"]


# --------------------------------------------------------------------------- due rule


def test_letters_and_smtp_wait_for_the_local_day_while_schedulable_email_goes_ahead():
    tokyo = "Asia/Tokyo"
    row = schedule("2026-11-30", "2026-11-30T05:00Z", 1, timezone=tokyo, country=None)  # Tue 08:30 Tokyo
    actions = pd.concat(
        [
            action(row, channel="email", timezone=tokyo),
            action(row, channel="letter", timezone=tokyo),
            action(row, channel="sms", timezone=tokyo),
        ],
        ignore_index=True,
    )
    monday = classify_due(actions, run_at("2026-11-30"), OUTBOX)
    assert list(monday["due"]) == [True, False, True]
    assert monday["deliver_at"][0] == ts("2026-11-30T23:30Z")
    assert pd.isna(monday["deliver_at"][1])

    smtp_monday = classify_due(actions.iloc[[0]], run_at("2026-11-30"), SMTP)
    assert not smtp_monday["due"].iloc[0]

    tuesday = classify_due(actions, run_at("2026-12-01"), {**OUTBOX, "email": (False, None)})
    assert list(tuesday["due"]) == [True, True, True]
    assert (tuesday["deliver_at"] == ts("2026-12-01T05:00Z")).all()  # already passed: hand-over time


def test_letter_never_schedules_even_if_the_mapping_says_it_can():
    tokyo = "Asia/Tokyo"
    row = schedule("2026-11-30", "2026-11-30T05:00Z", 1, timezone=tokyo, country=None)
    decision = classify_due(
        action(row, channel="letter", timezone=tokyo), run_at("2026-11-30"), {"letter": (True, None)}
    )
    assert not decision["due"].iloc[0]


def test_channel_missing_from_mapping_never_sends_ahead_of_the_day():
    tokyo = "Asia/Tokyo"
    row = schedule("2026-11-30", "2026-11-30T05:00Z", 1, timezone=tokyo, country=None)
    assert not classify_due(action(row, channel="sms", timezone=tokyo), run_at("2026-11-30"), {})["due"].iloc[
        0
    ]
    assert classify_due(action(row, channel="sms", timezone=tokyo), run_at("2026-12-01"), {})["due"].iloc[0]


def test_cannot_schedule_on_its_day_records_the_scheduled_instant_as_delivery_time():
    row = schedule("2026-12-02", "2026-12-02T05:00Z", 3)  # Mon 7 Dec 07:30Z
    decision = at_run(action(row, channel="letter"), "2026-12-07")
    assert decision["due"]
    assert decision["deliver_at"] == ts("2026-12-07T07:30Z")


def test_max_ahead_holds_back_what_the_provider_cannot_schedule_yet():
    row = schedule("2026-12-02", "2026-12-02T05:00Z", 5)  # Mon 7 Dec 07:30Z
    as_of = run_at("2026-12-02")
    week = dt.datetime(2026, 12, 9, 5, tzinfo=UTC)  # a deployment running weekly
    assert classify_due(action(row), as_of, OUTBOX, week)["due"].iloc[0]
    assert not classify_due(action(row), as_of, SENDGRID, week)["due"].iloc[0]  # 122.5 h > 72 h
    assert not classify_due(action(row), run_at("2026-12-04"), SENDGRID, week)["due"].iloc[0]  # 74.5 h
    friday_late = dt.datetime(2026, 12, 4, 8, tzinfo=UTC)
    assert classify_due(action(row), friday_late, SENDGRID, week)["due"].iloc[0]  # 71.5 h


def test_max_ahead_boundary_is_inclusive():
    scheduled = pd.Series(
        {"scheduled_for": ts("2026-12-07T05:00Z"), "scheduled_local_date": pd.Timestamp("2026-12-07")}
    )
    as_of = run_at("2026-12-04")  # exactly 72 h before
    horizon = dt.datetime(2026, 12, 8, tzinfo=UTC)
    assert classify_due(action(scheduled), as_of, SENDGRID, horizon)["due"].iloc[0]
    just_after = as_of - dt.timedelta(seconds=1)
    assert not classify_due(action(scheduled), just_after, SENDGRID, horizon)["due"].iloc[0]


def test_overdue_automatic_action_is_due_and_delivered_now():
    row = schedule("2026-12-02", "2026-12-02T05:00Z", 1)  # Thu 3 Dec 07:30Z
    decision = at_run(action(row), "2026-12-09", SENDGRID)
    assert decision["due"]
    assert decision["deliver_at"] == ts("2026-12-09T05:00Z")


def test_manual_template_enters_todo_on_its_local_day_and_is_never_due():
    row = schedule("2026-12-02", "2026-12-02T05:00Z", 3)  # Mon 7 Dec
    manual = action(row, automatic=False)
    friday = at_run(manual, "2026-12-04")
    monday = at_run(manual, "2026-12-07")
    assert not friday["enters_todo"] and not friday["due"]
    assert monday["enters_todo"] and not monday["due"]
    assert pd.isna(monday["deliver_at"])
    assert at_run(manual, "2026-12-08")["enters_todo"]  # stays in once its day has come


def test_manual_enters_todo_by_the_orgs_local_day_not_utc():
    tokyo = "Asia/Tokyo"
    row = schedule("2026-11-30", "2026-11-30T05:00Z", 1, timezone=tokyo, country=None)  # local Tue 1 Dec
    manual = action(row, automatic=False, timezone=tokyo)
    assert not at_run(manual, "2026-11-30")["enters_todo"]
    late_monday = classify_due(manual, dt.datetime(2026, 11, 30, 16, tzinfo=UTC), OUTBOX).iloc[0]
    assert late_monday["enters_todo"]  # 16:00Z Monday is Tuesday 01:00 in Tokyo


def test_automatic_action_never_enters_todo_through_the_due_rule():
    row = schedule("2026-12-02", "2026-12-02T05:00Z", 0)
    assert not at_run(action(row), "2026-12-02")["enters_todo"]


# --------------------------------------------------------------------------- properties

ZONES = ["Europe/Paris", "America/New_York", "Asia/Tokyo", "Australia/Sydney"]
COUNTRIES = ["FR", "US", "JP", "AU", None]

invoice_rows = st.tuples(
    st.dates(dt.date(2024, 1, 1), dt.date(2030, 12, 31)),
    st.integers(min_value=0, max_value=40),  # hours between the issue date's midnight UTC and import
    st.integers(min_value=1, max_value=30),
    st.sampled_from(ZONES),
    st.tuples(st.integers(0, 23), st.integers(0, 59)),
    st.sampled_from(COUNTRIES),
)


def _frame(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "issue_date": [r[0] for r in rows],
            "first_seen_at": [pd.Timestamp(r[0], tz="UTC") + pd.Timedelta(hours=r[1]) for r in rows],
            "delay_days": [r[2] for r in rows],
            "timezone": [r[3] for r in rows],
            "send_time": [f"{r[4][0]:02d}:{r[4][1]:02d}" for r in rows],
            "holidays": [r[5] for r in rows],
        }
    )


def _public_holidays(country: str | None, year: int) -> holidays_lib.HolidayBase | dict:
    return holidays_lib.country_holidays(country, years=[year, year + 1]) if country else {}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(invoice_rows, min_size=1, max_size=25))
def test_property_delay_lands_on_first_business_day_at_send_time(rows: list[tuple]):
    frame = _frame(rows)
    result = scheduled_instants(frame)
    for (issue, _, delay, zone, (hour, minute), country), (_, out) in zip(
        rows, result.iterrows(), strict=True
    ):
        local_day = out["scheduled_local_date"].date()
        calendar = _public_holidays(country, issue.year)
        assert local_day.weekday() < 5
        assert local_day not in calendar
        target = issue + dt.timedelta(days=delay)
        assert local_day >= target >= issue
        # Nothing between the target and the chosen day was a business day.
        skipped = pd.date_range(target, local_day - dt.timedelta(days=1)).date
        assert all(d.weekday() >= 5 or d in calendar for d in skipped)
        local = out["scheduled_for"].to_pydatetime().astimezone(ZoneInfo(zone))
        assert local.date() == local_day
        assert (local.hour, local.minute) == (hour, minute)


@settings(max_examples=60, deadline=None)
@given(st.lists(invoice_rows, min_size=1, max_size=25))
def test_property_delay0_is_import_instant_or_later_never_before_issue_date(rows: list[tuple]):
    frame = _frame(rows).assign(delay_days=0)
    result = scheduled_instants(frame)
    for (issue, _, _, zone, (hour, minute), _), first_seen, (_, out) in zip(
        rows, frame["first_seen_at"], result.iterrows(), strict=True
    ):
        import_day = first_seen.tz_convert(zone).date()
        assert out["scheduled_local_date"].date() >= issue
        if issue <= import_day:
            assert out["scheduled_for"] == first_seen
            assert out["scheduled_local_date"].date() == import_day
        else:
            local = out["scheduled_for"].to_pydatetime().astimezone(ZoneInfo(zone))
            assert out["scheduled_for"] > first_seen
            assert (local.hour, local.minute) == (hour, minute)
            assert local.date().weekday() < 5


action_rows = st.tuples(
    st.integers(min_value=-7 * 24 * 60, max_value=7 * 24 * 60),  # minutes from as_of
    st.sampled_from(ZONES),
    st.sampled_from(["email", "sms", "letter"]),
    st.booleans(),
)


@settings(max_examples=80, deadline=None)
@given(
    st.datetimes(dt.datetime(2025, 1, 1), dt.datetime(2030, 12, 31), timezones=st.just(UTC)),
    st.lists(action_rows, min_size=1, max_size=30),
    st.sampled_from([OUTBOX, SENDGRID, SMTP]),
)
def test_property_due_actions_are_delivered_at_or_after_hand_over(as_of, rows, channels):
    scheduled_for = pd.Series([pd.Timestamp(as_of) + pd.Timedelta(minutes=r[0]) for r in rows])
    zones = [r[1] for r in rows]
    local_dates = [
        s.tz_convert(z).tz_localize(None).normalize() for s, z in zip(scheduled_for, zones, strict=True)
    ]
    actions = pd.DataFrame(
        {
            "scheduled_for": scheduled_for,
            "scheduled_local_date": local_dates,
            "timezone": zones,
            "channel": [r[2] for r in rows],
            "automatic": [r[3] for r in rows],
        }
    )
    horizon = run_horizon(as_of)
    result = classify_due(actions, as_of, channels, horizon)
    due = result["due"]
    assert not (due & result["enters_todo"]).any()
    assert not (due & ~actions["automatic"]).any()
    assert (result.loc[due, "deliver_at"] >= pd.Timestamp(as_of)).all()
    expected = scheduled_for.where(scheduled_for > pd.Timestamp(as_of), pd.Timestamp(as_of))
    assert (result.loc[due, "deliver_at"] == expected[due]).all()
    assert result.loc[~due, "deliver_at"].isna().all()
    # A channel that schedules hands nothing over for after the horizon (one that cannot goes
    # on its local day, which an off-schedule run's horizon may end before), and overdue
    # automatic actions always go.
    can = {c: c != "letter" and bool(rule[0]) for c, rule in channels.items()}
    schedules = actions["channel"].map(lambda c: can.get(c, False))
    assert (result.loc[due & schedules, "deliver_at"] < pd.Timestamp(horizon)).all()
    overdue = actions["automatic"] & (scheduled_for <= pd.Timestamp(as_of))
    assert due[overdue].all()


# --------------------------------------------------------------------------- the supported window


def _one_per_row(issues: list, delays: list, first_seen: list | None = None) -> pd.DataFrame:
    n = len(issues)
    return pd.DataFrame(
        {
            "issue_date": issues,
            "first_seen_at": first_seen or [ts("2026-12-02T05:00Z")] * n,
            "delay_days": delays,
            "timezone": [PARIS] * n,
            "send_time": ["08:30"] * n,
            "holidays": ["FR"] * n,
        }
    )


def test_rows_that_would_leave_the_window_get_an_error_never_a_wrapped_date():
    frame = _one_per_row(
        [
            dt.date(2926, 12, 1),  # a year typo: was scheduled for 1757-10-23
            dt.date(9999, 12, 31),  # was 1816-03-29
            dt.date(2026, 12, 1),  # + 100000 days: was 1716-02-27, sent by the first run
            dt.date(2026, 12, 1),  # + 10**30 days: was an OverflowError
            dt.date(1969, 12, 31),
            dt.date(2199, 12, 1),  # + 60 days leaves the window
            dt.date(2026, 12, 1),  # fine
            dt.date(2026, 12, 1),  # imported in 2300: outside too
        ],
        [0, 0, 100_000, 10**30, 0, 60, 1, 0],
        [ts("2026-12-02T05:00Z")] * 7 + [pd.Timestamp("2300-01-01", tz="UTC")],
    )
    result = scheduled_instants(frame)
    bad = [0, 1, 2, 3, 4, 5, 7]
    assert result["scheduled_for"].iloc[bad].isna().all()
    assert result["scheduled_local_date"].iloc[bad].isna().all()
    assert list(result["schedule_error"].iloc[bad]) == [OUT_OF_RANGE] * len(bad)
    assert result["scheduled_for"].iloc[6] == ts("2026-12-02T07:30Z")
    assert result["schedule_error"].iloc[6] is None
    assert "1970-01-01" in OUT_OF_RANGE and "2200-01-01" in OUT_OF_RANGE


def test_the_last_days_of_the_window_still_schedule():
    frame = _one_per_row(
        [dt.date(1970, 1, 1), dt.date(2189, 1, 1)],
        [0, MAX_DELAY_DAYS],
        [
            pd.Timestamp("1970-01-01T12:00", tz="UTC"),
            ts("2026-12-02T05:00Z"),
        ],
    )
    result = scheduled_instants(frame)
    assert result["schedule_error"].isna().all()
    assert result["scheduled_for"].iloc[0] == pd.Timestamp("1970-01-01T12:00", tz="UTC")
    assert result["scheduled_for"].iloc[1].year in (2198, 2199)


ACCEPTED_ISSUE = st.dates(dt.date(1970, 1, 2), dt.date(2189, 12, 31))  # + 3650 days stays inside


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            ACCEPTED_ISSUE,
            st.integers(min_value=0, max_value=MAX_DELAY_DAYS),
            st.integers(min_value=-48, max_value=24 * 400),  # hours from the issue date's midnight UTC
            st.sampled_from(ZONES),
            st.tuples(st.integers(0, 23), st.integers(0, 59)),
            st.sampled_from([None, "FR", "US"]),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_property_any_accepted_date_and_delay_schedules_after_the_issue_date_and_never_wraps(rows):
    first_seen = [
        min(
            max(pd.Timestamp(r[0], tz="UTC") + pd.Timedelta(hours=r[2]), pd.Timestamp(SUPPORTED_FROM)),
            pd.Timestamp("2199-12-31T23:00", tz="UTC"),
        )
        for r in rows
    ]
    frame = pd.DataFrame(
        {
            "issue_date": [r[0] for r in rows],
            "first_seen_at": first_seen,
            "delay_days": [r[1] for r in rows],
            "timezone": [r[3] for r in rows],
            "send_time": [f"{r[4][0]:02d}:{r[4][1]:02d}" for r in rows],
            "holidays": [r[5] for r in rows],
        }
    )
    result = scheduled_instants(frame)
    assert result["schedule_error"].isna().all()
    for (issue, delay, _, zone, _, _), seen, (_, out) in zip(
        rows, first_seen, result.iterrows(), strict=True
    ):
        scheduled = out["scheduled_for"]
        issue_start = pd.Timestamp(issue).tz_localize(zone, nonexistent="shift_forward", ambiguous=True)
        import_day = seen.tz_convert(zone).date()
        assert pd.Timestamp(SUPPORTED_FROM) <= scheduled < pd.Timestamp(SUPPORTED_UNTIL)
        assert scheduled >= issue_start
        if delay == 0 and issue <= import_day:  # imported late: the import instant itself
            assert scheduled == seen
        else:
            assert out["scheduled_local_date"].date() >= issue + dt.timedelta(days=delay)


@settings(max_examples=80, deadline=None)
@given(
    st.dates(dt.date(1900, 1, 1), dt.date(9999, 12, 31)),
    st.integers(min_value=0, max_value=10**30),
)
def test_property_any_date_and_delay_is_either_scheduled_after_the_issue_date_or_an_error(issue, delay):
    result = scheduled_instants(_one_per_row([issue], [delay])).iloc[0]
    if result["schedule_error"] is None:
        assert result["scheduled_for"] >= pd.Timestamp(issue).tz_localize(PARIS)
        assert result["scheduled_local_date"].date() >= issue
    else:
        assert pd.isna(result["scheduled_for"]) and pd.isna(result["scheduled_local_date"])
        last_day = dt.date(2199, 12, 31).toordinal()
        assert issue < dt.date(1970, 1, 1) or issue.toordinal() + delay > last_day
