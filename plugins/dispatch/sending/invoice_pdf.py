"""Invoice PDFs are read from one folder only (``DISPATCH_PDF_ROOT``), and only if they are PDFs.

``pdf_path`` comes from the accounting system, which this product does not control: a row
saying ``/etc/passwd``, ``../../secrets`` or ``/proc/self/environ`` must never turn a file
of the server into an attachment that is mailed or printed to a customer. So every reader of
an invoice PDF (e-mail attachments, letters, ``dispatch todo send``) goes through
:func:`read_invoice_pdf`, which returns either the bytes or a :class:`PdfRefusal` whose
``reason`` becomes the action's manual reason:

* ``pdf_outside_root`` — the path does not lead into the folder: absolute elsewhere, ``..``
  out of it, a symbolic link pointing out of it, a ``~`` (never expanded), a NUL byte. The
  file is not looked at.
* ``missing_pdf`` — inside the folder, but nothing there (or it cannot be read).
* ``invalid_pdf`` — inside the folder, but not a regular file (a directory, FIFO, device,
  socket), larger than ``DISPATCH_PDF_MAX_BYTES``, or not starting with ``%PDF-``.

The path is resolved (symbolic links followed) and checked before anything is opened; it is
then opened component by component from the folder with ``O_NOFOLLOW``, so that a link
swapped in between the check and the open is refused rather than followed, and
``O_NONBLOCK``, so that a FIFO can never hang the run; the opened descriptor is checked
again (``fstat``) and at most limit + 1 bytes are read, so that a file growing meanwhile
cannot exhaust memory.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from dispatch.vocabulary import ManualReason

#: What every PDF file starts with (ISO 32000-1, 7.5.2).
PDF_MAGIC = b"%PDF-"
#: Default of ``DISPATCH_PDF_MAX_BYTES``: 20 MiB, under what mail providers accept in total.
DEFAULT_MAX_BYTES = 20 * 1024 * 1024

OUTSIDE = ManualReason.PDF_OUTSIDE_ROOT
MISSING = ManualReason.MISSING_PDF
INVALID = ManualReason.INVALID_PDF

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_NOCTTY = getattr(os, "O_NOCTTY", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_BINARY = getattr(os, "O_BINARY", 0)
_FILE_FLAGS = os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _NOCTTY | _CLOEXEC | _BINARY
_DIR_FLAGS = os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC
_SHOWN = 200  # characters of a hostile path quoted in a detail


@dataclass(frozen=True)
class InvoicePdf:
    """The invoice's PDF, read from inside the folder."""

    path: Path
    content: bytes


@dataclass(frozen=True)
class PdfRefusal:
    """Why the invoice's PDF is not sent; ``detail`` tells a person what to fix."""

    reason: ManualReason  # OUTSIDE | MISSING | INVALID
    detail: str


def _shown(raw: str) -> str:
    text = repr(raw)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _kind(mode: int) -> str | None:
    """What a file that is not a regular file is, in words (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a regular file"


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def locate_invoice_pdf(pdf_path: str, root: Path) -> Path | PdfRefusal:
    """The resolved path ``pdf_path`` names inside ``root``, or why it names none.

    Relative paths are relative to ``root``; symbolic links are followed before the check;
    nothing is opened, and ``~`` is never expanded.
    """
    raw = str(pdf_path)
    hint = f"put the PDF in the invoice folder {root} (DISPATCH_PDF_ROOT) and give its path relative to it"
    if "\x00" in raw:
        return PdfRefusal(OUTSIDE, f"pdf_path {_shown(raw)} contains a NUL byte: {hint}")
    if raw.startswith("~"):
        return PdfRefusal(OUTSIDE, f"pdf_path {_shown(raw)} starts with '~', which is never expanded: {hint}")
    try:
        os.fsencode(raw)
    except UnicodeError:
        return PdfRefusal(OUTSIDE, f"pdf_path {_shown(raw)} cannot name a file: {hint}")
    real_root = os.path.realpath(root)
    candidate = raw if os.path.isabs(raw) else os.path.join(real_root, raw)
    try:
        resolved = os.path.realpath(candidate)
    except (OSError, ValueError) as exc:
        return PdfRefusal(MISSING, f"pdf_path {_shown(raw)} cannot be resolved ({exc}): {hint}")
    if not _inside(resolved, real_root):
        return PdfRefusal(OUTSIDE, f"pdf_path {_shown(raw)} leads outside the invoice folder: {hint}")
    return Path(resolved)


def _open_inside(resolved: Path, real_root: str) -> int:
    """A read descriptor on ``resolved``, opened from ``real_root`` one component at a time
    without following any symbolic link (``OSError`` ELOOP/ENOTDIR if one was swapped in)."""
    parts = resolved.relative_to(real_root).parts
    if os.open not in os.supports_dir_fd or not _DIRECTORY:  # no openat(): one open, no link followed last
        return os.open(resolved, _FILE_FLAGS)
    dir_fd = os.open(real_root, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, _DIR_FLAGS, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = next_fd
        return os.open(parts[-1], _FILE_FLAGS, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    left = limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_invoice_pdf(
    pdf_path: str, root: Path, max_bytes: int = DEFAULT_MAX_BYTES
) -> InvoicePdf | PdfRefusal:
    """The bytes of the invoice PDF ``pdf_path`` names inside ``root``, or a refusal (see the
    module docstring). Never raises for anything the path or the file may be."""
    located = locate_invoice_pdf(pdf_path, root)
    if isinstance(located, PdfRefusal):
        return located
    real_root = os.path.realpath(root)
    where = f"{_shown(str(pdf_path))} (in the invoice folder {root})"
    fix = "export the invoice PDF there or correct pdf_path in the accounting system"
    try:
        before = os.lstat(located)
    except FileNotFoundError:
        return PdfRefusal(MISSING, f"no file at {where}: {fix}")
    except OSError as exc:
        return PdfRefusal(MISSING, f"{where} cannot be read ({exc.strerror}): {fix}")
    if (kind := _kind(before.st_mode)) is not None:
        return PdfRefusal(INVALID, f"{where} is {kind}, not a PDF file: {fix}")
    too_big = (
        f"is over the limit of {max_bytes} bytes (DISPATCH_PDF_MAX_BYTES): "
        "send a smaller PDF or raise the limit"
    )
    if before.st_size > max_bytes:
        return PdfRefusal(INVALID, f"{where} {too_big}")
    try:
        fd = _open_inside(located, real_root)
    except FileNotFoundError:
        return PdfRefusal(MISSING, f"no file at {where}: {fix}")
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # a link swapped in after the check
            return PdfRefusal(OUTSIDE, f"{where} became a symbolic link while being opened: {fix}")
        return PdfRefusal(MISSING, f"{where} cannot be opened ({exc.strerror}): {fix}")
    try:
        opened = os.fstat(fd)
        if (kind := _kind(opened.st_mode)) is not None:
            return PdfRefusal(INVALID, f"{where} is {kind}, not a PDF file: {fix}")
        content = _read_at_most(fd, max_bytes + 1)
    except OSError as exc:
        return PdfRefusal(MISSING, f"{where} cannot be read ({exc.strerror}): {fix}")
    finally:
        os.close(fd)
    if len(content) > max_bytes:
        return PdfRefusal(INVALID, f"{where} {too_big}")
    if not content.startswith(PDF_MAGIC):
        return PdfRefusal(INVALID, f"{where} does not start with %PDF-, so it is not a PDF: {fix}")
    return InvoicePdf(located, content)
