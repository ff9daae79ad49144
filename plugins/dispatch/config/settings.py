"""One configuration for the CLI and the DAG: environment variables (CONTRACT §1) first,
then Airflow Connections when running inside Airflow, then the embedded defaults.

Each setting is declared once, as a field of :class:`Settings` (pydantic-settings): its
type and allowed range, its default, and the environment variable it is read from (its
alias). A bad value stops the command with one line naming the variable and what it
allows (:class:`DispatchError`: the CLI exits 2), never a traceback. Secrets are
``SecretStr``: a settings object printed in a log leaks no key, and database passwords are
masked too.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import quote, urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, SecretStr, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from dispatch.errors import DispatchError
from dispatch.paths import resolve

DEFAULT_DISPATCH_DB = "sqlite:///var/dispatch.db"
DEFAULT_ACCOUNTING_DB = "sqlite:///var/accounting.db"
DEFAULT_OUTBOX = "var/outbox"
DEFAULT_PDF_ROOT = "var/invoices"
DEFAULT_PDF_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_SEND_CONCURRENCY = 128
BOOL_WORDS: dict[str, bool] = {
    **dict.fromkeys(("1", "true", "yes", "on"), True),
    **dict.fromkeys(("0", "false", "no", "off"), False),
}
DB_BACKENDS = ("sqlite", "postgresql")
DB_DRIVERS = ("pysqlite", "psycopg")
DB_URL_SETTINGS = ("dispatch_db_url", "accounting_db_url")
_SHOWN_CHARS = 40
#: an error context flag: the value is not repeated (a URL may carry a password or a key)
_HIDDEN = "hidden"


def _refuse(message: str, *, hidden: bool = False) -> PydanticCustomError:
    return PydanticCustomError("setting", message, {_HIDDEN: True} if hidden else None)


# --- how values are read ------------------------------------------------------------------


def _sqlite_relative(url: str) -> str:
    """``sqlite:///var/x.db`` is relative to the repository root, not the current directory."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith("sqlite:////") and url != "sqlite:///:memory:":
        return prefix + str(resolve(url[len(prefix) :]))
    return url


def _database_url(url: str) -> str:
    """Refuse what SQLAlchemy could not open, without echoing the URL (it may carry a
    password); a relative SQLite path is made relative to the repository root."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    hint = "expected a database URL such as sqlite:///var/dispatch.db or postgresql+psycopg://user@host/db"
    if any(ord(c) < 32 for c in url):
        raise _refuse(f"{hint} (it contains control characters)", hidden=True)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise _refuse(hint, hidden=True) from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend not in DB_BACKENDS and backend != "postgres":
        raise _refuse(f"{hint} (backend {backend[:20]!r} is not sqlite or postgresql)", hidden=True)
    if driver and driver not in DB_DRIVERS:  # only these drivers are installed
        raise _refuse(f"{hint} (driver {driver[:20]!r} is not one of {', '.join(DB_DRIVERS)})", hidden=True)
    return _sqlite_relative(url)


def _http_url(raw: str) -> str:
    value = raw.strip()
    try:
        parts = urlsplit(value)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        ok = False
    if not ok or any(c.isspace() or ord(c) < 32 for c in value):
        raise _refuse("expected an http:// or https:// URL with a host", hidden=True)
    return value


def _path(value: object) -> object:
    if isinstance(value, str):
        if "\x00" in value:
            raise _refuse("a path cannot contain a NUL byte", hidden=True)
        return resolve(value)
    return value


def _seconds(value: object) -> object:
    """A number of seconds as a timedelta; a number timedelta cannot hold is refused here
    (``1e309`` would overflow it) and the range is the field's."""
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        try:
            seconds = float(value.strip() if isinstance(value, str) else value)
        except ValueError:
            raise PydanticCustomError("float_parsing", "not a number") from None
        if not math.isfinite(seconds) or abs(seconds) > 1e12:
            raise PydanticCustomError("finite_number", "out of range")
        return dt.timedelta(seconds=seconds)
    return value


def _word(value: object) -> object:
    if isinstance(value, str):
        word = value.strip().lower()
        if word not in BOOL_WORDS:
            raise _refuse(f"expected one of {', '.join(BOOL_WORDS)}")
        return BOOL_WORDS[word]
    return value


def _lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


DatabaseUrl = Annotated[str, AfterValidator(_database_url)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
Folder = Annotated[Path, BeforeValidator(_path)]
Flag = Annotated[bool, BeforeValidator(_word)]
Lease = Annotated[
    dt.timedelta, Field(ge=dt.timedelta(seconds=1), le=dt.timedelta(days=7)), BeforeValidator(_seconds)
]
Timeout = Annotated[float, Field(ge=0.001, le=3_600.0, allow_inf_nan=False)]
EmailBackend = Literal["outbox", "sendgrid", "smtp"]
SmsBackend = Literal["outbox", "twilio"]
LetterBackend = Literal["outbox", "printapi"]
ActivityLookup = Annotated[Literal["off", "found", "full"], BeforeValidator(_lower)]


def _env(name: str, default: Any = None, **kwargs: Any) -> Any:
    """A field read from the environment variable ``name``."""
    if "default_factory" in kwargs:
        return Field(validation_alias=name, **kwargs)
    return Field(default, validation_alias=name, **kwargs)


def _int(name: str, default: int, low: int, high: int) -> Any:
    return _env(name, default, ge=low, le=high)


# The upper bounds of the numbers are far above any real use; they exist so that a typo (an
# extra zero, "1e309") is refused with a message instead of overflowing a timedelta or
# starving a worker.
class Settings(BaseSettings):
    """Everything a stage needs to know about its environment."""

    model_config = SettingsConfigDict(
        frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True
    )

    dispatch_db_url: DatabaseUrl = _env(
        "DISPATCH_DB_URL", default_factory=lambda: _sqlite_relative(DEFAULT_DISPATCH_DB)
    )
    accounting_db_url: DatabaseUrl = _env(
        "ACCOUNTING_DB_URL", default_factory=lambda: _sqlite_relative(DEFAULT_ACCOUNTING_DB)
    )
    outbox_dir: Folder = _env("DISPATCH_OUTBOX_DIR", default_factory=lambda: resolve(DEFAULT_OUTBOX))
    #: the folder invoice PDFs are read from; a pdf_path leading anywhere else is refused
    pdf_root: Folder = _env("DISPATCH_PDF_ROOT", default_factory=lambda: resolve(DEFAULT_PDF_ROOT))
    #: a larger invoice PDF is refused (manual invalid_pdf), and never read beyond this
    pdf_max_bytes: int = _int("DISPATCH_PDF_MAX_BYTES", DEFAULT_PDF_MAX_BYTES, 1, 1_073_741_824)  # 1 GiB
    email_backend: EmailBackend = _env("DISPATCH_EMAIL_BACKEND", "outbox")
    sms_backend: SmsBackend = _env("DISPATCH_SMS_BACKEND", "outbox")
    letter_backend: LetterBackend = _env("DISPATCH_LETTER_BACKEND", "outbox")
    mail_from: str | None = _env("DISPATCH_MAIL_FROM")
    sendgrid_api_key: SecretStr | None = _env("SENDGRID_API_KEY")
    sendgrid_api_host: HttpUrl = _env("SENDGRID_API_HOST", "https://api.sendgrid.com")
    #: settle a dead run's in-flight e-mails through SendGrid's Email Activity API: off | found | full
    sendgrid_activity_lookup: ActivityLookup = _env("SENDGRID_ACTIVITY_LOOKUP", "off")
    #: public key that signs SendGrid's Event Webhook requests (the web pages check it)
    sendgrid_webhook_public_key: str | None = _env("SENDGRID_WEBHOOK_PUBLIC_KEY")
    smtp_host: str | None = _env("SMTP_HOST")
    smtp_port: int = _int("SMTP_PORT", 587, 1, 65_535)
    smtp_user: str | None = _env("SMTP_USER")
    smtp_password: SecretStr | None = _env("SMTP_PASSWORD")
    smtp_starttls: Flag = _env("SMTP_STARTTLS", True)
    twilio_account_sid: str | None = _env("TWILIO_ACCOUNT_SID")
    twilio_auth_token: SecretStr | None = _env("TWILIO_AUTH_TOKEN")
    twilio_messaging_service_sid: str | None = _env("TWILIO_MESSAGING_SERVICE_SID")
    twilio_api_base: HttpUrl | None = _env("TWILIO_API_BASE")
    #: sender number when no Messaging Service is configured (a Messaging Service is needed to schedule)
    twilio_from_number: str | None = _env("TWILIO_FROM_NUMBER")
    #: optional URL Twilio calls with delivery status updates
    twilio_status_callback: HttpUrl | None = _env("TWILIO_STATUS_CALLBACK")
    #: an SMS longer than this many segments is refused (manual provider_rejected)
    twilio_max_segments: int = _int("TWILIO_MAX_SEGMENTS", 10, 1, 100)
    printapi_url: HttpUrl | None = _env("PRINTAPI_URL")
    printapi_key: SecretStr | None = _env("PRINTAPI_KEY")
    #: shared secret that signs the print-and-mail provider's tracking webhooks
    printapi_webhook_secret: SecretStr | None = _env("PRINTAPI_WEBHOOK_SECRET")
    #: return address of letters: a saved address id (adr_…) or a postal block
    printapi_from_address: str | None = _env("PRINTAPI_FROM_ADDRESS")
    #: ISO country of recipient addresses written without a country line
    printapi_default_country: str | None = _env("PRINTAPI_DEFAULT_COUNTRY")
    #: the token that opens the pages of ``dispatch web`` (none: a random one per start)
    web_token: SecretStr | None = _env("DISPATCH_WEB_TOKEN")
    #: signs sessions and CSRF tokens; default: derived from the web token (standalone) or
    #: random per process (in Airflow: set it when the api-server runs several workers)
    web_secret: SecretStr | None = _env("DISPATCH_WEB_SECRET")
    #: how many actions one claim takes (and one mapped task sends)
    batch_size: int = _int("DISPATCH_BATCH_SIZE", 500, 1, 100_000)
    #: a claim whose lease was not renewed for this long (wall clock) was left by a dead run
    #: (SPEC "Time"); under one second live claims would look dead (exactly-once)
    claim_lease: Lease = _env("DISPATCH_CLAIM_LEASE_SECONDS", dt.timedelta(minutes=5))
    #: provider attempts across runs before a transient failure becomes manual provider_error
    max_attempts: int = _int("DISPATCH_MAX_ATTEMPTS", 3, 1, 100)
    #: extract re-reads this much before the watermark, for rows committed late in the source
    extract_lookback: dt.timedelta = dt.timedelta(hours=1)
    #: provider requests in flight at once per worker (HTTP backends), over kept-alive connections;
    #: the bound of requests in flight per worker, the window adapts below it
    send_concurrency: int = _int("DISPATCH_SEND_CONCURRENCY", DEFAULT_SEND_CONCURRENCY, 1, 1_024)
    #: seconds to wait for a provider's HTTP answer; past it a sent request is delivery_unknown
    http_timeout: Timeout = _env("DISPATCH_HTTP_TIMEOUT", 30.0)
    #: seconds an SMTP relay may take for a reply (connect, each command, the answer to DATA)
    smtp_timeout: Timeout = _env("SMTP_TIMEOUT", 60.0)
    #: SMTP connections used at once per worker (each sends its messages one after the other)
    smtp_connections: int = _int("SMTP_CONNECTIONS", 4, 1, 256)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """``Settings(...)`` takes only what it is given: :func:`load_settings` decides where
        values come from (an explicit environment, Airflow Connections)."""
        return (init_settings,)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """Secrets never reach a log: keys are SecretStr, database passwords are masked."""
        for name, value in super().__repr_args__():
            yield name, _mask_password(str(value)) if name in DB_URL_SETTINGS else value

    def with_(self, **changes: object) -> Settings:
        """A copy with some values changed (tests, preview), checked like any other."""
        return _validated(self.model_dump() | changes)


def _bounds(name: str) -> tuple[Any, Any]:
    low = high = None
    for rule in Settings.model_fields[name].metadata:
        low, high = getattr(rule, "ge", low), getattr(rule, "le", high)
    return low, high


def _seconds_of(value: Any) -> float:
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)


#: setting -> the environment variable it is read from (CONTRACT §1)
ENV_NAMES: dict[str, str] = {
    name: str(info.validation_alias) for name, info in Settings.model_fields.items() if info.validation_alias
}
#: the allowed ranges of the numeric settings, inclusive: (low, high)
INT_RANGES: dict[str, tuple[int, int]] = {
    name: _bounds(name) for name, info in Settings.model_fields.items() if info.annotation is int
}
SECONDS_RANGES: dict[str, tuple[float, float]] = {
    name: (_seconds_of(_bounds(name)[0]), _seconds_of(_bounds(name)[1]))
    for name, info in Settings.model_fields.items()
    if info.annotation in (float, dt.timedelta) and name in ENV_NAMES
}
_FIELD_OF_ENV = {env: name for name, env in ENV_NAMES.items()}


def reveal(secret: SecretStr | None) -> str | None:
    """The secret's text, where a client needs it (and only there)."""
    return secret.get_secret_value() if secret is not None else None


def _shown(raw: object) -> str:
    """The value as quoted in a message: one line, and short (the value may be huge)."""
    text = str(raw)
    return repr(text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 1] + "…")


def _expected(name: str) -> str:
    """What a setting allows, in words, from its declaration."""
    if name in INT_RANGES:
        low, high = INT_RANGES[name]
        return f"expected an integer from {low} to {high}"
    if name in SECONDS_RANGES:
        low_s, high_s = SECONDS_RANGES[name]
        return f"expected a number of seconds from {low_s:g} to {high_s:g}"
    allowed = get_args(Settings.model_fields[name].annotation)
    if allowed and all(isinstance(a, str) for a in allowed):
        return f"expected one of {', '.join(allowed)}"
    return "not a valid value"


def _one_line(error: ErrorDetails) -> str:
    """A pydantic error of one setting as the line the user reads: ``NAME='value': expected …``
    (without the value when it may hold a secret)."""
    key = str(error["loc"][0]) if error["loc"] else ""
    name = _FIELD_OF_ENV.get(key, key)
    env_name = ENV_NAMES.get(name, key)
    hidden = bool((error.get("ctx") or {}).get(_HIDDEN))
    message = error["msg"] if error["type"] == "setting" else _expected(name)
    return f"{env_name}: {message}" if hidden else f"{env_name}={_shown(error['input'])}: {message}"


def _validated(values: Mapping[str, object]) -> Settings:
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        raise DispatchError(_one_line(exc.errors()[0])) from None


def _mask_password(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL we can parse: show nothing of it
        return "<unparseable url>"


# --- where values come from -------------------------------------------------------------------


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping (``os.environ`` by
    default; the bench's child process and the tests pass their own): exact names, empty
    values ignored."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(Settings, case_sensitive=True, env_ignore_empty=True)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k: v for k, v in self._environ.items() if v != ""}


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
        if isinstance(extra, Mapping):
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
        values["smtp_port"] = conn.get("port")
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
    """Settings from the environment, then Airflow connections, then defaults; a bad value
    is a one-line :class:`DispatchError` naming its variable."""
    values: dict[str, object] = {}
    if airflow_lookup is not None:
        values.update({ENV_NAMES[k]: v for k, v in airflow_connection_values(airflow_lookup).items()})
    values.update(_Environment(os.environ if environ is None else environ)())
    return _validated(values)


def load_settings_or_exit() -> Settings:
    """:func:`load_settings` for an entry point outside the ``dispatch`` CLI (``make demo``):
    a bad value is its one line on stderr and exit 2, as the CLI answers, not a traceback."""
    try:
        return load_settings()
    except DispatchError as exc:
        print(f"dispatch: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
