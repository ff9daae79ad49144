"""The one error of rendering, and how any failure of user content becomes it.

Templates are user content (SPEC B7): a syntax error, an undefined variable, a sandbox refusal
or a crossed limit must never crash a run. Each becomes a :class:`TemplateError` with a short,
one-line message naming the part and, when Jinja knows it, the template line, so the plan's
owner can fix it; the dispatcher turns it into a manual action ``template_error``.
"""

from __future__ import annotations

from pathlib import Path

import jinja2
from jinja2.sandbox import SecurityError

from dispatch.rendering.limits import TemplateLimitError

#: a message longer than this is cut: it ends up in a to-do list, not in a log file
MAX_MESSAGE_CHARS = 240


class TemplateError(Exception):
    """A template could not be parsed or rendered; the message is short and user-facing.

    ``part`` names what failed (``subject``, ``body``, a file name) and ``lineno`` the
    template line when Jinja knows it, so the owner of the plan can fix it. ``over_limit``
    tells a template that crossed a limit of :mod:`dispatch.rendering.limits` from one that
    is wrong.
    """

    def __init__(
        self, message: str, *, part: str | None = None, lineno: int | None = None, over_limit: bool = False
    ) -> None:
        super().__init__(message)
        self.part = part
        self.lineno = lineno
        self.over_limit = over_limit


def first_line(text: str) -> str:
    """The first line of ``text``, cut to :data:`MAX_MESSAGE_CHARS`."""
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= MAX_MESSAGE_CHARS else line[: MAX_MESSAGE_CHARS - 1] + "…"


def template_lineno(exc: BaseException, dirs: tuple[Path, ...]) -> int | None:
    """The template line of a runtime error: Jinja rewrites the traceback so that its frames
    carry the template's file name ('<template>' for inline sources) and line."""
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return exc.lineno
    prefixes = tuple(str(d) for d in dirs)
    lineno = None
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename == "<template>" or filename.startswith(prefixes):
            lineno = tb.tb_lineno
        tb = tb.tb_next
    return lineno


def describe(exc: BaseException) -> str:
    """What went wrong, in the words a template's author understands."""
    if isinstance(exc, TemplateLimitError):
        return first_line(str(exc))
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return f"syntax error: {first_line(exc.message or str(exc))}"
    if isinstance(exc, SecurityError):
        return f"not allowed in a template: {first_line(str(exc))}"
    if isinstance(exc, jinja2.UndefinedError):
        return f"undefined variable: {first_line(str(exc))}"
    if isinstance(exc, jinja2.TemplateNotFound):
        return f"template file not found: {first_line(str(exc))}"
    if isinstance(exc, jinja2.TemplateError):
        return first_line(str(exc)) or type(exc).__name__
    return f"{type(exc).__name__}: {first_line(str(exc))}"


def as_template_error(exc: BaseException, part: str, dirs: tuple[Path, ...]) -> TemplateError:
    """``exc`` as the :class:`TemplateError` of ``part`` (``dirs``: the template directories,
    to find the failing line of a template file in the traceback)."""
    if isinstance(exc, TemplateError):
        return exc
    lineno = template_lineno(exc, dirs)
    where = f"{part}, line {lineno}" if lineno else part
    name = getattr(exc, "name", None)
    if isinstance(exc, jinja2.TemplateSyntaxError) and name and name != part:
        where = f"{where} (in {name})"
    return TemplateError(
        f"{where}: {describe(exc)}", part=part, lineno=lineno, over_limit=isinstance(exc, TemplateLimitError)
    )
