"""Does a request schema of ours agree with the provider's published OpenAPI document?

Why: the fakes validate against schemas this project writes (``tests/fakes/schemas``). Written by
us, they could drift into accepting a field the provider does not know, or a type it refuses.
Where the providers' documents are at hand, every place of ours is looked up in theirs:

- each operation (method and path) exists there, with each media type of its body;
- each parameter exists there (same ``in`` and name);
- each property of a body, parameter or response exists at the same place in their schema
  (through ``$ref``, ``allOf``, ``anyOf`` and ``oneOf``), unless theirs is a free-form object;
- its types are among theirs (an ``integer`` where they say ``number`` is fine), and its enum
  values are among theirs.

Their constraints are not required of ours the other way round: ours may be stricter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tests.fakes.openapi import OpenApiDocument, Operation, _SchemaWalker

MAX_DEPTH = 25  # a guard against recursive schemas; ours are a few levels deep


def disagreements(ours: OpenApiDocument, theirs: OpenApiDocument) -> list[str]:
    """Every place where ``ours`` says something ``theirs`` does not (empty: they agree)."""
    found: list[str] = []
    for template, item in ours.raw["paths"].items():
        for method, spec in item.items():
            where = f"{method.upper()} {template}"
            their_item = theirs.raw["paths"].get(template, {})
            if method not in their_item:
                found.append(f"{where}: no such operation in {theirs.path.name}")
                continue
            mine = ours.operation(spec["operationId"])
            their = theirs.operation(their_item[method]["operationId"])
            found += _parameters(where, mine, their)
            found += _bodies(where, mine, their)
            found += _responses(where, mine, their)
    return list(dict.fromkeys(found))  # one line per place, however many branches lead there


def _parameters(where: str, mine: Operation, their: Operation) -> list[str]:
    def key(param: Mapping[str, Any]) -> tuple[str, str]:
        name = str(param.get("name"))
        return str(param.get("in")), name.lower() if param.get("in") == "header" else name

    theirs = {key(p): p for p in their.parameters}
    found: list[str] = []
    for param in mine.parameters:
        place = f"{where} {param.get('in')} parameter {param.get('name')}"
        their_param = theirs.get(key(param))
        if their_param is None:
            found.append(f"{place}: not a parameter there")
            continue
        my_schema = mine.document.schema(param.get("schema", {}))
        their_schema = their.document.schema(their_param.get("schema", {}))
        found += _compare(
            place, [my_schema], [their_schema], _SchemaWalker(my_schema), _SchemaWalker(their_schema)
        )
    return found


def _bodies(where: str, mine: Operation, their: Operation) -> list[str]:
    found: list[str] = []
    for media_type in mine.request_media_types:
        place = f"{where} body ({media_type})"
        my_schema = mine.body_schema(media_type)
        their_schema = their.body_schema(media_type)
        if their_schema is None:
            found.append(f"{place}: they accept only {their.request_media_types}")
            continue
        found += _compare_roots(place, my_schema or {}, their_schema)
    return found


def _responses(where: str, mine: Operation, their: Operation) -> list[str]:
    found: list[str] = []
    for status in mine.spec.get("responses", {}):
        my_schema = mine.response_schema(int(status))
        if my_schema is None:
            continue
        place = f"{where} answer {status}"
        their_schema = their.response_schema(int(status))
        if their_schema is None:
            found.append(f"{place}: they document no JSON answer for it")
            continue
        found += _compare(
            place, [my_schema], [their_schema], _SchemaWalker(my_schema), _SchemaWalker(their_schema)
        )
    return found


def _compare_roots(place: str, mine: Mapping[str, Any], theirs: Mapping[str, Any]) -> list[str]:
    return _compare(place, [mine], [theirs], _SchemaWalker(mine), _SchemaWalker(theirs))


def _extra(schemas: Iterable[Mapping[str, Any]]) -> list[Any]:
    """The ``additionalProperties`` schemas: what any other property may be."""
    return [s["additionalProperties"] for s in schemas if isinstance(s.get("additionalProperties"), dict)]


def _types_fit(mine: set[str], theirs: set[str]) -> bool:
    if not theirs or not mine:
        return True
    widened = theirs | ({"integer"} if "number" in theirs else set())
    return mine <= widened


def _enums(schemas: Iterable[Mapping[str, Any]]) -> list[set[Any]]:
    return [set(s["enum"]) for s in schemas if isinstance(s.get("enum"), list)]


def _declares_properties(schemas: Iterable[Mapping[str, Any]]) -> bool:
    return any("properties" in s or s.get("additionalProperties") is False for s in schemas)


def _compare(
    place: str,
    my_schemas: list[Any],
    their_schemas: list[Any],
    my_walker: _SchemaWalker,
    their_walker: _SchemaWalker,
    depth: int = 0,
) -> list[str]:
    if depth > MAX_DEPTH:
        return []
    mine, theirs = my_walker.flatten(my_schemas), their_walker.flatten(their_schemas)
    found: list[str] = []
    my_types, their_types = my_walker.types(my_schemas), their_walker.types(their_schemas)
    if not _types_fit(my_types, their_types):
        found.append(f"{place}: we say {sorted(my_types)}, they say {sorted(their_types)}")
    their_enums = _enums(theirs)
    if their_enums:  # their branches are alternatives: a value of ours must be in one of them
        allowed = set().union(*their_enums)
        for my_enum in _enums(mine):
            if not my_enum <= allowed:
                found.append(f"{place}: values {sorted(map(str, my_enum - allowed))} are not theirs")
    names = sorted({name for s in mine for name in s.get("properties", {})})
    for name in names:
        child = f"{place}.{name}"
        their_child = their_walker.property(theirs, name)
        if not their_child:
            extra = [
                s["additionalProperties"] for s in theirs if isinstance(s.get("additionalProperties"), dict)
            ]
            if extra:
                their_child = extra
            elif _declares_properties(theirs):
                found.append(f"{child}: no such property in theirs")
                continue
            else:
                continue  # a free-form object there: any property goes
        found += _compare(
            child, my_walker.property(mine, name), their_child, my_walker, their_walker, depth + 1
        )
    my_extra = [s["additionalProperties"] for s in mine if isinstance(s.get("additionalProperties"), dict)]
    their_extra = [
        s["additionalProperties"] for s in theirs if isinstance(s.get("additionalProperties"), dict)
    ]
    if my_extra and their_extra:
        found += _compare(f"{place}.*", my_extra, their_extra, my_walker, their_walker, depth + 1)
    my_items, their_items = my_walker.items(mine), their_walker.items(theirs)
    if my_items and their_items:
        found += _compare(f"{place}[]", my_items, their_items, my_walker, their_walker, depth + 1)
    return found
