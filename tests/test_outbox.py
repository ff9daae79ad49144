"""The embedded outbox: files written once, whole, readable back; errors typed by what to do."""

from __future__ import annotations

import datetime as dt
import email
import io
import json
import os
import signal
import threading
from email import policy
from pathlib import Path

import pandas as pd
import pytest
from dispatch.channels import (
    Attachment,
    Channel,
    FatalChannelError,
    OutgoingMessage,
    PermanentError,
    SendResult,
    TransientError,
)
from dispatch.channels.factory import capabilities
from dispatch.channels.formats.letter_pdf import build_invoice_placeholder_pdf
from dispatch.channels.formats.mime import build_email
from dispatch.channels.outbox import OutboxChannel, write_all
from dispatch.rules.scheduling import classify_due
from pypdf import PdfReader

PARIS_0830 = dt.datetime(2025, 3, 3, 7, 30, tzinfo=dt.UTC)  # 08:30 in Paris
INVOICE_PDF = build_invoice_placeholder_pdf(
    "F-2025-0042", ["Consulting  1 200,00 EUR", "Total  1 440,00 EUR"]
)


def email_message(action_id: str = "act_1", **changes: object) -> OutgoingMessage:
    fields: dict[str, object] = {
        "action_id": action_id,
        "invoice_id": "inv_42",
        "org_id": "org_fr",
        "channel": "email",
        "recipients": ("compta@client.example", "boss@client.example"),
        "deliver_at": PARIS_0830,
        "subject": "Facture F-2025-0042 – 1 440,00 €",
        "body_text": "Bonjour,\nVeuillez trouver ci-joint la facture F-2025-0042.\n",
        "body_html": "<p>Bonjour,</p><p>Veuillez trouver ci-joint la facture <b>F-2025-0042</b>.</p>",
        "sender": "factures@acme.example",
        "sender_name": "ACME Société",
        "reply_to": "compta@acme.example",
        "attachments": (Attachment("F-2025-0042.pdf", INVOICE_PDF),),
    }
    fields.update(changes)
    return OutgoingMessage(**fields)  # type: ignore[arg-type]


def sms_message(action_id: str = "act_sms", **changes: object) -> OutgoingMessage:
    fields: dict[str, object] = {
        "action_id": action_id,
        "invoice_id": "inv_7",
        "org_id": "org_fr",
        "channel": "sms",
        "recipients": ("+33612345678",),
        "deliver_at": dt.datetime(2025, 3, 4, 9, 0, tzinfo=dt.timezone(dt.timedelta(hours=1))),
        "body_text": "ACME : votre facture F-7 de 99,00 € est disponible.",
    }
    fields.update(changes)
    return OutgoingMessage(**fields)  # type: ignore[arg-type]


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- e-mail -----------------------------------------------------------------------------


def test_email_file_is_a_complete_message_with_the_invoice_attached(tmp_path: Path) -> None:
    outbox = OutboxChannel(tmp_path, "email")
    [result] = outbox.send_many([email_message()])

    assert result == SendResult("act_1", "outbox", "email/act_1.eml", PARIS_0830)
    parsed = email.message_from_bytes((tmp_path / "email" / "act_1.eml").read_bytes(), policy=policy.default)
    assert [a.addr_spec for a in parsed["To"].addresses] == ["compta@client.example", "boss@client.example"]
    assert parsed["From"].addresses[0].display_name == "ACME Société"
    assert parsed["From"].addresses[0].addr_spec == "factures@acme.example"
    assert str(parsed["Reply-To"]) == "compta@acme.example"
    assert str(parsed["Subject"]) == "Facture F-2025-0042 – 1 440,00 €"
    assert str(parsed["Message-ID"]) == "<act_1@invoice-dispatch>"
    assert str(parsed["X-Deliver-At"]) == "2025-03-03T07:30:00Z"
    assert parsed["Date"].datetime == PARIS_0830
    assert str(parsed["X-Invoice-Dispatch-Action"]) == "act_1"
    assert str(parsed["X-Invoice-Dispatch-Invoice"]) == "inv_42"

    text = parsed.get_body(("plain",)).get_content()
    assert text.replace("\r\n", "\n") == "Bonjour,\nVeuillez trouver ci-joint la facture F-2025-0042.\n"
    assert "<b>F-2025-0042</b>" in parsed.get_body(("html",)).get_content()
    [attachment] = list(parsed.iter_attachments())
    assert attachment.get_filename() == "F-2025-0042.pdf"
    assert attachment.get_content_type() == "application/pdf"
    pdf_bytes = attachment.get_content()
    assert pdf_bytes == INVOICE_PDF
    assert len(PdfReader(io.BytesIO(pdf_bytes)).pages) == 1


def test_email_without_html_or_sender_uses_text_and_the_default_sender(tmp_path: Path) -> None:
    outbox = OutboxChannel(tmp_path, "email", default_sender="noreply@dispatch.example")
    outbox.send_many([email_message(body_html=None, sender=None, sender_name=None, attachments=())])

    parsed = email.message_from_bytes((tmp_path / "email" / "act_1.eml").read_bytes(), policy=policy.default)
    assert str(parsed["From"]) == "noreply@dispatch.example"
    assert parsed.get_content_type() == "text/plain"
    assert parsed.get_body(("html",)) is None


def test_second_send_of_an_action_leaves_the_file_untouched(tmp_path: Path) -> None:
    outbox = OutboxChannel(tmp_path, "email")
    [first] = outbox.send_many([email_message()])
    path = tmp_path / "email" / "act_1.eml"
    before = (path.read_bytes(), path.stat().st_mtime_ns)

    later = PARIS_0830 + dt.timedelta(days=1)
    [second] = outbox.send_many([email_message(subject="Another subject", deliver_at=later)])

    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert second == first  # same provider id and the delivery time of the file, not of the retry
    assert files_in(tmp_path / "email") == ["act_1.eml"]  # no temp file left behind


def test_was_handed_over_reads_the_delivery_time_back(tmp_path: Path) -> None:
    outbox = OutboxChannel(tmp_path, "email")
    assert outbox.was_handed_over("act_1") is False
    outbox.send_many([email_message()])

    fresh = OutboxChannel(tmp_path, "email")  # a later run: nothing in memory
    assert fresh.was_handed_over("act_1") == SendResult("act_1", "outbox", "email/act_1.eml", PARIS_0830)
    assert fresh.was_handed_over("act_2") is False
    assert fresh.was_handed_over("../email/act_1") is False


@pytest.mark.parametrize(
    "changes",
    [
        {"subject": "Invoice\r\nBcc: victim@example.com"},
        {"subject": "Invoice\nBcc: victim@example.com"},
        {"subject": "Invoice\u2028Bcc: victim@example.com"},
        {"sender_name": "ACME\r\nBcc: victim@example.com"},
        {"recipients": ("a@example.com\r\nBcc: victim@example.com",)},
        {"reply_to": "a@example.com\nX-Evil: 1"},
    ],
)
def test_header_with_a_line_break_is_refused(tmp_path: Path, changes: dict[str, object]) -> None:
    message = email_message(**changes)
    with pytest.raises(ValueError, match="line break"):
        build_email(message, default_sender=None)

    [result] = OutboxChannel(tmp_path, "email").send_many([message])
    assert isinstance(result, PermanentError)
    assert files_in(tmp_path / "email") == []


@pytest.mark.parametrize(
    "changes",
    [
        {"recipients": ()},
        {"recipients": ("not an address",)},
        {"sender": None},  # and no default sender
        {"deliver_at": dt.datetime(2025, 3, 3, 8, 30)},  # naive
    ],
)
def test_message_that_cannot_become_an_email_is_a_permanent_error(
    tmp_path: Path, changes: dict[str, object]
) -> None:
    [result] = OutboxChannel(tmp_path, "email").send_many([email_message(**changes)])
    assert isinstance(result, PermanentError)
    assert result.reason == "provider_rejected"
    assert files_in(tmp_path / "email") == []


def test_one_bad_message_does_not_stop_the_others(tmp_path: Path) -> None:
    outbox = OutboxChannel(tmp_path, "email")
    results = outbox.send_many(
        [email_message("act_a"), email_message("act_b", subject="x\ny"), email_message("act_c")]
    )
    assert [type(r) for r in results] == [SendResult, PermanentError, SendResult]
    assert files_in(tmp_path / "email") == ["act_a.eml", "act_c.eml"]


def test_action_id_that_would_escape_the_directory_is_refused(tmp_path: Path) -> None:
    outbox = OutboxChannel(tmp_path / "outbox", "email")
    results = outbox.send_many([email_message("../../evil"), email_message(".hidden"), email_message("a/b")])
    assert all(isinstance(r, PermanentError) for r in results)
    assert files_in(tmp_path) == ["outbox"]
    assert files_in(tmp_path / "outbox" / "email") == []


def race_two_workers(root: Path, action_id: str) -> list[object]:
    """Both workers (separate instances) call send_many for the same action at the same moment."""
    barrier = threading.Barrier(2)
    results: list[object] = [None, None]

    def hand_over(slot: int) -> None:
        outbox = OutboxChannel(root, "email")
        message = email_message(action_id, subject=f"from worker {slot}")
        barrier.wait()
        try:
            results[slot] = outbox.send_many([message])[0]
        except Exception as exc:  # recorded, so that the test fails on it
            results[slot] = exc

    threads = [threading.Thread(target=hand_over, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_two_threads_handing_over_the_same_action_make_one_file(tmp_path: Path) -> None:
    # Repeated to give the race a real chance; each round uses its own action.
    for round_no in range(25):
        action_id = f"act_race_{round_no}"
        results = race_two_workers(tmp_path, action_id)

        expected = SendResult(action_id, "outbox", f"email/{action_id}.eml", PARIS_0830)
        assert results == [expected, expected]
        parsed = email.message_from_bytes(
            (tmp_path / "email" / f"{action_id}.eml").read_bytes(), policy=policy.default
        )
        assert str(parsed["Subject"]) in {"from worker 0", "from worker 1"}
    assert len(files_in(tmp_path / "email")) == 25
    assert not [name for name in files_in(tmp_path / "email") if name.startswith(".")]


def test_worker_that_loses_the_race_after_rendering_returns_the_winners_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = OutboxChannel(tmp_path, "sms")
    rival = OutboxChannel(tmp_path, "sms")
    real_render = OutboxChannel._render

    def render_while_rival_writes(self: OutboxChannel, message: OutgoingMessage) -> bytes:
        content = real_render(self, message)
        if self is outbox:  # the rival hands the same action over between our check and our link
            rival.send_many([sms_message(body_text="rival text", deliver_at=PARIS_0830)])
        return content

    monkeypatch.setattr(OutboxChannel, "_render", render_while_rival_writes)
    [result] = outbox.send_many([sms_message()])

    assert result == SendResult("act_sms", "outbox", "sms/act_sms.json", PARIS_0830)
    record = json.loads((tmp_path / "sms" / "act_sms.json").read_text(encoding="utf-8"))
    assert record["body"] == "rival text"
    assert files_in(tmp_path / "sms") == ["act_sms.json"]


# --- SMS ---------------------------------------------------------------------------------


def test_sms_file_holds_the_message_and_its_delivery_time(tmp_path: Path) -> None:
    outbox = OutboxChannel(tmp_path, "sms")
    [result] = outbox.send_many([sms_message()])

    deliver_at_utc = dt.datetime(2025, 3, 4, 8, 0, tzinfo=dt.UTC)
    assert result == SendResult("act_sms", "outbox", "sms/act_sms.json", deliver_at_utc)
    record = json.loads((tmp_path / "sms" / "act_sms.json").read_text(encoding="utf-8"))
    assert record == {
        "action_id": "act_sms",
        "invoice_id": "inv_7",
        "org_id": "org_fr",
        "to": "+33612345678",
        "body": "ACME : votre facture F-7 de 99,00 € est disponible.",
        "deliver_at": "2025-03-04T08:00:00Z",
    }
    assert OutboxChannel(tmp_path, "sms").was_handed_over("act_sms") == result


def test_sms_needs_exactly_one_number(tmp_path: Path) -> None:
    outbox = OutboxChannel(tmp_path, "sms")
    results = outbox.send_many(
        [sms_message("a", recipients=()), sms_message("b", recipients=("+331", "+332"))]
    )
    assert all(isinstance(r, PermanentError) for r in results)
    assert files_in(tmp_path / "sms") == []


# --- letters -----------------------------------------------------------------------------


def letter_message(action_id: str = "act_letter", invoice_pdf: bytes = INVOICE_PDF) -> OutgoingMessage:
    return OutgoingMessage(
        action_id=action_id,
        invoice_id="inv_9",
        org_id="org_fr",
        channel="letter",
        recipients=("Client Lecomte SARL\nService comptabilité\n12 rue des Lilas\n69003 Lyon\nFRANCE",),
        deliver_at=PARIS_0830,
        body_text="Madame, Monsieur,\n\nVeuillez trouver ci-joint notre facture F-9.\n\nCordialement",
        sender_name="ACME SAS",
        metadata={
            "sender_address": "1 place de la Bourse\n75002 Paris",
            "date_line": "Paris, le 3 mars 2025",
        },
        attachments=(Attachment("F-9.pdf", invoice_pdf),),
    )


def test_letter_is_a_cover_page_then_the_invoice_pages(tmp_path: Path) -> None:
    three_page_invoice = build_invoice_placeholder_pdf("F-9", [f"line {i}" for i in range(120)])
    invoice_pages = len(PdfReader(io.BytesIO(three_page_invoice)).pages)
    assert invoice_pages == 3

    outbox = OutboxChannel(tmp_path, "letter")
    [result] = outbox.send_many([letter_message(invoice_pdf=three_page_invoice)])

    assert result == SendResult("act_letter", "outbox", "letter/act_letter.pdf", PARIS_0830)
    reader = PdfReader(tmp_path / "letter" / "act_letter.pdf")
    assert len(reader.pages) == 1 + invoice_pages
    cover = reader.pages[0].extract_text()
    for expected in (
        "Client Lecomte SARL",
        "12 rue des Lilas",
        "69003 Lyon",
        "ACME SAS",
        "75002 Paris",
        "Paris, le 3 mars 2025",
        "Veuillez trouver ci-joint notre facture F-9.",
    ):
        assert expected in cover
    assert "Invoice F-9" in reader.pages[1].extract_text()
    assert "line 119" in reader.pages[3].extract_text()


def test_letter_delivery_time_is_read_back_from_the_pdf(tmp_path: Path) -> None:
    OutboxChannel(tmp_path, "letter").send_many([letter_message()])
    path = tmp_path / "letter" / "act_letter.pdf"
    os.utime(path, (0, 0))  # the mtime says 1970: the answer must not come from it

    handed_over = OutboxChannel(tmp_path, "letter").was_handed_over("act_letter")
    assert handed_over == SendResult("act_letter", "outbox", "letter/act_letter.pdf", PARIS_0830)
    assert OutboxChannel(tmp_path, "letter").was_handed_over("act_other") is False


def test_letter_with_an_unreadable_invoice_pdf_is_refused(tmp_path: Path) -> None:
    [result] = OutboxChannel(tmp_path, "letter").send_many([letter_message(invoice_pdf=b"not a pdf")])
    assert isinstance(result, PermanentError)
    assert files_in(tmp_path / "letter") == []


# --- the channel as a whole --------------------------------------------------------------


def test_the_outbox_holds_any_delivery_time_and_the_due_rule_keeps_letters_on_their_day(
    tmp_path: Path,
) -> None:
    for channel in ("email", "sms", "letter"):
        assert OutboxChannel(tmp_path, channel).max_schedule_ahead() >= dt.timedelta(days=365)
    rules = capabilities({ch: OutboxChannel(tmp_path, ch) for ch in ("email", "letter")})
    tomorrow = pd.DataFrame(
        {
            "scheduled_for": pd.to_datetime(["2025-03-04T07:30Z"] * 2, utc=True),
            "scheduled_local_date": [dt.date(2025, 3, 4)] * 2,
            "timezone": ["Europe/Paris"] * 2,
            "channel": ["email", "letter"],
            "automatic": [True, True],
        }
    )
    due = classify_due(tomorrow, PARIS_0830, rules, horizon=PARIS_0830 + dt.timedelta(days=2))
    assert due["due"].tolist() == [True, False]  # the e-mail goes ahead, the letter waits for its day
    # a dispatcher adds it to "now": that must not overflow
    assert PARIS_0830 + OutboxChannel(tmp_path, "email").max_schedule_ahead() > PARIS_0830


def test_outbox_implements_the_channel_protocol(tmp_path: Path) -> None:
    outbox = OutboxChannel(tmp_path, "sms")
    assert isinstance(outbox, Channel)
    assert (outbox.provider, outbox.channel) == ("outbox", "sms")
    with pytest.raises(ValueError):
        OutboxChannel(tmp_path, "fax")


def test_message_of_another_channel_stops_the_batch_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(FatalChannelError):
        OutboxChannel(tmp_path, "email").send_many([email_message("ok"), sms_message()])
    assert not (tmp_path / "email").exists()


def test_unusable_outbox_directory_stops_the_batch(tmp_path: Path) -> None:
    (tmp_path / "email").write_text("a file where the directory should be")
    with pytest.raises(FatalChannelError, match="not usable"):
        OutboxChannel(tmp_path, "email").send_many([email_message()])


def test_write_failure_is_transient_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = OutboxChannel(tmp_path, "sms")
    outbox.send_many([sms_message("act_ok")])

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    [result] = outbox.send_many([sms_message("act_full")])

    assert isinstance(result, TransientError)
    assert result.reason == "provider_error"
    assert files_in(tmp_path / "sms") == ["act_ok.json"]
    assert outbox.was_handed_over("act_full") is False


# --- a chunk written at once (issue 8): fsynced together, each file still whole or absent ----


def test_write_all_writes_each_file_once_and_reports_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "taken").write_bytes(b"first")
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        if os.fstat(fd).st_size == len(b"no room"):
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    results = write_all(
        [
            (tmp_path / "a", b"alpha"),
            (tmp_path / "taken", b"second"),
            (tmp_path / "full", b"no room"),
            (tmp_path / "missing-dir" / "x", b"x"),
            (tmp_path / "b", b"beta"),
        ]
    )

    assert results[:3] == [True, False, results[2]] and isinstance(results[2], OSError)
    assert isinstance(results[3], OSError) and results[4] is True
    assert len(synced) == 4  # every file opened was fsynced before any link
    assert (tmp_path / "a").read_bytes() == b"alpha" and (tmp_path / "b").read_bytes() == b"beta"
    assert (tmp_path / "taken").read_bytes() == b"first"  # never replaced
    assert not (tmp_path / "full").exists()  # a file whose fsync failed never gets its name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "taken"]  # no temporary file left


def test_no_file_is_linked_before_every_file_of_the_chunk_is_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[str] = []
    real_fsync, real_link = os.fsync, os.link

    def fsync(fd: int) -> None:
        order.append("fsync")
        real_fsync(fd)

    def link(src: Path, dst: Path) -> None:
        order.append("link")
        real_link(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    outbox = OutboxChannel(tmp_path, "email")
    results = outbox.send_many([email_message(f"act_{i}") for i in range(5)])
    assert all(isinstance(r, SendResult) for r in results)
    file_steps = [step for step in order if step in ("fsync", "link")]
    # the directory probe links first; then five fsyncs, five links, the directory's fsync
    assert file_steps[-11:] == ["fsync"] * 5 + ["link"] * 5 + ["fsync"]


def test_the_same_action_twice_in_one_chunk_is_one_file(tmp_path: Path) -> None:
    outbox = OutboxChannel(tmp_path, "email")
    first, second = outbox.send_many(
        [email_message("act_twice"), email_message("act_twice", subject="Other")]
    )
    assert isinstance(first, SendResult) and isinstance(second, SendResult)
    assert files_in(tmp_path / "email") == ["act_twice.eml"]
    assert b"Other" not in (tmp_path / "email" / "act_twice.eml").read_bytes()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_a_forked_process_writes_with_threads_of_its_own(tmp_path: Path) -> None:
    """A prefork worker forked after the parent wrote a chunk still writes (no inherited pool)."""
    assert write_all([(tmp_path / "parent", b"p")]) == [True]
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if it could write, within 20 s
        signal.alarm(20)
        try:
            os._exit(0 if write_all([(tmp_path / "child", b"c")]) == [True] else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert (tmp_path / "child").read_bytes() == b"c"
