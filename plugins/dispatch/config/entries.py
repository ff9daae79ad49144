"""Each entry of the file validated on its own by its model, and pydantic's errors worded
as the user reads them, at the line of the value concerned.

Entries are validated one by one, not the file as one model, so that the entries that are
valid can still be checked across the file and against the database
(:mod:`dispatch.config.checks`): the user then sees every mistake of the file at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, get_args

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from dispatch.config.models import ID_FIELDS, SECTIONS, TEMPLATE_LINE, ConfigFile, short
from dispatch.config.problems import Problems, did_you_mean
from dispatch.config.yaml_marks import Document, Loc, kind


@dataclass
class Parsed:
    """The entries that passed their own checks, by section, each with its index in the
    file; and every id the file gives, valid entry or not (a reference to an entry that has
    a mistake of its own is not reported a second time as unknown)."""

    entries: dict[str, list[tuple[int, Any]]] = field(default_factory=dict)
    ids: dict[str, set[str]] = field(default_factory=dict)

    def of(self, section: str) -> list[tuple[int, Any]]:
        return self.entries.get(section, [])

    @property
    def empty(self) -> bool:
        return not any(self.entries.values())


def parse(document: Document, problems: Problems) -> Parsed:
    """Every entry of the file validated on its own; the problems go to ``problems``."""
    for loc, key_line, first in document.duplicates:
        problems.add(key_line, problems.where(loc), f"given twice (first on line {first})")
    parsed = Parsed()
    data = document.data
    if not isinstance(data, dict):
        problems.at((), f"expected a mapping with {', '.join(SECTIONS)}, got {kind(data)}")
        return parsed
    for key in data:
        if key not in SECTIONS:
            problems.at((key,), f"unknown top-level key{_hint(key, SECTIONS)}", on_key=True)
    for section, info in ConfigFile.model_fields.items():
        items = data.get(section)
        if items is None:
            continue
        if not isinstance(items, list):
            problems.at((section,), f"expected a list of entries, got {kind(items)}")
            continue
        model = get_args(info.annotation)[0]
        id_field = ID_FIELDS[section]
        parsed.ids[section] = {
            i[id_field] for i in items if isinstance(i, dict) and isinstance(i.get(id_field), str)
        }
        valid = parsed.entries.setdefault(section, [])
        for index, item in enumerate(items):
            try:
                valid.append((index, model.model_validate(item)))
            except ValidationError as exc:
                for error in exc.errors():
                    explain(problems, model, (section, index), error)
    if parsed.empty and not problems:
        problems.at((), f"the file defines nothing (expected {', '.join(SECTIONS)})")
    return parsed


def _hint(word: str, allowed: tuple[str, ...]) -> str:
    return did_you_mean(word, allowed) or f" (expected one of: {', '.join(allowed)})"


def explain(problems: Problems, model: type[BaseModel], prefix: Loc, error: ErrorDetails) -> None:
    """One pydantic error as the user reads it, placed at the value's line."""
    loc: Loc = (*prefix, *error["loc"])
    error_type = error["type"]
    owner, info = _field_at(model, tuple(error["loc"]))
    if error_type == "missing":
        problems.at(loc, "missing required field")
    elif error_type == "extra_forbidden":
        problems.at(
            loc,
            f"unknown field{_hint(str(loc[-1]), tuple(owner.model_fields) if owner else ())}",
            on_key=True,
        )
    elif error_type == "model_type":
        target = _model_of(info.annotation) if info is not None else model
        names = ", ".join(target.model_fields) if target is not None else ""
        problems.at(loc, f"expected a mapping of {names}, got {_written(problems, loc, error['input'])}")
    elif error_type == "string_too_long":
        problems.at(loc, f"longer than {error.get('ctx', {}).get('max_length')} characters")
    elif error_type in ("int_type", "int_parsing", "greater_than_equal", "less_than_equal"):
        if isinstance(error["input"], dict | list):
            problems.at(loc, f"expected an integer, got {kind(error['input'])}")
        else:
            low, high = _bounds(info)
            got = _written(problems, loc, error["input"])
            problems.at(loc, f"must be an integer from {low} to {high}, got {got}")
    else:
        context = error.get("ctx") or {}
        spot = problems.document.spot(loc)
        below = int(context.get(TEMPLATE_LINE) or 0) if spot.style == "|" else 0
        problems.at(loc, error["msg"], lines_below=below)


def _written(problems: Problems, loc: Loc, value: object) -> str:
    """The value as the file wrote it (``~``, ``-1``), short; a mapping or list by its kind."""
    text = problems.document.spot(loc).text if not isinstance(value, dict | list) else None
    return short(text) if text is not None else kind(value)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model an annotation holds (``Model``, ``Model | None``, ``list[Model]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _field_at(model: type[BaseModel], loc: Loc) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    """The model that owns the last part of ``loc``, and that field (None when unknown)."""
    owner: type[BaseModel] | None = model
    info: FieldInfo | None = None
    for depth, part in enumerate(loc):
        if isinstance(part, int):
            continue
        if owner is None or part not in owner.model_fields:
            return owner, None
        info = owner.model_fields[part]
        if depth < len(loc) - 1:
            owner = _model_of(info.annotation)
    return owner, info


def _bounds(info: FieldInfo | None) -> tuple[object, object]:
    """The ``ge``/``le`` bounds of a constrained field (``Field(ge=0, le=3650)``)."""
    low = high = None
    for rule in info.metadata if info is not None else ():
        low, high = getattr(rule, "ge", low), getattr(rule, "le", high)
    return low, high
