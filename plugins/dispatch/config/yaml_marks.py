"""The configuration file read as YAML *with its marks*: plain data for the models, and for
every value the line it was written on, so that a refusal can say ``FILE:LINE: …``.

Why it is built the way it is:

- The YAML is *composed* (node tree), not loaded. Scalars are kept as their source text
  (:class:`Scalar`, which also remembers the YAML tag), which spares users YAML 1.1
  surprises: ``send_time: 12:30`` is the text ``12:30``, not the integer 750, and
  ``holidays: NO`` is Norway. Only the fields that want an integer or a boolean look at the
  tag.
- ``null`` counts as absent: a key whose value is ``~`` is left out of the data, so an
  optional field takes its default and a required one is reported missing.
- A key given twice in one mapping is recorded here (the data keeps the first): a plain
  dict could not tell.
- Everything that could exhaust the process is bounded before reading: the file size and
  the nesting depth; aliases are never expanded (a repeated node is one Python object).
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from dispatch.errors import ConfigError

#: a configuration file is a few kilobytes; anything near this is a mistake, not a file to parse
MAX_FILE_BYTES = 10_000_000
#: how deep mappings and lists may nest (the format itself needs 4 levels)
MAX_NESTING = 50
TAG_NULL = "tag:yaml.org,2002:null"
TAG_INT = "tag:yaml.org,2002:int"
TAG_BOOL = "tag:yaml.org,2002:bool"
_TAG_MERGE = "tag:yaml.org,2002:merge"

#: where a value sits in the data: keys and list indexes from the top, as pydantic's ``loc``
Loc = tuple[str | int, ...]


class Scalar(str):
    """A scalar exactly as written, with the tag YAML's implicit typing gave it."""

    tag: str

    def __new__(cls, text: str, tag: str) -> Scalar:
        value = super().__new__(cls, text)
        value.tag = tag
        return value


@dataclass(frozen=True)
class Spot:
    """Where one value was written: its line, the line of its key, and for a scalar its
    style (``|`` for a literal block) and source text."""

    line: int
    key_line: int
    style: str | None = None
    text: str | None = None


@dataclass
class Document:
    """The file's data with the spot of every value, keyed by its ``loc``."""

    source: str
    data: Any
    spots: dict[Loc, Spot] = field(default_factory=dict)
    #: keys given twice: (loc of the repeated key, its line, line of the first value)
    duplicates: list[tuple[Loc, int, int]] = field(default_factory=list)

    def spot(self, loc: Loc) -> Spot:
        """The spot of ``loc``, or of its closest written ancestor (a missing field is
        reported on the line where its entry starts)."""
        while loc not in self.spots and loc:
            loc = loc[:-1]
        return self.spots.get(loc, Spot(1, 1))


def line(node: Node) -> int:
    return node.start_mark.line + 1


def kind(value: object) -> str:
    """How a value is named in a message (``a mapping``, ``a list``, or its text quoted)."""
    if isinstance(value, dict | MappingNode):
        return "a mapping"
    if isinstance(value, list | SequenceNode):
        return "a list"
    if isinstance(value, ScalarNode):
        return repr(value.value)
    return repr(value if value is None else str(value))


def read_document(path: Path, *, ignored_top_level_prefix: str = "") -> Document | None:
    """The file as :class:`Document`, None when it holds no document (empty, comments, ``~``),
    or a one-line :class:`ConfigError` for a file that cannot be read as YAML.

    Top-level keys starting with ``ignored_top_level_prefix`` are left out unread (a place
    to define anchors: they are not expanded)."""
    source = str(path)
    root = _compose(path)
    if root is None or (isinstance(root, ScalarNode) and root.tag == TAG_NULL):
        return None
    document = Document(source, None)
    document.data = _Reader(document, ignored_top_level_prefix).value(root, (), line(root))
    return document


class _Reader:
    """Turns nodes into data and spots. A node reached again through an alias gives the
    same Python object, read once: a "billion laughs" file stays as small as it is written
    (the values under a repeated alias are placed at the alias)."""

    def __init__(self, document: Document, ignored_prefix: str) -> None:
        self.document = document
        self.ignored_prefix = ignored_prefix
        self.read: dict[int, Any] = {}

    def value(self, node: Node, loc: Loc, key_line: int) -> Any:
        if isinstance(node, ScalarNode):
            self.document.spots[loc] = Spot(line(node), key_line, node.style, node.value)
            return None if node.tag == TAG_NULL else Scalar(node.value, node.tag)
        self.document.spots[loc] = Spot(line(node), key_line)
        if id(node) in self.read:
            return self.read[id(node)]
        if isinstance(node, MappingNode):
            data: dict[str, Any] = {}
            self.read[id(node)] = data  # before its children: an anchor may refer to itself
            self.mapping(node, loc, data)
            return data
        items: list[Any] = []
        self.read[id(node)] = items
        items.extend(self.value(item, (*loc, i), line(item)) for i, item in enumerate(node.value))
        return items

    def mapping(self, node: MappingNode, loc: Loc, data: dict[str, Any]) -> None:
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, ScalarNode) else kind(key_node)
            if key in first_line:
                self.document.duplicates.append(((*loc, key), line(key_node), first_line[key]))
                continue
            first_line[key] = line(value_node)
            if not loc and self.ignored_prefix and key.startswith(self.ignored_prefix):
                continue
            if isinstance(value_node, ScalarNode) and value_node.tag == TAG_NULL:
                continue  # null counts as absent
            data[key] = self.value(value_node, (*loc, key), line(key_node))


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


def _compose(path: Path) -> Node | None:
    """The document's node tree, or a one-line ConfigError for an unreadable file."""
    source = str(path)
    raw = _read_bounded(path)
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        at = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{source}:{at}: the file is not UTF-8 text") from None
    try:
        root = yaml.compose(content, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = mark.line + 1 if mark is not None else 1
        what = "; ".join(str(part) for part in (exc.context, exc.problem) if part)
        raise ConfigError(f"{source}:{at}: YAML syntax error: {what}") from None
    except yaml.reader.ReaderError as exc:
        at = content.count("\n", 0, exc.position) + 1
        raise ConfigError(f"{source}:{at}: YAML syntax error: {exc.reason}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}:1: YAML syntax error: {exc}") from None
    except RecursionError:  # PyYAML's composer recurses once per nesting level
        raise ConfigError(f"{source}:1: nested more than {MAX_NESTING} levels deep") from None
    if root is not None:
        deep = _deeper_than(root, MAX_NESTING)
        if deep is not None:
            raise ConfigError(f"{source}:{line(deep)}: nested more than {MAX_NESTING} levels deep")
        _flatten_merges(root, source)
    return root


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
        raise ConfigError(f"{source}:{line(node)}: YAML merge error: a mapping merges itself")
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
                f"{source}:{line(value)}: YAML merge error: '<<' needs a mapping or a list of mappings"
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
