"""The print manifest of the outbox's letters: one CSV per day, one row per letter, never two.

A print house takes the day's PDFs with this file; a letter missing from it is not printed and
a row listed twice may be printed twice, so the tests pin its exact content, its behaviour on a
re-run, after a crash between the PDF and its row, and under concurrent writers.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from dispatch.channels.base import Attachment, OutgoingMessage, SendResult, TransientError
from dispatch.channels.formats import letter_manifest
from dispatch.channels.formats.letter_manifest import (
    COLUMNS,
    ManifestRow,
    append_row,
    manifest_path,
    read_manifest,
    rebuild_manifest,
)
from dispatch.channels.formats.letter_pdf import build_invoice_placeholder_pdf
from dispatch.channels.outbox import OutboxChannel
from pypdf import PdfReader

from tests.builders import World

UTC = dt.UTC
LYON = "Leroy Paysage\nService comptabilité\n12 rue des Lilas\n69003 Lyon\nFrance"
QUEENS = "Atlas Queens LLC\nAttn: Accounts Payable\n31-10 Thomson Avenue\nLong Island City, NY 11101"
TWO_PAGE_INVOICE = build_invoice_placeholder_pdf("F-2", [f"line {n}" for n in range(90)])


def letter(action_id: str, deliver_at: str, address: str = LYON, pdf: bytes | None = None) -> OutgoingMessage:
    return OutgoingMessage(
        action_id=action_id,
        invoice_id=f"inv_{action_id}",
        org_id="acme",
        channel="letter",
        recipients=(address,),
        deliver_at=dt.datetime.fromisoformat(deliver_at.replace("Z", "+00:00")),
        body_text="Please find your invoice enclosed.",
        sender_name="ACME SAS",
        attachments=(Attachment("invoice.pdf", pdf),) if pdf else (),
    )


def expected_row(outbox: Path, action_id: str, deliver_at: str, address: str) -> dict[str, str]:
    pdf = (outbox / "letter" / f"{action_id}.pdf").read_bytes()
    lines = address.splitlines()
    return {
        "action_id": action_id,
        "invoice_id": f"inv_{action_id}",
        "org_id": "acme",
        "file": f"letter/{action_id}.pdf",
        "pages": str(len(PdfReader(io.BytesIO(pdf)).pages)),
        "sha256": hashlib.sha256(pdf).hexdigest(),
        "deliver_date": deliver_at[:10],
        "deliver_at": deliver_at,
        **{f"address_{n}": (lines[n - 1] if n <= len(lines) else "") for n in range(1, 7)},
    }


def test_a_day_of_letters_is_listed_one_row_each_and_a_rerun_adds_nothing(tmp_path: Path) -> None:
    outbox = OutboxChannel(tmp_path, "letter")
    batch = [
        letter("act_a", "2026-12-02T05:00:00Z", LYON, pdf=TWO_PAGE_INVOICE),
        letter("act_b", "2026-12-02T07:30:00Z", QUEENS),
        letter("act_c", "2026-12-03T05:00:00Z", LYON),
    ]
    assert all(isinstance(r, SendResult) for r in outbox.send_many(batch))
    assert all(isinstance(r, SendResult) for r in outbox.send_many(batch))  # the same run again

    day = manifest_path(tmp_path, dt.date(2026, 12, 2))
    assert day == tmp_path / "letter-manifests" / "manifest-2026-12-02.csv"
    assert read_manifest(day) == [
        expected_row(tmp_path, "act_a", "2026-12-02T05:00:00Z", LYON),
        expected_row(tmp_path, "act_b", "2026-12-02T07:30:00Z", QUEENS),
    ]
    assert read_manifest(day)[0]["pages"] == "3"  # the cover letter + a two-page invoice
    assert read_manifest(manifest_path(tmp_path, dt.date(2026, 12, 3))) == [
        expected_row(tmp_path, "act_c", "2026-12-03T05:00:00Z", LYON)
    ]
    assert day.read_text(encoding="utf-8").splitlines()[0] == ",".join(COLUMNS)
    assert sorted(p.name for p in (tmp_path / "letter").iterdir()) == ["act_a.pdf", "act_b.pdf", "act_c.pdf"]


def test_a_letter_written_but_not_listed_is_listed_once_when_it_is_met_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = OutboxChannel(tmp_path, "letter")
    real_append = letter_manifest.append_row

    def disk_full(*args: Any) -> Path:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(letter_manifest, "append_row", disk_full)
    [failed] = outbox.send_many([letter("act_a", "2026-12-02T05:00:00Z")])
    assert isinstance(failed, TransientError)  # the PDF is there, its row is not: not done yet
    assert outbox.path_for("act_a").exists()
    assert read_manifest(manifest_path(tmp_path, dt.date(2026, 12, 2))) == []

    monkeypatch.setattr(letter_manifest, "append_row", real_append)
    settled = outbox.was_handed_over("act_a")  # a dead run's claim is settled…
    again = outbox.send_many([letter("act_a", "2026-12-02T05:00:00Z")])  # …or the action retried
    assert outbox.was_handed_over("act_a") == settled

    assert isinstance(settled, SendResult)
    assert isinstance(again[0], SendResult)
    rows = read_manifest(manifest_path(tmp_path, dt.date(2026, 12, 2)))
    assert [r["action_id"] for r in rows] == ["act_a"]


def test_a_long_address_keeps_every_line_in_six_columns(tmp_path: Path) -> None:
    block = "\n".join(f"Line {n}" for n in range(1, 9))
    outbox = OutboxChannel(tmp_path, "letter")
    outbox.send_many([letter("act_long", "2026-12-02T05:00:00Z", block)])

    [row] = read_manifest(manifest_path(tmp_path, dt.date(2026, 12, 2)))
    assert [row[f"address_{n}"] for n in range(1, 7)] == [
        "Line 1",
        "Line 2",
        "Line 3",
        "Line 4",
        "Line 5",
        "Line 6, Line 7, Line 8",
    ]


def test_concurrent_writers_append_whole_rows(tmp_path: Path) -> None:
    def row(n: int) -> ManifestRow:
        address = (f'Client "{n}", Inc.', "1 Main St", "Springfield, IL 62701", "", "", "")
        return ManifestRow(
            f"act_{n:03d}",
            f"inv_{n}",
            "acme",
            f"letter/act_{n:03d}.pdf",
            2,
            "0" * 64,
            "2026-12-02",
            "2026-12-02T05:00:00Z",
            address,
        )

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda n: append_row(tmp_path, row(n)), range(400)))

    path = manifest_path(tmp_path, dt.date(2026, 12, 2))
    with path.open(encoding="utf-8", newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == list(COLUMNS)
    assert sorted(tuple(r) for r in table[1:]) == sorted(tuple(row(n).cells()) for n in range(400))


def test_rebuilding_a_day_from_the_letters_gives_the_same_manifest(tmp_path: Path) -> None:
    outbox = OutboxChannel(tmp_path, "letter")
    outbox.send_many(
        [
            letter("act_b", "2026-12-02T07:30:00Z", QUEENS),
            letter("act_a", "2026-12-02T05:00:00Z", LYON),
            letter("act_c", "2026-12-03T05:00:00Z", LYON),
        ]
    )
    path = manifest_path(tmp_path, dt.date(2026, 12, 2))
    appended = read_manifest(path)
    path.unlink()

    rebuilt = read_manifest(rebuild_manifest(tmp_path, dt.date(2026, 12, 2)))

    assert sorted(appended, key=lambda r: r["action_id"]) == rebuilt
    assert [r["action_id"] for r in rebuilt] == ["act_a", "act_b"]


@pytest.fixture
def w(db_urls: dict[str, str], tmp_path) -> World:  # type: ignore[no-untyped-def]
    return World.create(db_urls, tmp_path)


def test_pipeline_run_lists_its_letters_in_the_day_s_manifest(w: World) -> None:
    w.org().plan("p_letter", channel="letter", body="Invoice {{ invoice.number }} enclosed.")
    w.customer("c_lyon", plan="p_letter", email=None, address=LYON)
    w.customer("c_queens", plan="p_letter", email=None, address=QUEENS)
    w.customer("c_none", plan="p_letter", email=None)  # no address: manual, not in the manifest
    w.load_config()
    w.invoice("i_lyon", "c_lyon", issued="2026-12-02", pdf=True)
    w.invoice("i_queens", "c_queens", issued="2026-12-02")
    w.invoice("i_none", "c_none", issued="2026-12-02")

    w.run("2026-12-02T05:00Z")
    w.run("2026-12-02T05:00Z")

    rows = read_manifest(manifest_path(w.outbox, dt.date(2026, 12, 2)))
    by_invoice = {r["invoice_id"]: r for r in rows}
    assert sorted(by_invoice) == ["i_lyon", "i_queens"] and len(rows) == 2
    for invoice_id, address in (("i_lyon", LYON), ("i_queens", QUEENS)):
        action = w.action(invoice_id)
        assert action["status"] == "sent"
        assert by_invoice[invoice_id] == expected_row(
            w.outbox, action["action_id"], "2026-12-02T05:00:00Z", address
        ) | {"invoice_id": invoice_id}
    assert by_invoice["i_lyon"]["pages"] == "2"
    assert w.action("i_none")["manual_reason"] == "no_contact"
