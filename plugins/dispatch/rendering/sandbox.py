"""The Jinja sandbox every template renders in, and the bounded render itself.

Templates are user content (SPEC B7): whoever edits a dunning plan writes Jinja that runs
inside every dispatch run. So they render in Jinja's *immutable* sandbox (no access to Python
internals, no mutation of the variables), undefined variables are errors rather than blanks,
HTML output escapes variables, and every render is bounded by :mod:`dispatch.rendering.limits`
(size, loops, calls, time), stopping as soon as the output passes the limit.
"""

from __future__ import annotations

import functools
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import jinja2
from babel import Locale
from jinja2.sandbox import ImmutableSandboxedEnvironment

from dispatch.rendering import limits
from dispatch.rendering.errors import TemplateError, as_template_error
from dispatch.rendering.filters import FILTERS, rendering_in
from dispatch.rendering.limits import MAX_OUTPUT_CHARS, MAX_SOURCE_CHARS
from dispatch.rendering.lookup import templates_dirs


class Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, bounded (:mod:`dispatch.rendering.limits`).

    The sandbox already refuses internals (``__class__``, ``__globals__``…) and mutation of
    the variables. On top of it: the operators that grow values (``*``, ``**``, ``+``,
    ``%``) and every call are checked before they run, every filter is wrapped with a size
    check, every loop and every ``~`` is routed through a counting filter when the template
    is parsed, and blocks and macros join their output with a counting join.
    """

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        limits.check_binop(operator, left, right)
        return limits.check_size(super().call_binop(context, operator, left, right), f"'{operator}'")

    def call(self, context: jinja2.runtime.Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        limits.check_call(obj, args, kwargs)
        return limits.check_size(super().call(context, obj, *args, **kwargs), "call")

    def concat(self, parts: Any) -> str:
        return limits.bounded_join(parts)

    def _parse(self, source: str, name: str | None, filename: str | None) -> jinja2.nodes.Template:
        if len(source) > MAX_SOURCE_CHARS:
            raise limits.refuse(
                f"the template source is over the limit MAX_SOURCE_CHARS ({MAX_SOURCE_CHARS:,} characters)"
            )
        return limits.bound_tree(super()._parse(source, name, filename))


def _finalize(value: Any) -> Any:
    """Print ``None`` as nothing: an owner without e-mail must not read 'None'."""
    return "" if value is None else value


@dataclass(frozen=True)
class Envs:
    """The two sandboxes over one set of template directories: HTML (autoescaping) and text."""

    html: Sandbox
    text: Sandbox
    dirs: tuple[Path, ...]


@functools.lru_cache(maxsize=8)
def _build_envs(dirs: tuple[Path, ...]) -> Envs:
    loader = jinja2.FileSystemLoader([str(d) for d in dirs])

    def make(autoescape: bool) -> Sandbox:
        env = Sandbox(
            loader=loader,
            autoescape=autoescape,
            undefined=jinja2.StrictUndefined,
            finalize=_finalize,
            auto_reload=True,
        )
        env.filters.update(FILTERS)
        env.filters = {name: limits.bounded_filter(name, f) for name, f in env.filters.items()}
        env.filters[limits.LOOP_FILTER] = limits.counted_loop
        env.filters[limits.CONCAT_FILTER] = limits.checked_concat
        env.globals.pop("lipsum", None)  # no use in a message; only a way to make big output
        return env

    return Envs(html=make(True), text=make(False), dirs=dirs)


def envs() -> Envs:
    """The sandboxes for the current template directories (built once per set of directories)."""
    return _build_envs(templates_dirs())


@functools.lru_cache(maxsize=512)
def _compile(env: Sandbox, source: str) -> jinja2.Template:
    """Compile an inline source once: the same plan body renders for every invoice."""
    return env.from_string(source)


def from_source(env: Sandbox, source: str, part: str) -> jinja2.Template:
    """An inline source compiled in ``env``; a :class:`TemplateError` naming ``part`` if it fails."""
    try:
        return _compile(env, source)
    except Exception as exc:
        raise as_template_error(exc, part, envs().dirs) from exc


def render(template: jinja2.Template, context: Mapping[str, Any], locale: Locale, part: str) -> str:
    """Render while counting: the output streams out chunk by chunk and the render stops as
    soon as it passes MAX_OUTPUT_CHARS, before the rest is ever built."""
    chunks: list[str] = []
    size = 0
    try:
        with rendering_in(locale), limits.message_budget():
            stream = cast("Generator[str, None, None]", template.generate(dict(context)))
            try:
                for chunk in stream:
                    size += len(chunk)
                    if size > MAX_OUTPUT_CHARS:
                        raise TemplateError(
                            f"{part}: the output is over the limit MAX_OUTPUT_CHARS "
                            f"({MAX_OUTPUT_CHARS:,} characters)",
                            part=part,
                            over_limit=True,
                        )
                    limits.tick()
                    chunks.append(chunk)
            finally:
                stream.close()
    except TemplateError:
        raise
    except Exception as exc:  # any failure of user content is a TemplateError (B7)
        raise as_template_error(exc, part, envs().dirs) from exc
    return "".join(chunks)
