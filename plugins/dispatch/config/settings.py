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
DEFAULT_PDF_ROOT = "var/invoices"
DEFAULT_PDF_MAX_BYTES = 20 * 1024 * 1024

EMAIL_BACKENDS = ("outbox", "sendgrid", "smtp")
SMS_BACKENDS = ("outbox", "twilio")
LETTER_BACKENDS = ("outbox", "printapi")


def _secret() -> str | None:
    return field(default=None, repr=False)


@dataclass(frozen=True)
class Settings:
    """Everything a stage needs to know about its environment."""

    dispatch_db_url: str = DEFAULT_DISPATCH_DB
    accounting_db_url: str = DEFAULT_ACCOUNTING_DB
    outbox_dir: Path = field(default_factory=lambda: resolve(DEFAULT_OUTBOX))
    #: the folder invoice PDFs are read from; a pdf_path leading anywhere else is refused
    pdf_root: Path = field(default_factory=lambda: resolve(DEFAULT_PDF_ROOT))
    #: a larger invoice PDF is refused (manual invalid_pdf), and never read beyond this
    pdf_max_bytes: int = DEFAULT_PDF_MAX_BYTES
    email_backend: str = "outbox"
    sms_backend: str = "outbox"
    letter_backend: str = "outbox"
    mail_from: str | None = None
    sendgrid_api_key: str | None = _secret()
    sendgrid_api_host: str = "https://api.sendgrid.com"
    #: settle a dead run's in-flight e-mails through SendGrid's Email Activity API: off | found | full
    sendgrid_activity_lookup: str = "off"
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
    #: a claim whose lease was not renewed for this long (wall clock) was left by a dead run (SPEC "Time")
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
    # --- the web pages (CONTRACT §8) ---
    #: the standalone token of ``dispatch web`` (none: a random one per start)
    web_token: str | None = _secret()
    #: signs sessions and CSRF tokens; default: derived from the web token (standalone) or
    #: random per process (inside Airflow: set it when the api-server runs several workers)
    web_secret: str | None = _secret()
    # --- delivery webhooks (issue 13): the keys that check the providers' signatures ---------
    #: SendGrid's Event Webhook verification key (base64, Mail Settings › Signed Event Webhook)
    sendgrid_webhook_public_key: str | None = None
    #: the print API's webhook secret (HMAC-SHA256 of "<timestamp>.<body>", Lob's scheme)
    printapi_webhook_secret: str | None = _secret()

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
    "pdf_root": "DISPATCH_PDF_ROOT",
    "pdf_max_bytes": "DISPATCH_PDF_MAX_BYTES",
    "email_backend": "DISPATCH_EMAIL_BACKEND",
    "sms_backend": "DISPATCH_SMS_BACKEND",
    "letter_backend": "DISPATCH_LETTER_BACKEND",
    "mail_from": "DISPATCH_MAIL_FROM",
    "sendgrid_api_key": "SENDGRID_API_KEY",
    "sendgrid_api_host": "SENDGRID_API_HOST",
    "sendgrid_activity_lookup": "SENDGRID_ACTIVITY_LOOKUP",
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
    # the web pages
    "web_token": "DISPATCH_WEB_TOKEN",
    "web_secret": "DISPATCH_WEB_SECRET",
}
# delivery webhooks (issue 13); Twilio's callbacks are checked with TWILIO_AUTH_TOKEN
ENV_NAMES.update(
    {
        "sendgrid_webhook_public_key": "SENDGRID_WEBHOOK_PUBLIC_KEY",
        "printapi_webhook_secret": "PRINTAPI_WEBHOOK_SECRET",
    }
)


# Allowed ranges of the numeric settings, inclusive: (low, high). The upper bounds are far
# above any real use; they exist so that a typo (an extra zero, "1e309") is refused with a
# message instead of overflowing a timedelta or starving a worker.
INT_RANGES: dict[str, tuple[int, int]] = {
    "smtp_port": (1, 65_535),
    "batch_size": (1, 100_000),
    "max_attempts": (1, 100),
    "send_concurrency": (1, 1_024),
    "smtp_connections": (1, 256),
    "twilio_max_segments": (1, 100),
    "pdf_max_bytes": (1, 1_073_741_824),  # 1 GiB
}
SECONDS_RANGES: dict[str, tuple[float, float]] = {
    "http_timeout": (0.001, 3_600.0),
    "smtp_timeout": (0.001, 3_600.0),
    #: a lease under one second would make live claims look dead (exactly-once, SPEC "Time")
    "claim_lease": (1.0, 7 * 86_400.0),
}
BOOL_WORDS: dict[str, bool] = {
    **dict.fromkeys(("1", "true", "yes", "on"), True),
    **dict.fromkeys(("0", "false", "no", "off"), False),
}
#: settings that hold an http(s) URL of a provider
HTTP_URL_SETTINGS = ("sendgrid_api_host", "twilio_api_base", "printapi_url", "twilio_status_callback")
DB_URL_SETTINGS = ("dispatch_db_url", "accounting_db_url")
DB_BACKENDS = ("sqlite", "postgresql")
DB_DRIVERS = ("pysqlite", "psycopg")
_SHOWN_CHARS = 40


def _shown(raw: str) -> str:
    """The value as quoted in a message: one line, and short (the value may be huge)."""
    text = raw if len(raw) <= _SHOWN_CHARS else raw[: _SHOWN_CHARS - 1] + "…"
    return repr(text)


def _number(name: str, raw: str, *, integer: bool) -> int | float:
    env_name = ENV_NAMES[name]
    low, high = INT_RANGES[name] if integer else SECONDS_RANGES[name]
    what = "an integer" if integer else "a number of seconds"
    bounds = f"from {low} to {high}" if integer else f"from {low:g} to {high:g}"
    try:
        value: int | float = int(raw.strip()) if integer else float(raw.strip())
    except ValueError:
        raise DispatchError(f"{env_name}={_shown(raw)}: expected {what} {bounds}") from None
    if not low <= value <= high:  # NaN fails both comparisons
        raise DispatchError(f"{env_name}={_shown(raw)}: expected {what} {bounds}")
    return value


def _http_url(name: str, raw: str) -> str:
    from urllib.parse import urlsplit

    env_name = ENV_NAMES[name]
    try:
        parts = urlsplit(raw.strip())
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        ok = False
    if not ok or any(c.isspace() or ord(c) < 32 for c in raw.strip()):
        # the value is not repeated: a URL may carry credentials (https://user:key@host)
        raise DispatchError(f"{env_name}: expected an http:// or https:// URL with a host")
    return raw.strip()


def check_db_url(env_name: str, url: str) -> None:
    """Refuse what SQLAlchemy could not open, naming the variable but never echoing the URL
    (it may carry a password)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    hint = "expected a database URL such as sqlite:///var/dispatch.db or postgresql+psycopg://user@host/db"
    if "\x00" in url or any(ord(c) < 32 for c in url):
        raise DispatchError(f"{env_name}: {hint} (it contains control characters)")
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise DispatchError(f"{env_name}: {hint}") from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend not in DB_BACKENDS and backend != "postgres":
        raise DispatchError(f"{env_name}: {hint} (backend {backend[:20]!r} is not sqlite or postgresql)")
    if driver and driver not in DB_DRIVERS:  # only these drivers are installed
        raise DispatchError(
            f"{env_name}: {hint} (driver {driver[:20]!r} is not one of {', '.join(DB_DRIVERS)})"
        )


def _convert(name: str, raw: str) -> object:
    """The typed value of one environment variable, or a one-line :class:`DispatchError`
    naming the variable and what it allows (the CLI exits 2 with it)."""
    if name in ("outbox_dir", "pdf_root"):
        if "\x00" in raw:
            raise DispatchError(f"{ENV_NAMES[name]}: a path cannot contain a NUL byte")
        return resolve(raw)
    if name in INT_RANGES:
        return _number(name, raw, integer=True)
    if name == "claim_lease":
        return dt.timedelta(seconds=_number(name, raw, integer=False))
    if name in SECONDS_RANGES:
        return _number(name, raw, integer=False)
    if name == "smtp_starttls":
        word = raw.strip().lower()
        if word not in BOOL_WORDS:
            raise DispatchError(f"{ENV_NAMES[name]}={_shown(raw)}: expected one of {', '.join(BOOL_WORDS)}")
        return BOOL_WORDS[word]
    if name in HTTP_URL_SETTINGS:
        return _http_url(name, raw)
    if name == "sendgrid_activity_lookup":
        value = raw.strip().lower()
        if value not in ("off", "found", "full"):
            raise DispatchError(f"SENDGRID_ACTIVITY_LOOKUP={_shown(raw)}: expected one of off, found, full")
        return value
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
        extra = conn.get("extra") or {}
        if isinstance(extra, Mapping):  # delivery webhooks (issue 13)
            values["sendgrid_webhook_public_key"] = extra.get("webhook_public_key")
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
            values["smtp_port"] = int(str(conn["port"]))
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
            values["printapi_webhook_secret"] = extra.get("webhook_secret")  # delivery webhooks (issue 13)
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
            values[name] = _convert(name, raw)
    for key in DB_URL_SETTINGS:
        if key in values:
            check_db_url(ENV_NAMES[key], str(values[key]))
            values[key] = _sqlite_relative(str(values[key]))
    values.setdefault("dispatch_db_url", _sqlite_relative(DEFAULT_DISPATCH_DB))
    values.setdefault("accounting_db_url", _sqlite_relative(DEFAULT_ACCOUNTING_DB))
    return Settings(**values)  # type: ignore[arg-type]
