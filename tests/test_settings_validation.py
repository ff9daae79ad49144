"""Every environment setting is validated with one line naming the variable and what it
allows (issue 7); the CLI turns that into exit 2 (tests/test_bad_input.py)."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dispatch.config.settings import ENV_NAMES, INT_RANGES, SECONDS_RANGES, load_settings, reveal
from dispatch.errors import DispatchError
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

REPO = Path(__file__).resolve().parents[1]


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


@pytest.mark.parametrize("module", ["dispatch.devtools.airflow_demo", "dispatch.devtools.demo_runner"])
def test_a_bad_lease_at_the_demo_entry_points_is_one_line_and_exit_2(tmp_path: Path, module: str) -> None:
    """``make demo`` reads the settings outside the CLI; a bad value used to end in a traceback."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO)]),
        "DISPATCH_HOME": str(tmp_path),
        "DISPATCH_CLAIM_LEASE_SECONDS": "abc",
    }
    result = subprocess.run(
        [sys.executable, "-m", module], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        "dispatch: DISPATCH_CLAIM_LEASE_SECONDS='abc': expected a number of seconds from 1 to 604800\n"
    )
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []  # nothing written


SECRETS = {
    "SENDGRID_API_KEY": "sendgrid_api_key",
    "SMTP_PASSWORD": "smtp_password",
    "TWILIO_AUTH_TOKEN": "twilio_auth_token",
    "PRINTAPI_KEY": "printapi_key",
    "PRINTAPI_WEBHOOK_SECRET": "printapi_webhook_secret",
    "DISPATCH_WEB_TOKEN": "web_token",
}


def test_secrets_are_kept_out_of_every_printed_form() -> None:
    env = {name: f"s3cr3t-{i}" for i, name in enumerate(SECRETS)}
    env["DISPATCH_DB_URL"] = "postgresql+psycopg://dispatch:dbs3cr3t@db.internal/dispatch"
    env["SENDGRID_WEBHOOK_PUBLIC_KEY"] = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE"
    loaded = load_settings(environ=env)

    for i, (env_name, name) in enumerate(SECRETS.items()):
        value = getattr(loaded, name)
        assert isinstance(value, SecretStr), env_name
        assert reveal(value) == f"s3cr3t-{i}"
    assert loaded.sendgrid_webhook_public_key == "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE"
    assert loaded.dispatch_db_url.endswith("dbs3cr3t@db.internal/dispatch")
    for shown in (repr(loaded), str(loaded)):
        assert "s3cr3t" not in shown, shown
    assert load_settings(environ={}).web_token is None


def test_a_changed_copy_is_checked_like_the_environment() -> None:
    base = load_settings(environ={})
    assert base.with_(batch_size=7).batch_size == 7
    assert isinstance(base.with_(sendgrid_api_key="SG.k").sendgrid_api_key, SecretStr)
    with pytest.raises(DispatchError, match=r"^DISPATCH_BATCH_SIZE=.*from 1 to 100000"):
        base.with_(batch_size=0)
