"""What is wrong with a configuration file, one problem per line: ``FILE:LINE: entry.field:
what``. The load collects every problem before refusing the file, so the user sees all
their mistakes at once, not one per attempt.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from dispatch.config.yaml_marks import Document, Loc
from dispatch.errors import ConfigError


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the file: where (line, entry.field) and what."""

    line: int
    where: str
    message: str

    def format(self, source: str) -> str:
        place = f"{self.where}: " if self.where else ""
        return f"{source}:{self.line}: {place}{self.message}"


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.75)
    return f" (did you mean {match[0]!r}?)" if match else ""


class Problems:
    """Every problem of one file, placed from the ``loc`` of the value concerned.

    ``id_fields`` names, per section, the field that identifies an entry in messages:
    ``organizations[0] (acme).timezone``.
    """

    def __init__(self, document: Document, id_fields: Mapping[str, str]) -> None:
        self.document = document
        self.id_fields = id_fields
        self.items: list[Problem] = []

    def add(self, line: int, where: str, message: str) -> None:
        problem = Problem(line, where, message)
        if problem not in self.items:
            self.items.append(problem)

    def at(self, loc: Loc, message: str, *, on_key: bool = False, lines_below: int = 0) -> None:
        """A problem of the value at ``loc`` (of its key with ``on_key``, e.g. an unknown
        field), ``lines_below`` its first line (a template line inside a ``|`` block)."""
        spot = self.document.spot(loc)
        line = (spot.key_line if on_key and loc in self.document.spots else spot.line) + lines_below
        self.add(line, self.where(loc), message)

    def where(self, loc: Loc) -> str:
        """``section[index] (id).field.subfield``; the id is the entry's, as written."""
        text = ""
        data = self.document.data
        for part in loc:
            if isinstance(part, int):
                data = data[part] if isinstance(data, list) and part < len(data) else None
                ident = data.get(self.id_fields.get(str(loc[0]), "")) if isinstance(data, dict) else None
                text += f"[{part}] ({ident})" if isinstance(ident, str) and ident else f"[{part}]"
            else:
                data = data.get(part) if isinstance(data, dict) else None
                text += f".{part}" if text else part
        return text

    def __bool__(self) -> bool:
        return bool(self.items)

    def error(self) -> ConfigError:
        """One line per problem, in file order: the first line alone is a complete message."""
        ordered = sorted(self.items, key=lambda p: p.line)  # stable: same line keeps check order
        return ConfigError("\n".join(p.format(self.document.source) for p in ordered))
