"""Issue 11 item 8: one language per message — the words and the letter's date line are in
the same language, and the demo's templates format amounts and dates (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from dispatch.rendering.context import build_context
from dispatch.rendering.engine import TemplateSpec, render_message
from dispatch.sending.messages import wording_locale
from pypdf import PdfReader

from tests.builders import World, open_world

ADDRESS = "Hauptstraße 1\n10115 Berlin\nDE"
DEMO_CONFIG = Path(__file__).parents[1] / "include/demo/config.yaml"


@pytest.fixture
def w(backend: str, tmp_path: Path) -> Iterator[World]:
    with open_world(backend, tmp_path) as world:
        yield world


def _cover(w: World, invoice_id: str) -> str:
    return PdfReader(io.BytesIO(w.outbox_path(invoice_id).read_bytes())).pages[0].extract_text()


def test_a_german_letter_is_german_and_a_language_without_templates_is_english_throughout(w: World) -> None:
    w.org(org_id="acme", timezone="Europe/Berlin", holidays="DE").plan(
        "p_letter", channel="letter", body=None
    )
    w.customer("c_de", language="de", email=None, address=ADDRESS, plan="p_letter")
    w.customer("c_es", language="es", email=None, address=ADDRESS, plan="p_letter").load_config()
    w.invoice("i_de", "c_de", total="1234.50").invoice("i_es", "c_es", total="1234.50")
    w.run("2026-12-02T05:00Z")
    german, spanish = _cover(w, "i_de"), _cover(w, "i_es")
    assert "Sehr geehrte Damen und Herren" in german and "2. Dezember 2026" in german
    assert "1.234,50" in german and "Dear Sir or Madam" not in german
    # no es/ templates: the words fall back to English, and so does the date line
    assert "Dear Sir or Madam" in spanish and "December 2, 2026" in spanish
    assert "diciembre" not in spanish


def test_the_date_line_follows_the_words() -> None:
    default = TemplateSpec(channel="letter")
    assert str(wording_locale(default, "de")) == "de"
    assert str(wording_locale(default, "es")) == "en"  # no es/ folder: English words
    assert str(wording_locale(TemplateSpec(channel="letter", template_file="fr/letter.txt.j2"), "de")) == "fr"
    assert str(wording_locale(TemplateSpec(channel="letter", body="Hallo"), "de")) == "de"


def test_the_demo_templates_format_amounts_and_dates_in_the_customers_language() -> None:
    config = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))
    context = build_context(
        customer={"id": "c", "name": "Durand", "language": "fr"},
        invoice={
            "id": "i",
            "number": "FA-1",
            "issue_date": dt.date(2026, 12, 1),
            "due_date": dt.date(2027, 1, 5),
            "currency": "EUR",
            "total_amount": "275.02",
            "status": "open",
            "pdf_path": None,
        },
        organization={"id": "acme_fr", "name": "ACME"},
        owner={"id": "u", "name": "Claire", "email": None},
        today=dt.date(2026, 12, 1),
    )
    inline = [p for p in config["plans"] if p.get("invoice_sending", {}).get("body")]
    assert inline
    for plan in inline:
        sending = plan["invoice_sending"]
        language = "fr" if plan["org"] == "acme_fr" else "en"
        spec = TemplateSpec(channel=sending["channel"], subject=sending.get("subject"), body=sending["body"])
        text = render_message(spec, context, language).text
        assert "275.02 EUR" not in text and "2027-01-05" not in text, plan["id"]
        if language == "fr":
            assert "275,02" in text or "275.02" not in text, plan["id"]
        if language == "fr" and "invoice.due_date" in sending["body"]:
            assert "5 janvier 2027" in text or "5 janv. 2027" in text, plan["id"]
