"""Between text and HTML: the text/plain part of an HTML e-mail, and the HTML of a text one.

An e-mail goes out with both parts. A template written in HTML without a hand-written
``.txt.j2`` sibling gets its text part from :func:`html_to_text` (paragraphs, line breaks,
list items and link targets kept); a template written as plain text gets its HTML part from
:func:`paragraph_source` (blank lines into paragraphs, newlines into ``<br>``).
"""

from __future__ import annotations

import functools
import html as html_lib
import re
from html.parser import HTMLParser

import jinja2


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


def looks_like_html(source: str) -> bool:
    """Whether an inline body is written in HTML (it holds a common tag)."""
    return bool(_HTML_TAG.search(source))


@functools.lru_cache(maxsize=512)
def paragraph_source(env: jinja2.Environment, source: str) -> str:
    """Turn a plain-text template into an HTML one: literal text escaped, blank lines into
    paragraphs, single newlines into <br>. Only the literal text between Jinja tags is
    touched (variables stay autoescaped by the environment), and every newline is kept so
    that line numbers in errors still match the user's source.

    Cached per environment and source, as compiled sources are: a plan's body is the same
    for every invoice, and lexing it again for each was a tenth of a message's rendering.
    A changed template version is a different source, so it is converted anew."""

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


def tidy_paragraphs(markup: str) -> str:
    """Drop the empty paragraphs and stray ``<br>`` that block tags leave behind."""
    markup = re.sub(r"<p>(?:\s|<br>)*</p>\s*", "", markup)
    markup = re.sub(r"<p>(?:\s*<br>)+\s*", "<p>", markup)
    markup = re.sub(r"(?:\s*<br>)+\s*</p>", "</p>", markup)
    return markup.strip()
