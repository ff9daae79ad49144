"""The request schemas the fake servers use to refuse bad requests, and a reader of OpenAPI documents.

Why this exists: a fake that accepts whatever the client sends proves nothing. Each fake looks
the request up in the schemas this project writes for the provider APIs it calls
(``tests/fakes/schemas/*.json``: small OpenAPI 3.1 documents whose schemas are JSON Schema
2020-12, naming only the operations and fields the project uses, closed with
``additionalProperties: false``) and checks parameters and body with ``jsonschema``, so a request
carrying a field nobody checked, or a value the provider refuses, fails the test.

Those schemas are ours; whether they agree with the providers is checked against the providers'
published documents where they are available (``published_apis_dir``; ``tests/test_fakes.py``),
which is why this module also reads OpenAPI 3.0 documents:

- Twilio's and Lob's published documents are OpenAPI **3.0**: their ``nullable: true`` is not a
  JSON Schema keyword, so it is rewritten into ``type: [..., "null"]`` for 3.0 documents.
- Twilio marks some formats ``x-twilio: {ignoreFormat: true}``; such a ``format`` is dropped.
- Form-encoded (Twilio) and multipart (Lob) bodies arrive as strings: they are decoded into
  dicts (``to[name]`` bracket keys nest, repeated keys make lists) and each string is turned into
  the boolean/number the schema declares at that place before validation.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError, relevance

#: the request schemas this project writes for the provider APIs it calls
SCHEMAS_DIR = Path(__file__).resolve().parent / "schemas"
#: names a folder of the providers' published OpenAPI documents (unset: no comparison)
PROVIDER_APIS_ENV = "DISPATCH_PROVIDER_APIS"

JSON = Any  # a decoded JSON value


def published_apis_dir() -> Path | None:
    """The folder of the providers' published documents named by ``$DISPATCH_PROVIDER_APIS``,
    or None. Nothing needs them but the test that compares our schemas with them, and the
    project never looks for them outside itself on its own."""
    folder = os.environ.get(PROVIDER_APIS_ENV, "").strip()
    return Path(folder) if folder else None


# --------------------------------------------------------------------------------------------
# formats: jsonschema only checks a format it has a checker for; these are the ones the
# documents use that it lacks (date-time needs an optional package, phone-number is Twilio's).
# --------------------------------------------------------------------------------------------
FORMAT_CHECKER = FormatChecker()

_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
_CHANNEL_ADDRESS = re.compile(r"^[a-z]+:.+$")
_SHORT_CODE = re.compile(r"^\d{3,8}$")
_ALPHANUMERIC_SENDER = re.compile(r"^(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")


@FORMAT_CHECKER.checks("date-time", raises=ValueError)
def _is_rfc3339_datetime(value: object) -> bool:
    """RFC 3339 date-time: a date, ``T``, a time and an offset (a naive time is not one)."""
    if not isinstance(value, str):
        return True
    if not re.match(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$", value):
        return False
    datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    return True


@FORMAT_CHECKER.checks("phone-number")
def _is_twilio_address(value: object) -> bool:
    """What Twilio takes where its document says phone-number (E.164, channel, short code, sender ID)."""
    if not isinstance(value, str):
        return True
    return bool(
        _E164.match(value)
        or _CHANNEL_ADDRESS.match(value)
        or _SHORT_CODE.match(value)
        or _ALPHANUMERIC_SENDER.match(value)
    )


@FORMAT_CHECKER.checks("uri")
def _is_absolute_uri(value: object) -> bool:
    if not isinstance(value, str):
        return True
    parsed = urlparse(value)
    return bool(parsed.scheme and parsed.netloc)


@FORMAT_CHECKER.checks("email")
def _is_email(value: object) -> bool:
    """Stricter than jsonschema's own (which only wants an ``@``): a real provider refuses ``a@b``."""
    if not isinstance(value, str):
        return True
    return bool(_EMAIL.match(value))


def is_e164(value: str) -> bool:
    """Whether ``value`` is a phone number in E.164 (``+`` and up to 15 digits)."""
    return bool(_E164.match(value))


# --------------------------------------------------------------------------------------------
# problems
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """One reason the provider refuses a request.

    ``field`` is the dotted place of the fault (``personalizations.0.to.0.email``, ``To``),
    ``keyword`` the JSON Schema keyword or provider rule that failed; ``code``/``status`` let a
    provider rule carry its own error code (Twilio 35114, Lob 422) into the answer.
    """

    location: str  # "body" | "query" | "header" | "path" | "media-type"
    field: str | None
    message: str
    keyword: str
    code: int | str | None = None
    status: int | None = None

    def __str__(self) -> str:
        where = f"{self.location}:{self.field}" if self.field else self.location
        return f"{where}: {self.message}"


def _dotted(parts: Iterable[Any]) -> str | None:
    text = ".".join(str(p) for p in parts)
    return text or None


def _closest_branch(error: ValidationError) -> ValidationError:
    """For oneOf/anyOf, the failure inside the branch meant for this value, not "valid under none".

    The branch with the fewest failures is taken as the one the sender meant, and branches refused
    only for their type (an ``adr_…`` id string where an address object was sent) are set aside,
    so the message names the faulty field of the address instead.
    """
    while error.context:
        branches: dict[Any, list[ValidationError]] = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        candidates = [
            errors
            for errors in branches.values()
            if not all(e.validator == "type" and not e.relative_path for e in errors)
        ] or list(branches.values())
        closest = min(candidates, key=len)
        error = max(closest, key=relevance)
    return error


def _problem_from_error(error: ValidationError, location: str, prefix: str | None = None) -> Problem:
    """Turn a jsonschema error into the field/message pair a provider would name."""
    deepest = _closest_branch(error)
    parts = [prefix] if prefix else []
    parts += list(deepest.absolute_path)
    if deepest.validator == "additionalProperties" and isinstance(deepest.instance, Mapping):
        allowed = deepest.schema.get("properties", {}) if isinstance(deepest.schema, Mapping) else {}
        parts += sorted(name for name in deepest.instance if name not in allowed)[:1]
    if deepest.validator == "required" and isinstance(deepest.instance, Mapping):
        missing = [
            name
            for name in deepest.validator_value
            if name not in deepest.instance and deepest.message.startswith(repr(name))
        ]
        parts += missing[:1]
    return Problem(location, _dotted(parts), deepest.message, str(deepest.validator))


# --------------------------------------------------------------------------------------------
# OpenAPI 3.0 -> JSON Schema 2020-12
# --------------------------------------------------------------------------------------------
def _to_json_schema(node: JSON, *, openapi_30: bool) -> JSON:
    """Copy ``node`` rewriting what Draft 2020-12 would misread (see the module docstring)."""
    if isinstance(node, list):
        return [_to_json_schema(item, openapi_30=openapi_30) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _to_json_schema(value, openapi_30=openapi_30) for key, value in node.items()}
    vendor = node.get("x-twilio")
    if isinstance(vendor, dict) and vendor.get("ignoreFormat"):
        out.pop("format", None)
    if openapi_30 and node.get("nullable") is True:
        declared = out.get("type")
        if isinstance(declared, str):
            out["type"] = [declared, "null"]
        elif isinstance(declared, list) and "null" not in declared:
            out["type"] = [*declared, "null"]
        if isinstance(out.get("enum"), list) and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    return out


# --------------------------------------------------------------------------------------------
# form decoding (Twilio form-urlencoded, Lob multipart / form-urlencoded)
# --------------------------------------------------------------------------------------------
_BRACKETS = re.compile(r"\[([^\]]*)\]")


def _key_path(key: str) -> list[str]:
    """``to[address_line1]`` -> ``["to", "address_line1"]``; ``cards[]`` -> ``["cards", ""]``."""
    head = key.split("[", 1)[0]
    return [head, *_BRACKETS.findall(key[len(head) :])]


def decode_form(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Nest bracket keys and gather repeated keys into lists (the encoding Twilio and Lob use)."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        path = _key_path(key)
        append = len(path) > 1 and path[-1] == ""  # "cards[]=…" appends to the list "cards"
        if append:
            path = path[:-1]
        node = result
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        last = path[-1]
        if last not in node:
            node[last] = [value] if append else value
        elif isinstance(node[last], list):
            node[last].append(value)
        else:
            node[last] = [node[last], value]
    return result


class _SchemaWalker:
    """Answers "what may the value at this place be?" through $ref, allOf, anyOf and oneOf."""

    def __init__(self, root: Mapping[str, Any]) -> None:
        self._root = root

    def _deref(self, schema: Any) -> Any:
        seen = 0
        while isinstance(schema, Mapping) and "$ref" in schema and seen < 50:
            siblings = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**_pointer(self._root, schema["$ref"]), **siblings}
            seen += 1
        return schema

    def flatten(self, schemas: Iterable[Any]) -> list[Mapping[str, Any]]:
        out: list[Mapping[str, Any]] = []
        stack = list(schemas)
        while stack:
            schema = self._deref(stack.pop())
            if not isinstance(schema, Mapping):
                continue
            out.append(schema)
            for keyword in ("allOf", "anyOf", "oneOf"):
                stack.extend(schema.get(keyword, []))
        return out

    def types(self, schemas: Iterable[Any]) -> set[str]:
        found: set[str] = set()
        for schema in self.flatten(schemas):
            declared = schema.get("type")
            if isinstance(declared, str):
                found.add(declared)
            elif isinstance(declared, list):
                found.update(declared)
        return found

    def property(self, schemas: Iterable[Any], name: str) -> list[Any]:
        return [s["properties"][name] for s in self.flatten(schemas) if name in s.get("properties", {})]

    def items(self, schemas: Iterable[Any]) -> list[Any]:
        return [s["items"] for s in self.flatten(schemas) if "items" in s]


def _coerce_scalar(value: str, types: set[str]) -> Any:
    if not types or "string" in types:
        return value
    if "boolean" in types and value in ("true", "false"):
        return value == "true"
    if "integer" in types and re.fullmatch(r"[+-]?\d+", value):
        return int(value)
    if "number" in types:
        try:
            return float(value)
        except ValueError:
            return value
    return value


def coerce_strings(value: Any, schemas: list[Any], walker: _SchemaWalker) -> Any:
    """Give each form string the type the schema declares at its place (strings stay strings)."""
    types = walker.types(schemas)
    if isinstance(value, dict):
        return {k: coerce_strings(item, walker.property(schemas, k), walker) for k, item in value.items()}
    if isinstance(value, list):
        item_schemas = walker.items(schemas)
        return [coerce_strings(item, item_schemas, walker) for item in value]
    if isinstance(value, str):
        if "array" in types and "string" not in types:  # one MediaUrl=… is a one-item array
            return [coerce_strings(value, walker.items(schemas), walker)]
        return _coerce_scalar(value, types)
    return value


def _pointer(document: Mapping[str, Any], ref: str) -> Any:
    if not ref.startswith("#/"):
        raise ValueError(f"only local references are supported, got {ref!r}")
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


# --------------------------------------------------------------------------------------------
# documents and operations
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Operation:
    """One operation of a document: where its parameters and body schema are, and how to check them."""

    document: OpenApiDocument
    method: str
    path: str  # the document's template, e.g. /2010-04-01/Accounts/{AccountSid}/Messages.json
    spec: Mapping[str, Any]
    parameters: tuple[Mapping[str, Any], ...]

    @property
    def operation_id(self) -> str:
        return str(self.spec.get("operationId", f"{self.method} {self.path}"))

    @property
    def request_media_types(self) -> list[str]:
        body = self.document.resolve(self.spec.get("requestBody") or {})
        return list(body.get("content", {}))

    @property
    def body_required(self) -> bool:
        return bool(self.document.resolve(self.spec.get("requestBody") or {}).get("required"))

    def body_schema(self, media_type: str) -> Mapping[str, Any] | None:
        body = self.document.resolve(self.spec.get("requestBody") or {})
        content = body.get("content", {}).get(media_type)
        if content is None:
            return None
        return self.document.schema(self.document.resolve(content).get("schema", {}))

    def response_schema(self, status: int, media_type: str = "application/json") -> Mapping[str, Any] | None:
        responses = self.spec.get("responses", {})
        response = responses.get(str(status)) or responses.get("default")
        if response is None:
            return None
        response = self.document.resolve(response)
        content = self.document.resolve(response.get("content", {}))
        media = content.get(media_type)
        if media is None:
            return None
        return self.document.schema(self.document.resolve(media).get("schema", {}))

    # -- checks ---------------------------------------------------------------------------
    def check_parameters(
        self,
        path_params: Mapping[str, str],
        query: Mapping[str, list[str]],
        headers: Mapping[str, str],
    ) -> list[Problem]:
        """Check path, query and header parameters; strings become the declared scalar type first."""
        problems: list[Problem] = []
        lowered = {k.lower(): v for k, v in headers.items()}
        for param in self.parameters:
            where, name = param.get("in"), str(param.get("name"))
            if where == "header" and name.lower() in ("accept", "content-type", "authorization"):
                continue  # OpenAPI: such header parameter definitions SHALL be ignored
            raw: Any
            if where == "path":
                raw = path_params.get(name)
            elif where == "query":
                values = query.get(name)
                raw = None if values is None else (values if len(values) > 1 else values[0])
            elif where == "header":
                raw = lowered.get(name.lower())
            else:
                continue
            if raw is None:
                if param.get("required"):
                    message = f"{name!r} is a required {where} parameter"
                    problems.append(Problem(where, name, message, "required"))
                continue
            param_schema = param.get("schema", {})
            validator = self.document.validator(
                ("param", self.method, self.path, where, name), lambda s=param_schema: self.document.schema(s)
            )
            value = coerce_strings(raw, [validator.schema], _SchemaWalker(validator.schema))
            problems += [_problem_from_error(e, where, name) for e in validator.iter_errors(value)]
        return problems

    def check_body(self, media_type: str | None, body: Any) -> list[Problem]:
        """Check a decoded body against the schema of its media type."""
        media_types = self.request_media_types
        if not media_types:
            return []
        if body is None:
            if self.body_required:
                return [Problem("body", None, "a request body is required", "required")]
            return []
        validator = self._body_validator(media_type)
        if validator is None:
            return [
                Problem(
                    "media-type",
                    None,
                    f"content type {media_type!r} is not accepted here; use one of {media_types}",
                    "media-type",
                )
            ]
        return [_problem_from_error(e, "body") for e in validator.iter_errors(body)]

    def _body_validator(self, media_type: str | None) -> Draft202012Validator | None:
        if media_type is None or media_type not in self.request_media_types:
            return None
        return self.document.validator(
            ("body", self.method, self.path, media_type), lambda: self.body_schema(media_type) or {}
        )

    def decode_form_body(self, media_type: str, pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
        """Decode form pairs and coerce them along this operation's schema for ``media_type``."""
        nested = decode_form(pairs)
        validator = self._body_validator(media_type)
        if validator is None:
            return nested
        return coerce_strings(nested, [validator.schema], _SchemaWalker(validator.schema))

    def check_response(self, status: int, body: Any, media_type: str = "application/json") -> list[Problem]:
        """Check one of the fake's own answers against the document (a self-test of the fake)."""
        schema = self.response_schema(status, media_type)
        if schema is None:
            return []
        key = ("response", self.method, self.path, status, media_type)
        validator = self.document.validator(key, lambda: schema)
        return [_problem_from_error(e, "response") for e in validator.iter_errors(body)]


class OpenApiDocument:
    """A provider's document, its operations findable by (method, request path)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        self.openapi_version = str(self.raw.get("openapi", ""))
        self.is_openapi_30 = self.openapi_version.startswith("3.0")
        self.components = _to_json_schema(self.raw.get("components", {}), openapi_30=self.is_openapi_30)
        servers = self.raw.get("servers") or [{"url": "/"}]
        self.base_path = urlparse(servers[0]["url"]).path.rstrip("/")
        self._routes = [
            (self._template_regex(template), template, item) for template, item in self.raw["paths"].items()
        ]
        # Literal paths before templated ones, so /bounces/classifications wins over /bounces/{email}.
        self._routes.sort(key=lambda route: route[1].count("{"))
        self._validators: dict[tuple[Any, ...], Draft202012Validator] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _template_regex(template: str) -> re.Pattern[str]:
        pattern = re.sub(r"\\\{([^}]+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
        return re.compile(f"^{pattern}$")

    def resolve(self, node: Any) -> Any:
        """Follow a ``$ref`` in the raw document (request bodies, parameters, responses, media types)."""
        while isinstance(node, Mapping) and "$ref" in node:
            node = _pointer(self.raw, node["$ref"])
        return node

    def schema(self, schema: Mapping[str, Any]) -> dict[str, Any]:
        """A stand-alone 2020-12 schema: ``schema`` with the document's components beside it."""
        converted = _to_json_schema(schema, openapi_30=self.is_openapi_30)
        return {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.components,
            **converted,
        }

    def validator(self, key: tuple[Any, ...], build: Callable[[], Mapping[str, Any]]) -> Draft202012Validator:
        """The validator cached under ``key``; ``build`` makes its schema (see ``schema``) once."""
        with self._lock:
            validator = self._validators.get(key)
            if validator is None:
                validator = Draft202012Validator(build(), format_checker=FORMAT_CHECKER)
                self._validators[key] = validator
            return validator

    def local_path(self, request_path: str) -> str | None:
        """The request path without the server's base path (Lob's ``/v1``), or None if outside it."""
        if not self.base_path:
            return request_path
        if request_path == self.base_path or request_path.startswith(self.base_path + "/"):
            return request_path[len(self.base_path) :] or "/"
        return None

    def find(self, method: str, request_path: str) -> tuple[Operation, dict[str, str]] | str | None:
        """The operation and path parameters for a request; ``"method"`` if only the method is wrong."""
        local = self.local_path(request_path)
        if local is None:
            return None
        path_matched = False
        for regex, template, item in self._routes:
            found = regex.match(local)
            if not found:
                continue
            path_matched = True
            spec = item.get(method.lower())
            if spec is None:
                continue
            return self._operation(method, template, item, spec), found.groupdict()
        return "method" if path_matched else None

    def _operation(
        self, method: str, template: str, item: Mapping[str, Any], spec: Mapping[str, Any]
    ) -> Operation:
        params = [self.resolve(p) for p in (*item.get("parameters", []), *spec.get("parameters", []))]
        return Operation(self, method.upper(), template, spec, tuple(params))

    def operation(self, operation_id: str) -> Operation:
        """An operation by its ``operationId`` (for tests that check answers against the document)."""
        for template, item in self.raw["paths"].items():
            for method, spec in item.items():
                if isinstance(spec, Mapping) and spec.get("operationId") == operation_id:
                    return self._operation(method, template, item, spec)
        raise KeyError(operation_id)


@cache
def _load(path: str) -> OpenApiDocument:
    return OpenApiDocument(Path(path))


def load_document(filename: str, directory: Path = SCHEMAS_DIR) -> OpenApiDocument:
    """Load (once) one of our request schemas by file name (or a document of ``directory``)."""
    path = directory / filename
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    return _load(str(path.resolve()))
