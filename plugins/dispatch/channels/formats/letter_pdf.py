"""Letters for the postal channel: a cover page for a window envelope, then the invoice.

A print-and-mail provider (or a person with a printer) takes one PDF per letter, so the
cover page and the invoice pages travel as one file. The recipient block sits where a
DL / C5 envelope's right-hand window shows it; everything else is plain text on A4.

Fonts: fpdf2's core fonts are Latin-1 only, which cannot show an euro sign, a Polish
street name or the narrow no-break space babel puts in French amounts. A DejaVu Sans TTF
is used when one is installed (from matplotlib if present, else the usual system
locations); otherwise text is folded to Latin-1 (typographic characters to their ASCII
look-alikes, accents kept where Latin-1 has them, anything else to ``?``) so that a name
the font cannot draw never makes a letter fail.

:func:`build_letter_pdf` is the letter's gate for control characters
(:mod:`dispatch.rules.control_chars`): the body keeps tab and newline, address and sender lines and
the document information keep none, so no NUL or escape sequence is printed or reaches the
print manifest.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.util
import io
import os
import unicodedata
from collections.abc import Mapping
from pathlib import Path

from fpdf import FPDF
from pypdf import PdfReader, PdfWriter
from pypdf.errors import PyPdfError

from dispatch.channels.base import OutgoingMessage
from dispatch.channels.formats.mime import deliver_at_iso
from dispatch.rules.control_chars import clean_block, clean_body, clean_line

# Layout in millimetres (A4 portrait, 210 x 297).
_MARGIN_LEFT = 20.0
_MARGIN_RIGHT = 15.0
_SENDER_TOP = 15.0
_WINDOW_LEFT = 110.0  # right-hand window of a DL / C5 envelope
_WINDOW_TOP = 50.0
_WINDOW_WIDTH = 85.0
_DATE_TOP = 100.0
_BODY_TOP = 115.0
_LINE_HEIGHT = 5.0
_FONT_SIZE = 10.5

#: PDF creation date used when the caller gives none, so the same input gives the same bytes.
_FIXED_CREATION_DATE = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)

_UNICODE_FONT_CANDIDATES: tuple[str, ...] = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",  # Debian, Ubuntu
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",  # Fedora, RHEL
    "/usr/share/fonts/TTF/DejaVuSans.ttf",  # Arch
    "/usr/local/share/fonts/DejaVuSans.ttf",
    "/opt/homebrew/share/fonts/DejaVuSans.ttf",
)

# Characters outside Latin-1 that invoices and French/English letters commonly contain.
_LATIN1_LOOKALIKES = str.maketrans(
    {
        "€": "EUR",
        "\u202f": " ",  # narrow no-break space (babel, French amounts)
        "\u2009": " ",
        "\u2007": " ",
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": ",",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u2013": "-",
        "\u2014": "-",
        "\u2212": "-",
        "\u2026": "...",
        "\u2022": "-",
        "\u0152": "OE",
        "\u0153": "oe",
        "\u0141": "L",
        "\u0142": "l",
    }
)


@functools.lru_cache(maxsize=1)
def unicode_font_path() -> Path | None:
    """The DejaVu Sans TTF to embed, or ``None`` to fall back to a Latin-1 core font.

    matplotlib ships the font inside its package; it is looked up without importing
    matplotlib (heavy), then the common system paths are tried.
    """
    candidates: list[Path] = []
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.origin is not None:
        candidates.append(Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf")
    candidates.extend(Path(p) for p in _UNICODE_FONT_CANDIDATES)
    return next((path for path in candidates if path.is_file()), None)


# The scripts a letter in this product is written in: Latin (with Latin Extended and the
# punctuation/currency signs amounts use), Greek and Cyrillic. Other characters print "?".
_LETTER_UNICODES = [
    *range(0x20, 0x7F),
    *range(0xA0, 0x250),
    *range(0x370, 0x400),
    *range(0x400, 0x530),
    *range(0x1E00, 0x1F00),
    *range(0x2000, 0x2070),
    *range(0x20A0, 0x20C1),
    0x2116,
    0x2122,
]


@functools.lru_cache(maxsize=2)
def letter_font_path(source: Path) -> Path:
    """A subset of ``source`` with only the glyphs letters use, written once per process.

    fpdf2 parses the whole TTF for every document it embeds it in; DejaVu Sans has ~6,000
    glyphs, which made parsing most of a letter's cost. The subset (a few hundred glyphs)
    keeps every character a letter here needs and parses an order of magnitude faster.
    """
    import hashlib
    import tempfile

    from fontTools import subset

    digest = hashlib.sha256(f"{source}:{source.stat().st_mtime_ns}".encode()).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / f"invoice-dispatch-letter-font-{digest}.ttf"
    if not target.exists():
        options = subset.Options()
        options.layout_features = ["kern", "liga"]
        options.name_IDs = ["*"]
        options.notdef_outline = True
        options.drop_tables = [*options.drop_tables, "FFTM"]
        font = subset.load_font(str(source), options)
        subsetter = subset.Subsetter(options)
        subsetter.populate(unicodes=_LETTER_UNICODES)
        subsetter.subset(font)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        subset.save_font(font, str(tmp), options)
        os.replace(tmp, target)  # atomic: concurrent workers never read half a font
    return target


@functools.lru_cache(maxsize=4)
def _font_codepoints(path: Path) -> frozenset[int]:
    """Code points the TTF has glyphs for; read once, since a letter run renders many."""
    from fontTools.ttLib import TTFont  # fpdf2 depends on fontTools

    with TTFont(str(path), lazy=True) as font:
        return frozenset(font.getBestCmap())


def to_latin1(text: str) -> str:
    """Fold ``text`` to what a Latin-1 core font can draw, never failing."""
    text = text.translate(_LATIN1_LOOKALIKES)
    if all(ord(ch) < 256 for ch in text):
        return text
    folded = []
    for ch in text:
        if ord(ch) < 256:
            folded.append(ch)
            continue
        # "ő" -> "o" + combining mark: keep the base letter when it is Latin-1.
        base = unicodedata.normalize("NFKD", ch)[:1]
        folded.append(base if base and ord(base) < 256 else "?")
    return "".join(folded)


def _keep_drawable(text: str, codepoints: frozenset[int]) -> str:
    """Replace characters the embedded font has no glyph for (fpdf2 would drop them silently)."""
    return "".join(ch if ord(ch) in codepoints or ch in "\n\r\t" else "?" for ch in text)


class _LetterPdf:
    """One FPDF document with the text-safety rule of the chosen font applied to every string."""

    def __init__(self, creation_date: dt.datetime, *, unicode: bool = True) -> None:
        self.pdf = FPDF(orientation="portrait", unit="mm", format="A4")
        self.pdf.set_creation_date(creation_date)
        self.pdf.set_margins(_MARGIN_LEFT, _SENDER_TOP, _MARGIN_RIGHT)
        self.pdf.set_auto_page_break(auto=True, margin=20)
        font_path = unicode_font_path() if unicode else None
        if font_path is not None:
            font_path = letter_font_path(font_path)
            self.pdf.add_font("letter", fname=str(font_path))
            self.pdf.set_font("letter", size=_FONT_SIZE)
            codepoints = _font_codepoints(font_path)
            self._safe = lambda text: _keep_drawable(text, codepoints)
        else:
            self.pdf.set_font("helvetica", size=_FONT_SIZE)
            self._safe = to_latin1

    def block(self, text: str, *, x: float, y: float, width: float) -> None:
        """Lines of an address or sender block, left-aligned, blank lines dropped.

        An address longer than the window (7 lines at 5 mm) is not cut: a line peeking out of
        the window is seen by whoever posts the letter, a dropped country line is not.
        """
        lines = [line.strip() for line in self._safe(text).splitlines() if line.strip()]
        self.pdf.set_xy(x, y)
        self.pdf.multi_cell(width, _LINE_HEIGHT, "\n".join(lines), align="L")

    def paragraphs(self, text: str, *, y: float) -> None:
        """Body text wrapped to the page width; flows onto further pages when long."""
        self.pdf.set_xy(_MARGIN_LEFT, y)
        width = self.pdf.epw
        self.pdf.multi_cell(width, _LINE_HEIGHT, self._safe(text.replace("\r\n", "\n")), align="L")

    def output(self) -> bytes:
        return bytes(self.pdf.output())


def build_letter_pdf(
    *,
    sender_block: str,
    recipient_block: str,
    body_text: str,
    date_line: str,
    invoice_pdf: bytes | None,
    metadata: Mapping[str, str] | None = None,
    creation_date: dt.datetime | None = None,
) -> bytes:
    """The printable letter: cover page(s) followed by every page of the invoice PDF.

    ``metadata`` entries are written into the PDF's document information (keys without the
    leading slash), which is how the outbox records a letter's delivery day in the file
    itself. ``creation_date`` defaults to a fixed instant so that output is reproducible.
    Raises ``ValueError`` when the invoice PDF cannot be read.
    """
    sender_block, recipient_block = clean_block(sender_block), clean_block(recipient_block)
    body_text, date_line = clean_body(body_text), clean_line(date_line)
    if not recipient_block.strip():
        raise ValueError("letter has no recipient address")
    letter = _LetterPdf(creation_date or _FIXED_CREATION_DATE)
    letter.pdf.add_page()
    letter.block(sender_block, x=_MARGIN_LEFT, y=_SENDER_TOP, width=_WINDOW_LEFT - _MARGIN_LEFT - 5)
    letter.block(recipient_block, x=_WINDOW_LEFT, y=_WINDOW_TOP, width=_WINDOW_WIDTH)
    if date_line.strip():
        letter.block(date_line, x=_WINDOW_LEFT, y=_DATE_TOP, width=_WINDOW_WIDTH)
    letter.paragraphs(body_text, y=_BODY_TOP)
    cover = letter.output()

    writer = PdfWriter(clone_from=io.BytesIO(cover))
    if invoice_pdf is not None:
        try:
            writer.append(PdfReader(io.BytesIO(invoice_pdf), strict=False))
        except (PyPdfError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"invoice PDF cannot be read: {exc}") from exc
    if metadata:
        writer.add_metadata(
            {f"/{clean_line(key).lstrip('/')}": clean_block(value) for key, value in metadata.items()}
        )
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def read_letter_metadata(pdf: bytes | Path) -> dict[str, str]:
    """The document-information entries of a letter (keys without the leading slash)."""
    source = io.BytesIO(pdf) if isinstance(pdf, bytes) else pdf
    info: Mapping[str, object] = PdfReader(source, strict=False).metadata or {}
    return {str(key).lstrip("/"): str(value) for key, value in info.items()}


def build_invoice_placeholder_pdf(number: str, lines: list[str]) -> bytes:
    """A plain invoice PDF standing in for the accounting system's own, for the demo and tests.

    One page for a handful of lines (a long list flows onto further pages). It uses the
    Latin-1 core font so that it is fast (no TTF to parse) and the same arguments give the
    same bytes on every machine.
    """
    letter = _LetterPdf(_FIXED_CREATION_DATE, unicode=False)
    letter.pdf.set_title(letter._safe(f"Invoice {number}"))
    letter.pdf.add_page()
    letter.pdf.set_font_size(16)
    letter.block(f"Invoice {number}", x=_MARGIN_LEFT, y=_SENDER_TOP, width=letter.pdf.epw)
    letter.pdf.set_font_size(_FONT_SIZE)
    letter.paragraphs("\n".join(lines), y=_SENDER_TOP + 15)
    return letter.output()


def letter_for_message(message: OutgoingMessage) -> bytes:
    """The printed letter of an outgoing message, the same for every letter backend: a cover
    page addressed to ``recipients[0]``, then the invoice PDF (the first PDF attachment).

    Optional ``metadata`` keys: ``sender_address`` (lines under the sender's name) and
    ``date_line`` (defaults to the delivery date, ISO format).
    """
    if not message.recipients:
        raise ValueError("a letter needs a postal address")
    sender_lines = [message.sender_name or message.sender or "", message.metadata.get("sender_address", "")]
    invoice_pdf = next((a.content for a in message.attachments if a.mime_type == "application/pdf"), None)
    return build_letter_pdf(
        sender_block="\n".join(line for line in sender_lines if line),
        recipient_block=message.recipients[0],
        body_text=message.body_text,
        date_line=message.metadata.get("date_line") or message.deliver_at.date().isoformat(),
        invoice_pdf=invoice_pdf,
        metadata={
            "DeliverAt": deliver_at_iso(message.deliver_at),
            "InvoiceDispatchAction": message.action_id,
            "InvoiceDispatchInvoice": message.invoice_id,
            "InvoiceDispatchOrg": message.org_id,  # these two feed the print manifest
            "InvoiceDispatchRecipient": message.recipients[0],
        },
        creation_date=message.deliver_at,
    )
