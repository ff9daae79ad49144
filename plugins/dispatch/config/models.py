"""The configuration file's entries as pydantic models (docs/configuration.md): each field is
declared once, with its type, its rule and the database column it is stored in
(``serialization_alias``), and every check of one entry on its own lives here.

Values arrive as YAML source text (:class:`~dispatch.config.yaml_marks.Scalar`); the types
below read them as the format documents: texts as written, integers and booleans only when
YAML wrote them so (``"2"`` in quotes is refused), instants with an offset. A refusal is a
:class:`PydanticCustomError` whose message is the one the user reads;
:mod:`dispatch.config.entries` words pydantic's own errors (missing, unknown field, out of
range) the same way.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import re
import zoneinfo
from enum import StrEnum
from typing import Annotated

import holidays as holidays_lib
from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
)
from pydantic_core import PydanticCustomError
from yaml.constructor import SafeConstructor
from yaml.nodes import ScalarNode

from dispatch.config.problems import did_you_mean
from dispatch.config.yaml_marks import TAG_BOOL, TAG_INT, Scalar, kind
from dispatch.rendering.checks import check_template_file, check_template_source
from dispatch.rendering.errors import TemplateError
from dispatch.rules.scheduling import MAX_DELAY_DAYS, SUPPORTED_FROM, SUPPORTED_RANGE_TEXT, SUPPORTED_UNTIL
from dispatch.vocabulary import ChannelName, PlanLevel, values

ID_MAX_LENGTH = 64  # the id columns are VARCHAR(64)
DEFAULT_SEND_TIME = "08:00"
_SEND_TIME = re.compile(r"([01]\d|2[0-3]):[0-5]\d")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
#: the error context key of a template's own line number (placed inside a ``|`` block)
TEMPLATE_LINE = "template_line"


def refuse(message: str, **context: object) -> PydanticCustomError:
    """A refusal whose message is shown as is (``context`` is never interpolated into it)."""
    return PydanticCustomError("config", message, context or None)


def short(value: str) -> str:
    """A value quoted in a message: short, whatever the file holds."""
    return repr(value if len(value) <= 40 else value[:39] + "…")


# --- reading scalars as the format says -------------------------------------------------------


def _text(value: object) -> str:
    if isinstance(value, dict | list):
        raise refuse(f"expected a text, got {kind(value)}")
    text = str(value)
    if not text.strip():
        raise refuse("must not be empty")
    return text


def _yaml_int(value: object) -> object:
    """An integer only as YAML writes one (``0x10``, ``1_000`` included); anything else is
    refused here, before pydantic's lax mode could read ``"2"`` or ``1.5`` as a number."""
    if isinstance(value, Scalar):
        if value.tag != TAG_INT:
            raise PydanticCustomError("int_type", "not a YAML integer")
        try:
            return int(SafeConstructor().construct_yaml_int(ScalarNode(TAG_INT, str(value))))
        except ValueError:  # more digits than Python converts
            raise PydanticCustomError("int_parsing", "too many digits") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise PydanticCustomError("int_type", "not an integer")
    return value


def _yaml_bool(value: object) -> object:
    if isinstance(value, Scalar):
        if value.tag != TAG_BOOL:
            raise refuse(f"must be true or false, got {str(value)!r}")
        return SafeConstructor.bool_values[value.lower()]  # true/false, yes/no, on/off
    if not isinstance(value, bool):
        raise refuse(f"expected true or false, got {kind(value)}")
    return value


def _one_line_id(value: str) -> str:
    if value != value.strip() or _CONTROL.search(value):
        raise refuse(f"{value!r} is not a valid id (no line breaks, no surrounding spaces)")
    return value


def _one_line(value: str) -> str:
    if _CONTROL.search(value):
        raise refuse("must be one line (no line breaks or control characters)")
    return value


def _email(value: str) -> str:
    """A plain e-mail address (``user@domain``): it ends up in a header, so syntax matters."""
    value = value.strip()
    try:
        validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise refuse(f"{value!r} is not an e-mail address (user@domain, no display name): {exc}") from None
    return value


@functools.cache
def _time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


@functools.cache
def _holiday_countries() -> frozenset[str]:
    return frozenset(holidays_lib.list_supported_countries())


@functools.cache
def _countries() -> frozenset[str]:
    """ISO 3166 alpha-2 codes phone numbers can be read with."""
    import phonenumbers

    return frozenset(phonenumbers.SUPPORTED_REGIONS)


def _time_zone(value: str) -> str:
    if value not in _time_zones():
        raise refuse(f"unknown time zone {value!r}{did_you_mean(value, _time_zones())}")
    return value


def _send_time(value: str) -> str:
    if not _SEND_TIME.fullmatch(value):
        raise refuse(f"{value!r} is not a time of day HH:MM between 00:00 and 23:59")
    return value


def _holiday_country(value: str) -> str:
    if value.strip().upper() not in _holiday_countries():
        raise refuse(f"unknown holiday country {value!r} (an ISO 3166 code such as FR, US)")
    return value.strip().upper()


def _country(value: str) -> str:
    if value.strip().upper() not in _countries():
        raise refuse(f"unknown country {value!r} (an ISO 3166 alpha-2 code such as FR, DE, US)")
    return value.strip().upper()


def _instant(value: object) -> dt.datetime:
    """An aware instant within the range the scheduler computes (``SUPPORTED_FROM`` to
    ``SUPPORTED_UNTIL``), in UTC; anything else is refused, never left to overflow later."""
    raw = _text(value)
    try:
        parsed: dt.datetime | None = dt.datetime.fromisoformat(raw.strip())
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise refuse(
            f"{short(raw)} is not an ISO 8601 instant with an offset (e.g. 2026-11-01T00:00:00+01:00)"
        )
    try:
        utc = parsed.astimezone(dt.UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        utc = None
    if utc is None or not SUPPORTED_FROM <= utc < SUPPORTED_UNTIL:
        raise refuse(f"{short(raw)} is outside {SUPPORTED_RANGE_TEXT}")
    return utc


def _one_of(kind: type[StrEnum], message: str) -> WrapValidator:
    """Refuse a value outside ``kind`` with ``message`` (``{value}``, ``{allowed}``)."""
    allowed = ", ".join(values(kind))

    def check(value: object, handler: ValidatorFunctionWrapHandler) -> object:
        try:
            return handler(value)
        except ValidationError:
            raise refuse(message.format(value=repr(str(value)), allowed=allowed)) from None

    return WrapValidator(check)


Text = Annotated[str, BeforeValidator(_text)]
Id = Annotated[
    str, StringConstraints(max_length=ID_MAX_LENGTH), AfterValidator(_one_line_id), BeforeValidator(_text)
]
Email = Annotated[str, AfterValidator(_one_line), AfterValidator(_email), BeforeValidator(_text)]
TimeZone = Annotated[str, AfterValidator(_time_zone), BeforeValidator(_text)]
SendTime = Annotated[str, AfterValidator(_send_time), BeforeValidator(_text)]
HolidayCountry = Annotated[str, AfterValidator(_holiday_country), BeforeValidator(_text)]
Country = Annotated[str, AfterValidator(_country), BeforeValidator(_text)]
Instant = Annotated[dt.datetime, BeforeValidator(_instant)]
YamlBool = Annotated[bool, BeforeValidator(_yaml_bool)]
Channel = Annotated[ChannelName, _one_of(ChannelName, "unknown channel {value} (expected one of: {allowed})")]
Level = Annotated[PlanLevel, _one_of(PlanLevel, "{value} is not a plan level (expected one of: {allowed})")]


# --- the entries ------------------------------------------------------------------------------


class Entry(BaseModel):
    """One entry of a section: unknown fields are refused (a typo never passes silently)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Organization(Entry):
    id: Id = Field(serialization_alias="org_id")
    name: Text
    timezone: TimeZone
    send_time: SendTime = DEFAULT_SEND_TIME
    country: Country | None = None
    holidays: HolidayCountry | None = None
    invoice_sending_enabled_at: Instant | None = None
    default_owner: Id | None = None
    mail_from: Email | None = None
    reply_to: Email | None = None


class User(Entry):
    id: Id = Field(serialization_alias="user_id")
    org: Id = Field(serialization_alias="org_id")
    name: Text
    email: Email | None = None


class InvoiceSending(Entry):
    """A plan's template. Subject, body and template file are optional: what is left out
    renders with the default wording of the customer's language (dispatch.rendering)."""

    channel: Channel
    delay_days: Annotated[int, Field(ge=0, le=MAX_DELAY_DAYS), BeforeValidator(_yaml_int)] = 0
    automatic: YamlBool
    owner: Id | None = Field(None, serialization_alias="owner_user_id")
    subject: Text | None = None
    body: Text | None = None
    template: Text | None = Field(None, serialization_alias="template_file")

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str, info: ValidationInfo) -> str:
        channel = info.data.get("channel")
        if channel in (ChannelName.LETTER, ChannelName.SMS):
            raise refuse(
                f"{'an SMS' if channel == ChannelName.SMS else 'a letter'} has no subject (only e-mails do)"
            )
        if _CONTROL.search(value.strip()):
            raise refuse("must be one line (a subject is a header: no line breaks)")
        _compiles(value, html=False)
        return value

    @field_validator("body")
    @classmethod
    def _body(cls, value: str, info: ValidationInfo) -> str:
        _compiles(value, html=info.data.get("channel") == ChannelName.EMAIL)
        return value

    @field_validator("template")
    @classmethod
    def _template(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("body") is not None:
            raise refuse("give either body or template, not both")
        try:
            check_template_file(value.strip())
        except TemplateError as exc:
            raise refuse(_one_line_text(exc)) from None
        return value.strip()


class Plan(Entry):
    id: Id = Field(serialization_alias="plan_id")
    org: Id = Field(serialization_alias="org_id")
    name: Text
    level: Level
    invoice_sending: InvoiceSending | None = Field(None, exclude=True)

    @field_validator("invoice_sending")
    @classmethod
    def _customer_level_only(cls, value: InvoiceSending, info: ValidationInfo) -> InvoiceSending:
        if info.data.get("level") == PlanLevel.INVOICE:
            raise refuse("only customer-level plans carry an invoice-sending template (level is 'invoice')")
        return value

    @property
    def template_id(self) -> str | None:
        if self.invoice_sending is None:
            return None
        return template_version_id(self.id, **self.invoice_sending.model_dump())


class Assignment(Entry):
    customer: Id = Field(serialization_alias="customer_id")
    plan: Id = Field(serialization_alias="plan_id")


class ConfigFile(BaseModel):
    """The file: four optional sections. Top-level keys starting with ``x-`` are ignored (a
    place to define YAML anchors); any other key is refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    organizations: list[Organization] = []
    users: list[User] = []
    plans: list[Plan] = []
    assignments: list[Assignment] = []


IGNORED_TOP_LEVEL_PREFIX = "x-"
SECTIONS = tuple(ConfigFile.model_fields)
#: the field that names an entry of each section in messages (``plans[0] (plan_std).level``)
ID_FIELDS = {"organizations": "id", "users": "id", "plans": "id", "assignments": "customer"}


def template_version_id(plan_id: str, **content: object) -> str:
    """``plan_id@`` + the first 12 hex digits of the SHA-256 of the template's content (the
    fields of :class:`InvoiceSending`, ``null`` when absent) as canonical JSON.

    The same content always gives the same id, so a reload finds the version it already
    stored, and any change (even of the delay or the owner) makes a new one.
    """
    unknown = set(content) - set(InvoiceSending.model_fields)
    if unknown:
        raise TypeError(f"not a template field: {', '.join(sorted(unknown))}")
    full = {name: content.get(name) for name in InvoiceSending.model_fields}
    canonical = json.dumps(full, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"{plan_id}@{hashlib.sha256(canonical.encode('utf-8')).hexdigest()[:12]}"


def _compiles(source: str, *, html: bool) -> None:
    """Compile the Jinja source in the sandbox that renders messages; the error carries the
    template's own line, which :class:`Problems` places inside a ``|`` block."""
    try:
        check_template_source(source, html=html)
    except TemplateError as exc:
        what = "template is over a limit" if exc.over_limit else "template does not parse"
        context = {TEMPLATE_LINE: exc.lineno} if exc.lineno else {}
        raise refuse(f"{what}: {_one_line_text(exc)}", **context) from None


def _one_line_text(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
