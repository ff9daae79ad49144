"""Issue 11 item 4: the organization's ``country`` (ISO 3166) reads national phone numbers,
is the default holiday calendar (``holidays`` overrides), and an organization with an SMS
plan but no country is refused at load, naming the entry (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dispatch.errors import ConfigError

from tests.builders import World, open_world


@pytest.fixture
def w(backend: str, tmp_path: Path) -> Iterator[World]:
    with open_world(backend, tmp_path) as world:
        yield world


def test_an_sms_plan_without_country_is_refused_naming_the_entry(w: World) -> None:
    w.org(holidays=None, country=None).plan("p_sms", channel="sms", body="{{ invoice.number }}")
    with pytest.raises(ConfigError) as refused:
        w.load_config()
    assert "plans[0] (p_sms).invoice_sending.channel" in str(refused.value)
    assert "country" in str(refused.value)
    assert w.rows("SELECT count(*) AS n FROM plans") == [{"n": 0}]  # nothing written


def test_an_unknown_country_is_refused(w: World) -> None:
    w.org(country="XX")
    with pytest.raises(ConfigError, match=r"organizations\[0\] \(acme\)\.country: unknown country 'XX'"):
        w.load_config()


def test_national_numbers_are_read_with_the_country_and_it_is_the_holiday_calendar(w: World) -> None:
    # Germany, no `holidays`: 2026-12-25 (Friday) is a German public holiday
    w.org(timezone="Europe/Berlin", holidays=None, country="de")
    w.plan("p_sms", channel="sms", delay=1, body="{{ invoice.number }}")
    w.customer("c1", email=None, phone="0151 23456789", plan="p_sms").load_config()
    assert w.rows("SELECT country, holidays FROM organizations") == [{"country": "DE", "holidays": None}]
    w.invoice("i1", "c1", issued="2026-12-24", updated="2026-12-24T00:00Z")
    w.run("2026-12-24T05:00Z")
    action = w.action("i1")
    assert action["status"] == "scheduled"
    assert str(action["scheduled_local_date"]) == "2026-12-28"  # 25 Dec skipped (and the weekend)
    w.run("2026-12-28T05:00Z")
    action = w.action("i1")
    assert action["status"] == "sent" and action["recipient"] == "+4915123456789"


def test_holidays_still_override_the_country_calendar(w: World) -> None:
    w.org(timezone="Europe/Berlin", holidays="JP", country="DE").plan("p1", delay=1)
    w.customer("c1", plan="p1").load_config()
    w.invoice("i1", "c1", issued="2026-12-24", updated="2026-12-24T00:00Z")
    w.run("2026-12-24T05:00Z")
    assert str(w.action("i1")["scheduled_local_date"]) == "2026-12-25"  # not a Japanese holiday
