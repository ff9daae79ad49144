"""No control character reaches a message (issue 7, item 6).

The rule (:mod:`dispatch.rules.control_chars`), then each format's gate on its own — MIME e-mail,
the SendGrid request, the SMS text, the letter PDF, the postal address, the print manifest —
and finally whole runs on SQLite and PostgreSQL where the accounting system's customer names,
invoice numbers and addresses carry NUL, escape sequences, backspaces and DEL.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from dispatch.channels.base import Attachment, OutgoingMessage, PermanentError
from dispatch.channels.formats.letter_manifest import ManifestRow, read_manifest
from dispatch.channels.formats.letter_pdf import (
    build_invoice_placeholder_pdf,
    build_letter_pdf,
    read_letter_metadata,
)
from dispatch.channels.formats.mime import build_email
from dispatch.channels.formats.postal_address import parse_postal_address
from dispatch.channels.formats.sms_text import measure_sms, normalize_sms
from dispatch.channels.outbox import OutboxChannel
from dispatch.channels.sendgrid import build_mail_body
from dispatch.rules.control_chars import (
    CONTROLS,
    clean_block,
    clean_body,
    clean_line,
    has_controls,
    strip_controls,
)
from hypothesis import given
from hypothesis import strategies as st
from pypdf import PdfReader

from tests.builders import World, instant, open_world

AS_OF = instant("2026-12-02T05:00Z")
HOSTILE = "Du\x00rand\x01\x07\x08 \x1b[31mSARL\x7f\x9b"
#: bytes no message file may hold: every C0 control but tab, LF and CR (MIME line ends), and DEL
FORBIDDEN = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
PDF = build_invoice_placeholder_pdf("F-1", ["1 x Widget"])


def _no_controls(text: str, allowed: str = "") -> bool:
    return not has_controls(text, allowed=allowed)


# --- the rule ---------------------------------------------------------------------------------


def test_bodies_keep_tab_and_newline_only() -> None:
    assert clean_body("a\x00b\tc\r\nd\re\x0b\x0cf\x1b[0m\x7f\x85g") == "ab\tc\nd\nef[0mg"


def test_single_lines_keep_no_control_and_a_tab_becomes_a_space() -> None:
    assert clean_line("ACME\x00\tSAS\x1b\n") == "ACME SAS"


def test_blocks_keep_their_lines_and_nothing_else() -> None:
    assert clean_block("Leroy\x00 Paysage\r\n12 rue\tdes Lilas\r69003 Lyon") == (
        "Leroy Paysage\n12 rue des Lilas\n69003 Lyon"
    )


@given(st.text())
def test_what_is_left_holds_only_the_allowed_controls_and_cleaning_twice_changes_nothing(text: str) -> None:
    for clean, allowed in ((clean_body, "\t\n"), (clean_line, ""), (clean_block, "\n")):
        once = clean(text)
        assert _no_controls(once, allowed)
        assert clean(once) == once
    printable = "".join(ch for ch in text if ch not in CONTROLS)
    assert strip_controls(printable) == printable  # nothing else is touched


@given(st.text(), st.sampled_from(["", "\t", "\n", "\t\n"]))
def test_the_search_finds_exactly_the_characters_of_the_set(text: str, allowed: str) -> None:
    expected = any(ch in CONTROLS and ch not in allowed for ch in text)
    assert has_controls(text, allowed=allowed) is expected
    assert (strip_controls(text, keep=allowed, tab_to_space=False) == text) is (not expected)


# --- each format's gate ---------------------------------------------------------------------


def message(channel: str = "email", **changes: object) -> OutgoingMessage:
    fields: dict[str, object] = {
        "action_id": "act_1",
        "invoice_id": "inv_1",
        "org_id": "acme",
        "channel": channel,
        "recipients": ("ap@client.example",),
        "deliver_at": AS_OF,
        "subject": f"Invoice F-1 for {HOSTILE}",
        "body_text": f"Dear {HOSTILE},\n\there is invoice F-1.\r\n",
        "body_html": f"<p>Dear {HOSTILE},</p>",
        "sender": "billing@acme.example",
        "sender_name": f"ACME{HOSTILE}",
        "attachments": (Attachment("invoice-F\x00-1\x1b.pdf", PDF),),
    }
    fields.update(changes)
    return OutgoingMessage(**fields)  # type: ignore[arg-type]


def test_an_email_holds_no_control_character_in_any_header_or_body() -> None:
    mime = build_email(message(), default_sender=None)
    raw = mime.as_bytes()
    head, _, _ = raw.partition(b"\r\n\r\n")
    assert not FORBIDDEN.search(raw)
    assert str(mime["Subject"]) == "Invoice F-1 for Durand [31mSARL"
    assert mime["From"].addresses[0].display_name == "ACMEDurand [31mSARL"
    assert b"\t" not in head
    text = mime.get_body(("plain",)).get_content()
    assert text.replace("\r\n", "\n") == "Dear Durand [31mSARL,\n\there is invoice F-1.\n"  # tab kept
    [attachment] = list(mime.iter_attachments())
    assert attachment.get_filename() == "invoice-F-1.pdf"
    assert attachment.get_payload(decode=True) == PDF  # the PDF's own bytes are not touched


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"subject": "Invoice\r\nBcc: victim@example.com"}, "line break"),
        ({"sender_name": "ACME\nBcc: victim@example.com"}, "line break"),
        ({"subject": "Invoice\x85Bcc: victim@example.com"}, "line break"),
        ({"recipients": ("ap\x00@client.example",)}, "control character"),
        ({"reply_to": "reply\x1b@acme.example"}, "control character"),
    ],
)
def test_header_breaks_and_controls_in_addresses_are_refused(changes: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_email(message(**changes), default_sender=None)
    with pytest.raises(PermanentError, match=match):
        build_mail_body(message(**changes), default_sender=None, send_at=None)


def test_the_sendgrid_request_holds_no_control_character() -> None:
    body = build_mail_body(message(), default_sender=None, send_at=None)
    assert body["subject"] == "Invoice F-1 for Durand [31mSARL"
    assert body["from"]["name"] == "ACMEDurand [31mSARL"
    assert body["attachments"][0]["filename"] == "invoice-F-1.pdf"
    as_json = json.dumps(body, ensure_ascii=False)
    strings = json.loads(as_json)
    for value in _strings(strings):
        assert _no_controls(value, "\t\n"), value


def _strings(node: object) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def test_an_sms_holds_no_control_character() -> None:
    text = normalize_sms(f"ACME: invoice F-1 for {HOSTILE}\r\nline\ttwo")
    assert text == "ACME: invoice F-1 for Durand [31mSARL\nline two"
    assert measure_sms(text).encoding == "GSM-7"  # nothing left to force UCS-2


def test_the_sms_outbox_file_holds_no_control_character(tmp_path: Path) -> None:
    outbox = OutboxChannel(tmp_path, "sms")
    sms = message("sms", recipients=("+33612345678\x00",), body_text=f"ACME: F-1 {HOSTILE}", subject=None)
    [result] = outbox.send_many([sms])
    assert result.provider == "outbox"
    raw = (tmp_path / "sms" / "act_1.json").read_bytes()
    record = json.loads(raw)
    assert (record["to"], record["body"]) == ("+33612345678", "ACME: F-1 Durand [31mSARL")
    assert "\\u0000" not in raw.decode() and not FORBIDDEN.search(raw)


def test_a_letter_prints_and_records_no_control_character() -> None:
    pdf = build_letter_pdf(
        sender_block=f"ACME{HOSTILE}\n1 rue\x00 Neuve",
        recipient_block=f"{HOSTILE}\n12 rue\x00 des Lilas\r\n69003 Lyon\nFrance",
        body_text=f"Dear {HOSTILE},\n\there is F-1.",
        date_line="2 décembre 2026\x00",
        invoice_pdf=PDF,
        metadata={"InvoiceDispatchRecipient": f"{HOSTILE}\n12 rue\x00 des Lilas", "Other\x00": "x\x1by"},
    )
    info = read_letter_metadata(pdf)
    assert info["InvoiceDispatchRecipient"] == "Durand [31mSARL\n12 rue des Lilas"
    assert info["Other"] == "xy"
    cover = PdfReader(io.BytesIO(pdf)).pages[0].extract_text()
    assert "Durand [31mSARL" in cover and "12 rue des Lilas" in cover
    assert _no_controls(cover, "\t\n")


def test_a_postal_address_with_controls_parses_into_clean_fields() -> None:
    address = parse_postal_address(f"{HOSTILE}\n12 rue\x00 des\tLilas\n69003\x1b Lyon\nFrance\x7f")
    assert (address.name, address.line1, address.zip, address.city, address.country) == (
        "Durand [31mSARL",
        "12 rue des Lilas",
        "69003",
        "Lyon",
        "FR",
    )


def test_a_manifest_row_holds_no_control_character() -> None:
    row = ManifestRow(
        action_id="act\x00_1",
        invoice_id="inv_1\x1b",
        org_id="acme",
        file="letter/act_1.pdf",
        pages=2,
        sha256="0" * 64,
        deliver_date="2026-12-02",
        deliver_at="2026-12-02T05:00:00Z",
        address=(HOSTILE, "12 rue\tdes Lilas", "", "", "", ""),
    )
    assert row.cells()[:2] == ["act_1", "inv_1"]
    assert row.cells()[8:10] == ["Durand [31mSARL", "12 rue des Lilas"]


# --- end to end: hostile accounting data through whole runs ---------------------------------


@pytest.fixture
def world(backend: str, tmp_path: Path) -> Iterator[World]:
    with open_world(backend, tmp_path) as w:
        yield w


def test_controls_in_accounting_data_reach_no_email_sms_letter_or_manifest(world: World) -> None:
    w = world
    # PostgreSQL text cannot hold a NUL at all; every other control can reach us from there.
    name = HOSTILE if w.backend == "sqlite" else HOSTILE.replace("\x00", "")
    w.org("acme", holidays="FR")
    w.plan("p_mail", subject="Your invoice from {{ organization.name }}")
    w.plan("p_subject", subject="Invoice {{ invoice.number }} for {{ customer.name }}")
    w.plan(
        "p_sms",
        channel="sms",
        body="{{ organization.name }}: invoice {{ invoice.number }} for {{ customer.name }}",
    )
    w.plan(
        "p_letter",
        channel="letter",
        body="Dear {{ customer.name }},\n\tplease find invoice {{ invoice.number }}.",
    )
    w.customer("c_mail", name=name, plan="p_mail")
    w.customer("c_subject", name=name, plan="p_subject")
    w.customer("c_sms", name=name, plan="p_sms", email=None, phone="+33612345678")
    w.customer(
        "c_letter",
        name=name,
        plan="p_letter",
        email=None,
        address=f"{name}\n12 rue\x01 des Lilas\n69003 Lyon\nFrance",
    )
    w.load_config()
    number = "F\x01-2026\x1b-1"
    w.invoice("i_mail", "c_mail", number=number, pdf=True)
    w.invoice("i_subject", "c_subject", number=number + "h")
    w.invoice("i_sms", "c_sms", number=number + "s")
    w.invoice("i_letter", "c_letter", number=number + "l", pdf=True)

    w.run(AS_OF)
    w.run(AS_OF + dt.timedelta(days=1))  # the SMS and letter plans may go on the next day

    for invoice_id in ("i_mail", "i_sms", "i_letter"):
        assert w.action(invoice_id)["status"] == "sent", w.action(invoice_id)
    files = sorted(p for p in w.outbox.rglob("*") if p.is_file())
    assert {p.parent.name for p in files} >= {"email", "sms", "letter", "letter-manifests"}
    for path in files:
        raw = path.read_bytes()
        if path.suffix == ".pdf":
            for value in read_letter_metadata(raw).values():
                assert _no_controls(value, "\n"), (path, value)
            for page in PdfReader(io.BytesIO(raw)).pages[:1]:
                assert _no_controls(page.extract_text(), "\t\n")
        else:
            assert not FORBIDDEN.search(raw), (path, FORBIDDEN.search(raw))
    # a control in a rendered subject is refused by the renderer: to-do, nothing written
    subject = w.action("i_subject")
    assert (subject["status"], subject["manual_reason"]) == ("manual", "template_error")
    assert not w.outbox_path("i_subject").exists()
    email = w.email_of("i_mail")
    assert str(email["Subject"]) == "Your invoice from ACME SAS"
    text = email.get_body(("plain",)).get_content()
    assert "Dear Durand [31mSARL, please find invoice F-2026-1 attached." in text
    [attachment] = list(email.iter_attachments())
    assert attachment.get_filename() == "invoice-F-2026-1.pdf"
    assert w.sms_of("i_sms")["body"] == "ACME SAS: invoice F-2026-1s for Durand [31mSARL"
    [row] = read_manifest(next((w.outbox / "letter-manifests").glob("*.csv")))
    assert (row["address_1"], row["address_2"]) == ("Durand [31mSARL", "12 rue des Lilas")
