"""Every environment setting is validated with one line naming the variable and what it
allows (issue 7); the CLI turns that into exit 2 (tests/test_bad_input.py)."""

from __future__ import annotations

import datetime as dt

import pytest
from dispatch.config.settings import ENV_NAMES, INT_RANGES, SECONDS_RANGES, load_settings
from dispatch.errors import DispatchError
from hypothesis import given, settings
from hypothesis import strategies as st


def refusal(env: dict[str, str]) -> str:
    with pytest.raises(DispatchError) as caught:
        load_settings(environ=env)
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    return message


@pytest.mark.parametrize("name", sorted(INT_RANGES))
def test_integer_settings_accept_their_range_and_refuse_outside_it(name: str) -> None:
    low, high = INT_RANGES[name]
    env_name = ENV_NAMES[name]
    assert getattr(load_settings(environ={env_name: str(low)}), name) == low
    assert getattr(load_settings(environ={env_name: f" {high} "}), name) == high
    for bad in (str(low - 1), str(high + 1), "abc", "1.5", "1e3", "9" * 5000):
        message = refusal({env_name: bad})
        assert message.startswith(f"{env_name}=") and f"from {low} to {high}" in message, message


@pytest.mark.parametrize("name", sorted(SECONDS_RANGES))
def test_seconds_settings_accept_their_range_and_refuse_outside_it(name: str) -> None:
    low, high = SECONDS_RANGES[name]
    env_name = ENV_NAMES[name]
    for bad in ("0", "-5", "abc", "inf", "-inf", "nan", "1e309", str(high * 2)):
        message = refusal({env_name: bad})
        assert message.startswith(f"{env_name}=") and f"from {low:g} to {high:g}" in message, message
    value = getattr(load_settings(environ={env_name: str(high)}), name)
    assert value == (dt.timedelta(seconds=high) if name == "claim_lease" else high)


def test_the_claim_lease_is_at_least_one_second() -> None:
    assert load_settings(environ={"DISPATCH_CLAIM_LEASE_SECONDS": "1"}).claim_lease == dt.timedelta(seconds=1)
    assert load_settings(environ={}).claim_lease == dt.timedelta(minutes=5)
    for bad in ("-5", "0", "0.999"):
        assert "DISPATCH_CLAIM_LEASE_SECONDS" in refusal({"DISPATCH_CLAIM_LEASE_SECONDS": bad})


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_property_any_lease_value_is_either_refused_in_one_line_or_at_least_one_second(raw: str) -> None:
    try:
        lease = load_settings(environ={"DISPATCH_CLAIM_LEASE_SECONDS": raw}).claim_lease
    except DispatchError as exc:
        assert len(str(exc).splitlines()) == 1
        assert str(exc).startswith("DISPATCH_CLAIM_LEASE_SECONDS=")
    else:
        assert raw.strip() == "" or lease >= dt.timedelta(seconds=1)


def test_smtp_starttls_takes_the_usual_words_and_refuses_others() -> None:
    for word, value in (("true", True), ("YES", True), ("1", True), ("off", False), ("False", False)):
        assert load_settings(environ={"SMTP_STARTTLS": word}).smtp_starttls is value
    assert "SMTP_STARTTLS" in refusal({"SMTP_STARTTLS": "maybe"})


@pytest.mark.parametrize(
    "name", ["SENDGRID_API_HOST", "TWILIO_API_BASE", "PRINTAPI_URL", "TWILIO_STATUS_CALLBACK"]
)
def test_provider_urls_must_be_http_urls_with_a_host(name: str) -> None:
    assert load_settings(environ={name: "https://api.example.com/v1"})
    assert load_settings(environ={name: "http://127.0.0.1:8025"})
    for bad in ("api.example.com", "ftp://k3y@api.example.com", "http://", "https://h:99999", "http://a b"):
        message = refusal({name: bad})
        assert message.startswith(f"{name}: ") and "k3y" not in message, message


@pytest.mark.parametrize("name", ["DISPATCH_DB_URL", "ACCOUNTING_DB_URL"])
def test_database_urls_are_checked_and_never_echoed(name: str) -> None:
    for good in (
        "sqlite:///var/x.db",
        "postgresql://u@h/db",
        "postgres://u@h/db",
        "postgresql+psycopg://u:p@h:5/d",
    ):
        load_settings(environ={name: good})
    for bad in (
        "garbage",
        "::::",
        "mysql://root:s3cr3t@db/x",
        "postgresql://u:s3cr3t@h:port/x",
        "postgresql+psycopg2://u:s3cr3t@h/x",
        "sqlite:///a\x00b",
    ):
        message = refusal({name: bad})
        assert message.startswith(f"{name}: ") and "s3cr3t" not in message, message


def test_a_database_url_from_an_airflow_connection_is_checked_too() -> None:
    conns = {"dispatch_db": {"conn_type": "generic", "extra": {"sqlalchemy_url": "nonsense"}}}
    with pytest.raises(DispatchError, match="DISPATCH_DB_URL"):
        load_settings(environ={}, airflow_lookup=conns.get)


def test_backends_are_one_of_their_names() -> None:
    assert "expected one of outbox, sendgrid, smtp" in refusal({"DISPATCH_EMAIL_BACKEND": "mailgun"})
