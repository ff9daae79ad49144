"""Render invoice-sending templates (subject and body) per channel and customer language.

Templates are user content (SPEC B7): whoever edits a dunning plan writes Jinja that runs
inside every dispatch run. So everything here renders in an immutable Jinja sandbox (no
access to Python internals, no mutation of the variables), HTML output escapes variables,
a subject that would contain a line break is refused (header injection), and *any* failure
to render becomes one :class:`TemplateError` with a short message, which the dispatcher
turns into a manual action with reason ``template_error`` instead of crashing the run.

Amounts and dates are formatted with Babel in the customer's language, so "1 234,50 €"
reaches a French customer and "€1,234.50" an English one. The default wording lives in
``include/templates/<lang>/`` (English is the fallback for any language without its own
directory); see ``docs/templates.md`` for the variables and filters users may rely on.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import functools
import html as html_lib
import math
import os
import re
from collections.abc import Generator, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, cast

import jinja2
from babel import Locale, UnknownLocaleError
from babel.dates import format_date
from babel.numbers import format_currency, format_decimal
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from markupsafe import Markup

from dispatch.paths import TEMPLATES_DIR, resolve
from dispatch.rendering import limits
from dispatch.rendering.limits import MAX_OUTPUT_CHARS, MAX_SOURCE_CHARS, TemplateLimitError
from dispatch.vocabulary import ChannelName, values

TEMPLATES_DIR_ENV = "DISPATCH_TEMPLATES_DIR"

CHANNELS = values(ChannelName)
FALLBACK_LANGUAGE = "en"

_MAX_MESSAGE_CHARS = 240

# The default files, per language directory.
DEFAULT_EMAIL_SUBJECT = "email_subject.txt.j2"
DEFAULT_EMAIL_HTML = "email.html.j2"
DEFAULT_EMAIL_TEXT = "email.txt.j2"
DEFAULT_SMS = "sms.txt.j2"
DEFAULT_LETTER = "letter.txt.j2"
EMAIL_LAYOUT = "layout/email.html.j2"

# The locale the Babel filters use during one render. A context variable rather than a
# render argument because filters only receive their operands, and rather than a global
# because renders may run concurrently (threads of a worker).
_RENDER_LOCALE: contextvars.ContextVar[Locale | None] = contextvars.ContextVar("_RENDER_LOCALE", default=None)


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


@dataclass(frozen=True)
class TemplateSpec:
    """The content of a plan's invoice-sending template (CONTRACT §3).

    ``subject`` and ``body`` are inline Jinja sources; ``template_file`` names a file under
    the templates directory instead of ``body``. ``None`` (or blank) means "use the default
    for the customer's language". ``subject`` is used by the email channel only.
    """

    channel: str
    subject: str | None = None
    body: str | None = None
    template_file: str | None = None


@dataclass(frozen=True)
class Rendered:
    """A rendered message: ``subject`` for email only, ``html`` for email only."""

    subject: str | None
    text: str
    html: str | None


# --------------------------------------------------------------------------------------
# Locale and Babel filters


@functools.lru_cache(maxsize=256)
def resolve_locale(language: str | None) -> Locale:
    """The Babel locale for a customer's ``language`` ('fr', 'fr-BE', 'en_GB', …).

    Unknown, empty or malformed values fall back to the language part, then to English:
    a typo in the accounting system must not stop an invoice from going out.
    """
    if not isinstance(language, str) or not language.strip():
        return Locale.parse(FALLBACK_LANGUAGE)
    tag = language.strip().replace("-", "_")
    for candidate in (tag, tag.split("_", 1)[0]):
        try:
            return Locale.parse(candidate)
        except (UnknownLocaleError, ValueError, TypeError):
            continue
    return Locale.parse(FALLBACK_LANGUAGE)


def _current_locale() -> Locale:
    return _RENDER_LOCALE.get() or resolve_locale(None)


def _to_decimal(amount: Any) -> Decimal:
    if isinstance(amount, bool) or amount is None:
        raise ValueError(f"money: not an amount: {amount!r}")
    if isinstance(amount, Decimal):
        return amount
    try:
        # str() first so that a float such as 0.1 formats as 0.1, not its binary value.
        value = Decimal(str(amount).strip())
    except (InvalidOperation, ValueError) as exc:
        raise ValueError(f"money: not an amount: {str(amount)[:40]!r}") from exc
    if not value.is_finite():
        raise ValueError(f"money: not an amount: {str(amount)[:40]!r}")
    return value


def _to_date(value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str) and re.match(r"^\d{4}-\d{2}-\d{2}", value.strip()):
        return dt.date.fromisoformat(value.strip()[:10])
    raise ValueError(f"date: not a date: {str(value)[:40]!r}")


def money_filter(amount: Any, currency: str | None = None) -> str:
    """``{{ invoice.total_amount|money(invoice.currency) }}`` → '€1,234.50' / '1 234,50 €'.

    Without a currency the amount is formatted as a plain number with two decimals.
    """
    value = _to_decimal(amount)
    locale = _current_locale()
    if currency is None or (isinstance(currency, str) and not currency.strip()):
        return format_decimal(value, format="#,##0.00", locale=locale)
    code = str(currency).strip().upper()
    if not re.fullmatch(r"[A-Z]{3}", code):
        raise ValueError(f"money: not a currency code: {str(currency)[:10]!r}")
    return format_currency(value, code, locale=locale)


def date_filter(value: Any, format: str = "long") -> str:
    """``{{ invoice.issue_date|date }}`` → 'December 2, 2026' / '2 décembre 2026'.

    ``format`` is 'full', 'long' (default), 'medium', 'short', or a CLDR date pattern
    such as 'd MMMM y'.
    """
    if not isinstance(format, str) or not format.strip():
        raise ValueError("date: the format must be 'full', 'long', 'medium', 'short' or a CLDR pattern")
    return format_date(_to_date(value), format=format, locale=_current_locale())


# ``pass_context`` is what stops Jinja from folding ``{{ 1234.5|money('EUR') }}`` into a
# constant at compile time, which would format it once, in the wrong locale, and cache that.
@jinja2.pass_context
def _money_in_template(_context: jinja2.runtime.Context, amount: Any, currency: str | None = None) -> str:
    return money_filter(amount, currency)


@jinja2.pass_context
def _date_in_template(_context: jinja2.runtime.Context, value: Any, format: str = "long") -> str:
    return date_filter(value, format)


# --------------------------------------------------------------------------------------
# Environments


class _Sandbox(ImmutableSandboxedEnvironment):
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


def templates_dirs() -> tuple[Path, ...]:
    """Where templates are looked up: ``$DISPATCH_TEMPLATES_DIR`` first (when set), then the
    repository's ``include/templates``, so an override directory may hold only the files it
    changes and still find the defaults."""
    dirs: list[Path] = []
    override = os.environ.get(TEMPLATES_DIR_ENV, "").strip()
    if override:
        path = Path(override)
        dirs.append(resolve(path).resolve())
    builtin = resolve(TEMPLATES_DIR).resolve()
    if builtin not in dirs:
        dirs.append(builtin)
    return tuple(dirs)


@dataclass(frozen=True)
class _Envs:
    html: _Sandbox
    text: _Sandbox
    dirs: tuple[Path, ...]


@functools.lru_cache(maxsize=8)
def _build_envs(dirs: tuple[Path, ...]) -> _Envs:
    loader = jinja2.FileSystemLoader([str(d) for d in dirs])

    def make(autoescape: bool) -> _Sandbox:
        env = _Sandbox(
            loader=loader,
            autoescape=autoescape,
            undefined=jinja2.StrictUndefined,
            finalize=_finalize,
            auto_reload=True,
        )
        env.filters["money"] = _money_in_template
        env.filters["date"] = _date_in_template
        env.filters = {name: limits.bounded_filter(name, f) for name, f in env.filters.items()}
        env.filters[limits.LOOP_FILTER] = limits.counted_loop
        env.filters[limits.CONCAT_FILTER] = limits.checked_concat
        env.globals.pop("lipsum", None)  # no use in a message; only a way to make big output
        return env

    return _Envs(html=make(True), text=make(False), dirs=dirs)


def _envs() -> _Envs:
    return _build_envs(templates_dirs())


@functools.lru_cache(maxsize=512)
def _compile(env: _Sandbox, source: str) -> jinja2.Template:
    """Compile an inline source once: the same plan body renders for every invoice."""
    return env.from_string(source)


# --------------------------------------------------------------------------------------
# Errors


def _first_line(text: str) -> str:
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= _MAX_MESSAGE_CHARS else line[: _MAX_MESSAGE_CHARS - 1] + "…"


def _template_lineno(exc: BaseException, dirs: tuple[Path, ...]) -> int | None:
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


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TemplateLimitError):
        return _first_line(str(exc))
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return f"syntax error: {_first_line(exc.message or str(exc))}"
    if isinstance(exc, SecurityError):
        return f"not allowed in a template: {_first_line(str(exc))}"
    if isinstance(exc, jinja2.UndefinedError):
        return f"undefined variable: {_first_line(str(exc))}"
    if isinstance(exc, jinja2.TemplateNotFound):
        return f"template file not found: {_first_line(str(exc))}"
    if isinstance(exc, jinja2.TemplateError):
        return _first_line(str(exc)) or type(exc).__name__
    return f"{type(exc).__name__}: {_first_line(str(exc))}"


def _template_error(exc: BaseException, part: str) -> TemplateError:
    if isinstance(exc, TemplateError):
        return exc
    lineno = _template_lineno(exc, _envs().dirs)
    where = f"{part}, line {lineno}" if lineno else part
    name = getattr(exc, "name", None)
    if isinstance(exc, jinja2.TemplateSyntaxError) and name and name != part:
        where = f"{where} (in {name})"
    return TemplateError(
        f"{where}: {_describe(exc)}", part=part, lineno=lineno, over_limit=isinstance(exc, TemplateLimitError)
    )


def _render(template: jinja2.Template, context: Mapping[str, Any], locale: Locale, part: str) -> str:
    """Render while counting: the output streams out chunk by chunk and the render stops as
    soon as it passes MAX_OUTPUT_CHARS, before the rest is ever built."""
    token = _RENDER_LOCALE.set(locale)
    chunks: list[str] = []
    size = 0
    try:
        with limits.message_budget():
            # a generator (typed as an Iterator): closed below, so an aborted render stops
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
        raise _template_error(exc, part) from exc
    finally:
        _RENDER_LOCALE.reset(token)
    return "".join(chunks)


def _from_source(env: _Sandbox, source: str, part: str) -> jinja2.Template:
    try:
        return _compile(env, source)
    except Exception as exc:
        raise _template_error(exc, part) from exc


# --------------------------------------------------------------------------------------
# Template files


def _validate_name(name: Any) -> str:
    """Refuse names that could leave the templates directory before touching the disk."""
    if not isinstance(name, str) or not name.strip():
        raise TemplateError("template file: the name is empty", part="template")
    if "\x00" in name or "\\" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise TemplateError(
            f"template file {name!r}: must be a relative path under the templates directory", part=name
        )
    if any(piece == ".." for piece in name.split("/")):
        raise TemplateError(f"template file {name!r}: '..' is not allowed", part=name)
    return "/".join(piece for piece in name.split("/") if piece not in ("", "."))


def _locate(name: str, dirs: tuple[Path, ...]) -> Path | None:
    """The file a name resolves to, or None; a symlink pointing outside the directory that
    holds it does not count (the loader would otherwise follow it)."""
    for base in dirs:
        candidate = base / name
        if candidate.is_file():
            if candidate.resolve().is_relative_to(base.resolve()):
                return candidate
            raise TemplateError(
                f"template file {name!r}: resolves outside the templates directory", part=name
            )
    return None


def _load(env: _Sandbox, name: str) -> jinja2.Template:
    clean = _validate_name(name)
    if _locate(clean, _envs().dirs) is None:
        raise TemplateError(f"template file {name!r}: not found under the templates directory", part=name)
    try:
        return env.get_template(clean)
    except Exception as exc:
        raise _template_error(exc, name) from exc


def _is_text_file(name: str) -> bool:
    return name.endswith((".txt.j2", ".txt"))


def _text_sibling(name: str) -> str | None:
    """'email/invoice.html.j2' → 'email/invoice.txt.j2': the hand-written text/plain part."""
    for html_suffix, text_suffix in ((".html.j2", ".txt.j2"), (".html", ".txt"), (".j2", ".txt.j2")):
        if name.endswith(html_suffix):
            return name[: -len(html_suffix)] + text_suffix
    return None


def _language_candidates(locale: Locale) -> tuple[str, ...]:
    names = [str(locale), locale.language, FALLBACK_LANGUAGE]
    return tuple(dict.fromkeys(names))


def _default(env: _Sandbox, filename: str, locale: Locale) -> tuple[jinja2.Template, Locale]:
    """The default template for the locale: '<fr_BE>/', then '<fr>/', then 'en/', with the
    locale to render it in. When the wording falls back to English, dates and amounts do
    too: "dated 2. Dezember 2026" in an English sentence reads as a bug."""
    dirs = _envs().dirs
    for language in _language_candidates(locale):
        name = f"{language}/{filename}"
        if _locate(name, dirs) is not None:
            try:
                template = env.get_template(name)
            except Exception as exc:
                raise _template_error(exc, name) from exc
            same_language = language in (str(locale), locale.language)
            return template, locale if same_language else resolve_locale(language)
    raise TemplateError(
        f"default template {filename!r} is missing for {locale} and {FALLBACK_LANGUAGE}", part=filename
    )


# --------------------------------------------------------------------------------------
# Checks for the config loader


def check_template_source(source: str, *, html: bool = False) -> None:
    """Refuse a template that does not compile (syntax error, unknown filter), without
    rendering it: the config loader calls this so that a bad template is refused when the
    file is loaded rather than discovered at send time."""
    if not isinstance(source, str):
        raise TemplateError("template: must be text", part="template")
    envs = _envs()
    try:
        with limits.compile_refusals() as refused:
            (envs.html if html else envs.text).from_string(source)
    except Exception as exc:
        lineno = getattr(exc, "lineno", None)
        where = f"line {lineno}: " if lineno else ""
        raise TemplateError(
            f"{where}{_describe(exc)}",
            part="template",
            lineno=lineno,
            over_limit=isinstance(exc, TemplateLimitError),
        ) from exc
    if refused:  # a constant expression over a limit: known now, so refused now
        raise TemplateError(f"refused when compiled: {refused[0]}", part="template", over_limit=True)


def check_template_file(name: str) -> None:
    """Refuse a ``template:`` file that is missing, escapes the templates directory, or
    does not compile (its text sibling included)."""
    clean = _validate_name(name)
    envs = _envs()
    if _locate(clean, envs.dirs) is None:
        raise TemplateError(f"template file {name!r}: not found under the templates directory", part=name)
    names = [clean]
    sibling = None if _is_text_file(clean) else _text_sibling(clean)
    if sibling and _locate(sibling, envs.dirs) is not None:
        names.append(sibling)
    for item in names:
        env = envs.text if _is_text_file(item) else envs.html
        try:
            source, _filename, _uptodate = env.loader.get_source(env, item)  # type: ignore[union-attr]
            with limits.compile_refusals() as refused:
                env.compile(source, name=item)
        except Exception as exc:
            lineno = getattr(exc, "lineno", None)
            where = f", line {lineno}" if lineno else ""
            raise TemplateError(
                f"template file {item!r}{where}: {_describe(exc)}",
                part=item,
                lineno=lineno,
                over_limit=isinstance(exc, TemplateLimitError),
            ) from exc
        if refused:
            raise TemplateError(
                f"template file {item!r}: refused when compiled: {refused[0]}", part=item, over_limit=True
            )


# --------------------------------------------------------------------------------------
# Text helpers


_CONTROL_IN_HEADER = re.compile(r"[\r\n\v\f\x00-\x08\x0e-\x1f\x7f\x85\u2028\u2029]")


def _clean_subject(value: str) -> str:
    """Strip, then refuse what would break the header: a line break in a subject is how a
    variable such as a customer name would add a ``Bcc:`` line (SPEC B7)."""
    subject = value.strip()
    if _CONTROL_IN_HEADER.search(subject):
        raise TemplateError(
            "subject: contains a line break or control character (not allowed in a header)", part="subject"
        )
    if not subject:
        raise TemplateError("subject: renders empty", part="subject")
    return subject


def _tidy_text(text: str) -> str:
    """Trailing spaces off, at most one blank line in a row: block tags leave such gaps."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _collapse(text: str) -> str:
    """One line, single spaces: an SMS has no layout, and Babel's no-break spaces would
    force the costlier UCS-2 encoding for nothing."""
    return " ".join(text.split())


class _TextExtractor(HTMLParser):
    _SKIP = frozenset({"script", "style", "head", "title"})
    _PARAGRAPH = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "blockquote"})
    _LINE = frozenset({"div", "tr", "section", "article", "header", "footer", "hr", "center", "address"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0
        self._links: list[tuple[str | None, int]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag == "br":
            self.parts.append("\n")
        elif tag == "li":
            self.parts.append("\n- ")
        elif tag in ("td", "th"):
            self.parts.append("  ")
        elif tag in self._PARAGRAPH:
            self.parts.append("\n\n")
        elif tag in self._LINE:
            self.parts.append("\n")
        elif tag == "a":
            self._links.append((dict(attrs).get("href"), len(self.parts)))

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self._PARAGRAPH:
            self.parts.append("\n\n")
        elif tag in self._LINE:
            self.parts.append("\n")
        elif tag == "a" and self._links:
            href, start = self._links.pop()
            label = "".join(self.parts[start:]).strip()
            # A link's target matters in a text part ("pay online"); repeat it unless shown.
            if href and href.startswith(("http://", "https://")) and href not in label:
                self.parts.append(f" ({href})")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(re.sub(r"[ \t\r\n\f]+", " ", data))


def html_to_text(markup: str) -> str:
    """A readable text/plain version of an HTML body, for HTML templates without a
    hand-written ``.txt.j2`` sibling."""
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    lines = [line.strip(" \t") for line in "".join(parser.parts).split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


_HTML_TAG = re.compile(
    r"<\s*/?\s*(?:html|body|p|br|div|span|table|tr|td|th|ul|ol|li|h[1-6]|a|b|strong|i|em|u|img|hr"
    r"|blockquote|center|font|pre)\b[^>]*>",
    re.IGNORECASE,
)
_NEWLINES = re.compile(r"(\n[ \t]*\n(?:[ \t]*\n)*)|\n")


def _looks_like_html(source: str) -> bool:
    return bool(_HTML_TAG.search(source))


def _paragraph_source(env: _Sandbox, source: str) -> str:
    """Turn a plain-text template into an HTML one: literal text escaped, blank lines into
    paragraphs, single newlines into <br>. Only the literal text between Jinja tags is
    touched (variables stay autoescaped by the environment), and every newline is kept so
    that line numbers in errors still match the user's source."""

    def newline(match: re.Match[str]) -> str:
        if match.group(1):
            return "</p>" + "\n" * match.group(1).count("\n") + "<p>"
        return "<br>\n"

    pieces: list[str] = []
    for _lineno, kind, value in env.lex(source):
        if kind == "data":
            value = _NEWLINES.sub(newline, html_lib.escape(value, quote=False))
        pieces.append(value)
    return "<p>" + "".join(pieces) + "</p>"


def _tidy_paragraphs(markup: str) -> str:
    markup = re.sub(r"<p>(?:\s|<br>)*</p>\s*", "", markup)
    markup = re.sub(r"<p>(?:\s*<br>)+\s*", "<p>", markup)
    markup = re.sub(r"(?:\s*<br>)+\s*</p>", "</p>", markup)
    return markup.strip()


# --------------------------------------------------------------------------------------
# Rendering per channel


def _normalize_source(source: str | None) -> str | None:
    if source is None or not source.strip():
        return None
    return source.replace("\r\n", "\n").replace("\r", "\n")


def _wrap_in_layout(envs: _Envs, inner: str, context: Mapping[str, Any], locale: Locale) -> str:
    layout = _load(envs.html, EMAIL_LAYOUT)
    values = {**context, "layout_content": Markup(inner), "layout_lang": locale.language}
    return _render(layout, values, locale, EMAIL_LAYOUT)


def _email_body(
    spec: TemplateSpec, body: str | None, context: Mapping[str, Any], locale: Locale
) -> tuple[str, str | None]:
    envs = _envs()
    if body is not None:
        if _looks_like_html(body):
            # The user wrote HTML: render it as such and derive the text part from it.
            markup = _render(_from_source(envs.html, body, "body"), context, locale, "body")
            text = html_to_text(markup)  # before the layout adds its header and footer
            if "<html" not in markup.lower():
                markup = _wrap_in_layout(envs, markup, context, locale)
            return text, markup
        # Text first: its errors carry the user's own line numbers.
        text = _render(_from_source(envs.text, body, "body"), context, locale, "body")
        try:
            html_source = _paragraph_source(envs.html, body)
        except Exception as exc:
            raise _template_error(exc, "body") from exc
        inner = _render(_from_source(envs.html, html_source, "body"), context, locale, "body")
        return _tidy_text(text), _wrap_in_layout(envs, _tidy_paragraphs(inner), context, locale)
    if spec.template_file:
        name = _validate_name(spec.template_file)
        if _is_text_file(name):
            return _tidy_text(_render(_load(envs.text, name), context, locale, name)), None
        markup = _render(_load(envs.html, name), context, locale, name)
        sibling = _text_sibling(name)
        if sibling and _locate(sibling, envs.dirs) is not None:
            return _tidy_text(_render(_load(envs.text, sibling), context, locale, sibling)), markup
        return html_to_text(markup), markup
    html_template, html_locale = _default(envs.html, DEFAULT_EMAIL_HTML, locale)
    text_template, text_locale = _default(envs.text, DEFAULT_EMAIL_TEXT, locale)
    markup = _render(html_template, context, html_locale, DEFAULT_EMAIL_HTML)
    text = _render(text_template, context, text_locale, DEFAULT_EMAIL_TEXT)
    return _tidy_text(text), markup


def _plain_body(
    spec: TemplateSpec, body: str | None, default: str, context: Mapping[str, Any], locale: Locale
) -> str:
    """The body of an SMS or a letter: text only; an HTML file is reduced to text."""
    envs = _envs()
    if body is not None:
        return _render(_from_source(envs.text, body, "body"), context, locale, "body")
    if spec.template_file:
        name = _validate_name(spec.template_file)
        if _is_text_file(name):
            return _render(_load(envs.text, name), context, locale, name)
        return html_to_text(_render(_load(envs.html, name), context, locale, name))
    template, default_locale = _default(envs.text, default, locale)
    return _render(template, context, default_locale, default)


def render_message(spec: TemplateSpec, context: dict[str, Any], language: str | None) -> Rendered:
    """Render one message for one invoice. Raises :class:`TemplateError` for anything the
    template's author can cause; the dispatcher makes the action manual ``template_error``.

    ``context`` is the variable dict of :func:`build_context`; ``language`` the customer's
    language (it picks the default wording and the Babel locale; unknown/None → English).
    """
    if spec.channel not in CHANNELS:
        raise ValueError(f"unknown channel {spec.channel!r}; expected one of {', '.join(CHANNELS)}")
    _refuse_unusable_amount(context)
    with limits.message_budget():  # one deadline and one loop/call budget for all the parts
        return _render_message(spec, context, language)


def _refuse_unusable_amount(context: Mapping[str, Any]) -> None:
    """An infinite or NaN total (a corrupt source row) cannot be worded: it fails this one
    message as a template error, never the batch."""
    invoice = context.get("invoice")
    amount = invoice.get("total_amount") if isinstance(invoice, Mapping) else None
    if isinstance(amount, Decimal) and not amount.is_finite():
        raise TemplateError(f"invoice.total_amount is not a finite amount: {amount}", part="invoice")


def _render_message(spec: TemplateSpec, context: dict[str, Any], language: str | None) -> Rendered:
    body = _normalize_source(spec.body)
    if spec.template_file is not None and not spec.template_file.strip():
        spec = replace(spec, template_file=None)  # blank means "not given", as for body
    if body is not None and spec.template_file:
        raise TemplateError("template: give either an inline body or a template file, not both", part="body")
    locale = resolve_locale(language)

    if spec.channel == "email":
        envs = _envs()
        subject_source = _normalize_source(spec.subject)
        if subject_source is None:
            subject_template, subject_locale = _default(envs.text, DEFAULT_EMAIL_SUBJECT, locale)
        else:
            subject_template, subject_locale = _from_source(envs.text, subject_source, "subject"), locale
        subject = _clean_subject(_render(subject_template, context, subject_locale, "subject"))
        text, markup = _email_body(spec, body, context, locale)
        if not text.strip():
            raise TemplateError("body: renders empty", part="body")
        return Rendered(subject=subject, text=text, html=markup)

    if spec.channel == "sms":
        text = _collapse(_plain_body(spec, body, DEFAULT_SMS, context, locale))
    else:
        text = _tidy_text(_plain_body(spec, body, DEFAULT_LETTER, context, locale))
    if not text:
        raise TemplateError("body: renders empty", part="body")
    return Rendered(subject=None, text=text, html=None)


# --------------------------------------------------------------------------------------
# Variables


_MISSING = object()


def _pick(row: Mapping[str, Any], *keys: str, required: str | None = None) -> Any:
    """The first present, non-null value among ``keys``: rows come both from the contract's
    tables (``invoice_id``, ``accounting_status``) and from plain dicts (``id``, ``status``)."""
    for key in keys:
        value = row.get(key, _MISSING)
        if value is _MISSING or value is None or _is_nan(value):
            continue
        return value
    if required:
        raise ValueError(f"build_context: {required} is missing ({' or '.join(keys)})")
    return None


def _is_nan(value: Any) -> bool:
    """NaN and pandas' NaT are the only values unequal to themselves; both mean 'no value'."""
    try:
        return bool(value != value)
    except Exception:  # an exotic object: treat it as a value
        return False


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _optional_date(value: Any, field: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return _to_date(value)
    except ValueError as exc:
        raise ValueError(f"build_context: {field} is not a date: {value!r}") from exc


def _total_amount(invoice: Mapping[str, Any]) -> Decimal:
    """The total as a Decimal. Infinite and NaN totals are kept as such (``Decimal('Infinity')``,
    ``Decimal('NaN')``) for :func:`render_message` to refuse as that message's template error;
    a missing or unreadable one is a data error (``ValueError``)."""
    raw = invoice.get("total_amount")
    if isinstance(raw, float) and not math.isfinite(raw):
        return Decimal("NaN") if math.isnan(raw) else Decimal(raw)
    if isinstance(raw, str) and raw.strip().lower().lstrip("+-") in ("inf", "infinity", "nan"):
        return Decimal(raw.strip())
    if isinstance(raw, Decimal) and not raw.is_finite():
        return raw
    try:
        return _to_decimal(_pick(invoice, "total_amount", required="invoice.total_amount"))
    except ValueError as exc:
        raise ValueError(f"build_context: invoice.total_amount is not an amount: {exc}") from exc


def build_context(
    *,
    customer: Mapping[str, Any],
    invoice: Mapping[str, Any],
    organization: Mapping[str, Any],
    owner: Mapping[str, Any] | None,
    today: dt.date,
) -> dict[str, Any]:
    """The variables a template sees, as plain dicts of str / date / Decimal / bool.

    Only these documented values reach the template (never the source rows, file paths or
    ORM objects), so what a template can read is exactly what ``docs/templates.md`` lists.
    ``today`` is the run's as-of date in the organization's time zone (never the wall clock,
    so a replay renders the same text). Raises ``ValueError`` for an invoice row without the
    fields every message needs: that is a data error, not a template error.
    """
    issue_date = _optional_date(
        _pick(invoice, "issue_date", required="invoice.issue_date"), "invoice.issue_date"
    )
    currency = str(_pick(invoice, "currency", required="invoice.currency")).strip().upper()
    total_amount = _total_amount(invoice)
    owner = owner or {}
    return {
        "customer": {
            "id": _text(_pick(customer, "id", "customer_id")),
            "name": _text(_pick(customer, "name")) or "",
            "language": _text(_pick(customer, "language")),
        },
        "invoice": {
            "id": _text(_pick(invoice, "id", "invoice_id")),
            "number": _text(_pick(invoice, "number", required="invoice.number")),
            "issue_date": issue_date,
            "due_date": _optional_date(_pick(invoice, "due_date"), "invoice.due_date"),
            "currency": currency,
            "total_amount": total_amount,
            "status": _text(_pick(invoice, "status", "accounting_status")),
            "has_pdf": bool(_pick(invoice, "pdf_path") or _pick(invoice, "has_pdf")),
        },
        "organization": {
            "id": _text(_pick(organization, "id", "org_id")),
            "name": _text(_pick(organization, "name")) or "",
        },
        "owner": {
            "id": _text(_pick(owner, "id", "user_id")),
            "name": _text(_pick(owner, "name")),
            "email": _text(_pick(owner, "email")),
        },
        "today": _to_date(today),
    }
