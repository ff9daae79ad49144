"""One configuration for the CLI and the DAG: environment variables (CONTRACT §1) first,
then Airflow Connections when running inside Airflow, then the embedded defaults.

Secrets are kept out of ``repr`` so that a settings object printed in a log leaks nothing.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from urllib.parse import quote

from dispatch.errors import DispatchError
from dispatch.paths import resolve

DEFAULT_DISPATCH_DB = "sqlite:///var/dispatch.db"
DEFAULT_ACCOUNTING_DB = "sqlite:///var/accounting.db"
DEFAULT_OUTBOX = "var/outbox"

EMAIL_BACKENDS = ("outbox", "sendgrid", "smtp")
SMS_BACKENDS = ("outbox", "twilio")
LETTER_BACKENDS = ("outbox", "printapi")


def _secret() -> str | None:
    return field(default=None, repr=False)  # type: ignore[return-value]


@dataclass(frozen=True)
class Settings:
    """Everything a stage needs to know about its environment."""

    dispatch_db_url: str = DEFAULT_DISPATCH_DB
    accounting_db_url: str = DEFAULT_ACCOUNTING_DB
    outbox_dir: Path = field(default_factory=lambda: resolve(DEFAULT_OUTBOX))
    email_backend: str = "outbox"
    sms_backend: str = "outbox"
    letter_backend: str = "outbox"
    mail_from: str | None = None
    sendgrid_api_key: str | None = _secret()
    sendgrid_api_host: str = "https://api.sendgrid.com"
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_user: str | None = None
    smtp_password: str | None = _secret()
    smtp_starttls: bool = True
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = _secret()
    twilio_messaging_service_sid: str | None = None
    twilio_api_base: str | None = None
    #: sender number when no Messaging Service is configured (a Messaging Service is needed to schedule)
    twilio_from_number: str | None = None
    #: optional URL Twilio calls with delivery status updates
    twilio_status_callback: str | None = None
    #: an SMS longer than this many segments is refused (manual provider_rejected)
    twilio_max_segments: int = 10
    printapi_url: str | None = None
    printapi_key: str | None = _secret()
    #: return address of letters: a saved address id (adr_…) or a postal block
    printapi_from_address: str | None = None
    #: ISO country of recipient addresses written without a country line
    printapi_default_country: str | None = None
    #: how many actions one claim takes (and one mapped task sends)
    batch_size: int = 500
    #: a claim older than this on the as-of clock was left by a dead run (SPEC "Time")
    claim_lease: dt.timedelta = dt.timedelta(minutes=5)
    #: provider attempts across runs before a transient failure becomes manual provider_error
    max_attempts: int = 3
    #: extract re-reads this much before the watermark, for rows committed late in the source
    extract_lookback: dt.timedelta = dt.timedelta(hours=1)
    #: provider requests in flight at once per worker (HTTP backends), over kept-alive connections
    send_concurrency: int = 128  # the bound of requests in flight per worker; the window adapts below it
    #: seconds to wait for a provider's HTTP answer; past it a sent request is delivery_unknown
    http_timeout: float = 30.0
    #: seconds an SMTP relay may take for a reply (connect, each command, the answer to DATA)
    smtp_timeout: float = 60.0
    #: SMTP connections used at once per worker (each sends its messages one after the other)
    smtp_connections: int = 4

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("DISPATCH_EMAIL_BACKEND", self.email_backend, EMAIL_BACKENDS),
            ("DISPATCH_SMS_BACKEND", self.sms_backend, SMS_BACKENDS),
            ("DISPATCH_LETTER_BACKEND", self.letter_backend, LETTER_BACKENDS),
        ):
            if value not in allowed:
                raise DispatchError(f"{name}={value!r}: expected one of {', '.join(allowed)}")

    def __repr__(self) -> str:
        """Secrets never reach a log: keys are left out and database passwords masked."""
        shown = []
        for f in fields(self):
            if not f.repr:
                continue
            value = getattr(self, f.name)
            if f.name.endswith("_db_url"):
                value = _mask_password(str(value))
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    def with_(self, **changes: object) -> Settings:
        """A copy with some values changed (tests, preview)."""
        return replace(self, **changes)  # type: ignore[arg-type]


ENV_NAMES: dict[str, str] = {
    "dispatch_db_url": "DISPATCH_DB_URL",
    "accounting_db_url": "ACCOUNTING_DB_URL",
    "outbox_dir": "DISPATCH_OUTBOX_DIR",
    "email_backend": "DISPATCH_EMAIL_BACKEND",
    "sms_backend": "DISPATCH_SMS_BACKEND",
    "letter_backend": "DISPATCH_LETTER_BACKEND",
    "mail_from": "DISPATCH_MAIL_FROM",
    "sendgrid_api_key": "SENDGRID_API_KEY",
    "sendgrid_api_host": "SENDGRID_API_HOST",
    "smtp_host": "SMTP_HOST",
    "smtp_port": "SMTP_PORT",
    "smtp_user": "SMTP_USER",
    "smtp_password": "SMTP_PASSWORD",
    "smtp_starttls": "SMTP_STARTTLS",
    "twilio_account_sid": "TWILIO_ACCOUNT_SID",
    "twilio_auth_token": "TWILIO_AUTH_TOKEN",
    "twilio_messaging_service_sid": "TWILIO_MESSAGING_SERVICE_SID",
    "twilio_api_base": "TWILIO_API_BASE",
    "printapi_url": "PRINTAPI_URL",
    "printapi_key": "PRINTAPI_KEY",
    "twilio_from_number": "TWILIO_FROM_NUMBER",
    "twilio_status_callback": "TWILIO_STATUS_CALLBACK",
    "twilio_max_segments": "TWILIO_MAX_SEGMENTS",
    "printapi_from_address": "PRINTAPI_FROM_ADDRESS",
    "printapi_default_country": "PRINTAPI_DEFAULT_COUNTRY",
    "batch_size": "DISPATCH_BATCH_SIZE",
    "claim_lease": "DISPATCH_CLAIM_LEASE_SECONDS",
    "max_attempts": "DISPATCH_MAX_ATTEMPTS",
    "send_concurrency": "DISPATCH_SEND_CONCURRENCY",
    "http_timeout": "DISPATCH_HTTP_TIMEOUT",
    "smtp_timeout": "SMTP_TIMEOUT",
    "smtp_connections": "SMTP_CONNECTIONS",
}


def _convert(name: str, raw: str) -> object:
    if name == "outbox_dir":
        return resolve(raw)
    if name in ("http_timeout", "smtp_timeout"):
        try:
            seconds = float(raw)
        except ValueError:
            raise DispatchError(f"{ENV_NAMES[name]}={raw!r}: expected a number of seconds") from None
        if not seconds > 0:
            raise DispatchError(f"{ENV_NAMES[name]}={raw!r}: expected a positive number of seconds")
        return seconds
    if name in (
        "smtp_port",
        "batch_size",
        "max_attempts",
        "send_concurrency",
        "smtp_connections",
        "twilio_max_segments",
    ):
        try:
            value = int(raw)
        except ValueError:
            raise DispatchError(f"{ENV_NAMES[name]}={raw!r}: expected an integer") from None
        if value < 1:
            raise DispatchError(f"{ENV_NAMES[name]}={raw!r}: expected a positive integer")
        return value
    if name == "smtp_starttls":
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if name == "claim_lease":
        return dt.timedelta(seconds=float(raw))
    return raw


def _mask_password(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL we can parse: show nothing of it
        return "<unparseable url>"


def _sqlite_relative(url: str) -> str:
    """``sqlite:///var/x.db`` is relative to the repository root, not the current directory."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith("sqlite:////") and url != "sqlite:///:memory:":
        return prefix + str(resolve(url[len(prefix) :]))
    return url


ConnectionLookup = Callable[[str], Mapping[str, object] | None]


def airflow_connection_values(lookup: ConnectionLookup) -> dict[str, object]:
    """Settings taken from Airflow Connections (``dispatch_db``, ``accounting_db``,
    ``sendgrid_default``, ``twilio_default``, ``smtp_default``, ``printapi_default``).

    ``lookup(conn_id)`` returns a mapping with conn_type, host, port, login, password,
    schema and extra (a dict), or None when the connection does not exist.
    """
    values: dict[str, object] = {}
    for conn_id, key in (("dispatch_db", "dispatch_db_url"), ("accounting_db", "accounting_db_url")):
        conn = lookup(conn_id)
        if conn:
            values[key] = connection_to_sqlalchemy_url(conn)
    if conn := lookup("sendgrid_default"):
        values["sendgrid_api_key"] = conn.get("password")
        if conn.get("host"):
            values["sendgrid_api_host"] = str(conn["host"])
    if conn := lookup("twilio_default"):
        values["twilio_account_sid"] = conn.get("login")
        values["twilio_auth_token"] = conn.get("password")
        extra = conn.get("extra") or {}
        if isinstance(extra, Mapping) and extra.get("messaging_service_sid"):
            values["twilio_messaging_service_sid"] = extra["messaging_service_sid"]
        if isinstance(extra, Mapping):
            values["twilio_from_number"] = extra.get("from_number")
            values["twilio_status_callback"] = extra.get("status_callback")
        if conn.get("host"):
            values["twilio_api_base"] = str(conn["host"])
    if conn := lookup("smtp_default"):
        values["smtp_host"] = conn.get("host")
        if conn.get("port"):
            values["smtp_port"] = int(conn["port"])  # type: ignore[arg-type]
        values["smtp_user"] = conn.get("login")
        values["smtp_password"] = conn.get("password")
        extra = conn.get("extra") or {}
        if isinstance(extra, Mapping) and "disable_tls" in extra:  # Airflow's SMTP connection extra
            disabled = str(extra["disable_tls"]).strip().lower() in ("1", "true", "yes", "on")
            values["smtp_starttls"] = not disabled
    if conn := lookup("printapi_default"):
        values["printapi_url"] = conn.get("host")
        values["printapi_key"] = conn.get("password")
        extra = conn.get("extra") or {}
        if isinstance(extra, Mapping):
            values["printapi_from_address"] = extra.get("from_address")
            values["printapi_default_country"] = extra.get("default_country")
    return {k: v for k, v in values.items() if v not in (None, "")}


def connection_to_sqlalchemy_url(conn: Mapping[str, object]) -> str:
    """A SQLAlchemy URL from an Airflow connection: ``extra.sqlalchemy_url`` when given,
    else built from a postgres or sqlite connection."""
    extra = conn.get("extra") or {}
    if isinstance(extra, Mapping) and extra.get("sqlalchemy_url"):
        return str(extra["sqlalchemy_url"])
    conn_type = str(conn.get("conn_type") or "")
    if conn_type in ("postgres", "postgresql"):
        auth = ""
        if conn.get("login"):
            auth = quote(str(conn["login"]), safe="")
            if conn.get("password"):
                auth += ":" + quote(str(conn["password"]), safe="")
            auth += "@"
        port = f":{conn['port']}" if conn.get("port") else ""
        return (
            f"postgresql+psycopg://{auth}{conn.get('host') or 'localhost'}{port}/{conn.get('schema') or ''}"
        )
    if conn_type == "sqlite":
        return f"sqlite:///{conn.get('host')}"
    raise DispatchError(f"connection of type {conn_type!r}: set extra.sqlalchemy_url")


def load_settings(
    environ: Mapping[str, str] | None = None,
    airflow_lookup: ConnectionLookup | None = None,
) -> Settings:
    """Settings from the environment, then Airflow connections, then defaults."""
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
    if airflow_lookup is not None:
        values.update(airflow_connection_values(airflow_lookup))
    names = {f.name for f in fields(Settings)}
    for name, env_name in ENV_NAMES.items():
        raw = environ.get(env_name)
        if raw not in (None, "") and name in names:
            values[name] = _convert(name, raw)  # type: ignore[arg-type]
    for key in ("dispatch_db_url", "accounting_db_url"):
        if key in values:
            values[key] = _sqlite_relative(str(values[key]))
    values.setdefault("dispatch_db_url", _sqlite_relative(DEFAULT_DISPATCH_DB))
    values.setdefault("accounting_db_url", _sqlite_relative(DEFAULT_ACCOUNTING_DB))
    return Settings(**values)  # type: ignore[arg-type]
