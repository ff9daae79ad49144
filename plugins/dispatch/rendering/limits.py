"""Bounds on what one template may cost: output size, intermediate values, loops, calls, time.

Templates are user content that runs inside every dispatch run (SPEC B7). Jinja's sandbox
keeps them away from Python internals, but not from the worker's memory and CPU: a loop of
``'a' * 100000`` renders gigabytes before any check on the finished text could run, a
``'x'|center(1500000000)`` is even evaluated when the template *compiles* (Jinja folds
constant expressions), and two nested ``range(100000)`` loops never end. So the limits are
enforced while the work happens, not afterwards:

- every operation that makes a value larger than its operands (``*``, ``+``, ``%``, ``~``,
  the padding and joining filters, ``str.format`` and the padding methods of strings) is
  checked *before* it allocates, where the result size can be known, and every value a
  filter or call returns is checked after;
- loops (each ``for``) and calls (macros, methods) are counted per message, and a deadline
  per message is checked at each of those points;
- output is counted chunk by chunk while it streams out of the template.

Crossing a limit raises :class:`TemplateLimitError`, whose message names the limit; the
renderer turns it into a ``template_error`` for that one message. The same hooks run during
constant folding at compile time: there the refusal is recorded (:func:`compile_refusals`)
so that the configuration loader can refuse the template when the file is loaded.

The values are far above anything an invoice message needs; ``docs/templates.md`` lists them.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import re
import string
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, cast

import jinja2
import jinja2.nodes
import jinja2.visitor
from jinja2.sandbox import SecurityError

#: characters of one rendered part (subject, text body, HTML body)
MAX_OUTPUT_CHARS = 1_000_000
#: characters (or items) of any value a template builds: a string, list, joined text …
MAX_VALUE_CHARS = 1_000_000
#: characters (or items) a ``*`` repetition may produce
MAX_REPEAT_LENGTH = 100_000
#: bits of an integer that ``**`` or ``*`` may produce
MAX_POWER_BITS = 4_096
#: characters all operations of one message may produce in total
MAX_PRODUCED_CHARS = 20_000_000
#: loop iterations of one message, all loops together
MAX_LOOP_ITERATIONS = 100_000
#: calls (macros, methods, filters) of one message
MAX_CALLS = 100_000
#: seconds one message may take to render, all its parts together
MAX_RENDER_SECONDS = 5.0
#: characters of one template's source (an inline subject or body, or a template file)
MAX_SOURCE_CHARS = 200_000


class TemplateLimitError(SecurityError):
    """A template crossed one of the limits above; the message names it."""


@dataclass
class Budget:
    """What one message has spent so far, against the per-message limits."""

    deadline: float
    loops: int = 0
    calls: int = 0
    produced: int = 0


_BUDGET: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("_BUDGET", default=None)
_REFUSALS: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("_REFUSALS", default=None)


@contextlib.contextmanager
def message_budget() -> Iterator[Budget]:
    """One message's budget (deadline, loop, call and produced-size counters) for the
    renders inside the block. Nested blocks share the outer budget."""
    current = _BUDGET.get()
    if current is not None:
        yield current
        return
    budget = Budget(deadline=time.monotonic() + MAX_RENDER_SECONDS)
    token = _BUDGET.set(budget)
    try:
        yield budget
    finally:
        _BUDGET.reset(token)


@contextlib.contextmanager
def compile_refusals() -> Iterator[list[str]]:
    """Collect the limit refusals that happen inside the block (during constant folding,
    Jinja swallows them and leaves the expression to run time)."""
    found: list[str] = []
    token = _REFUSALS.set(found)
    try:
        yield found
    finally:
        _REFUSALS.reset(token)


def refuse(message: str) -> TemplateLimitError:
    """The error for a crossed limit (recorded when compiling)."""
    refusals = _REFUSALS.get()
    if refusals is not None and message not in refusals:
        refusals.append(message)
    return TemplateLimitError(message)


def _over(limit: str, value: int) -> str:
    return f"over the limit {limit} ({value:,})"


def tick(kind: str | None = None) -> None:
    """Count one loop iteration or call and check the deadline (no budget: no-op)."""
    budget = _BUDGET.get()
    if budget is None:
        return
    if kind == "loop":
        budget.loops += 1
        if budget.loops > MAX_LOOP_ITERATIONS:
            raise refuse(f"too many loop iterations: {_over('MAX_LOOP_ITERATIONS', MAX_LOOP_ITERATIONS)}")
    elif kind == "call":
        budget.calls += 1
        if budget.calls > MAX_CALLS:
            raise refuse(f"too many calls: {_over('MAX_CALLS', MAX_CALLS)}")
    if time.monotonic() > budget.deadline:
        raise refuse(f"rendering took too long: over the limit MAX_RENDER_SECONDS ({MAX_RENDER_SECONDS:g} s)")


def check_size(value: Any, what: str) -> Any:
    """Refuse a value larger than MAX_VALUE_CHARS; count strings against MAX_PRODUCED_CHARS."""
    if isinstance(value, (str, bytes, list, tuple, dict, set, frozenset)):
        size = len(value)
        if size > MAX_VALUE_CHARS:
            raise refuse(f"{what}: the result is {_over('MAX_VALUE_CHARS', MAX_VALUE_CHARS)}")
        if isinstance(value, (str, bytes)):
            produce(size)
    return value


def produce(size: int) -> None:
    budget = _BUDGET.get()
    if budget is None:
        return
    budget.produced += size
    if budget.produced > MAX_PRODUCED_CHARS:
        raise refuse(f"the template builds too much text: {_over('MAX_PRODUCED_CHARS', MAX_PRODUCED_CHARS)}")


def _expect_at_most(
    size: float, what: str, limit: int = MAX_VALUE_CHARS, name: str = "MAX_VALUE_CHARS"
) -> None:
    if size > limit:
        raise refuse(f"{what}: the result would be {_over(name, limit)}")


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, (float, Decimal)) and math.isfinite(value):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit() and len(value) < 20:
        return int(value)
    return None


def _length(value: Any) -> int:
    return len(value) if isinstance(value, Sized) else len(str(value))


# --- operators -------------------------------------------------------------------------------


def check_binop(operator: str, left: Any, right: Any) -> None:
    """Before ``*``, ``**``, ``+`` or ``%`` runs: refuse a result over its limit."""
    tick()
    if operator == "*":
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, (str, bytes, list, tuple)) and isinstance(times, int):
                _expect_at_most(len(seq) * max(times, 0), "'*'", MAX_REPEAT_LENGTH, "MAX_REPEAT_LENGTH")
        if isinstance(left, int) and isinstance(right, int):
            _expect_at_most(
                abs(left).bit_length() + abs(right).bit_length(), "'*'", MAX_POWER_BITS, "MAX_POWER_BITS"
            )
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            _expect_at_most(right * math.log2(abs(left)), "'**'", MAX_POWER_BITS, "MAX_POWER_BITS")
    elif operator == "+":
        if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
            _expect_at_most(len(left) + len(right), "'+'")
    elif operator == "%" and isinstance(left, str):
        _check_percent_format(left, right)


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_percent_format(fmt: str, args: Any) -> None:
    """``'%1500000000s' % x`` pads to 1.5 G characters: refuse widths over the limit."""
    for match in _PERCENT_SPEC.finditer(fmt):
        for number in match.groups():
            if number == "*":
                raise refuse("'%': a '*' width is not allowed in a template")
            if number is not None:
                _expect_at_most(int(number), "'%' format width")
    values = args if isinstance(args, tuple) else (args,)
    _expect_at_most(len(fmt) + sum(_length(v) for v in values), "'%'")


def _check_format_spec(fmt: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """``'{:>1500000000}'.format(x)``: refuse widths over the limit and nested fields."""
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # str.format raises the same error itself
    for _literal, field_name, spec, _conversion in parsed:
        if field_name is None or not spec:
            continue
        if "{" in spec:
            raise refuse("format: a nested replacement field in a format spec is not allowed in a template")
        for number in re.findall(r"\d+", spec):
            _expect_at_most(int(number), "format width")
    values = list(args) + list(kwargs.values())
    _expect_at_most(len(fmt) + sum(_length(v) for v in values if not isinstance(v, dict)), "format")


# --- calls (methods of strings, macros) ------------------------------------------------------------

_STR_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill"})


def check_call(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Before a call from a template: count it, check the deadline, and refuse the string
    methods that would build a value over the limit. Methods of amounts (Decimal) are not
    callable: ``scaleb`` & co. build numbers with a billion digits."""
    tick("call")
    target = getattr(obj, "__wrapped__", obj)  # the sandbox wraps str.format
    owner = getattr(target, "__self__", None)
    name = getattr(target, "__name__", "")
    if isinstance(owner, Decimal) and not name.startswith("is_"):
        raise refuse(f"calling {name!r} on an amount is not allowed in a template; use the money filter")
    if not isinstance(owner, str):
        return
    if name in _STR_WIDTH_METHODS and args:
        width = _as_int(args[0])
        if width is not None:
            _expect_at_most(width, f"{name}()")
    elif name == "expandtabs":
        size = _as_int(args[0] if args else kwargs.get("tabsize", 8)) or 0
        _expect_at_most(len(owner) + owner.count("\t") * size, "expandtabs()")
    elif name == "replace" and len(args) >= 2:
        _check_replace(owner, args[0], args[1], args[2] if len(args) > 2 else kwargs.get("count", -1))
    elif name == "join" and args:
        _check_join_items(owner, args[0])
    elif name in ("format", "format_map"):
        if name == "format_map" and args and isinstance(args[0], dict):
            _check_format_spec(owner, (), args[0])
        else:
            _check_format_spec(owner, args, kwargs)


def _check_replace(value: str, old: Any, new: Any, count: Any = -1) -> None:
    if not isinstance(old, str) or not isinstance(new, str):
        return
    hits = value.count(old) if old else len(value) + 1
    limit = _as_int(count)
    if limit is not None and limit >= 0:
        hits = min(hits, limit)
    _expect_at_most(len(value) + hits * max(len(new) - len(old), 0), "replace")


def _check_join_items(separator: str, items: Any) -> None:
    if isinstance(items, (list, tuple, str)) and len(items) > 1:
        _expect_at_most((len(items) - 1) * len(separator) + sum(_length(v) for v in items), "join")


# --- filters ---------------------------------------------------------------------------------------


def _pre_center(value: Any, width: Any = 80, *_: Any, **__: Any) -> None:
    w = _as_int(width)
    if w is not None:
        _expect_at_most(w, "center")


def _pre_indent(value: Any, width: Any = 4, first: Any = False, blank: Any = False, **__: Any) -> None:
    prefix = len(width) if isinstance(width, str) else (_as_int(width) or 0)
    lines = str(value).count("\n") + 1
    _expect_at_most(len(str(value)) + lines * prefix, "indent")


def _pre_wordwrap(
    value: Any, width: Any = 79, break_long_words: Any = True, wrapstring: Any = None, **kw: Any
) -> None:
    w = max(_as_int(width) or 1, 1)
    text = str(value)
    glue = len(wrapstring) if isinstance(wrapstring, str) else 1
    _expect_at_most(len(text) + (len(text) // w + text.count("\n") + 1) * glue, "wordwrap")


def _pre_replace(value: Any, old: Any = None, new: Any = None, count: Any = None, **__: Any) -> None:
    _check_replace(str(value), old, new, -1 if count is None else count)


def _pre_format(value: Any, *args: Any, **kwargs: Any) -> None:
    _check_percent_format(str(value), tuple(args) + tuple(kwargs.values()))


def _pre_slice(value: Any, slices: Any = 1, *_: Any, **__: Any) -> None:
    n = _as_int(slices)
    if n is not None:
        _expect_at_most(n, "slice", MAX_LOOP_ITERATIONS, "MAX_LOOP_ITERATIONS")


def _pre_batch(value: Any, linecount: Any = 1, *_: Any, **__: Any) -> None:
    n = _as_int(linecount)
    if n is not None:
        _expect_at_most(n, "batch", MAX_VALUE_CHARS)


def _pre_tojson(value: Any, indent: Any = None, **__: Any) -> None:
    n = _as_int(indent)
    if n is not None:
        _expect_at_most(n, "tojson indent", 100, "100")


def _pre_truncate(value: Any, length: Any = 255, killwords: Any = False, end: Any = "...", **__: Any) -> None:
    if isinstance(end, str):
        _expect_at_most(len(end) + min(_as_int(length) or 0, len(str(value))), "truncate")


_PRECHECKS: dict[str, Callable[..., None]] = {
    "center": _pre_center,
    "indent": _pre_indent,
    "wordwrap": _pre_wordwrap,
    "replace": _pre_replace,
    "format": _pre_format,
    "slice": _pre_slice,
    "batch": _pre_batch,
    "tojson": _pre_tojson,
    "truncate": _pre_truncate,
}


def _materialize(items: Iterable[Any], what: str) -> list[Any]:
    """An iterable as a list, counting its items against the loop budget."""
    out: list[Any] = []
    for item in items:
        if len(out) >= MAX_VALUE_CHARS:
            raise refuse(f"{what}: more than {MAX_VALUE_CHARS:,} items (MAX_VALUE_CHARS)")
        out.append(item)
    return out


def bounded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` with the deadline, its pre-check (if any) and a size check of its result.

    ``functools.wraps`` keeps Jinja's ``pass_context``/``pass_eval_context`` marker, so the
    filter receives what it expects and folds at compile time exactly when it did before —
    through this wrapper, so that folding is bounded too.
    """
    precheck = _PRECHECKS.get(name)
    passes = getattr(func, "jinja_pass_arg", None) is not None

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        tick()
        operands = list(args[1:] if passes else args)
        if name == "join" and operands:
            items = operands[0]
            if not isinstance(items, (list, tuple, str)):
                items = _materialize(items, "join")
                operands[0] = items
                args = (*args[:1], *operands) if passes else tuple(operands)
            separator = operands[1] if len(operands) > 1 else kwargs.get("d", "")
            _check_join_items(str(separator), items)
        elif precheck is not None and operands:
            precheck(*operands, **kwargs)
        return check_size(func(*args, **kwargs), f"|{name}")

    return wrapper


# --- loops and concatenation (applied to the template's syntax tree) -------------------------


LOOP_FILTER = "_dispatch_counted_loop"
CONCAT_FILTER = "_dispatch_checked_concat"


@jinja2.pass_context
def counted_loop(_context: Any, iterable: Any) -> Iterator[Any]:
    """What every ``{% for %}`` iterates over: the same items, each one counted."""
    for item in iterable:
        tick("loop")
        yield item


@jinja2.pass_context
def checked_concat(_context: Any, value: Any) -> Any:
    """The result of ``a ~ b``, checked (its operands are bounded, so it is at most a few
    times the limit before this refuses it)."""
    return check_size(value, "'~'")


class _Bounder(jinja2.visitor.NodeTransformer):
    def visit_For(self, node: jinja2.nodes.For) -> jinja2.nodes.Node:
        node = cast(jinja2.nodes.For, self.generic_visit(node))
        node.iter = jinja2.nodes.Filter(node.iter, LOOP_FILTER, [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: jinja2.nodes.Concat) -> jinja2.nodes.Node:
        visited = self.generic_visit(node)
        return jinja2.nodes.Filter(visited, CONCAT_FILTER, [], [], None, None, lineno=node.lineno)


def bound_tree(template: jinja2.nodes.Template) -> jinja2.nodes.Template:
    """Route every loop's iterable and every ``~`` through the counting filters."""
    return _Bounder().visit(template)


def bounded_join(parts: Iterable[str]) -> str:
    """``Environment.concat`` (how macros, blocks and ``{% set %}`` blocks join their
    output): counts while joining, so a loop of large literal text is refused before the
    join allocates it."""
    pieces: list[str] = []
    size = 0
    for piece in parts:
        size += len(piece)
        if size > MAX_VALUE_CHARS:
            raise refuse(f"a block or macro output is {_over('MAX_VALUE_CHARS', MAX_VALUE_CHARS)}")
        pieces.append(piece)
    produce(size)
    return "".join(pieces)


__all__ = [
    "MAX_CALLS",
    "MAX_LOOP_ITERATIONS",
    "MAX_OUTPUT_CHARS",
    "MAX_POWER_BITS",
    "MAX_PRODUCED_CHARS",
    "MAX_RENDER_SECONDS",
    "MAX_REPEAT_LENGTH",
    "MAX_SOURCE_CHARS",
    "MAX_VALUE_CHARS",
    "Budget",
    "TemplateLimitError",
]
