"""The outbox's e-mail bytes, written directly for plain messages (issue 8), are the bytes of
the standard library's :class:`email.message.EmailMessage` for the same message.

:func:`dispatch.channels.formats.mime.email_bytes` writes a message whose headers are plain
ASCII itself and hands any other to :func:`~dispatch.channels.formats.mime.build_email`.
Both must give the same bytes and refuse the same messages, whatever the message: the
random MIME boundaries are made the same on both sides (one counter behind ``random``) so
the comparison is byte for byte.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock
from zoneinfo import ZoneInfo

import pytest
from dispatch.channels.base import Attachment, OutgoingMessage
from dispatch.channels.formats import mime
from dispatch.channels.formats.mime import build_email, email_bytes
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

AT = dt.datetime(2026, 12, 2, 5, 0, tzinfo=dt.UTC)


@contextmanager
def same_boundaries() -> Iterator[None]:
    """Every boundary drawn from one counter, restarted for each build."""
    counter = itertools.count(1)
    with mock.patch.object(random, "randrange", lambda *_args: next(counter)):
        yield


def stdlib_bytes(message: OutgoingMessage, default_sender: str | None = None) -> bytes:
    with same_boundaries():
        return build_email(message, default_sender=default_sender).as_bytes()


def direct_bytes(message: OutgoingMessage, default_sender: str | None = None) -> bytes:
    with same_boundaries():
        return email_bytes(message, default_sender=default_sender)


def is_direct(message: OutgoingMessage, default_sender: str | None = None) -> bool:
    return mime._plain_email(mime.email_safe(message), default_sender) is not None


def outcome(build: Callable[[OutgoingMessage], bytes], message: OutgoingMessage) -> bytes | str:
    """The bytes, or the refusal as its type and text."""
    try:
        return build(message)
    except (ValueError, UnicodeError) as exc:
        return f"{type(exc).__name__}: {exc}"


def message(**changes: Any) -> OutgoingMessage:
    base: dict[str, Any] = {
        "action_id": "act_0009c27ae9fa52f5acb6d90672425a56",
        "invoice_id": "bi_000000080",
        "org_id": "bench_paris",
        "channel": "email",
        "recipients": ("ap180@customer180.example",),
        "deliver_at": AT,
        "subject": "Invoice B-000000080",
        "body_text": "Dear Customer 180, invoice B-000000080 for 223.4 EUR is due 2025-03-25.",
        "body_html": "<p>Dear Customer 180</p>\n",
        "sender": "billing@bench-paris.example",
        "sender_name": "Bench Paris SAS",
    }
    base.update(changes)
    return OutgoingMessage(**base)


LONG_HTML = (
    '<table role="presentation" width="600" cellpadding="0" cellspacing="0" border="0" '
    'style="width:100%; max-width:600px;">\n<tr><td>' + "x" * 200 + "</td></tr>\n</table>\n"
)
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 5 + b"\n%%EOF\n"

CASES: dict[str, dict[str, Any]] = {
    "the bench's message": {},
    "text only": {"body_html": None},
    "text and a PDF": {"body_html": None, "attachments": (Attachment("invoice-F-1.pdf", PDF),)},
    "text, HTML and two PDFs": {
        "attachments": (Attachment("invoice-F-1.pdf", PDF), Attachment("terms.pdf", b"", "application/pdf")),
    },
    "long HTML lines (quoted-printable)": {"body_html": LONG_HTML},
    "long HTML of many lines": {"body_html": LONG_HTML * 12},
    "non-ASCII text (8bit)": {"body_text": "Montant : 223,40\u202f€\nMerci."},
    "non-ASCII long lines (base64)": {"body_text": "€" * 200, "body_html": "<p>" + "é" * 120 + "</p>"},
    "empty text": {"body_text": ""},
    "line separators in the text": {"body_text": "a\u2028b\u2029c\n\nd"},
    "specials in the sender's name": {"sender_name": "Acme, Inc. (Paris)"},
    "no sender name": {"sender_name": None},
    "a reply-to and two recipients": {
        "reply_to": "ar@bench.example",
        "recipients": ("a@x.example", "b@y.example"),
    },
    "a quote in the sender's name": {"sender_name": 'The "Best" Co'},
    "a backslash in the sender's name": {"sender_name": "A\\B"},
    "non-ASCII sender name": {"sender_name": "Société Générale"},
    "non-ASCII subject": {"subject": "Facture n° 12 — échéance"},
    "a long subject (folded)": {"subject": "Invoice " + "word " * 30},
    "an encoded word in the subject": {"subject": "=?utf-8?q?Bcc=3A_x?="},
    "double spaces in the subject": {"subject": "Invoice  B-1"},
    "an internationalized domain": {"recipients": ("ap@bücher.example",)},
    "a quoted local part": {"recipients": ('"a b"@x.example',)},
    "a non-ASCII local part": {"recipients": ("é@x.example",)},
    "a domain literal": {"recipients": ("a@[127.0.0.1]",)},
    "a non-ASCII attachment name": {"attachments": (Attachment("facture-é.pdf", PDF),)},
    "a long attachment name": {"attachments": (Attachment("f" * 80 + ".pdf", PDF),)},
    "a space in the attachment name": {"attachments": (Attachment("my invoice.pdf", PDF),)},
    "another MIME type": {"attachments": (Attachment("a.txt", b"hello\n", "text/plain"),)},
    "a long action id": {"action_id": "act_" + "a" * 100},
    "a delivery time in Paris, with microseconds": {
        "deliver_at": dt.datetime(2026, 3, 29, 3, 30, 1, 123456, tzinfo=ZoneInfo("Europe/Paris"))
    },
    "controls in the names": {"sender_name": "Du\x00rand\x1b[31m", "subject": "Invoice\x07 1"},
    # refused, by both paths, with the same reason
    "no recipient": {"recipients": ()},
    "no sender": {"sender": None},
    "a line break in the subject": {"subject": "Invoice\r\nBcc: x@evil.example"},
    "a line break in the sender's name": {"sender_name": "A\nBcc: x@evil.example"},
    "a line break in an address": {"recipients": ("a@x.example\nBcc: x@evil.example",)},
    "an unparseable address": {"recipients": ("not an address",)},
    "an empty address": {"recipients": ("",)},
    "a naive delivery time": {"deliver_at": dt.datetime(2026, 12, 2, 5, 0)},
    "an action id that is no dot-atom": {"action_id": "act 1"},
    "a bad MIME type": {"attachments": (Attachment("a.pdf", PDF, "pdf"),)},
}


@pytest.mark.parametrize("changes", CASES.values(), ids=CASES.keys())
def test_the_same_bytes_or_the_same_refusal(changes: dict[str, Any]) -> None:
    m = message(**changes)
    assert outcome(direct_bytes, m) == outcome(stdlib_bytes, m)


def test_the_plain_messages_are_written_directly() -> None:
    """The comparison is not vacuous: these take the direct path."""
    for name in (
        "the bench's message",
        "text only",
        "text and a PDF",
        "text, HTML and two PDFs",
        "long HTML lines (quoted-printable)",
        "long HTML of many lines",
        "non-ASCII text (8bit)",
        "non-ASCII long lines (base64)",
        "line separators in the text",
        "specials in the sender's name",
        "no sender name",
        "a reply-to and two recipients",
        "controls in the names",
        "another MIME type",
        "a delivery time in Paris, with microseconds",
    ):
        assert is_direct(message(**CASES[name])), name
    for name in (
        "a quote in the sender's name",
        "non-ASCII subject",
        "a long subject (folded)",
        "an encoded word in the subject",
        "an internationalized domain",
        "a quoted local part",
        "a non-ASCII attachment name",
        "a long action id",
    ):
        assert not is_direct(message(**CASES[name])), name


def test_the_default_sender_is_used_the_same_way() -> None:
    m = message(sender=None)
    assert direct_bytes(m, "ops@deploy.example") == stdlib_bytes(m, "ops@deploy.example")


def test_a_boundary_never_occurs_in_a_part() -> None:
    """The first boundary drawn is in the body: a second one is drawn, as the generator does."""
    with same_boundaries():
        clash = email_bytes(message(), default_sender=None).split(b"\r\n\r\n", 1)[1].splitlines()[0]
    m = message(body_text=f"a\n{clash.decode()}\nb")
    raw = direct_bytes(m)
    boundary = raw.split(b'boundary="', 1)[1].split(b'"', 1)[0]
    assert b"--" + boundary != clash
    assert raw.count(b"--" + boundary) == 3  # two parts and the close


# Every character class the parsers treat differently: atext, specials, quotes, spaces,
# encoded-word markers, controls, line separators, non-ASCII.
PIECES = st.sampled_from(
    ["a", "Z", "0", "-", ".", ",", "(", ")", "<", ">", "@", ":", ";", '"', "\\", "[", "]", "=", "?",
     "=?", "?=", " ", "  ", "\t", "é", "€", "\u202f", "\x00", "\x1b", "\n", "\r", "\u2028", "'", "_"]
)  # fmt: skip
TEXT = st.lists(PIECES, max_size=12).map("".join)
BODY = st.one_of(
    TEXT,
    st.lists(st.one_of(TEXT, st.just("x" * 90), st.just("é" * 50)), max_size=14).map("\n".join),
)
LOCAL = st.sampled_from(["a", "a.b", "a+b", "A_b-c", "x=?y", "é", '"q"', "a..b", "", "a b"])
DOMAIN = st.sampled_from(["x.example", "X-1.example", "bücher.example", "-x.example", "x", "[1.2.3.4]", ""])
ADDRESS = st.builds(lambda local, domain: f"{local}@{domain}", LOCAL, DOMAIN)
FILENAME = st.one_of(st.sampled_from(["invoice-F-1.pdf", "a b.pdf", "é.pdf", "x" * 90]), TEXT)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    subject=st.one_of(st.none(), TEXT, st.just("Invoice B-000000080")),
    sender_name=st.one_of(st.none(), TEXT, st.just("Bench Paris SAS")),
    sender=st.one_of(st.none(), ADDRESS),
    recipients=st.lists(ADDRESS, max_size=3).map(tuple),
    reply_to=st.one_of(st.none(), ADDRESS),
    body_text=BODY,
    body_html=st.one_of(st.none(), BODY),
    attachments=st.lists(
        st.builds(
            Attachment, FILENAME, st.binary(max_size=200), st.sampled_from(["application/pdf", "text/x"])
        ),
        max_size=2,
    ).map(tuple),
)
@example(
    subject="Invoice 1", sender_name="Acme", sender="a@x.example", recipients=("b@y.example",),
    reply_to=None, body_text="hi", body_html="<p>hi</p>", attachments=(),
)  # fmt: skip
def test_any_message_gives_the_same_bytes_or_the_same_refusal(**fields: Any) -> None:
    m = message(**fields)
    assert outcome(direct_bytes, m) == outcome(stdlib_bytes, m)


PLAIN_WORD = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=8)
PLAIN_WORDS = st.lists(PLAIN_WORD, min_size=1, max_size=6).map(" ".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    subject=PLAIN_WORDS,
    sender_name=st.one_of(st.none(), PLAIN_WORDS),
    invoice_id=PLAIN_WORD,
    body_text=BODY,
    body_html=st.one_of(st.none(), BODY),
    attachments=st.lists(
        st.builds(
            Attachment, st.from_regex(r"[A-Za-z0-9_.-]{1,30}", fullmatch=True), st.binary(max_size=300)
        ),
        max_size=2,
    ).map(tuple),
)
def test_plain_headers_of_any_printable_ascii_give_the_same_bytes(**fields: Any) -> None:
    """Headers of printable ASCII words: mostly the direct path (every special, quote,
    backslash and encoded-word marker among them), byte for byte the standard library's."""
    m = message(**fields)
    assert outcome(direct_bytes, m) == outcome(stdlib_bytes, m)
