"""Control characters never reach a message: one rule, applied where each format is built.

Customer names, invoice numbers and addresses come from the accounting system, and template
output from configuration authors; either may carry a NUL, an escape sequence or a
backspace. RFC 5322 forbids NUL in a message, terminals and mail clients interpret escape
sequences, and a print house's CSV reader or a letter's text layer has no use for them. So
every place that builds a message format (in :mod:`dispatch.channels.formats`: the MIME e-mail
in ``mime``, the SMS text in ``sms_text``, the letter PDF in ``letter_pdf``, the postal address
in ``postal_address``, the print manifest in ``letter_manifest``) passes its text through
:func:`strip_controls` — nothing rendered or read earlier can bypass it.

"Controls" are C0 (U+0000–U+001F), DEL (U+007F) and C1 (U+0080–U+009F). Bodies keep tab and
newline (a CR LF or lone CR becomes a newline first); a single-line field (a header, a name,
an address line) keeps none: a tab there becomes a space, everything else is dropped. Line
breaks in e-mail header fields are refused rather than stripped, by :mod:`dispatch.channels.formats.mime`,
since they are the mark of a header injection.
"""

from __future__ import annotations

import functools
import re

CONTROLS = frozenset(chr(c) for c in (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)))
#: one search in C instead of a Python test per character (every header and body passes here)
_ANY_CONTROL = re.compile(r"[\x00-\x1f\x7f\x80-\x9f]")
#: what a body keeps
BODY_KEEP = "\t\n"


@functools.lru_cache(maxsize=16)
def _table(keep: str, tab_to_space: bool) -> dict[int, str | None]:
    table: dict[int, str | None] = {ord(ch): None for ch in CONTROLS if ch not in keep}
    if tab_to_space and "\t" not in keep:
        table[ord("\t")] = " "
    return table


def strip_controls(text: str, *, keep: str = "", tab_to_space: bool = True) -> str:
    """``text`` without control characters, except those in ``keep`` (a tab not kept becomes
    a space unless ``tab_to_space`` is false)."""
    if _ANY_CONTROL.search(text) is None:
        return text
    return text.translate(_table(keep, tab_to_space))


def clean_body(text: str) -> str:
    """A message body: line ends as ``\\n``, tab and newline kept, every other control dropped."""
    return strip_controls(text.replace("\r\n", "\n").replace("\r", "\n"), keep=BODY_KEEP)


def clean_line(text: str) -> str:
    """A single-line field: no control at all (a tab becomes a space)."""
    return strip_controls(text)


def clean_block(text: str) -> str:
    """Lines of a block (an address): line ends as ``\\n``, no other control in any line."""
    return strip_controls(text.replace("\r\n", "\n").replace("\r", "\n"), keep="\n")


def has_controls(text: str, *, allowed: str = "") -> bool:
    """Whether ``text`` holds a control character other than those in ``allowed``."""
    if not allowed:
        return _ANY_CONTROL.search(text) is not None
    return any(ch in CONTROLS and ch not in allowed for ch in _ANY_CONTROL.findall(text))
