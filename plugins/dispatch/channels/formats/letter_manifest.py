"""The day's letters as a CSV manifest, the file a print house takes with the PDFs.

``<outbox>/letter-manifests/manifest-YYYY-MM-DD.csv``, one row per letter PDF handed over
for that day — the UTC date of the letter's delivery time: a daily run hands its letters
over at one instant, so one run's letters land in one file that the print house collects,
never in a day it may already have collected (an organization's local day would split a
run at 05:00 UTC between two files for an org in California)::

    action_id,invoice_id,org_id,file,pages,sha256,deliver_date,deliver_at,address_1,…,address_6

``file`` is the PDF's path from the outbox root (``letter/<action_id>.pdf``); the manifests
live beside the ``letter/`` directory rather than in it, so that it keeps holding one file
per action (CONTRACT §6) for whoever counts or collects them. ``address_1``… are the lines
of the postal address block as printed in the envelope window (a block longer than six lines
has its last lines joined into ``address_6``); ``pages`` and ``sha256`` let the print house
check that it holds the very file listed.

Why it is built the way it is:

* A row is **appended** with a single ``write()`` on a file opened ``O_APPEND``, so rows of
  concurrent workers never interleave; the file is created whole, header included
  (temp file + link), so no reader ever sees a manifest without its header.
* The letter PDF is written **before** its row, and every row is made **from the PDF** (its
  document information carries the action, invoice, organization, recipient and delivery
  time): a crash between the two leaves a letter without a row, never a row without a letter,
  and :func:`ensure_listed` — called when the outbox meets an existing letter again, as when
  a dead run's claim is settled — adds the missing row once.
* :func:`rebuild_manifest` rewrites a day's file from the directory's letters, for repair.
* No cell holds a control character (:mod:`dispatch.rules.control_chars`), whatever a letter's
  document information says: a print house's CSV reader gets plain lines.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import hashlib
import io
import os
import secrets
from collections.abc import Iterable
from dataclasses import astuple, dataclass
from pathlib import Path

from dispatch.channels.formats.letter_pdf import read_letter_metadata
from dispatch.rules.control_chars import clean_block, clean_line

ADDRESS_COLUMNS = 6
COLUMNS: tuple[str, ...] = (
    "action_id",
    "invoice_id",
    "org_id",
    "file",
    "pages",
    "sha256",
    "deliver_date",
    "deliver_at",
    *(f"address_{n}" for n in range(1, ADDRESS_COLUMNS + 1)),
)
_PREFIX = "manifest-"
MANIFEST_DIR = "letter-manifests"
LETTER_DIR = "letter"


@dataclass(frozen=True)
class ManifestRow:
    """One letter of the manifest (column order = :data:`COLUMNS`)."""

    action_id: str
    invoice_id: str
    org_id: str
    file: str
    pages: int
    sha256: str
    deliver_date: str
    deliver_at: str
    address: tuple[str, ...]  # exactly ADDRESS_COLUMNS entries

    def cells(self) -> list[str]:
        *head, address = astuple(self)
        return [clean_line(str(v)) for v in (*head, *address)]


def manifest_path(outbox_root: Path, day: dt.date) -> Path:
    return Path(outbox_root) / MANIFEST_DIR / f"{_PREFIX}{day.isoformat()}.csv"


def _address_cells(block: str) -> tuple[str, ...]:
    lines = [line.strip() for line in clean_block(block).split("\n") if line.strip()]
    if len(lines) > ADDRESS_COLUMNS:
        lines = [*lines[: ADDRESS_COLUMNS - 1], ", ".join(lines[ADDRESS_COLUMNS - 1 :])]
    return tuple(lines + [""] * (ADDRESS_COLUMNS - len(lines)))


def row_for_letter(pdf_path: Path, content: bytes | None = None) -> ManifestRow:
    """The manifest row of a letter PDF written by the outbox (``content``: its bytes, if at hand).

    Raises ``ValueError``/``KeyError`` when the file is not such a letter.
    """
    from pypdf import PdfReader

    data = Path(pdf_path).read_bytes() if content is None else content
    reader = PdfReader(io.BytesIO(data), strict=False)
    info = read_letter_metadata(data)
    deliver_at = dt.datetime.fromisoformat(info["DeliverAt"].replace("Z", "+00:00")).astimezone(dt.UTC)
    return ManifestRow(
        action_id=info["InvoiceDispatchAction"],
        invoice_id=info.get("InvoiceDispatchInvoice", ""),
        org_id=info.get("InvoiceDispatchOrg", ""),
        file=f"{LETTER_DIR}/{Path(pdf_path).name}",
        pages=len(reader.pages),
        sha256=hashlib.sha256(data).hexdigest(),
        deliver_date=deliver_at.date().isoformat(),
        deliver_at=deliver_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        address=_address_cells(info.get("InvoiceDispatchRecipient", "")),
    )


def _csv_text(rows: Iterable[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue()


def _create_with_header(path: Path) -> None:
    """Create ``path`` holding just the header, atomically; nothing if it exists already."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.stem}-{secrets.token_hex(8)}")
    try:
        with open(tmp, "x", encoding="utf-8", newline="") as handle:
            handle.write(_csv_text([list(COLUMNS)]))
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # another worker created it first: fine
            os.link(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def append_row(outbox_root: Path, row: ManifestRow) -> Path:
    """Append ``row`` to its day's manifest (created with its header if needed); one write()."""
    path = manifest_path(outbox_root, dt.date.fromisoformat(row.deliver_date))
    _create_with_header(path)
    line = _csv_text([row.cells()]).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))
    try:
        written = os.write(fd, line)
        if written != len(line):
            raise OSError(f"short write to {path}: {written} of {len(line)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def read_manifest(path: Path) -> list[dict[str, str]]:
    """The rows of a manifest file (no file: no rows)."""
    if not Path(path).exists():
        return []
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def record_letter(outbox_root: Path, pdf_path: Path, content: bytes) -> Path:
    """List a letter the outbox has just written (it cannot be listed yet: its file is new)."""
    return append_row(outbox_root, row_for_letter(pdf_path, content))


def ensure_listed(outbox_root: Path, pdf_path: Path) -> bool:
    """List an existing letter unless its day's manifest already has it; True if a row was added."""
    row = row_for_letter(pdf_path)
    listed = read_manifest(manifest_path(outbox_root, dt.date.fromisoformat(row.deliver_date)))
    if any(r.get("action_id") == row.action_id for r in listed):
        return False
    append_row(outbox_root, row)
    return True


def rebuild_manifest(outbox_root: Path, day: dt.date) -> Path:
    """Rewrite ``day``'s manifest from the letters in ``<outbox_root>/letter`` (for repair: run
    it while no dispatch writes letters, or a row appended meanwhile is lost)."""
    rows = []
    for pdf in sorted((Path(outbox_root) / LETTER_DIR).glob("*.pdf")):
        if pdf.name.startswith("."):
            continue
        try:
            row = row_for_letter(pdf)
        except (KeyError, ValueError, OSError):
            continue  # not a letter of ours
        if row.deliver_date == day.isoformat():
            rows.append(row)
    path = manifest_path(outbox_root, day)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.stem}-{secrets.token_hex(8)}")
    try:
        with open(tmp, "x", encoding="utf-8", newline="") as handle:
            handle.write(_csv_text([list(COLUMNS), *(r.cells() for r in rows)]))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return path
