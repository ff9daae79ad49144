"""How long an SMS is, in the segments a carrier bills and a phone reassembles.

An SMS carries 140 bytes. Text that fits the GSM 03.38 alphabet is packed in 7-bit units:
160 per message, 153 per segment once a concatenation header is needed; the extension
characters (``€``, ``[``, ``{`` …) take two units. Any other character switches the *whole*
message to UCS-2: 70 UTF-16 code units, 67 per segment. A unit pair (an escape sequence,
a surrogate pair) is never split across segments, so segments are filled greedily.

:func:`normalize_sms` folds the typographic characters templates commonly produce (the
narrow no-break space babel puts in French amounts, curly quotes, dashes) to their GSM
look-alikes — what Twilio's "smart encoding" does — because one of them would otherwise
halve the room of the whole message. It is also the SMS's gate for control characters: a
NUL or an escape sequence never reaches a phone (:mod:`dispatch.rules.control_chars`; the body keeps
newlines, a tab becomes a space since GSM-7 has none).
"""

from __future__ import annotations

from dataclasses import dataclass

from dispatch.rules.control_chars import clean_body, clean_line

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
#: Reached through the escape character: two 7-bit units each.
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

GSM7 = "GSM-7"
UCS2 = "UCS-2"
#: units in a single message / in each segment of a concatenated one
_CAPACITY = {GSM7: (160, 153), UCS2: (70, 67)}

_LOOKALIKES = str.maketrans(
    {
        "\u00a0": " ",  # no-break space
        "\u202f": " ",  # narrow no-break space (babel, French amounts)
        "\u2009": " ",  # thin space
        "\u2007": " ",  # figure space
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": ",",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u00ab": '"',  # « (French quotes)
        "\u00bb": '"',  # »
        "\u2013": "-",
        "\u2014": "-",
        "\u2212": "-",
        "\u2026": "...",
    }
)


@dataclass(frozen=True)
class SmsLength:
    """The encoding a text needs, its length in that encoding's units, and its segments."""

    encoding: str
    units: int
    segments: int


def sms_safe(text: str) -> str:
    """An SMS body without control characters: newlines kept, a tab as a space, CR LF as ``\\n``."""
    return clean_body(text).replace("\t", " ")


def sms_safe_line(text: str) -> str:
    """A single-line SMS field (a number, a sender name): no control character at all."""
    return clean_line(text)


def normalize_sms(text: str) -> str:
    """``text`` with typographic characters folded to GSM look-alikes, line ends as ``\\n``
    and no control character (:func:`sms_safe`)."""
    return sms_safe(text).translate(_LOOKALIKES)


def measure_sms(text: str) -> SmsLength:
    """Encoding, units and segments of ``text`` as sent (no normalization applied here)."""
    if all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in text):
        encoding = GSM7
        costs = [2 if ch in GSM7_EXTENSION else 1 for ch in text]
    else:
        encoding = UCS2
        costs = [2 if ord(ch) > 0xFFFF else 1 for ch in text]
    units = sum(costs)
    single, per_segment = _CAPACITY[encoding]
    if units == 0:
        return SmsLength(encoding, 0, 0)
    if units <= single:
        return SmsLength(encoding, units, 1)
    segments, room = 1, per_segment
    for cost in costs:
        if cost > room:
            segments += 1
            room = per_segment
        room -= cost
    return SmsLength(encoding, units, segments)
