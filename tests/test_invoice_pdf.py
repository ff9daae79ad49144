"""Invoice PDFs come only from DISPATCH_PDF_ROOT, and only if they are PDFs (issue 7, item 1).

First the rule itself (:func:`dispatch.sending.invoice_pdf.read_invoice_pdf`) on real files, FIFOs,
devices and symbolic links, with a property test over paths made of ``..``, ``.``, links and
names; then whole pipeline runs on SQLite and PostgreSQL in which hostile ``pdf_path`` values
sit beside good ones, for e-mail through the outbox and through the local SendGrid, and for
letters through the outbox and the local print API: each hostile invoice becomes manual with
its reason, the good ones go, and no byte of a file outside the folder is in anything sent.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dispatch.channels import sendgrid as sg_module
from dispatch.channels.factory import build_channels, close_channels
from dispatch.channels.formats.letter_pdf import build_invoice_placeholder_pdf
from dispatch.channels.retry import RetryPolicy
from dispatch.config.settings import DEFAULT_PDF_MAX_BYTES, load_settings
from dispatch.sending.invoice_pdf import (
    INVALID,
    MISSING,
    OUTSIDE,
    InvoicePdf,
    PdfRefusal,
    _open_inside,
    locate_invoice_pdf,
    read_invoice_pdf,
)
from dispatch.storage import accounting_schema as acc
from hypothesis import given, settings
from hypothesis import strategies as st
from pypdf import PdfReader

from tests.builders import World, instant, open_world
from tests.fakes.lob_server import FakeLob
from tests.fakes.sendgrid_server import FakeSendGrid

AS_OF = instant("2026-12-02T05:00Z")
GOOD_PDF = build_invoice_placeholder_pdf("F-GOOD", ["1 x Widget"])
MARKER = b"OUTSIDE-THE-INVOICE-FOLDER-7f3c"
SECRET_PDF = b"%PDF-1.4\n% " + MARKER + b"\n%%EOF\n"  # looks like a PDF: only the folder rule stops it
LIMIT = 4096
LYON = "Leroy Paysage\n12 rue des Lilas\n69003 Lyon\nFrance"
RETURN_ADDRESS = "ACME Corp\n210 King St\nSan Francisco, CA 94107"
FAST = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02, max_retry_after=1)


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """``root`` (the invoice folder) and ``outside`` (a secret PDF-looking file beside it)."""
    root, outside = tmp_path / "pdfs", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.pdf").write_bytes(SECRET_PDF)
    return root, outside


# --- the rule -------------------------------------------------------------------------------


def test_a_pdf_inside_the_folder_is_read_by_relative_or_absolute_path(folders: tuple[Path, Path]) -> None:
    root, _ = folders
    (root / "2026").mkdir()
    (root / "2026" / "F-1.pdf").write_bytes(GOOD_PDF)
    for given_path in ("2026/F-1.pdf", str(root / "2026" / "F-1.pdf"), "./2026/../2026/F-1.pdf"):
        got = read_invoice_pdf(given_path, root, LIMIT)
        assert isinstance(got, InvoicePdf), given_path
        assert got.content == GOOD_PDF


def test_a_link_inside_the_folder_to_a_pdf_inside_it_is_followed(folders: tuple[Path, Path]) -> None:
    root, _ = folders
    (root / "real.pdf").write_bytes(GOOD_PDF)
    (root / "alias.pdf").symlink_to(root / "real.pdf")
    got = read_invoice_pdf("alias.pdf", root, LIMIT)
    assert isinstance(got, InvoicePdf) and got.content == GOOD_PDF


def test_a_folder_reached_through_a_link_still_holds_its_pdfs(tmp_path: Path) -> None:
    real = tmp_path / "real-root"
    real.mkdir()
    (real / "F-1.pdf").write_bytes(GOOD_PDF)
    (tmp_path / "root-link").symlink_to(real)
    got = read_invoice_pdf(str(tmp_path / "root-link" / "F-1.pdf"), tmp_path / "root-link", LIMIT)
    assert isinstance(got, InvoicePdf) and got.content == GOOD_PDF


@pytest.mark.parametrize(
    "pdf_path",
    [
        "/etc/passwd",
        "../../../../etc/passwd",
        "/proc/self/environ",
        "~root/.profile",
        "~/.profile",
        "/dev/zero",
        "inv\x00.pdf",
        "../outside/secret.pdf",
        "sub/../../outside/secret.pdf",
        "/",
        "..",
    ],
)
def test_paths_leading_out_of_the_folder_are_refused_unopened(
    folders: tuple[Path, Path], pdf_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = folders
    opened: list[Any] = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    got = read_invoice_pdf(pdf_path, root, LIMIT)
    assert isinstance(got, PdfRefusal)
    assert got.reason == OUTSIDE
    assert "DISPATCH_PDF_ROOT" in got.detail and str(root) in got.detail
    assert opened == []  # not even opened


def test_an_absolute_path_to_a_secret_outside_is_refused(folders: tuple[Path, Path]) -> None:
    root, outside = folders
    got = read_invoice_pdf(str(outside / "secret.pdf"), root, LIMIT)
    assert isinstance(got, PdfRefusal) and got.reason == OUTSIDE


def test_a_link_inside_the_folder_pointing_outside_is_refused(folders: tuple[Path, Path]) -> None:
    root, outside = folders
    (root / "evil.pdf").symlink_to(outside / "secret.pdf")
    (root / "dir-link").symlink_to(outside)
    (root / "zero.pdf").symlink_to("/dev/zero")
    for pdf_path in ("evil.pdf", "dir-link/secret.pdf", "zero.pdf"):
        got = read_invoice_pdf(pdf_path, root, LIMIT)
        assert isinstance(got, PdfRefusal) and got.reason == OUTSIDE, pdf_path


def test_a_sibling_folder_sharing_the_prefix_is_outside(tmp_path: Path) -> None:
    root = tmp_path / "pdfs"
    root.mkdir()
    (tmp_path / "pdfs-other").mkdir()
    (tmp_path / "pdfs-other" / "x.pdf").write_bytes(GOOD_PDF)
    got = read_invoice_pdf(str(tmp_path / "pdfs-other" / "x.pdf"), root, LIMIT)
    assert isinstance(got, PdfRefusal) and got.reason == OUTSIDE


@pytest.mark.timeout(30)
def test_a_fifo_is_refused_without_hanging(folders: tuple[Path, Path]) -> None:
    root, _ = folders
    os.mkfifo(root / "pipe.pdf")
    got = read_invoice_pdf("pipe.pdf", root, LIMIT)
    assert isinstance(got, PdfRefusal) and got.reason == INVALID
    assert "FIFO" in got.detail


@pytest.mark.timeout(30)
def test_a_fifo_opened_after_the_check_does_not_hang_either(folders: tuple[Path, Path]) -> None:
    """The descriptor is opened non-blocking and checked again: a FIFO swapped in for the
    file between the check and the open is refused, not waited on."""
    root, _ = folders
    os.mkfifo(root / "pipe.pdf")
    fd = _open_inside((root / "pipe.pdf").resolve(), os.path.realpath(root))
    os.close(fd)  # it opened at once: O_NONBLOCK (fstat then refuses it, see read_invoice_pdf)


def test_a_link_swapped_in_after_the_check_is_not_followed(folders: tuple[Path, Path]) -> None:
    root, outside = folders
    (root / "late.pdf").symlink_to(outside / "secret.pdf")
    with pytest.raises(OSError):
        _open_inside(root.resolve() / "late.pdf", os.path.realpath(root))
    (root / "sub").symlink_to(outside)
    with pytest.raises(OSError):
        _open_inside(root.resolve() / "sub" / "secret.pdf", os.path.realpath(root))


def test_a_directory_is_refused(folders: tuple[Path, Path]) -> None:
    root, _ = folders
    (root / "folder.pdf").mkdir()
    for pdf_path in ("folder.pdf", ".", str(root)):
        got = read_invoice_pdf(pdf_path, root, LIMIT)
        assert isinstance(got, PdfRefusal) and got.reason == INVALID, pdf_path
        assert "a directory" in got.detail


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="no /dev/null")
def test_a_device_inside_the_folder_is_refused(folders: tuple[Path, Path]) -> None:
    root, _ = folders
    try:
        os.mknod(root / "null.pdf", 0o600 | 0o020000, os.makedev(1, 3))  # character device 1,3
    except (PermissionError, AttributeError):
        pytest.skip("cannot create a device node here")
    got = read_invoice_pdf("null.pdf", root, LIMIT)
    assert isinstance(got, PdfRefusal) and got.reason == INVALID and "a device" in got.detail


def test_a_file_over_the_limit_is_refused(folders: tuple[Path, Path]) -> None:
    root, _ = folders
    (root / "big.pdf").write_bytes(b"%PDF-1.4\n" + b"0" * LIMIT)
    (root / "exact.pdf").write_bytes(b"%PDF-1.4\n" + b"0" * (LIMIT - 9))
    got = read_invoice_pdf("big.pdf", root, LIMIT)
    assert isinstance(got, PdfRefusal) and got.reason == INVALID
    assert "DISPATCH_PDF_MAX_BYTES" in got.detail and str(LIMIT) in got.detail
    exact = read_invoice_pdf("exact.pdf", root, LIMIT)
    assert isinstance(exact, InvoicePdf) and len(exact.content) == LIMIT


def test_a_file_that_is_not_a_pdf_is_refused(folders: tuple[Path, Path]) -> None:
    root, _ = folders
    (root / "notes.pdf").write_bytes(b"just text " + MARKER)
    (root / "empty.pdf").write_bytes(b"")
    for pdf_path in ("notes.pdf", "empty.pdf"):
        got = read_invoice_pdf(pdf_path, root, LIMIT)
        assert isinstance(got, PdfRefusal) and got.reason == INVALID
        assert "%PDF-" in got.detail
        assert MARKER.decode() not in got.detail


def test_a_missing_file_inside_the_folder_is_missing_pdf(folders: tuple[Path, Path]) -> None:
    root, _ = folders
    got = read_invoice_pdf("2026/gone.pdf", root, LIMIT)
    assert isinstance(got, PdfRefusal) and got.reason == MISSING
    assert "gone.pdf" in got.detail


def test_a_tilde_is_never_expanded(folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = folders
    monkeypatch.setenv("HOME", str(root))  # even where ~ would lead into the folder
    (root / "x.pdf").write_bytes(GOOD_PDF)
    got = locate_invoice_pdf("~/x.pdf", root)
    assert isinstance(got, PdfRefusal) and got.reason == OUTSIDE and "never expanded" in got.detail


@pytest.fixture(scope="module")
def maze(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with files, a subfolder, and links inside and outside, next to a secret."""
    base = tmp_path_factory.mktemp("maze")
    root, outside = base / "root", base / "outside"
    (root / "a").mkdir(parents=True)
    outside.mkdir()
    (outside / "s.pdf").write_bytes(SECRET_PDF)
    (root / "f.pdf").write_bytes(GOOD_PDF)
    (root / "a" / "f.pdf").write_bytes(GOOD_PDF)
    (root / "in").symlink_to(root / "a")
    (root / "out").symlink_to(outside)
    (root / "s.pdf").symlink_to(outside / "s.pdf")
    (root / "a" / "up").symlink_to("..")
    return base


SEGMENTS = st.sampled_from(["..", ".", "", "a", "in", "out", "up", "f.pdf", "s.pdf", "outside", "root", "~"])


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(SEGMENTS, min_size=1, max_size=7), absolute=st.booleans())
def test_no_combination_of_dots_links_and_names_reads_a_file_outside(
    maze: Path, parts: list[str], absolute: bool
) -> None:
    """Whatever ``..``, ``.``, links into and out of the folder combine into, a path either
    reads a PDF of the folder or is refused; the secret outside is never read."""
    root = maze / "root"
    pdf_path = "/".join(parts)
    if absolute:
        pdf_path = f"{maze}/{pdf_path}"
    got = read_invoice_pdf(pdf_path, root, LIMIT)
    if isinstance(got, InvoicePdf):
        assert got.content == GOOD_PDF
        assert got.path.is_relative_to(root.resolve())
    else:
        assert got.reason in (OUTSIDE, MISSING, INVALID)


# --- the two settings -------------------------------------------------------------------------


def test_the_settings_default_to_var_invoices_and_20_mib(tmp_path: Path) -> None:
    s = load_settings(environ={})
    assert s.pdf_root.parts[-2:] == ("var", "invoices") and s.pdf_root.is_absolute()
    assert s.pdf_max_bytes == DEFAULT_PDF_MAX_BYTES == 20 * 1024 * 1024
    s = load_settings(environ={"DISPATCH_PDF_ROOT": str(tmp_path), "DISPATCH_PDF_MAX_BYTES": "1000"})
    assert (s.pdf_root, s.pdf_max_bytes) == (tmp_path, 1000)


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1.5", "20MB"])
def test_a_bad_size_limit_is_one_line_and_exit_2(tmp_path: Path, value: str) -> None:
    from click.testing import CliRunner
    from dispatch.cli import main

    result = CliRunner().invoke(
        main,
        ["todo"],
        env={"DISPATCH_DB_URL": f"sqlite:///{tmp_path / 'd.db'}", "DISPATCH_PDF_MAX_BYTES": value},
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "DISPATCH_PDF_MAX_BYTES" in lines[0], result.output
    assert "Traceback" not in result.output


# --- end to end: whole runs with hostile pdf_path values beside good ones --------------------


def _environ_entries() -> list[bytes]:
    """Entries of this process's environment as /proc/self/environ shows them."""
    try:
        raw = Path("/proc/self/environ").read_bytes()
    except OSError:
        return []
    return [entry for entry in raw.split(b"\0") if len(entry) >= 12][:20]


def _system_markers() -> list[bytes]:
    """Bytes of the system files the hostile paths name: none may be in anything sent."""
    markers = [MARKER, *_environ_entries()]
    for name in ("/etc/passwd", "/root/.profile"):
        try:
            first = next(line for line in Path(name).read_bytes().splitlines() if len(line) >= 12)
        except (OSError, StopIteration):
            continue
        markers.append(first)
    return markers


#: invoice id → (pdf_path as the accounting system has it, the manual reason expected)
HOSTILE: dict[str, tuple[str, str]] = {
    "i_passwd": ("/etc/passwd", OUTSIDE),
    "i_dotdot": ("../../../../../../../../etc/passwd", OUTSIDE),
    "i_environ": ("/proc/self/environ", OUTSIDE),
    "i_home": ("~root/.profile", OUTSIDE),
    "i_zero": ("/dev/zero", OUTSIDE),
    "i_secret": ("<outside>/secret.pdf", OUTSIDE),
    "i_link": ("evil.pdf", OUTSIDE),
    "i_fifo": ("pipe.pdf", INVALID),
    "i_dir": ("folder.pdf", INVALID),
    "i_big": ("big.pdf", INVALID),
    "i_text": ("notes.pdf", INVALID),
    "i_gone": ("gone.pdf", MISSING),
}
GOOD = ("i_good_abs", "i_good_rel")


def _hostile_world(w: World, channel: str) -> dict[str, tuple[str, str]]:
    root, outside = w.pdf_root, w.root / "outside"
    root.mkdir(parents=True, exist_ok=True)
    outside.mkdir(exist_ok=True)
    (outside / "secret.pdf").write_bytes(SECRET_PDF)
    (root / "evil.pdf").symlink_to(outside / "secret.pdf")
    os.mkfifo(root / "pipe.pdf")
    (root / "folder.pdf").mkdir()
    (root / "big.pdf").write_bytes(b"%PDF-1.4\n% " + MARKER + b"0" * LIMIT)
    (root / "notes.pdf").write_bytes(b"meeting notes " + MARKER)
    (root / "rel.pdf").write_bytes(GOOD_PDF)
    w.extra_env["DISPATCH_PDF_MAX_BYTES"] = str(LIMIT)

    w.org("acme")
    if channel == "email":
        w.plan("p", channel="email")
        w.customer("c1", plan="p")
    else:
        w.plan("p", channel="letter", body="Please find invoice {{ invoice.number }} enclosed.")
        w.customer("c1", plan="p", email=None, address=LYON)
    w.load_config()
    cases = dict(HOSTILE)
    for invoice_id, (pdf_path, _) in cases.items():
        w.invoice(invoice_id, "c1")
        _set_pdf_path(w, invoice_id, pdf_path.replace("<outside>", str(outside)))
    w.invoice("i_good_abs", "c1", pdf=True)  # the builders' absolute path inside the folder
    w.invoice("i_good_rel", "c1")
    _set_pdf_path(w, "i_good_rel", "rel.pdf")
    return cases


def _set_pdf_path(w: World, invoice_id: str, pdf_path: str) -> None:
    with w.accounting.begin() as conn:
        conn.execute(
            sa.update(acc.invoices).where(acc.invoices.c.invoice_id == invoice_id).values(pdf_path=pdf_path)
        )


def _outbox_blobs(w: World) -> Iterator[bytes]:
    """Every file of the outbox (manifests too) and, for e-mails and letters, what they decode to."""
    for path in sorted(p for p in w.outbox.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        yield raw
        if path.suffix == ".eml":
            for part in BytesParser(policy=policy.default).parsebytes(raw).walk():
                payload = part.get_payload(decode=True)
                if isinstance(payload, bytes):
                    yield payload
        if path.suffix == ".pdf":
            yield from _pdf_texts(raw)


def _pdf_texts(raw: bytes) -> Iterator[bytes]:
    for page in PdfReader(io.BytesIO(raw)).pages:
        yield page.extract_text().encode("utf-8", "replace")


def _request_blobs(server: Any) -> Iterator[bytes]:
    """Every request a fake provider received, and the attachments / files inside them."""
    for request in server.requests:
        yield request.raw_body
        body = request.body if isinstance(request.body, dict) else {}
        for attachment in body.get("attachments", []) or []:
            yield base64.b64decode(attachment.get("content", ""))
        for upload in request.files.values():
            yield upload.content
            if upload.content.startswith(b"%PDF-"):
                yield from _pdf_texts(upload.content)


def _assert_outcomes(w: World, cases: dict[str, tuple[str, str]]) -> None:
    markers = _system_markers()
    for invoice_id, (_, reason) in cases.items():
        action = w.action(invoice_id)
        assert action is not None
        assert (action["status"], action["manual_reason"]) == ("manual", reason), (
            invoice_id,
            action["detail"],
        )
        assert action["detail"] and "pdf" in action["detail"].lower()
        assert all(m.decode("utf-8", "replace") not in action["detail"] for m in markers)
        assert w.sending_status(invoice_id) == "to_send"  # in the to-do list, not sent
    for invoice_id in GOOD:
        assert w.action(invoice_id)["status"] == "sent", w.action(invoice_id)
    todo = {r["invoice_id"]: r["manual_reason"] for r in w.rows("SELECT * FROM todo_invoicing")}
    assert todo == {k: v[1] for k, v in cases.items()}


def _assert_nothing_outside_was_sent(blobs: list[bytes]) -> None:
    assert blobs
    for marker in _system_markers():
        assert not any(marker in blob for blob in blobs), marker[:40]


@pytest.fixture
def world(backend: str, tmp_path: Path) -> Iterator[World]:
    with open_world(backend, tmp_path) as w:
        yield w


@pytest.mark.timeout(120)
def test_email_outbox_sends_the_good_invoices_and_no_byte_from_outside(world: World) -> None:
    w = world
    cases = _hostile_world(w, "email")
    report = w.run(AS_OF)

    _assert_outcomes(w, cases)
    assert report.counts["totals"]["manual"] == len(cases)
    emails = sorted(p.name for p in (w.outbox / "email").iterdir())
    assert len(emails) == len(GOOD)
    for invoice_id in GOOD:
        [attachment] = [p for p in w.email_of(invoice_id).iter_attachments()]
        assert attachment.get_payload(decode=True).startswith(b"%PDF-")
    rel = next(w.email_of("i_good_rel").iter_attachments()).get_payload(decode=True)
    assert rel == GOOD_PDF
    _assert_nothing_outside_was_sent(list(_outbox_blobs(w)))


@pytest.mark.timeout(120)
def test_email_through_sendgrid_sends_the_good_invoices_and_no_byte_from_outside(world: World) -> None:
    w = world
    cases = _hostile_world(w, "email")
    with FakeSendGrid(clock=lambda: AS_OF) as server:
        settings = w.settings(DISPATCH_EMAIL_BACKEND="sendgrid", **server.env())
        channels = build_channels(settings)
        channels["email"] = sg_module.from_settings(settings, "email", clock=lambda: AS_OF)
        w.run(AS_OF, settings=settings, channels=channels)
        close_channels(channels)
        mails = list(server.mails)
        blobs = list(_request_blobs(server))

    _assert_outcomes(w, cases)
    assert len(mails) == len(GOOD)
    sent = [base64.b64decode(a["content"]) for m in mails for a in m.body["attachments"]]
    assert GOOD_PDF in sent and all(pdf.startswith(b"%PDF-") for pdf in sent)
    _assert_nothing_outside_was_sent(blobs)


@pytest.mark.timeout(180)
def test_letters_in_the_outbox_carry_no_byte_from_outside(world: World) -> None:
    w = world
    cases = _hostile_world(w, "letter")
    w.run(AS_OF)

    _assert_outcomes(w, cases)
    letters = sorted((w.outbox / "letter").glob("*.pdf"))
    assert len(letters) == len(GOOD)
    for letter in letters:
        assert len(PdfReader(letter).pages) == 2  # cover page + the one-page invoice of the folder
    _assert_nothing_outside_was_sent(list(_outbox_blobs(w)))


@pytest.mark.timeout(180)
def test_letters_through_the_print_api_carry_no_byte_from_outside(world: World) -> None:
    w = world
    cases = _hostile_world(w, "letter")
    with FakeLob(clock=lambda: AS_OF) as lob:
        w.extra_env.update(
            {**lob.env(), "DISPATCH_LETTER_BACKEND": "printapi", "PRINTAPI_FROM_ADDRESS": RETURN_ADDRESS}
        )
        channels = build_channels(w.settings())
        channels["letter"].policy = FAST  # type: ignore[attr-defined]
        w.run(AS_OF, channels=channels)
        printed = list(lob.letters)
        blobs = list(_request_blobs(lob))

    _assert_outcomes(w, cases)
    assert len(printed) == len(GOOD)
    _assert_nothing_outside_was_sent(blobs)


@pytest.mark.timeout(120)
def test_todo_send_of_a_refused_pdf_still_reads_nothing_outside(world: World) -> None:
    """A person pressing "send" on the to-do entry goes through the same rule."""
    w = world
    cases = _hostile_world(w, "email")
    w.run(AS_OF)
    before = w.outbox_files()
    for invoice_id in ("i_passwd", "i_environ", "i_link", "i_text"):
        action = w.action(invoice_id)
        result = w.cli("todo", "send", action["action_id"], "--at", "2026-12-02T10:00:00Z")
        assert result.exit_code in (0, 2), result.output
        after = w.action(invoice_id)
        assert (after["status"], after["manual_reason"]) == ("manual", cases[invoice_id][1])
    assert w.outbox_files() == before
    _assert_nothing_outside_was_sent(list(_outbox_blobs(w)))


def test_after_the_pdf_is_put_in_the_folder_todo_send_sends_it(world: World) -> None:
    w = world
    w.pdf_root.mkdir(parents=True, exist_ok=True)
    w.org("acme").plan("p", channel="email").customer("c1", plan="p").load_config()
    w.invoice("i1", "c1")
    _set_pdf_path(w, "i1", "/etc/passwd")
    w.run(AS_OF)
    assert w.action("i1")["manual_reason"] == OUTSIDE

    (w.pdf_root / "i1.pdf").write_bytes(GOOD_PDF)
    _set_pdf_path(w, "i1", "i1.pdf")  # fixed in the accounting system: the re-check sees it
    result = w.cli("todo", "send", w.action("i1")["action_id"], "--at", "2026-12-02T10:00:00Z")
    assert result.exit_code == 0, result.output
    assert w.action("i1")["status"] == "sent"
    assert next(w.email_of("i1").iter_attachments()).get_payload(decode=True) == GOOD_PDF


def test_the_migrated_schema_accepts_the_new_reasons_and_no_others(world: World) -> None:
    w = world
    w.org("acme").plan("p").customer("c1", plan="p").load_config()
    w.invoice("i1", "c1")
    w.run(AS_OF)
    for reason in (OUTSIDE, INVALID, MISSING):
        with w.dispatch.begin() as conn:
            changed = conn.execute(
                sa.text("UPDATE invoice_actions SET status = 'manual', manual_reason = :r"), {"r": reason}
            )
        assert changed.rowcount == 1
    with pytest.raises(sa.exc.IntegrityError), w.dispatch.begin() as conn:
        conn.execute(sa.text("UPDATE invoice_actions SET manual_reason = 'not_a_reason'"))
    assert w.view_ids("todo_invoicing") == {"i1"}
