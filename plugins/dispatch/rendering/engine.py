"""Render one invoice-sending message (subject and body) for its channel and the customer's language.

This module puts the parts of :mod:`dispatch.rendering` together: the inline source or the
``template:`` file of a plan, or else the default wording of the customer's language
(:mod:`~dispatch.rendering.lookup`), rendered in the bounded sandbox
(:mod:`~dispatch.rendering.sandbox`) with the Babel filters (:mod:`~dispatch.rendering.filters`)
over the variables of :mod:`~dispatch.rendering.context`. An e-mail gets a subject, a text part
and an HTML part inside the layout (:mod:`~dispatch.rendering.html_text` derives the one from the
other); an SMS is one line; a letter is tidy text. Any failure the template's author can cause is
one :class:`~dispatch.rendering.errors.TemplateError` (SPEC B7), which the dispatcher turns into
a manual action ``template_error`` instead of crashing the run. See ``docs/templates.md`` for
the variables and filters users may rely on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from babel import Locale
from markupsafe import Markup

from dispatch.rendering import limits
from dispatch.rendering.errors import TemplateError, as_template_error
from dispatch.rendering.filters import resolve_locale
from dispatch.rendering.html_text import html_to_text, looks_like_html, paragraph_source, tidy_paragraphs
from dispatch.rendering.lookup import (
    DEFAULT_EMAIL_HTML,
    DEFAULT_EMAIL_SUBJECT,
    DEFAULT_EMAIL_TEXT,
    DEFAULT_LETTER,
    DEFAULT_SMS,
    EMAIL_LAYOUT,
    default,
    is_text_file,
    load,
    locate,
    text_sibling,
    validate_name,
)
from dispatch.rendering.sandbox import Envs, envs, from_source, render
from dispatch.vocabulary import ChannelName, values

CHANNELS = values(ChannelName)


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
# The shape of each channel's text


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


# --------------------------------------------------------------------------------------
# Rendering per channel


def _normalize_source(source: str | None) -> str | None:
    if source is None or not source.strip():
        return None
    return source.replace("\r\n", "\n").replace("\r", "\n")


def _wrap_in_layout(sandboxes: Envs, inner: str, context: Mapping[str, Any], locale: Locale) -> str:
    layout = load(sandboxes.html, EMAIL_LAYOUT, sandboxes.dirs)
    values = {**context, "layout_content": Markup(inner), "layout_lang": locale.language}
    return render(layout, values, locale, EMAIL_LAYOUT)


def _email_body(
    spec: TemplateSpec, body: str | None, context: Mapping[str, Any], locale: Locale
) -> tuple[str, str | None]:
    sandboxes = envs()
    if body is not None:
        if looks_like_html(body):
            # The user wrote HTML: render it as such and derive the text part from it.
            markup = render(from_source(sandboxes.html, body, "body"), context, locale, "body")
            text = html_to_text(markup)  # before the layout adds its header and footer
            if "<html" not in markup.lower():
                markup = _wrap_in_layout(sandboxes, markup, context, locale)
            return text, markup
        # Text first: its errors carry the user's own line numbers.
        text = render(from_source(sandboxes.text, body, "body"), context, locale, "body")
        try:
            html_source = paragraph_source(sandboxes.html, body)
        except Exception as exc:
            raise as_template_error(exc, "body", sandboxes.dirs) from exc
        inner = render(from_source(sandboxes.html, html_source, "body"), context, locale, "body")
        return _tidy_text(text), _wrap_in_layout(sandboxes, tidy_paragraphs(inner), context, locale)
    if spec.template_file:
        name = validate_name(spec.template_file)
        if is_text_file(name):
            return _tidy_text(render(load(sandboxes.text, name, sandboxes.dirs), context, locale, name)), None
        markup = render(load(sandboxes.html, name, sandboxes.dirs), context, locale, name)
        sibling = text_sibling(name)
        if sibling and locate(sibling, sandboxes.dirs) is not None:
            return _tidy_text(
                render(load(sandboxes.text, sibling, sandboxes.dirs), context, locale, sibling)
            ), markup
        return html_to_text(markup), markup
    html_template, html_locale = default(sandboxes.html, DEFAULT_EMAIL_HTML, locale, sandboxes.dirs)
    text_template, text_locale = default(sandboxes.text, DEFAULT_EMAIL_TEXT, locale, sandboxes.dirs)
    markup = render(html_template, context, html_locale, DEFAULT_EMAIL_HTML)
    text = render(text_template, context, text_locale, DEFAULT_EMAIL_TEXT)
    return _tidy_text(text), markup


def _plain_body(
    spec: TemplateSpec, body: str | None, default_file: str, context: Mapping[str, Any], locale: Locale
) -> str:
    """The body of an SMS or a letter: text only; an HTML file is reduced to text."""
    sandboxes = envs()
    if body is not None:
        return render(from_source(sandboxes.text, body, "body"), context, locale, "body")
    if spec.template_file:
        name = validate_name(spec.template_file)
        if is_text_file(name):
            return render(load(sandboxes.text, name, sandboxes.dirs), context, locale, name)
        return html_to_text(render(load(sandboxes.html, name, sandboxes.dirs), context, locale, name))
    template, default_locale = default(sandboxes.text, default_file, locale, sandboxes.dirs)
    return render(template, context, default_locale, default_file)


def render_message(spec: TemplateSpec, context: dict[str, Any], language: str | None) -> Rendered:
    """Render one message for one invoice. Raises :class:`TemplateError` for anything the
    template's author can cause; the dispatcher makes the action manual ``template_error``.

    ``context`` is the variable dict of :func:`dispatch.rendering.context.build_context`;
    ``language`` the customer's language (it picks the default wording and the Babel locale;
    unknown/None → English).
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
        sandboxes = envs()
        subject_source = _normalize_source(spec.subject)
        if subject_source is None:
            subject_template, subject_locale = default(
                sandboxes.text, DEFAULT_EMAIL_SUBJECT, locale, sandboxes.dirs
            )
        else:
            subject_template, subject_locale = from_source(sandboxes.text, subject_source, "subject"), locale
        subject = _clean_subject(render(subject_template, context, subject_locale, "subject"))
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
