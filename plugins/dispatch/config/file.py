"""``dispatch config load FILE.yaml`` (CONTRACT §3): organizations, users, plans with their
invoice-sending template, and customer→plan assignments, loaded all-or-nothing (SPEC B6).

Why it is built the way it is:

- The YAML is *composed* (node tree), not loaded, so that every value keeps its line and
  every problem can say ``FILE:LINE: entry.field: what is wrong``. Scalars are read from
  their source text, which also spares users YAML 1.1 surprises (``send_time: 12:30`` is
  the integer 750 to ``yaml.safe_load``; here it is the text ``12:30``).
- The whole file is validated, and every problem collected, before anything is written;
  then everything is upserted in one transaction. A file with one mistake changes nothing
  and the user sees all their mistakes at once, not one per attempt.
- References may point at entries loaded earlier (already in the database); the checks use
  the configuration as it will be *after* the load: the file's entries over the stored ones.
- Templates are immutable versions named after their content, so an action keeps exactly
  the template it was created with, and re-loading an unchanged file writes nothing.
"""

from __future__ import annotations

import datetime as dt
import difflib
import functools
import hashlib
import json
import re
import stat
import zoneinfo
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import holidays as holidays_lib
import yaml
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import Connection, Engine, Table, bindparam, func, inspect, or_, select, text
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from dispatch.errors import ConfigError
from dispatch.rendering.checks import check_template_file, check_template_source
from dispatch.rendering.errors import TemplateError
from dispatch.rules.scheduling import MAX_DELAY_DAYS, SUPPORTED_FROM, SUPPORTED_RANGE_TEXT, SUPPORTED_UNTIL
from dispatch.storage.bulk import chunks, dialect_insert
from dispatch.storage.schema import (
    CHANNELS,
    PLAN_LEVELS,
    customer_plans,
    invoice_templates,
    organizations,
    plans,
    users,
)

SECTIONS = ("organizations", "users", "plans", "assignments")
ORG_FIELDS = (
    "id",
    "name",
    "timezone",
    "send_time",
    "country",
    "holidays",
    "invoice_sending_enabled_at",
    "default_owner",
    "mail_from",
    "reply_to",
)
USER_FIELDS = ("id", "org", "name", "email")
PLAN_FIELDS = ("id", "org", "name", "level", "invoice_sending")
SENDING_FIELDS = ("channel", "delay_days", "automatic", "owner", "subject", "body", "template")
ASSIGNMENT_FIELDS = ("customer", "plan")

DEFAULT_SEND_TIME = "08:00"
#: a configuration file is a few kilobytes; anything near this is a mistake, not a file to parse
MAX_FILE_BYTES = 10_000_000
#: how deep mappings and lists may nest (the format itself needs 4 levels)
MAX_NESTING = 50
ID_MAX_LENGTH = 64  # the id columns are VARCHAR(64)
_SEND_TIME = re.compile(r"([01]\d|2[0-3]):[0-5]\d")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
# An advisory-lock key (any constant) that serializes concurrent loads on PostgreSQL, so the
# checks and the writes of one load see the same stored configuration.
_PG_LOCK_KEY = 0x64697370_636F6E66  # b"dispconf"
_TAG_NULL = "tag:yaml.org,2002:null"
_TAG_INT = "tag:yaml.org,2002:int"
_TAG_BOOL = "tag:yaml.org,2002:bool"
_TAG_MERGE = "tag:yaml.org,2002:merge"


# --- problems ------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the file: where (line, entry.field) and what."""

    line: int
    where: str
    message: str

    def format(self, source: str) -> str:
        place = f"{self.where}: " if self.where else ""
        return f"{source}:{self.line}: {place}{self.message}"


class _Problems:
    """Collects every problem of a file; the load refuses the file if there is any."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[Problem] = []

    def add(self, line: int, where: str, message: str) -> None:
        problem = Problem(line, where, message)
        if problem not in self.items:
            self.items.append(problem)

    def __bool__(self) -> bool:
        return bool(self.items)

    def error(self) -> ConfigError:
        """One line per problem, in file order: the first line alone is a complete message."""
        ordered = sorted(self.items, key=lambda p: p.line)  # stable: same line keeps check order
        return ConfigError("\n".join(p.format(self.source) for p in ordered))


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _did_you_mean(word: str, candidates: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.75)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return f"{node.value!r}"


# --- reading the YAML ------------------------------------------------------------------


class _Entry:
    """One mapping of the file (an organization, a user, …): its fields as nodes, read with
    type checks that report problems against ``label.field`` and the field's line."""

    def __init__(
        self,
        node: MappingNode,
        label: str,
        allowed: Sequence[str],
        problems: _Problems,
        id_field: str | None = None,
        unknown_what: str = "field",
        ignored_prefix: str | None = None,
    ) -> None:
        self.node = node
        self.problems = problems
        self.nodes: dict[str, Node] = {}
        duplicates: list[tuple[str, Node]] = []
        unknown: list[tuple[str, Node]] = []
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, ScalarNode) else _kind(key_node)
            if ignored_prefix and key.startswith(ignored_prefix):
                continue
            if key not in allowed:
                unknown.append((key, key_node))
            elif key in self.nodes:
                duplicates.append((key, key_node))
            else:
                self.nodes[key] = value_node
        ident = self.nodes.get(id_field) if id_field else None
        if isinstance(ident, ScalarNode) and ident.tag != _TAG_NULL and ident.value:
            label = f"{label} ({ident.value})"
        self.label = label
        for key, key_node in unknown:
            hint = _did_you_mean(key, allowed) or f" (expected one of: {', '.join(allowed)})"
            problems.add(_line(key_node), self.where(key), f"unknown {unknown_what}{hint}")
        for key, key_node in duplicates:
            problems.add(
                _line(key_node), self.where(key), f"given twice (first on line {_line(self.nodes[key])})"
            )

    @property
    def line(self) -> int:
        return _line(self.node)

    def where(self, name: str) -> str:
        return f"{self.label}.{name}" if self.label else name

    def line_of(self, name: str) -> int:
        node = self.nodes.get(name)
        return _line(node) if node is not None else self.line

    def refuse(self, name: str, message: str) -> None:
        self.problems.add(self.line_of(name), self.where(name), message)

    def has(self, name: str) -> bool:
        """Whether the field is given with a value (``null`` counts as absent)."""
        node = self.nodes.get(name)
        return node is not None and not (isinstance(node, ScalarNode) and node.tag == _TAG_NULL)

    def _scalar(self, name: str, required: bool, what: str) -> ScalarNode | None:
        if not self.has(name):
            if required:
                self.problems.add(self.line, self.where(name), "missing required field")
            return None
        node = self.nodes[name]
        if not isinstance(node, ScalarNode):
            self.refuse(name, f"expected {what}, got {_kind(node)}")
            return None
        return node

    def text(self, name: str, *, required: bool = False, max_length: int | None = None) -> str | None:
        """The field's text exactly as written (YAML's implicit typing does not apply)."""
        node = self._scalar(name, required, "a text")
        if node is None:
            return None
        value = node.value
        if not value.strip():
            self.refuse(name, "must not be empty")
            return None
        if max_length is not None and len(value) > max_length:
            self.refuse(name, f"longer than {max_length} characters")
            return None
        return value

    def ident(self, name: str, *, required: bool = True) -> str | None:
        """An id: one line of text without surrounding spaces, at most 64 characters."""
        value = self.text(name, required=required, max_length=ID_MAX_LENGTH)
        if value is None:
            return None
        if value != value.strip() or _CONTROL.search(value):
            self.refuse(name, f"{value!r} is not a valid id (no line breaks, no surrounding spaces)")
            return None
        return value

    def line_of_text(self, name: str, *, required: bool = False) -> str | None:
        """Text that must stay on one line (it ends up in a header or an identifier)."""
        value = self.text(name, required=required)
        if value is not None and _CONTROL.search(value):
            self.refuse(name, "must be one line (no line breaks or control characters)")
            return None
        return value

    def integer(self, name: str, *, default: int, low: int, high: int) -> int | None:
        """An integer from ``low`` to ``high`` (inclusive); anything else is refused here,
        before it can overflow a column or a date computation."""
        if not self.has(name):
            return default
        node = self._scalar(name, True, "an integer")
        if node is None:
            return None
        allowed = f"an integer from {low} to {high}"
        if node.tag != _TAG_INT:
            self.refuse(name, f"must be {allowed}, got {_short(node.value)}")
            return None
        try:
            value = int(SafeConstructor().construct_yaml_int(node))  # 0x10, 1_000, … as YAML reads them
        except ValueError:  # more digits than Python converts
            value = None
        if value is None or not low <= value <= high:
            self.refuse(name, f"must be {allowed}, got {_short(node.value)}")
            return None
        return value

    def boolean(self, name: str, *, required: bool = False, default: bool | None = None) -> bool | None:
        node = self._scalar(name, required, "true or false")
        if node is None:
            return default
        if node.tag != _TAG_BOOL:
            self.refuse(name, f"must be true or false, got {node.value!r}")
            return None
        return SafeConstructor.bool_values[node.value.lower()]  # true/false, yes/no, on/off

    def child(self, name: str, allowed: Sequence[str]) -> _Entry | None:
        if not self.has(name):
            return None
        node = self.nodes[name]
        if not isinstance(node, MappingNode):
            self.refuse(name, f"expected a mapping of {', '.join(allowed)}, got {_kind(node)}")
            return None
        return _Entry(node, self.where(name), allowed, self.problems)


def _short(value: str) -> str:
    """A value quoted in a message: short, whatever the file holds."""
    return repr(value if len(value) <= 40 else value[:39] + "…")


def _read_bounded(path: Path) -> bytes:
    """The file's bytes, refusing a file larger than :data:`MAX_FILE_BYTES` without reading
    it whole (and anything that is not a regular file, e.g. a FIFO or a device)."""
    source = str(path)
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # stat first: opening a FIFO would block
            raise ConfigError(f"{source}: cannot read the file: not a regular file")
        with path.open("rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the file: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"{source}: the file is larger than {MAX_FILE_BYTES} bytes")
    return raw


def _deeper_than(root: Node, limit: int) -> Node | None:
    """The first node nested more than ``limit`` levels deep, or None (iteratively: the
    point is to stay clear of Python's recursion limit)."""
    stack: list[tuple[Node, int]] = [(root, 0)]
    seen: set[int] = set()
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return node
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, MappingNode):
            stack.extend((child, depth + 1) for pair in node.value for child in pair)
        elif isinstance(node, SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)
    return None


def _compose(path: Path) -> Node | None:
    """The document's node tree, or a one-line ConfigError for an unreadable file."""
    source = str(path)
    raw = _read_bounded(path)
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{source}:{line}: the file is not UTF-8 text") from None
    try:
        root = yaml.compose(content, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        what = "; ".join(str(part) for part in (exc.context, exc.problem) if part)
        raise ConfigError(f"{source}:{line}: YAML syntax error: {what}") from None
    except yaml.reader.ReaderError as exc:
        line = content.count("\n", 0, exc.position) + 1
        raise ConfigError(f"{source}:{line}: YAML syntax error: {exc.reason}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}:1: YAML syntax error: {exc}") from None
    except RecursionError:  # PyYAML's composer recurses once per nesting level
        raise ConfigError(f"{source}:1: nested more than {MAX_NESTING} levels deep") from None
    if root is not None:
        deep = _deeper_than(root, MAX_NESTING)
        if deep is not None:
            raise ConfigError(f"{source}:{_line(deep)}: nested more than {MAX_NESTING} levels deep")
        _flatten_merges(root, source)
    return root


def _flatten_merges(root: Node, source: str) -> None:
    """Apply YAML merge keys (``<<: *defaults``) in place, with ``safe_load``'s precedence:
    the mapping's own keys win over merged ones, earlier merged mappings over later ones.
    (PyYAML's own ``flatten_mapping`` keeps both copies of an overridden key, which the
    duplicate-key check would then refuse.)"""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, MappingNode):
            _merge_into(node, source, frozenset())
            stack.extend(v for pair in node.value for v in pair)
        elif isinstance(node, SequenceNode):
            stack.extend(node.value)


def _merge_into(node: MappingNode, source: str, visiting: frozenset[int]) -> None:
    if id(node) in visiting:
        raise ConfigError(f"{source}:{_line(node)}: YAML merge error: a mapping merges itself")
    own: list[tuple[Node, Node]] = []
    merged: list[MappingNode] = []
    for key, value in node.value:
        if key.tag != _TAG_MERGE:
            own.append((key, value))
        elif isinstance(value, MappingNode):
            merged.append(value)
        elif isinstance(value, SequenceNode) and all(isinstance(v, MappingNode) for v in value.value):
            merged.extend(value.value)
        else:
            raise ConfigError(
                f"{source}:{_line(value)}: YAML merge error: '<<' needs a mapping or a list of mappings"
            )
    if not merged:
        return
    taken = {k.value for k, _ in own if isinstance(k, ScalarNode)}
    inherited: list[tuple[Node, Node]] = []
    for other in merged:
        _merge_into(other, source, visiting | {id(node)})
        for key, value in other.value:
            name = key.value if isinstance(key, ScalarNode) else None
            if name is not None and name in taken:
                continue
            if name is not None:
                taken.add(name)
            inherited.append((key, value))
    node.value = inherited + own


# --- the file, validated on its own ------------------------------------------------------


@dataclass
class _Org:
    entry: _Entry
    org_id: str | None
    name: str | None
    timezone: str | None
    send_time: str | None
    holidays: str | None
    enabled_at: dt.datetime | None
    country: str | None
    default_owner: str | None
    mail_from: str | None
    reply_to: str | None

    def row(self, now: dt.datetime) -> dict[str, Any]:
        return {
            "org_id": self.org_id,
            "name": self.name,
            "timezone": self.timezone,
            "send_time": self.send_time,
            "holidays": self.holidays,
            "country": self.country,
            "invoice_sending_enabled_at": self.enabled_at,
            "default_owner": self.default_owner,
            "mail_from": self.mail_from,
            "reply_to": self.reply_to,
            "updated_at": now,
        }


@dataclass
class _User:
    entry: _Entry
    user_id: str | None
    org_id: str | None
    name: str | None
    email: str | None

    def row(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "org_id": self.org_id, "name": self.name, "email": self.email}


@dataclass
class _Sending:
    entry: _Entry
    channel: str | None
    delay_days: int | None
    automatic: bool | None
    owner: str | None
    subject: str | None
    body: str | None
    template: str | None

    def content(self) -> dict[str, Any]:
        """What identifies a template version (hashed into its id)."""
        return {
            "channel": self.channel,
            "delay_days": self.delay_days,
            "automatic": self.automatic,
            "owner": self.owner,
            "subject": self.subject,
            "body": self.body,
            "template": self.template,
        }


@dataclass
class _Plan:
    entry: _Entry
    plan_id: str | None
    org_id: str | None
    name: str | None
    level: str | None
    sending: _Sending | None

    @property
    def template_id(self) -> str | None:
        if self.sending is None or self.plan_id is None:
            return None
        return template_version_id(self.plan_id, **self.sending.content())


@dataclass
class _Assignment:
    entry: _Entry
    customer_id: str | None
    plan_id: str | None


@dataclass
class _File:
    orgs: list[_Org] = field(default_factory=list)
    users: list[_User] = field(default_factory=list)
    plans: list[_Plan] = field(default_factory=list)
    assignments: list[_Assignment] = field(default_factory=list)

    def by_id(self) -> tuple[dict[str, _Org], dict[str, _User], dict[str, _Plan], dict[str, _Assignment]]:
        return (
            {o.org_id: o for o in self.orgs if o.org_id},
            {u.user_id: u for u in self.users if u.user_id},
            {p.plan_id: p for p in self.plans if p.plan_id},
            {a.customer_id: a for a in self.assignments if a.customer_id},
        )


def template_version_id(
    plan_id: str,
    *,
    channel: str | None,
    delay_days: int | None,
    automatic: bool | None,
    owner: str | None,
    subject: str | None,
    body: str | None,
    template: str | None,
) -> str:
    """``plan_id@`` + the first 12 hex digits of the SHA-256 of the content as canonical JSON.

    The same content always gives the same id, so a reload finds the version it already
    stored, and any change (even of the delay or the owner) makes a new one.
    """
    content = {
        "channel": channel,
        "delay_days": delay_days,
        "automatic": automatic,
        "owner": owner,
        "subject": subject,
        "body": body,
        "template": template,
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"{plan_id}@{hashlib.sha256(canonical.encode('utf-8')).hexdigest()[:12]}"


@functools.cache
def _time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


@functools.cache
def _holiday_countries() -> frozenset[str]:
    return frozenset(holidays_lib.list_supported_countries())


def _read_file(root: Node, problems: _Problems) -> _File:
    """Every entry of the file, each field checked on its own (types, formats, templates)."""
    if not isinstance(root, MappingNode):
        problems.add(_line(root), "", f"expected a mapping with {', '.join(SECTIONS)}, got {_kind(root)}")
        return _File()
    # Top-level keys starting with "x-" are ignored: a place to define YAML anchors.
    top = _Entry(root, "", SECTIONS, problems, unknown_what="top-level key", ignored_prefix="x-")
    readers: dict[str, tuple[Sequence[str], str, Callable[[_Entry], Any]]] = {
        "organizations": (ORG_FIELDS, "id", _read_org),
        "users": (USER_FIELDS, "id", _read_user),
        "plans": (PLAN_FIELDS, "id", _read_plan),
        "assignments": (ASSIGNMENT_FIELDS, "customer", _read_assignment),
    }
    parsed = _File()
    targets: dict[str, list[Any]] = {
        "organizations": parsed.orgs,
        "users": parsed.users,
        "plans": parsed.plans,
        "assignments": parsed.assignments,
    }
    for section, (allowed, id_field, reader) in readers.items():
        if not top.has(section):
            continue
        node = top.nodes[section]
        if not isinstance(node, SequenceNode):
            problems.add(_line(node), section, f"expected a list of entries, got {_kind(node)}")
            continue
        for index, item in enumerate(node.value):
            label = f"{section}[{index}]"
            if not isinstance(item, MappingNode):
                problems.add(
                    _line(item), label, f"expected a mapping of {', '.join(allowed)}, got {_kind(item)}"
                )
                continue
            targets[section].append(reader(_Entry(item, label, allowed, problems, id_field)))
    if not any(targets.values()) and not problems:
        problems.add(_line(root), "", f"the file defines nothing (expected {', '.join(SECTIONS)})")
    _refuse_duplicates(parsed, problems)
    return parsed


def _read_org(e: _Entry) -> _Org:
    org = _Org(
        entry=e,
        org_id=e.ident("id"),
        name=e.text("name", required=True),
        timezone=e.text("timezone", required=True),
        send_time=e.text("send_time"),
        holidays=e.text("holidays"),
        enabled_at=None,
        country=e.text("country"),
        default_owner=e.ident("default_owner", required=False),
        mail_from=_address(e, "mail_from"),
        reply_to=_address(e, "reply_to"),
    )
    if org.timezone is not None and org.timezone not in _time_zones():
        e.refuse(
            "timezone", f"unknown time zone {org.timezone!r}{_did_you_mean(org.timezone, _time_zones())}"
        )
        org.timezone = None
    if org.send_time is None and not e.has("send_time"):
        org.send_time = DEFAULT_SEND_TIME
    elif org.send_time is not None and not _SEND_TIME.fullmatch(org.send_time):
        e.refuse("send_time", f"{org.send_time!r} is not a time of day HH:MM between 00:00 and 23:59")
        org.send_time = None
    if org.holidays is not None:
        country = org.holidays.strip().upper()
        if country not in _holiday_countries():
            e.refuse(
                "holidays", f"unknown holiday country {org.holidays!r} (an ISO 3166 code such as FR, US)"
            )
            org.holidays = None
        else:
            org.holidays = country
    if org.country is not None:
        code = org.country.strip().upper()
        if code not in _countries():
            e.refuse(
                "country", f"unknown country {org.country!r} (an ISO 3166 alpha-2 code such as FR, DE, US)"
            )
            org.country = None
        else:
            org.country = code
    if e.has("invoice_sending_enabled_at"):
        org.enabled_at = _instant(e, "invoice_sending_enabled_at")
    return org


@functools.cache
def _countries() -> frozenset[str]:
    """ISO 3166 alpha-2 codes phone numbers can be read with."""
    import phonenumbers

    return frozenset(phonenumbers.SUPPORTED_REGIONS)


def _instant(e: _Entry, name: str) -> dt.datetime | None:
    """An aware instant within the range the scheduler computes (``SUPPORTED_FROM`` to
    ``SUPPORTED_UNTIL``); anything else is refused, never left to overflow later."""
    raw = e.text(name)
    if raw is None:
        return None
    try:
        value: dt.datetime | None = dt.datetime.fromisoformat(raw.strip())
    except ValueError:
        value = None
    try:
        utc = value.astimezone(dt.UTC) if value is not None and value.tzinfo is not None else None
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        utc = None
    if value is None or value.tzinfo is None:
        e.refuse(
            name,
            f"{_short(raw)} is not an ISO 8601 instant with an offset (e.g. 2026-11-01T00:00:00+01:00)",
        )
        return None
    if utc is None or not SUPPORTED_FROM <= utc < SUPPORTED_UNTIL:
        e.refuse(name, f"{_short(raw)} is outside {SUPPORTED_RANGE_TEXT}")
        return None
    return utc


def _address(e: _Entry, name: str) -> str | None:
    """A plain e-mail address (``user@domain``): it ends up in a header, so syntax matters."""
    value = e.line_of_text(name)
    if value is None:
        return None
    value = value.strip()
    try:
        validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        e.refuse(name, f"{value!r} is not an e-mail address (user@domain, no display name): {exc}")
        return None
    return value


def _read_user(e: _Entry) -> _User:
    return _User(
        entry=e,
        user_id=e.ident("id"),
        org_id=e.ident("org"),
        name=e.text("name", required=True),
        email=_address(e, "email"),
    )


def _read_plan(e: _Entry) -> _Plan:
    plan = _Plan(
        entry=e,
        plan_id=e.ident("id"),
        org_id=e.ident("org"),
        name=e.text("name", required=True),
        level=e.text("level", required=True),
        sending=None,
    )
    if plan.level is not None and plan.level not in PLAN_LEVELS:
        e.refuse("level", f"{plan.level!r} is not a plan level (expected {' or '.join(PLAN_LEVELS)})")
        plan.level = None
    sending_entry = e.child("invoice_sending", SENDING_FIELDS)
    if plan.level == "invoice" and e.has("invoice_sending"):
        e.refuse(
            "invoice_sending",
            "only customer-level plans carry an invoice-sending template (level is 'invoice')",
        )
    if sending_entry is not None:
        plan.sending = _read_sending(sending_entry)
    return plan


def _read_sending(e: _Entry) -> _Sending:
    """The template of a plan. Subject, body and template file are optional: what is left
    out renders with the default wording of the customer's language (dispatch.rendering.lookup)."""
    s = _Sending(
        entry=e,
        channel=e.text("channel", required=True),
        delay_days=e.integer("delay_days", default=0, low=0, high=MAX_DELAY_DAYS),
        automatic=e.boolean("automatic", required=True),
        owner=e.ident("owner", required=False),
        subject=e.text("subject"),
        body=e.text("body"),
        template=e.text("template"),
    )
    if s.channel is not None and s.channel not in CHANNELS:
        e.refuse("channel", f"unknown channel {s.channel!r} (expected one of: {', '.join(CHANNELS)})")
        s.channel = None
    if s.channel in ("letter", "sms") and e.has("subject"):
        what = "an SMS" if s.channel == "sms" else "a letter"
        e.refuse("subject", f"{what} has no subject (only e-mails do)")
    if s.subject is not None and _CONTROL.search(s.subject.strip()):
        e.refuse("subject", "must be one line (a subject is a header: no line breaks)")
    elif s.subject is not None:
        _check_source(e, "subject", s.subject, html=False)
    if e.has("body") and e.has("template"):
        e.refuse("template", "give either body or template, not both")
    if s.body is not None:
        _check_source(e, "body", s.body, html=s.channel == "email")
    if s.template is not None:
        s.template = s.template.strip()
        try:
            check_template_file(s.template)
        except TemplateError as exc:
            e.refuse("template", _one_line(exc))
    return s


def _check_source(e: _Entry, name: str, source: str, *, html: bool) -> None:
    """Compile the Jinja source; on failure, point at the file line of the template line
    when it can be known (a literal block ``|`` keeps lines one to one)."""
    try:
        check_template_source(source, html=html)
    except TemplateError as exc:
        node = e.nodes[name]
        line = _line(node)
        if exc.lineno and isinstance(node, ScalarNode) and node.style == "|":
            line += exc.lineno  # the block's first line is the one after the '|'
        what = "template is over a limit" if exc.over_limit else "template does not parse"
        e.problems.add(line, e.where(name), f"{what}: {_one_line(exc)}")


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _read_assignment(e: _Entry) -> _Assignment:
    return _Assignment(entry=e, customer_id=e.ident("customer"), plan_id=e.ident("plan"))


def _refuse_duplicates(parsed: _File, problems: _Problems) -> None:
    """An id given twice is a copy-paste slip: which one should win? Refuse both."""
    groups: list[tuple[str, str, Sequence[Any], str]] = [
        ("organization", "id", parsed.orgs, "org_id"),
        ("user", "id", parsed.users, "user_id"),
        ("plan", "id", parsed.plans, "plan_id"),
        ("assignment of customer", "customer", parsed.assignments, "customer_id"),
    ]
    for what, field_name, items, attr in groups:
        first: dict[str, Any] = {}
        for item in items:
            key = getattr(item, attr)
            if key is None:
                continue
            if key in first:
                item.entry.refuse(
                    field_name, f"duplicate {what} {key!r} (first on line {first[key].entry.line})"
                )
            else:
                first[key] = item


# --- the stored configuration --------------------------------------------------------


@dataclass
class _Stored:
    """The configuration already in the database, as far as the checks and counts need it."""

    orgs: dict[str, dict[str, Any]]
    users: dict[str, dict[str, Any]]
    plans: dict[str, dict[str, Any]]
    template_owner: dict[str, str | None]  # plan_id -> owner of its current template
    templates: set[str]  # the file's template ids that already exist
    assignments: dict[str, dict[str, Any]]  # the file's customers -> their stored row
    assigned_to: dict[str, list[str]]  # plans of the file that changed level/org -> customers

    @classmethod
    def read(cls, conn: Connection, parsed: _File) -> _Stored:
        def rows(table: Table, key: str) -> dict[str, dict[str, Any]]:
            return {r[key]: dict(r) for r in conn.execute(select(table)).mappings()}

        stored = cls(
            orgs=rows(organizations, "org_id"),
            users=rows(users, "user_id"),
            plans=rows(plans, "plan_id"),
            template_owner={},
            templates=set(),
            assignments={},
            assigned_to={},
        )
        owners = select(plans.c.plan_id, invoice_templates.c.owner_user_id).join(
            invoice_templates, invoice_templates.c.template_id == plans.c.template_id
        )
        stored.template_owner = {r.plan_id: r.owner_user_id for r in conn.execute(owners)}
        template_ids = sorted({p.template_id for p in parsed.plans if p.template_id})
        for part in chunks(template_ids):
            q = select(invoice_templates.c.template_id).where(invoice_templates.c.template_id.in_(part))
            stored.templates.update(conn.scalars(q))
        customers = sorted({a.customer_id for a in parsed.assignments if a.customer_id})
        for part in chunks(customers):
            q = select(customer_plans).where(customer_plans.c.customer_id.in_(part))
            stored.assignments.update({r["customer_id"]: dict(r) for r in conn.execute(q).mappings()})
        moved = sorted(
            p.plan_id
            for p in parsed.plans
            if p.plan_id in stored.plans
            and (
                (p.level is not None and p.level != stored.plans[p.plan_id]["level"])
                or (p.org_id is not None and p.org_id != stored.plans[p.plan_id]["org_id"])
            )
        )
        for part in chunks(moved):
            q = select(customer_plans.c.customer_id, customer_plans.c.plan_id).where(
                customer_plans.c.plan_id.in_(part)
            )
            for r in conn.execute(q.order_by(customer_plans.c.customer_id)):
                stored.assigned_to.setdefault(r.plan_id, []).append(r.customer_id)
        return stored


def _accounting_orgs(engine: Engine | None, customer_ids: Iterable[str]) -> dict[str, str]:
    """customer_id -> org_id for the customers the accounting source knows.

    Without an accounting source, or one with no ``customers`` table yet, nothing is known
    and no assignment can be shown to cross organizations.
    """
    ids = sorted(set(customer_ids))
    if engine is None or not ids:
        return {}
    with engine.connect() as conn:
        if not inspect(conn).has_table("customers"):
            return {}
        q = text("SELECT customer_id, org_id FROM customers WHERE customer_id IN :ids").bindparams(
            bindparam("ids", expanding=True)
        )
        found: dict[str, str] = {}
        for part in chunks(ids):
            found.update({str(r[0]): str(r[1]) for r in conn.execute(q, {"ids": list(part)})})
        return found


# --- checks across entries and against the database ---------------------------------


def _check_references(
    parsed: _File,
    stored: _Stored,
    accounting_engine: Engine | None,
    problems: _Problems,
) -> None:
    """References resolve, and stay inside one organization, in the configuration as it will
    be after the load (the file's entries over the stored ones)."""
    f_orgs, f_users, f_plans, f_assignments = parsed.by_id()
    org_ids = set(stored.orgs) | set(f_orgs)
    user_ids = set(stored.users) | set(f_users)
    plan_ids = set(stored.plans) | set(f_plans)

    def user_org(user_id: str) -> str | None:
        if user_id in f_users:
            return f_users[user_id].org_id
        return stored.users[user_id]["org_id"] if user_id in stored.users else None

    def plan_org_and_level(plan_id: str) -> tuple[str | None, str | None]:
        if plan_id in f_plans:
            return f_plans[plan_id].org_id, f_plans[plan_id].level
        row = stored.plans[plan_id]
        return row["org_id"], row["level"]

    def known(e: _Entry, name: str, value: str | None, ids: set[str], what: str) -> bool:
        if value is None:
            return False
        if value not in ids:
            e.refuse(name, f"unknown {what} {value!r}{_did_you_mean(value, ids)}")
            return False
        return True

    def same_org(e: _Entry, name: str, user_id: str, org_id: str | None) -> None:
        other = user_org(user_id)
        if org_id is not None and other is not None and other != org_id:
            e.refuse(name, f"user {user_id!r} belongs to organization {other!r}, not {org_id!r}")

    # An unknown organization is reported once, then forgotten: comparing it with the
    # organizations of owners and customers would only repeat the same mistake.
    for user in parsed.users:
        if not known(user.entry, "org", user.org_id, org_ids, "organization"):
            user.org_id = None
    for plan in parsed.plans:
        if not known(plan.entry, "org", plan.org_id, org_ids, "organization"):
            plan.org_id = None
    for org in parsed.orgs:
        if org.default_owner and known(org.entry, "default_owner", org.default_owner, user_ids, "user"):
            same_org(org.entry, "default_owner", org.default_owner, org.org_id)
    # SMS needs the organization's country: phone numbers written without +NN are read with it.
    for plan in parsed.plans:
        if not (plan.sending and plan.sending.channel == "sms" and plan.org_id):
            continue
        in_file = [o for o in parsed.orgs if o.org_id == plan.org_id]
        if in_file:  # (a repeated entry is reported on its own; any country will do here)
            country = next((o.country for o in in_file if o.country), None)
        else:
            country = stored.orgs.get(plan.org_id, {}).get("country")
        if country is None and not any(
            o.org_id == plan.org_id and o.entry.has("country") for o in parsed.orgs
        ):
            plan.sending.entry.refuse(
                "channel",
                f"sms needs organization {plan.org_id!r} to set `country` (ISO 3166, e.g. FR): phone "
                "numbers written without +NN are read with it",
            )
    for plan in parsed.plans:
        owner = plan.sending.owner if plan.sending else None
        if plan.sending and owner and known(plan.sending.entry, "owner", owner, user_ids, "user"):
            same_org(plan.sending.entry, "owner", owner, plan.org_id)

    knock_on = [c for p in parsed.plans if p.plan_id for c in stored.assigned_to.get(p.plan_id, [])]
    customer_orgs = _accounting_orgs(accounting_engine, list(f_assignments) + knock_on)
    for a in parsed.assignments:
        if a.plan_id is None or not known(a.entry, "plan", a.plan_id, plan_ids, "plan"):
            continue
        plan_org, level = plan_org_and_level(a.plan_id)
        if level == "invoice":
            a.entry.refuse(
                "plan", f"plan {a.plan_id!r} is an invoice-level plan; only customer-level plans are assigned"
            )
        customer_org = customer_orgs.get(a.customer_id or "")
        if customer_org is not None and plan_org is not None and customer_org != plan_org:
            a.entry.refuse(
                "plan",
                f"plan {a.plan_id!r} belongs to organization {plan_org!r} but customer {a.customer_id!r} "
                f"belongs to {customer_org!r} in the accounting source",
            )
    _check_stored_dependents(parsed, stored, customer_orgs, user_org)


def _check_stored_dependents(
    parsed: _File,
    stored: _Stored,
    customer_orgs: dict[str, str],
    user_org: Callable[[str], str | None],
) -> None:
    """A change in the file must not break what the database keeps and the file leaves alone:
    a plan turned invoice-level or moved to another org that stored customers still use, a
    user moved to another org who stays owner there."""
    f_orgs, _, f_plans, f_assignments = parsed.by_id()
    for plan in parsed.plans:
        customers = [c for c in stored.assigned_to.get(plan.plan_id or "", []) if c not in f_assignments]
        if not customers:
            continue
        if plan.level == "invoice":
            plan.entry.refuse(
                "level",
                f"'invoice' but {_some(customers)} assigned to this plan in the database; "
                "assign them another plan first (in this file or an earlier one)",
            )
        elsewhere = [c for c in customers if customer_orgs.get(c, plan.org_id) != plan.org_id]
        if plan.org_id is not None and elsewhere:
            plan.entry.refuse(
                "org",
                f"{plan.org_id!r} but {_some(elsewhere)} assigned to this plan in the database and the "
                "accounting source places them in another organization; assign them another plan first",
            )
    for user in parsed.users:
        before = stored.users.get(user.user_id or "")
        if user.org_id is None or before is None or before["org_id"] == user.org_id:
            continue
        for org_id, row in stored.orgs.items():
            if org_id not in f_orgs and row["default_owner"] == user.user_id and org_id != user.org_id:
                user.entry.refuse(
                    "org", f"{user.org_id!r} but the user is default_owner of organization {org_id!r}"
                )
        for plan_id, owner in stored.template_owner.items():
            plan_org = stored.plans[plan_id]["org_id"]
            if plan_id not in f_plans and owner == user.user_id and plan_org != user.org_id:
                user.entry.refuse(
                    "org",
                    f"{user.org_id!r} but the user owns the template of plan {plan_id!r} "
                    f"of organization {plan_org!r}",
                )


def _some(customers: list[str]) -> str:
    """'customer 'c1' is' / 'customers 'c1', 'c2' and 3 more are' (the list can be long)."""
    shown = ", ".join(repr(c) for c in customers[:5])
    if len(customers) == 1:
        return f"customer {shown} is"
    more = f" and {len(customers) - 5} more" if len(customers) > 5 else ""
    return f"customers {shown}{more} are"


# --- writing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    """What the load did to one kind of entry."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0


@dataclass(frozen=True)
class LoadSummary:
    """Counts per kind; ``templates`` counts versions (a changed template is a new version,
    never an update)."""

    organizations: Counts = Counts()
    users: Counts = Counts()
    plans: Counts = Counts()
    templates: Counts = Counts()
    assignments: Counts = Counts()

    @property
    def changed(self) -> bool:
        return any(getattr(self, f.name).inserted or getattr(self, f.name).updated for f in fields(self))

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {f.name: dict(vars(getattr(self, f.name))) for f in fields(self)}

    def __str__(self) -> str:
        parts = []
        for f in fields(self):
            c: Counts = getattr(self, f.name)
            if f.name == "templates":
                parts.append(f"templates {c.inserted} new, {c.unchanged} unchanged")
            else:
                parts.append(f"{f.name} {c.inserted} new, {c.updated} updated, {c.unchanged} unchanged")
        return "config loaded: " + "; ".join(parts)


def _count(
    new_rows: list[dict[str, Any]], old: dict[str, dict[str, Any]], key: str, compare: Sequence[str]
) -> Counts:
    inserted = updated = unchanged = 0
    for row in new_rows:
        before = old.get(row[key])
        if before is None:
            inserted += 1
        elif any(before[c] != row[c] for c in compare):
            updated += 1
        else:
            unchanged += 1
    return Counts(inserted, updated, unchanged)


def _upsert_changed(
    conn: Connection,
    table: Table,
    rows: list[dict[str, Any]],
    key: str,
    compare: Sequence[str],
    also: Sequence[str] = (),
) -> None:
    """Insert new rows; update existing ones only where a compared column differs, so an
    unchanged row keeps its ``updated_at``/``assigned_at`` (a reload writes nothing)."""
    if not rows:
        return
    stmt = dialect_insert(conn, table)
    stmt = stmt.on_conflict_do_update(
        index_elements=[key],
        set_={c: stmt.excluded[c] for c in (*compare, *also)},
        where=or_(*(table.c[c].is_distinct_from(stmt.excluded[c]) for c in compare)),
    )
    conn.execute(stmt, rows)


_ORG_COMPARE = (
    "name",
    "timezone",
    "send_time",
    "country",
    "holidays",
    "invoice_sending_enabled_at",
    "default_owner",
    "mail_from",
    "reply_to",
)
_USER_COMPARE = ("org_id", "name", "email")
_PLAN_COMPARE = ("org_id", "name", "level", "template_id")


def _write(conn: Connection, parsed: _File, stored: _Stored, now: dt.datetime) -> LoadSummary:
    """Upsert everything in dependency order (organizations before the users and plans that
    reference them, plans before their template versions and assignments)."""
    org_rows = [o.row(now) for o in parsed.orgs]
    user_rows = [u.row() for u in parsed.users]
    plan_rows = [
        {
            "plan_id": p.plan_id,
            "org_id": p.org_id,
            "name": p.name,
            "level": p.level,
            "template_id": p.template_id,
        }
        for p in parsed.plans
    ]
    template_rows = [
        {
            "template_id": p.template_id,
            "plan_id": p.plan_id,
            "channel": p.sending.channel,
            "delay_days": p.sending.delay_days,
            "automatic": p.sending.automatic,
            "owner_user_id": p.sending.owner,
            "subject": p.sending.subject,
            "body": p.sending.body,
            "template_file": p.sending.template,
            "created_at": now,
        }
        for p in parsed.plans
        if p.sending is not None
    ]
    assignment_rows = [
        {"customer_id": a.customer_id, "plan_id": a.plan_id, "assigned_at": now} for a in parsed.assignments
    ]
    new_templates = sum(1 for r in template_rows if r["template_id"] not in stored.templates)
    summary = LoadSummary(
        organizations=_count(org_rows, stored.orgs, "org_id", _ORG_COMPARE),
        users=_count(user_rows, stored.users, "user_id", _USER_COMPARE),
        plans=_count(plan_rows, stored.plans, "plan_id", _PLAN_COMPARE),
        templates=Counts(inserted=new_templates, unchanged=len(template_rows) - new_templates),
        assignments=_count(assignment_rows, stored.assignments, "customer_id", ("plan_id",)),
    )
    _upsert_changed(conn, organizations, org_rows, "org_id", _ORG_COMPARE, also=("updated_at",))
    _upsert_changed(conn, users, user_rows, "user_id", _USER_COMPARE)
    _upsert_changed(conn, plans, plan_rows, "plan_id", _PLAN_COMPARE)
    if template_rows:
        stmt = dialect_insert(conn, invoice_templates).on_conflict_do_nothing(index_elements=["template_id"])
        conn.execute(stmt, template_rows)
    _upsert_changed(conn, customer_plans, assignment_rows, "customer_id", ("plan_id",), also=("assigned_at",))
    return summary


# --- entry points -----------------------------------------------------------------------


def load_config_file(
    path: Path,
    engine: Engine,
    *,
    accounting_engine: Engine | None = None,
    now: dt.datetime,
) -> LoadSummary:
    """Validate the whole file, then upsert it in one transaction; refuse it whole otherwise.

    ``now`` (aware) stamps ``updated_at``, ``assigned_at`` and new template versions. With
    ``accounting_engine``, an assignment of a customer the accounting source places in
    another organization than the plan's is refused.

    Raises :class:`ConfigError` with one line per problem (``FILE:LINE: entry.field: what``);
    the database is then unchanged.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    path = Path(path)
    problems = _Problems(str(path))
    root = _compose(path)
    if root is None or (isinstance(root, ScalarNode) and root.tag == _TAG_NULL):
        raise ConfigError(f"{path}:1: the file is empty (expected {', '.join(SECTIONS)})")
    parsed = _read_file(root, problems)
    if problems.items and not (parsed.orgs or parsed.users or parsed.plans or parsed.assignments):
        raise problems.error()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(select(func.pg_advisory_xact_lock(_PG_LOCK_KEY)))
        stored = _Stored.read(conn, parsed)
        _check_references(parsed, stored, accounting_engine, problems)
        if problems:
            raise problems.error()  # leaving the block rolls back: nothing was written anyway
        return _write(conn, parsed, stored, now.astimezone(dt.UTC))


def dump_config(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """The stored configuration in the file's structure (loading it back changes nothing)."""
    with engine.connect() as conn:
        org_rows = conn.execute(select(organizations).order_by(organizations.c.org_id)).mappings().all()
        user_rows = conn.execute(select(users).order_by(users.c.user_id)).mappings().all()
        plan_rows = conn.execute(select(plans).order_by(plans.c.plan_id)).mappings().all()
        ids = [p["template_id"] for p in plan_rows if p["template_id"]]
        templates: dict[str, Any] = {}
        for part in chunks(ids):
            q = select(invoice_templates).where(invoice_templates.c.template_id.in_(part))
            templates.update({r["template_id"]: r for r in conn.execute(q).mappings()})
        assignment_rows = (
            conn.execute(select(customer_plans).order_by(customer_plans.c.customer_id)).mappings().all()
        )

    def present(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
        return {k: v for k, v in pairs if v is not None}

    config: dict[str, list[dict[str, Any]]] = {
        "organizations": [],
        "users": [],
        "plans": [],
        "assignments": [],
    }
    for o in org_rows:
        enabled = o["invoice_sending_enabled_at"]
        config["organizations"].append(
            present(
                [
                    ("id", o["org_id"]),
                    ("name", o["name"]),
                    ("timezone", o["timezone"]),
                    ("send_time", o["send_time"]),
                    ("country", o["country"]),
                    ("holidays", o["holidays"]),
                    ("invoice_sending_enabled_at", enabled.isoformat() if enabled else None),
                    ("default_owner", o["default_owner"]),
                    ("mail_from", o["mail_from"]),
                    ("reply_to", o["reply_to"]),
                ]
            )
        )
    for u in user_rows:
        config["users"].append(
            present([("id", u["user_id"]), ("org", u["org_id"]), ("name", u["name"]), ("email", u["email"])])
        )
    for p in plan_rows:
        plan = present(
            [("id", p["plan_id"]), ("org", p["org_id"]), ("name", p["name"]), ("level", p["level"])]
        )
        t = templates.get(p["template_id"])
        if t is not None:
            plan["invoice_sending"] = present(
                [
                    ("channel", t["channel"]),
                    ("delay_days", t["delay_days"]),
                    ("automatic", bool(t["automatic"])),
                    ("owner", t["owner_user_id"]),
                    ("subject", t["subject"]),
                    ("body", t["body"]),
                    ("template", t["template_file"]),
                ]
            )
        config["plans"].append(plan)
    for a in assignment_rows:
        config["assignments"].append({"customer": a["customer_id"], "plan": a["plan_id"]})
    return config
