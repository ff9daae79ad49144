"""Template rendering: default wording per language, Babel formats, and the B7 guarantees
(sandbox, autoescape in HTML only, no line break in a subject, every failure a TemplateError)."""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from babel.numbers import format_currency
from dispatch.rendering.checks import check_template_file, check_template_source
from dispatch.rendering.context import build_context
from dispatch.rendering.engine import Rendered, TemplateSpec, render_message
from dispatch.rendering.errors import TemplateError
from dispatch.rendering.filters import resolve_locale
from dispatch.rendering.html_text import html_to_text

NBSP = "\u00a0"  # Babel: between a French amount and its currency sign
NNBSP = "\u202f"  # Babel: French thousands separator (narrow no-break space)
FR_AMOUNT = f"1{NNBSP}234,50{NBSP}€"


@pytest.fixture(autouse=True)
def _builtin_templates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts from the repository's templates, whatever the shell exports."""
    monkeypatch.delenv("DISPATCH_TEMPLATES_DIR", raising=False)


def make_context(
    *,
    customer: dict[str, Any] | None = None,
    invoice: dict[str, Any] | None = None,
    owner: dict[str, Any] | None = None,
    no_owner: bool = False,
) -> dict[str, Any]:
    """Rows in the shapes of dispatch.rendering.context (``InvoiceRow``…)."""
    invoice_row = {
        "id": "inv_1",
        "number": "F-2026-001",
        "issue_date": dt.date(2026, 12, 2),
        "due_date": dt.date(2026, 12, 31),
        "currency": "EUR",
        "total_amount": Decimal("1234.50"),
        "status": "open",
        "pdf_path": "var/pdf/F-2026-001.pdf",
        **(invoice or {}),
    }
    customer_row = {"id": "c_1", "name": "ACME Ltd", "language": "en", **(customer or {})}
    owner_row = (
        None
        if no_owner
        else {"id": "u_alice", "name": "Alice Martin", "email": "alice@acme.example", **(owner or {})}
    )
    return build_context(
        customer=customer_row,
        invoice=invoice_row,
        organization={"id": "acme", "name": "ACME SAS"},
        owner=owner_row,
        today=dt.date(2026, 12, 2),
    )


def email(
    subject: str | None = None, body: str | None = None, template_file: str | None = None
) -> TemplateSpec:
    return TemplateSpec(channel="email", subject=subject, body=body, template_file=template_file)


def sms(body: str | None = None, template_file: str | None = None) -> TemplateSpec:
    return TemplateSpec(channel="sms", subject=None, body=body, template_file=template_file)


def letter(body: str | None = None) -> TemplateSpec:
    return TemplateSpec(channel="letter", subject=None, body=body, template_file=None)


# --------------------------------------------------------------------------------------
# Default templates


def test_english_default_email_has_formatted_amount_and_dates() -> None:
    rendered = render_message(email(), make_context(), "en")

    assert rendered.subject == "Invoice F-2026-001 from ACME SAS"
    assert rendered.text == (
        "Dear ACME Ltd,\n"
        "\n"
        "Please find attached invoice F-2026-001 dated December 2, 2026, for an amount of €1,234.50.\n"
        "\n"
        "We kindly ask you to settle it by December 31, 2026.\n"
        "\n"
        "If you have any question about this invoice, simply reply to this e-mail.\n"
        "\n"
        "Kind regards,\n"
        "Alice Martin\n"
        "ACME SAS"
    )
    assert rendered.html is not None
    assert rendered.html.startswith("<!DOCTYPE html>")
    assert '<html lang="en">' in rendered.html
    assert "<strong>€1,234.50</strong>" in rendered.html
    assert "December 31, 2026" in rendered.html


def test_french_default_email_is_in_french_with_french_formats() -> None:
    context = make_context(customer={"language": "fr"})
    rendered = render_message(email(), context, "fr")

    assert rendered.subject == f"Facture n°{NBSP}F-2026-001 – ACME SAS"
    assert rendered.text == (
        "Bonjour,\n"
        "\n"
        f"Veuillez trouver ci-joint votre facture n°{NBSP}F-2026-001 du 2 décembre 2026, "
        f"d’un montant de 1{NNBSP}234,50{NBSP}€.\n"
        "\n"
        "Nous vous remercions de bien vouloir procéder à son règlement au plus tard le 31 décembre 2026.\n"
        "\n"
        "Pour toute question concernant cette facture, il vous suffit de répondre à cet e-mail.\n"
        "\n"
        "Cordialement,\n"
        "Alice Martin\n"
        "ACME SAS"
    )
    assert rendered.html is not None
    assert '<html lang="fr">' in rendered.html
    assert f"<strong>{FR_AMOUNT}</strong>" in rendered.html
    assert "Date d’échéance" in rendered.html
    # The literal above is what Babel really produces for French (not a re-derivation of it).
    assert format_currency(Decimal("1234.50"), "EUR", locale="fr") == FR_AMOUNT


@pytest.mark.parametrize("language", ["fr-FR", "fr_BE", "FR", "fr_XX"])
def test_regional_or_odd_french_tags_use_french_defaults(language: str) -> None:
    rendered = render_message(email(), make_context(), language)
    assert rendered.text.startswith("Bonjour,")
    assert "2 décembre 2026" in rendered.text


@pytest.mark.parametrize("language", [None, "", "xx", "123", "klingon"])
def test_unknown_or_missing_language_falls_back_to_english(language: str | None) -> None:
    rendered = render_message(email(), make_context(), language)
    assert rendered.subject == "Invoice F-2026-001 from ACME SAS"
    assert "€1,234.50" in rendered.text


def test_language_without_own_wording_gets_english_wording_and_english_formats() -> None:
    # Spanish has no include/templates/es/: an English sentence must not carry "2 de diciembre".
    rendered = render_message(email(), make_context(customer={"language": "es"}), "es")
    assert "dated December 2, 2026, for an amount of €1,234.50." in rendered.text


def test_inline_template_formats_in_the_customer_locale_even_without_default_wording() -> None:
    body = "{{ invoice.total_amount|money(invoice.currency) }} / {{ invoice.issue_date|date }}"
    rendered = render_message(sms(body), make_context(), "de")
    assert rendered.text == "1.234,50 € / 2. Dezember 2026"


def test_paid_invoice_copy_says_nothing_is_due() -> None:
    context = make_context(invoice={"status": "paid"})
    text = render_message(email(), context, "en").text
    assert "This invoice has already been paid: no action is required on your part." in text
    assert "settle it by" not in text

    text_fr = render_message(email(), context, "fr").text
    assert f"Cette facture est déjà réglée{NBSP}: aucune action n’est requise de votre part." in text_fr
    assert "règlement au plus tard" not in text_fr


def test_invoice_without_pdf_is_not_announced_as_attached() -> None:
    context = make_context(invoice={"pdf_path": None, "due_date": None})
    text = render_message(email(), context, "en").text
    assert "We have issued invoice F-2026-001 dated December 2, 2026, for an amount of €1,234.50." in text
    assert "attached" not in text
    assert "settle it by" not in text  # no due date, no sentence about it


def test_missing_owner_never_prints_none() -> None:
    context = make_context(no_owner=True)
    for spec in (email(), letter(), sms()):
        for language in ("en", "fr"):
            rendered = render_message(spec, context, language)
            assert "None" not in rendered.text
            assert rendered.html is None or "None" not in rendered.html
    assert render_message(email(), context, "en").text.endswith("Kind regards,\nACME SAS")


def test_default_sms_is_one_line_with_plain_spaces() -> None:
    context = make_context()
    assert render_message(sms(), context, "en") == Rendered(
        subject=None,
        text="ACME SAS: invoice F-2026-001 of Dec 2, 2026, amount €1,234.50. Due by Dec 31, 2026.",
        html=None,
    )
    # Babel's no-break spaces become plain spaces: an SMS has no line to wrap.
    assert render_message(sms(), context, "fr").text == (
        "ACME SAS : facture n° F-2026-001 du 2 déc. 2026, montant 1 234,50 €. Échéance : 31 déc. 2026."
    )


def test_default_letters() -> None:
    context = make_context()
    fr = render_message(letter(), context, "fr")
    assert fr.subject is None and fr.html is None
    assert fr.text.startswith(f"Objet{NBSP}: facture n°{NBSP}F-2026-001\n\nMadame, Monsieur,\n\n")
    assert f"d’un montant de {FR_AMOUNT}." in fr.text
    assert "vous pouvez contacter Alice Martin à l’adresse alice@acme.example." in fr.text
    assert fr.text.endswith("salutations distinguées.\n\nAlice Martin\nACME SAS")

    en = render_message(letter(), context, "en")
    assert en.text.startswith("Subject: Invoice F-2026-001\n\nDear Sir or Madam,\n\n")
    assert (
        "Please find enclosed invoice F-2026-001 dated December 2, 2026, for an amount of €1,234.50."
        in en.text
    )


def test_every_shipped_default_compiles() -> None:
    for language in ("en", "fr"):
        for name in ("email_subject.txt.j2", "email.html.j2", "email.txt.j2", "sms.txt.j2", "letter.txt.j2"):
            check_template_file(f"{language}/{name}")
    check_template_file("email/invoice.html.j2")


# --------------------------------------------------------------------------------------
# Filters


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ("en", "$1,234.50|-€12.00|1,234.50|12/2/26|Dec 2, 2026|Wednesday, December 2, 2026"),
        (
            "fr",
            f"1{NNBSP}234,50{NBSP}$US|-12,00{NBSP}€|1{NNBSP}234,50|"
            "02/12/2026|2 déc. 2026|mercredi 2 décembre 2026",
        ),
    ],
)
def test_money_and_date_filters(language: str, expected: str) -> None:
    body = (
        "{{ invoice.total_amount|money('usd') }}|{{ -12|money('EUR') }}|{{ invoice.total_amount|money }}|"
        "{{ invoice.issue_date|date('short') }}|{{ invoice.issue_date|date(format='medium') }}|"
        "{{ today|date('full') }}"
    )
    # letter, not sms: the letter keeps Babel's no-break spaces.
    assert render_message(letter(body), make_context(), language).text == expected


def test_constant_amount_is_formatted_at_render_time_in_the_render_locale() -> None:
    # Jinja folds constant expressions at compile time; a folded filter would be formatted
    # once (in no locale) and cached with the compiled template for every later customer.
    body = "{{ 1234.5|money('EUR') }} {{ '2026-12-02'|date }}"
    assert render_message(letter(body), make_context(), "en").text == "€1,234.50 December 2, 2026"
    assert render_message(letter(body), make_context(), "fr").text == f"{FR_AMOUNT} 2 décembre 2026"


@pytest.mark.parametrize(
    "body",
    [
        "{{ 'abc'|money('EUR') }}",
        "{{ invoice.total_amount|money('EURO') }}",
        "{{ 'soon'|date }}",
        "{{ none|money('EUR') }}",
    ],
)
def test_bad_filter_input_is_a_template_error(body: str) -> None:
    with pytest.raises(TemplateError):
        render_message(sms(body), make_context(), "en")


def test_resolve_locale() -> None:
    assert str(resolve_locale("fr-BE")) == "fr_BE"
    assert str(resolve_locale("fr_XX")) == "fr"
    assert str(resolve_locale("xx")) == "en"
    assert str(resolve_locale(None)) == "en"


# --------------------------------------------------------------------------------------
# Escaping and header safety


def test_html_part_escapes_variables_text_part_does_not() -> None:
    context = make_context(customer={"name": "<script>alert(1)</script> A & B"})
    body = "Dear {{ customer.name }},\n\nThank you."
    rendered = render_message(email(body=body), context, "en")

    assert rendered.html is not None
    assert "&lt;script&gt;alert(1)&lt;/script&gt; A &amp; B" in rendered.html
    assert "<script>" not in rendered.html
    assert rendered.text == "Dear <script>alert(1)</script> A & B,\n\nThank you."

    default = render_message(email(), context, "en")
    assert default.html is not None
    assert "<script>" not in default.html
    assert "Dear &lt;script&gt;alert(1)&lt;/script&gt; A &amp; B," in default.html
    assert default.text.startswith("Dear <script>alert(1)</script> A & B,")


def test_literal_text_of_a_plain_inline_body_is_escaped_in_html() -> None:
    rendered = render_message(email(body="Terms & conditions: pay < 30 days."), make_context(), "en")
    assert rendered.html is not None
    assert "<p>Terms &amp; conditions: pay &lt; 30 days.</p>" in rendered.html
    assert rendered.text == "Terms & conditions: pay < 30 days."


@pytest.mark.parametrize(
    "name", ["x\nBcc: evil@example.com", "x\r\nBcc: evil@example.com", "x\rBcc: evil", "x\u2028Bcc: evil"]
)
def test_line_break_in_subject_from_a_variable_is_refused(name: str) -> None:
    context = make_context(customer={"name": name})
    with pytest.raises(TemplateError, match="subject"):
        render_message(email(subject="Invoice for {{ customer.name }}"), context, "en")


def test_line_break_in_default_subject_is_refused() -> None:
    context = make_context(invoice={"number": "F-1\nBcc: evil@example.com"})
    with pytest.raises(TemplateError, match="subject"):
        render_message(email(), context, "en")


def test_subject_is_stripped_and_blank_subject_means_default() -> None:
    stripped = render_message(email(subject="  Invoice {{ invoice.number }}  \n"), make_context(), "en")
    assert stripped.subject == "Invoice F-2026-001"
    assert (
        render_message(email(subject="   "), make_context(), "en").subject
        == "Invoice F-2026-001 from ACME SAS"
    )
    with pytest.raises(TemplateError, match="empty"):
        render_message(email(subject="{{ '' }}"), make_context(), "en")


# --------------------------------------------------------------------------------------
# Sandbox and errors

ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ invoice.__class__ }}",
    "{{ invoice.total_amount.__class__.__mro__ }}",
    "{{ today.__reduce_ex__(2) }}",
    "{{ ''|attr('__class__') }}",
    "{{ self._TemplateReference__context }}",
    "{{ '{0.__class__}'.format(invoice) }}",
    "{{ lipsum.__globals__ }}",
    "{% for c in ().__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
]


@pytest.mark.parametrize("payload", ESCAPES)
@pytest.mark.parametrize("where", ["subject", "body", "sms"])
def test_sandbox_escapes_are_template_errors(payload: str, where: str) -> None:
    if where == "subject":
        spec = email(subject=payload)
    elif where == "body":
        spec = email(body=payload)
    else:
        spec = sms(payload)
    with pytest.raises(TemplateError) as info:
        render_message(spec, make_context(), "en")
    assert "<class" not in str(info.value)
    assert "function" not in str(info.value)


def test_variables_cannot_be_mutated_by_a_template() -> None:
    context = make_context()
    with pytest.raises(TemplateError, match="not allowed"):
        render_message(sms("{{ invoice.update({'number': 'X'}) }}"), context, "en")
    assert context["invoice"]["number"] == "F-2026-001"


@pytest.mark.parametrize(
    "payload",
    ["{{ 'x' * 100000000 }}", "{{ [1] * 10**9 }}", "{{ 2 ** 10000000 }}", "{{ range(10**9)|list }}"],
)
def test_memory_bombs_are_refused_quickly(payload: str) -> None:
    start = time.monotonic()
    with pytest.raises(TemplateError):
        render_message(sms(payload), make_context(), "en")
    assert time.monotonic() - start < 2


def test_small_repetitions_still_work() -> None:
    assert render_message(sms("{{ '-' * 5 }} {{ 2 ** 10 }}"), make_context(), "en").text == "----- 1024"


def test_undefined_variable_is_a_template_error_with_its_line() -> None:
    with pytest.raises(TemplateError) as info:
        render_message(email(body="Hello,\n\n{{ invoice.nmber }}"), make_context(), "en")
    assert info.value.lineno == 3
    assert str(info.value) == "body, line 3: undefined variable: 'dict object' has no attribute 'nmber'"

    with pytest.raises(TemplateError, match="'organisation' is undefined"):
        render_message(email(subject="{{ organisation.name }}"), make_context(), "en")


def test_runtime_error_in_a_filter_is_a_template_error() -> None:
    with pytest.raises(TemplateError, match="ZeroDivisionError"):
        render_message(letter("{{ 1 / 0 }}"), make_context(), "en")


def test_body_and_template_file_together_are_refused() -> None:
    with pytest.raises(TemplateError, match="not both"):
        render_message(email(body="Hi", template_file="email/invoice.html.j2"), make_context(), "en")


def test_unknown_channel_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown channel"):
        render_message(
            TemplateSpec(channel="fax", subject=None, body=None, template_file=None), make_context(), "en"
        )


def test_empty_rendered_body_is_refused() -> None:
    for spec in (email(body="{% if false %}x{% endif %}"), sms("{{ '' }}"), letter("{{ '  ' }}")):
        with pytest.raises(TemplateError, match="empty"):
            render_message(spec, make_context(), "en")


# --------------------------------------------------------------------------------------
# Parse checks for the config loader


def test_check_template_source_reports_the_line() -> None:
    with pytest.raises(TemplateError) as info:
        check_template_source("Hello\n{{ invoice.number }\nBye")
    assert info.value.lineno == 2
    assert str(info.value) == "line 2: syntax error: unexpected '}'"

    with pytest.raises(TemplateError, match=r"line 1: .*No filter named 'monney'"):
        check_template_source("{{ invoice.total_amount|monney('EUR') }}", html=True)
    with pytest.raises(TemplateError, match="line 3"):
        check_template_source("a\nb\n{% if invoice.status %}open")


def test_check_template_source_accepts_valid_templates_without_rendering() -> None:
    # Undefined variables are only known at render time: parsing does not need them.
    assert check_template_source("Dear {{ customer.name }}, {{ not_a_variable }}") is None
    assert (
        check_template_source("<p>{{ invoice.total_amount|money(invoice.currency) }}</p>", html=True) is None
    )


@pytest.mark.parametrize(
    "name",
    [
        "../README.md",
        "../../etc/passwd",
        "/etc/passwd",
        "en/../../../pyproject.toml",
        "en\\..\\x.j2",
        "C:/windows/x.j2",
    ],
)
def test_template_file_outside_the_templates_directory_is_refused(name: str) -> None:
    with pytest.raises(TemplateError):
        check_template_file(name)
    with pytest.raises(TemplateError):
        render_message(email(template_file=name), make_context(), "en")


def test_blank_template_file_name() -> None:
    with pytest.raises(TemplateError, match="empty"):
        check_template_file(" ")
    # At render time a blank name means "not given", like a blank body: the default is used.
    assert render_message(sms(template_file=" "), make_context(), "en").text.startswith("ACME SAS: invoice")


def test_missing_template_file_is_refused() -> None:
    with pytest.raises(TemplateError, match="not found"):
        check_template_file("email/nope.html.j2")
    with pytest.raises(TemplateError, match="not found"):
        render_message(email(template_file="email/nope.html.j2"), make_context(), "en")


def test_symlink_leaving_the_templates_directory_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("API_KEY=hunter2")
    (templates / "leak.txt.j2").symlink_to(secret)
    monkeypatch.setenv("DISPATCH_TEMPLATES_DIR", str(templates))

    with pytest.raises(TemplateError, match="outside"):
        check_template_file("leak.txt.j2")
    with pytest.raises(TemplateError, match="outside"):
        render_message(sms(template_file="leak.txt.j2"), make_context(), "en")


def test_a_symlinked_folder_leaving_the_templates_directory_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cheap check of each lookup (no symlink below the directory) still catches a
    folder of the name that points out, and still lets one that points inside through."""
    templates = tmp_path / "templates"
    (templates / "real").mkdir(parents=True)
    (templates / "real" / "ok.txt.j2").write_text("ok {{ invoice.number }}")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "leak.txt.j2").write_text("API_KEY=hunter2")
    (templates / "mail").symlink_to(outside, target_is_directory=True)
    (templates / "alias").symlink_to(templates / "real", target_is_directory=True)
    monkeypatch.setenv("DISPATCH_TEMPLATES_DIR", str(templates))

    with pytest.raises(TemplateError, match="outside"):
        render_message(sms(template_file="mail/leak.txt.j2"), make_context(), "en")
    assert "ok" in render_message(sms(template_file="alias/ok.txt.j2"), make_context(), "en").text
    assert "ok" in render_message(sms(template_file="real/ok.txt.j2"), make_context(), "en").text


def test_check_template_file_reports_a_syntax_error_in_the_text_sibling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mail").mkdir()
    (tmp_path / "mail" / "x.html.j2").write_text("<p>{{ invoice.number }}</p>")
    (tmp_path / "mail" / "x.txt.j2").write_text("ok\n{% if %}")
    monkeypatch.setenv("DISPATCH_TEMPLATES_DIR", str(tmp_path))
    with pytest.raises(TemplateError, match=r"mail/x\.txt\.j2', line 2: syntax error") as info:
        check_template_file("mail/x.html.j2")
    assert info.value.lineno == 2


# --------------------------------------------------------------------------------------
# Inline bodies and template files


def test_inline_body_renders_both_parts() -> None:
    body = (
        "Dear {{ customer.name }},\n"
        "\n"
        "Invoice {{ invoice.number }}: {{ invoice.total_amount|money(invoice.currency) }}.\n"
        "Due {{ invoice.due_date|date }}.\n"
        "{% if invoice.status == 'paid' %}\n"
        "\n"
        "Already paid.\n"
        "{% endif %}\n"
        "\n"
        "Regards"
    )
    rendered = render_message(email(subject="Invoice {{ invoice.number }}", body=body), make_context(), "en")

    assert rendered.subject == "Invoice F-2026-001"
    assert rendered.text == (
        "Dear ACME Ltd,\n\nInvoice F-2026-001: €1,234.50.\nDue December 31, 2026.\n\nRegards"
    )
    assert rendered.html is not None
    assert "<p>Dear ACME Ltd,</p>" in rendered.html
    assert "<p>Invoice F-2026-001: €1,234.50.<br>\nDue December 31, 2026.</p>" in rendered.html
    assert "<p>Regards</p>" in rendered.html
    assert "<p></p>" not in rendered.html and "Already paid" not in rendered.html
    assert '<html lang="en">' in rendered.html  # placed in the shared layout


def test_inline_body_written_in_html_is_kept_and_text_is_derived() -> None:
    body = '<p>Hello <b>{{ customer.name }}</b></p><p>Pay <a href="https://pay.example/x">online</a>.</p>'
    context = make_context(customer={"name": "A & B"})
    rendered = render_message(email(body=body), context, "en")
    assert rendered.html is not None
    assert "<p>Hello <b>A &amp; B</b></p>" in rendered.html
    assert "<br>" not in rendered.html
    assert rendered.text == "Hello A & B\n\nPay online (https://pay.example/x)."


def test_sms_whitespace_is_collapsed() -> None:
    body = (
        "  Invoice   {{ invoice.number }}\n\n\tTotal:  {{ invoice.total_amount|money(invoice.currency) }}  \n"
    )
    assert render_message(sms(body), make_context(), "en") == Rendered(
        subject=None, text="Invoice F-2026-001 Total: €1,234.50", html=None
    )


def test_letter_keeps_its_lines() -> None:
    body = "Line one   \n\n\n\nLine two {{ invoice.number }}\n"
    assert render_message(letter(body), make_context(), "en").text == "Line one\n\nLine two F-2026-001"


def test_template_file_with_text_sibling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "custom").mkdir()
    (tmp_path / "custom" / "inv.html.j2").write_text("<p>Hi <i>{{ customer.name }}</i></p>")
    (tmp_path / "custom" / "inv.txt.j2").write_text("Hi {{ customer.name }} (text)\n")
    monkeypatch.setenv("DISPATCH_TEMPLATES_DIR", str(tmp_path))
    context = make_context(customer={"name": "A & B"})

    rendered = render_message(email(template_file="custom/inv.html.j2"), context, "en")
    assert rendered.html == "<p>Hi <i>A &amp; B</i></p>"
    assert rendered.text == "Hi A & B (text)"
    # The default subject is still found in the repository's templates behind the override.
    assert rendered.subject == "Invoice F-2026-001 from ACME SAS"


def test_template_file_without_sibling_gets_text_from_html(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "only.html.j2").write_text(
        "<html><head><title>T</title><style>p {color: red}</style></head><body>"
        "<p>Dear {{ customer.name }},</p>\n<p>Total:&nbsp;{{ invoice.total_amount|money(invoice.currency) }}"
        "<br>Thanks</p></body></html>"
    )
    monkeypatch.setenv("DISPATCH_TEMPLATES_DIR", str(tmp_path))
    rendered = render_message(email(template_file="only.html.j2"), make_context(), "en")
    assert rendered.text == f"Dear ACME Ltd,\n\nTotal:{NBSP}€1,234.50\nThanks"
    assert rendered.html is not None and rendered.html.startswith("<html>")


def test_text_template_file_for_email_has_no_html_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "plain.txt.j2").write_text("Invoice {{ invoice.number }} & co")
    monkeypatch.setenv("DISPATCH_TEMPLATES_DIR", str(tmp_path))
    rendered = render_message(email(template_file="plain.txt.j2"), make_context(), "en")
    assert rendered.text == "Invoice F-2026-001 & co"
    assert rendered.html is None


def test_override_directory_replaces_one_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "sms.txt.j2").write_text("Custom {{ invoice.number }}")
    monkeypatch.setenv("DISPATCH_TEMPLATES_DIR", str(tmp_path))
    assert render_message(sms(), make_context(), "en").text == "Custom F-2026-001"
    assert render_message(sms(), make_context(), "fr").text.startswith("ACME SAS : facture")


def test_runtime_error_in_a_template_file_names_file_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "bad.txt.j2").write_text("one\ntwo\n{{ invoice.nope }}\n")
    monkeypatch.setenv("DISPATCH_TEMPLATES_DIR", str(tmp_path))
    with pytest.raises(TemplateError) as info:
        render_message(TemplateSpec("letter", None, None, "bad.txt.j2"), make_context(), "en")
    assert str(info.value).startswith("bad.txt.j2, line 3: undefined variable")
    assert info.value.lineno == 3


def test_example_file_template_switches_language() -> None:
    en = render_message(email(template_file="email/invoice.html.j2"), make_context(), "en")
    assert en.text.startswith("Hello,\n\nYour invoice F-2026-001 dated December 2, 2026 comes to €1,234.50")
    fr_context = make_context(customer={"language": "fr"})
    fr = render_message(email(template_file="email/invoice.html.j2"), fr_context, "fr")
    assert fr.html is not None and '<html lang="fr">' in fr.html
    assert f"s’élève à {FR_AMOUNT}, payable au plus tard le 31 décembre 2026." in fr.text


# --------------------------------------------------------------------------------------
# Variables


def test_build_context_normalizes_rows() -> None:
    context = build_context(
        customer={"id": "c_9", "name": "Zed", "language": None},
        invoice={
            "id": "i_9",
            "number": 42,
            "issue_date": "2026-12-02",
            "due_date": float("nan"),  # pandas' missing value
            "currency": "eur",
            "total_amount": 1234.5,
            "status": "paid",
            "pdf_path": None,
            "internal_note": "never exposed",
        },
        organization={"id": "acme", "name": "ACME SAS", "mail_from": "x@y"},
        owner=None,
        today=dt.datetime(2026, 12, 2, 9, 30),
    )
    assert context == {
        "customer": {"id": "c_9", "name": "Zed", "language": None},
        "invoice": {
            "id": "i_9",
            "number": "42",
            "issue_date": dt.date(2026, 12, 2),
            "due_date": None,
            "currency": "EUR",
            "total_amount": Decimal("1234.5"),
            "status": "paid",
            "has_pdf": False,
        },
        "organization": {"id": "acme", "name": "ACME SAS"},
        "owner": {"id": None, "name": None, "email": None},
        "today": dt.date(2026, 12, 2),
    }


@pytest.mark.parametrize(
    ("invoice", "message"),
    [
        ({"number": None}, "invoice.number"),
        ({"issue_date": "someday"}, "invoice.issue_date"),
        ({"total_amount": "abc"}, "invoice.total_amount"),
    ],
)
def test_build_context_refuses_rows_without_what_every_message_needs(
    invoice: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make_context(invoice=invoice)


def test_html_to_text() -> None:
    markup = "<ul><li>One</li><li>Two &amp; three</li></ul><p>End <a href='mailto:x@y'>x@y</a></p>"
    assert html_to_text(markup) == "- One\n- Two & three\n\nEnd x@y"
