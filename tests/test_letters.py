"""Letter PDFs: address where the envelope window is, the invoice appended, any text printable."""

from __future__ import annotations

import io

import pytest
from dispatch.channels.formats import letter_pdf as letters
from dispatch.channels.formats.letter_pdf import (
    build_invoice_placeholder_pdf,
    build_letter_pdf,
    read_letter_metadata,
    to_latin1,
)
from pypdf import PdfReader

MM = 72 / 25.4  # PDF points per millimetre
A4_HEIGHT_MM = 297

RECIPIENT = "Client Lecomte SARL\nService comptabilité\n12 rue des Lilas\n69003 Lyon\nFRANCE"
SENDER = "ACME SAS\n1 place de la Bourse\n75002 Paris"
BODY = "Madame, Monsieur,\n\nVeuillez trouver ci-joint notre facture F-9 de 1 440,00 €.\n\nCordialement"


def letter(**changes: object) -> bytes:
    arguments: dict[str, object] = {
        "sender_block": SENDER,
        "recipient_block": RECIPIENT,
        "body_text": BODY,
        "date_line": "Paris, le 3 mars 2025",
        "invoice_pdf": build_invoice_placeholder_pdf("F-9", ["Total 1 440,00 EUR"]),
    }
    arguments.update(changes)
    return build_letter_pdf(**arguments)  # type: ignore[arg-type]


def text_positions(page: object) -> dict[str, tuple[float, float]]:
    """Each text run's (x from the left, baseline from the top), in millimetres."""
    positions: dict[str, tuple[float, float]] = {}

    def visit(text: str, cm: list[float], tm: list[float], font: object, size: float) -> None:
        if text.strip():
            x, y = tm[4] * cm[0] + cm[4], tm[5] * cm[3] + cm[5]
            positions.setdefault(text.strip(), (x / MM, A4_HEIGHT_MM - y / MM))

    page.extract_text(visitor_text=visit)  # type: ignore[attr-defined]
    return positions


def test_cover_page_then_every_invoice_page() -> None:
    invoice = build_invoice_placeholder_pdf("F-9", [f"line {i}" for i in range(120)])
    assert len(PdfReader(io.BytesIO(invoice)).pages) == 3

    reader = PdfReader(io.BytesIO(letter(invoice_pdf=invoice)))

    assert len(reader.pages) == 4
    assert "Invoice F-9" in reader.pages[1].extract_text()
    assert "line 119" in reader.pages[3].extract_text()
    assert reader.pages[0].mediabox.width == pytest.approx(210 * MM, abs=0.5)
    assert reader.pages[0].mediabox.height == pytest.approx(297 * MM, abs=0.5)


def test_letter_without_invoice_is_the_cover_alone() -> None:
    reader = PdfReader(io.BytesIO(letter(invoice_pdf=None)))
    assert len(reader.pages) == 1
    assert "Veuillez trouver ci-joint notre facture F-9" in reader.pages[0].extract_text()


def test_recipient_sits_in_the_envelope_window_and_sender_top_left() -> None:
    positions = text_positions(PdfReader(io.BytesIO(letter())).pages[0])

    x, top = positions["Client Lecomte SARL"]
    assert 108 <= x <= 112  # the DL / C5 right-hand window starts about 110 mm from the left
    assert 50 <= top <= 56  # first baseline just under the window's top edge at 50 mm
    x_last, top_last = positions["FRANCE"]
    assert x_last == pytest.approx(x, abs=0.5)
    assert top_last <= 95  # the whole block inside the 45 mm window

    x_sender, top_sender = positions["ACME SAS"]
    assert 18 <= x_sender <= 22
    assert top_sender <= 25
    _, top_body = positions["Madame, Monsieur,"]
    assert top_body > top_last  # the body starts below the address block


def test_long_body_flows_onto_more_cover_pages_before_the_invoice() -> None:
    body = "\n".join(f"Paragraph {i}: " + "lorem ipsum " * 12 for i in range(80))
    reader = PdfReader(io.BytesIO(letter(body_text=body)))

    cover_pages = len(reader.pages) - 1
    assert cover_pages >= 2
    assert "Paragraph 79" in reader.pages[cover_pages - 1].extract_text()
    assert "Invoice F-9" in reader.pages[cover_pages].extract_text()


def test_metadata_is_stored_in_the_pdf_and_read_back() -> None:
    pdf = letter(metadata={"DeliverAt": "2025-03-03T07:30:00Z", "InvoiceDispatchAction": "act_9"})
    info = read_letter_metadata(pdf)
    assert info["DeliverAt"] == "2025-03-03T07:30:00Z"
    assert info["InvoiceDispatchAction"] == "act_9"


def test_same_input_gives_the_same_bytes() -> None:
    assert letter() == letter()
    assert build_invoice_placeholder_pdf("F-1", ["a", "b"]) == build_invoice_placeholder_pdf(
        "F-1", ["a", "b"]
    )
    assert build_invoice_placeholder_pdf("F-1", ["a"]) != build_invoice_placeholder_pdf("F-2", ["a"])


def test_placeholder_invoice_is_one_page_with_its_number_and_lines() -> None:
    reader = PdfReader(
        io.BytesIO(build_invoice_placeholder_pdf("F-2025-0042", ["Consulting", "Total 99,00 €"]))
    )
    assert len(reader.pages) == 1
    text = reader.pages[0].extract_text()
    assert "Invoice F-2025-0042" in text
    assert "Consulting" in text
    assert "Total 99,00 EUR" in text  # core font: the euro sign is spelled out


def test_unreadable_invoice_pdf_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="invoice PDF"):
        letter(invoice_pdf=b"%PDF-1.4 truncated")


def test_letter_without_an_address_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="address"):
        letter(recipient_block="  \n ")


@pytest.mark.skipif(letters.unicode_font_path() is None, reason="no DejaVu Sans TTF on this machine")
def test_unicode_font_prints_names_latin1_cannot() -> None:
    pdf = letter(recipient_block="Łukasz Żółć\nul. Świętokrzyska 12\n00-916 Warszawa\nPOLSKA")
    text = PdfReader(io.BytesIO(pdf)).pages[0].extract_text()
    assert "Łukasz Żółć" in text
    assert "Świętokrzyska" in text
    assert "1 440,00 €" in text


def test_without_a_unicode_font_text_is_folded_not_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(letters, "unicode_font_path", lambda: None)
    pdf = letter(recipient_block="Łukasz Żółć\nul. Świętokrzyska 12\n東京都千代田区\nPOLSKA")
    reader = PdfReader(io.BytesIO(pdf))
    text = reader.pages[0].extract_text()
    assert "Lukasz Zólc" in text
    assert "ul. Swietokrzyska 12" in text
    assert "1 440,00 EUR" in text
    assert "???????" in text  # characters nothing can show become question marks
    assert "/FontFile2" not in pdf.decode("latin-1")  # really the core font: nothing embedded


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Société Générale", "Société Générale"),  # Latin-1 accents kept
        ("1\u202f440,00\u00a0€", "1 440,00\u00a0EUR"),  # babel's French amount
        ("“Quote” – l’été…", '"Quote" - l\'été...'),
        ("Łódź Œuvre", "Lódz OEuvre"),  # ó is Latin-1
        ("Dvořák", "Dvorák"),
        ("東京", "??"),
    ],
)
def test_to_latin1(text: str, expected: str) -> None:
    assert to_latin1(text) == expected
