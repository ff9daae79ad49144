"""The SMTP e-mail channel against a local aiosmtpd relay (``tests/fakes/smtp_server.py``),
through the real ``smtplib``: what the relay receives, and what each of its replies does.

Channel-level tests call ``send_many``; end-to-end tests drive ``run_pipeline`` with
``DISPATCH_EMAIL_BACKEND=smtp`` pointed at the relay. Waits between retries are recorded, not
slept.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator

import pytest
from dispatch.channels.base import (
    Attachment,
    DeliveryUnknownError,
    FatalChannelError,
    OutgoingMessage,
    PermanentError,
    SendResult,
    TransientError,
)
from dispatch.channels.factory import build_channels, close_channels
from dispatch.channels.formats.letter_pdf import build_invoice_placeholder_pdf
from dispatch.channels.retry import RetryPolicy
from dispatch.channels.smtp import SmtpChannel, dot_stuffed, from_settings
from dispatch.config.settings import airflow_connection_values, load_settings
from dispatch.errors import DispatchError
from pypdf import PdfReader

from tests.builders import World, eml_parts, instant
from tests.fakes.smtp_server import FakeSMTP

AS_OF = instant("2026-12-02T05:00Z")
INVOICE_PDF = build_invoice_placeholder_pdf("F-2026-0001", ["Consulting  1 200,00 EUR"])


@pytest.fixture
def sleeps() -> list[float]:
    """Every wait the channel asked for, instead of waiting (passed as its ``sleep``)."""
    return []


def no_wait(seconds: float) -> None:
    """The channel's ``sleep`` where a test does not look at the waits."""


@pytest.fixture
def relay() -> Iterator[FakeSMTP]:
    with FakeSMTP() as fake:
        yield fake


def channel_for(relay: FakeSMTP, **kw: object) -> SmtpChannel:
    options: dict[str, object] = {"starttls": False, "timeout": 5.0, "sleep": no_wait}
    options.update(kw)
    return SmtpChannel(relay.host, relay.port, **options)  # type: ignore[arg-type]


def message(action_id: str = "act_1", **changes: object) -> OutgoingMessage:
    fields: dict[str, object] = {
        "action_id": action_id,
        "invoice_id": f"inv_{action_id}",
        "org_id": "acme",
        "channel": "email",
        "recipients": ("ap@client.example", "boss@client.example"),
        "deliver_at": AS_OF,
        "subject": "Invoice F-2026-0001 from ACME SAS",
        "body_text": "Dear Client,\n.\nplease find invoice F-2026-0001 attached.",
        "body_html": "<p>Dear Client, please find invoice F-2026-0001 attached.</p>",
        "sender": "billing@acme.example",
        "sender_name": "ACME SAS",
        "reply_to": "accounts@acme.example",
        "attachments": (Attachment("invoice-F-2026-0001.pdf", INVOICE_PDF),),
    }
    fields.update(changes)
    return OutgoingMessage(**fields)  # type: ignore[arg-type]


# --- what the relay receives ----------------------------------------------------------------


def test_the_delivered_message_parses_back_whole(relay: FakeSMTP) -> None:
    [result] = channel_for(relay).send_many([message()])

    [mail] = relay.messages
    assert isinstance(result, SendResult)
    assert (result.provider, result.provider_message_id, result.note) == (
        "smtp",
        "<act_1@invoice-dispatch>",
        None,
    )
    assert mail.mail_from == "billing@acme.example"
    assert mail.rcpt_tos == ("ap@client.example", "boss@client.example")
    parsed = mail.message
    assert parsed["Message-ID"] == "<act_1@invoice-dispatch>"
    assert parsed["From"] == "ACME SAS <billing@acme.example>"
    assert parsed["Reply-To"] == "accounts@acme.example"
    assert parsed["Subject"] == "Invoice F-2026-0001 from ACME SAS"
    parts = eml_parts(parsed)
    assert parts["text"].splitlines()[1] == "."  # a lone dot survives dot-stuffing
    assert "F-2026-0001" in parts["html"]
    content_type, pdf = parts["attachments"]["invoice-F-2026-0001.pdf"]
    assert content_type == "application/pdf" and pdf == INVOICE_PDF
    assert "F-2026-0001" in PdfReader(io.BytesIO(pdf)).pages[0].extract_text()
    assert mail.answered


def test_the_date_header_is_the_hand_over_not_a_later_delivery_time(relay: FakeSMTP) -> None:
    later_today = AS_OF + dt.timedelta(hours=2, minutes=30)
    channel_for(relay, clock=lambda: AS_OF).send_many([message(deliver_at=later_today)])
    parsed = relay.messages[0].message
    assert parsed["Date"].datetime == AS_OF
    assert parsed["X-Deliver-At"] == "2026-12-02T07:30:00Z"


def test_dot_stuffing_doubles_leading_dots_and_terminates() -> None:
    assert dot_stuffed(b"a\r\n.b\r\n.") == b"a\r\n..b\r\n..\r\n.\r\n"


def test_a_relay_cannot_schedule_and_cannot_tell_about_lost_claims(relay: FakeSMTP) -> None:
    channel = channel_for(relay)
    assert channel.max_schedule_ahead() is None
    assert channel.was_handed_over("act_1") is None


def test_one_connection_carries_a_batch(relay: FakeSMTP, monkeypatch: pytest.MonkeyPatch) -> None:
    channel = channel_for(relay, max_connections=1)
    opened: list[object] = []
    real_open = channel._open

    def counting_open():  # type: ignore[no-untyped-def]
        conn = real_open()
        opened.append(conn)
        return conn

    monkeypatch.setattr(channel, "_open", counting_open)
    results = channel.send_many([message(f"a{n}") for n in range(5)])

    assert all(isinstance(r, SendResult) for r in results)
    assert len(relay.messages) == 5
    assert len(opened) == 1


def test_a_few_connections_work_at_once(relay: FakeSMTP) -> None:
    results = channel_for(relay, max_connections=4).send_many([message(f"a{n}") for n in range(12)])
    assert [r.action_id for r in results] == [f"a{n}" for n in range(12)]  # type: ignore[union-attr]
    assert sorted(m.message["Message-ID"] for m in relay.messages) == sorted(
        f"<a{n}@invoice-dispatch>" for n in range(12)
    )


# --- replies and failures -------------------------------------------------------------------


def test_550_for_every_recipient_is_a_permanent_refusal(relay: FakeSMTP, sleeps: list[float]) -> None:
    relay.inject(stage="rcpt", code=550, times=2)
    [refused, after] = channel_for(relay, sleep=sleeps.append, max_connections=1).send_many(
        [message("a1"), message("a2")]
    )

    assert isinstance(refused, PermanentError)
    assert "550 5.1.1 Recipient address rejected" in str(refused)
    assert isinstance(after, SendResult)  # the session went on after RSET
    assert [m.message["Message-ID"] for m in relay.messages] == ["<a2@invoice-dispatch>"]
    assert sleeps == []


def test_550_for_one_recipient_sends_to_the_others_and_says_so(relay: FakeSMTP) -> None:
    relay.inject(stage="rcpt", code=550, address="boss@client.example")
    [result] = channel_for(relay).send_many([message()])

    assert isinstance(result, SendResult)
    assert result.note is not None and "boss@client.example 550" in result.note
    assert relay.messages[0].rcpt_tos == ("ap@client.example",)


def test_550_after_data_is_permanent(relay: FakeSMTP) -> None:
    relay.inject(stage="data", code=554)
    [result] = channel_for(relay).send_many([message()])
    assert isinstance(result, PermanentError) and "554" in str(result)


def test_451_is_retried_then_sent_once(relay: FakeSMTP, sleeps: list[float]) -> None:
    relay.inject(stage="data", code=451)
    [result] = channel_for(relay, sleep=sleeps.append).send_many([message()])
    assert isinstance(result, SendResult)
    assert len(relay.messages) == 1 and len(sleeps) == 1


def test_451_every_time_is_transient(relay: FakeSMTP, sleeps: list[float]) -> None:
    relay.inject(stage="mail", code=451, times=10)
    [result] = channel_for(relay, sleep=sleeps.append, policy=RetryPolicy(attempts=3)).send_many([message()])
    assert isinstance(result, TransientError) and "451" in str(result)
    assert relay.messages == [] and len(sleeps) == 2


def test_disconnect_after_data_is_delivery_unknown_and_not_retried(
    relay: FakeSMTP, sleeps: list[float]
) -> None:
    relay.inject(stage="data", disconnect=True)
    [unknown, next_one] = channel_for(relay, sleep=sleeps.append, max_connections=1).send_many(
        [message("a1"), message("a2")]
    )

    assert isinstance(unknown, DeliveryUnknownError)
    assert isinstance(next_one, SendResult)  # a new connection for the next message
    assert [(m.message["Message-ID"], m.answered) for m in relay.messages] == [
        ("<a1@invoice-dispatch>", False),
        ("<a2@invoice-dispatch>", True),
    ]
    assert sleeps == []


def test_connection_refused_is_transient(sleeps: list[float]) -> None:
    with FakeSMTP() as gone:
        port = gone.port
    [result] = SmtpChannel("127.0.0.1", port, starttls=False, timeout=2, sleep=sleeps.append).send_many(
        [message()]
    )
    assert isinstance(result, TransientError) and "cannot connect" in str(result)
    assert len(sleeps) == RetryPolicy().attempts - 1


def test_unknown_host_stops_the_batch(sleeps: list[float]) -> None:
    channel = SmtpChannel("smtp.relay.invalid", 587, timeout=5, sleep=sleeps.append)
    with pytest.raises(FatalChannelError, match="cannot be resolved") as stopped:
        channel.send_many([message("a1"), message("a2")])
    assert stopped.value.results == [None, None]
    assert sleeps == []


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_authentication_failure_stops_the_batch_and_never_shows_the_password() -> None:
    with FakeSMTP(user="dispatch", password="s3cret") as relay:
        bad = SmtpChannel(relay.host, relay.port, user="dispatch", password="wrong-pw", starttls=False)
        with pytest.raises(FatalChannelError, match="535") as stopped:
            bad.send_many([message()])
        assert "wrong-pw" not in str(stopped.value) and "wrong-pw" not in repr(bad)
        good = SmtpChannel(relay.host, relay.port, user="dispatch", password="s3cret", starttls=False)
        [result] = good.send_many([message()])

        assert isinstance(result, SendResult)
        assert len(relay.messages) == 1


def test_starttls_required_but_not_offered_stops_the_batch(relay: FakeSMTP) -> None:
    with pytest.raises(FatalChannelError, match="STARTTLS"):
        channel_for(relay, starttls=True).send_many([message()])
    assert relay.messages == []


def test_settings_and_airflow_connection() -> None:
    settings = load_settings(
        environ={
            "DISPATCH_EMAIL_BACKEND": "smtp",
            "SMTP_HOST": "relay.acme.example",
            "SMTP_PORT": "2525",
            "SMTP_USER": "dispatch",
            "SMTP_PASSWORD": "pw",
            "SMTP_STARTTLS": "false",
            "SMTP_TIMEOUT": "12.5",
            "SMTP_CONNECTIONS": "2",
        }
    )
    channel = from_settings(settings, "email")
    assert (channel.host, channel.port, channel.user, channel.starttls, channel.timeout) == (
        "relay.acme.example",
        2525,
        "dispatch",
        False,
        12.5,
    )
    assert channel.max_connections == 2
    assert from_settings(settings.with_(smtp_port=465), "email").implicit_tls is True
    with pytest.raises(DispatchError, match="SMTP_HOST"):
        from_settings(settings.with_(smtp_host=None), "email")

    def lookup(conn_id: str) -> dict | None:
        if conn_id != "smtp_default":
            return None
        return {
            "host": "mail.acme.example",
            "port": 25,
            "login": "u",
            "password": "p",
            "extra": {"disable_tls": True},
        }

    values = airflow_connection_values(lookup)
    assert (values["smtp_host"], values["smtp_port"], values["smtp_starttls"]) == (
        "mail.acme.example",
        25,
        False,
    )


# --- end to end: run_pipeline with DISPATCH_EMAIL_BACKEND=smtp ----------------------------------


@pytest.fixture
def w(db_urls: dict[str, str], tmp_path) -> World:  # type: ignore[no-untyped-def]
    world = World.create(db_urls, tmp_path)
    world.org("acme").plan("p_mail", delay=0)
    return world


def run(w: World, relay: FakeSMTP, at: str, sleep=no_wait):  # type: ignore[no-untyped-def]
    """A pipeline run whose e-mail channel the factory builds from the settings, waiting
    between retries through ``sleep``."""
    settings = w.settings(**{"DISPATCH_EMAIL_BACKEND": "smtp", **relay.env()})
    channels = build_channels(settings)
    channels["email"] = from_settings(settings, "email", sleep=sleep)
    try:
        return w.run(at, settings=settings, channels=channels)
    finally:
        close_channels(channels)


def test_pipeline_delivers_through_smtp_once_across_reruns(w: World, relay: FakeSMTP) -> None:
    w.customer("c1", plan="p_mail").load_config()
    w.invoice("i1", "c1", pdf=True)

    run(w, relay, "2026-12-02T05:00Z")
    run(w, relay, "2026-12-02T05:00Z")
    run(w, relay, "2026-12-03T05:00Z")

    [mail] = relay.messages
    action = w.action("i1")
    assert (action["status"], action["provider"], action["provider_message_id"]) == (
        "sent",
        "smtp",
        f"<{action['action_id']}@invoice-dispatch>",
    )
    assert mail.message["Message-ID"] == action["provider_message_id"]
    assert mail.rcpt_tos == ("c1@customers.example",)
    assert mail.message["Subject"] == "Invoice I1 from ACME SAS"
    [(name, (kind, pdf))] = eml_parts(mail.message)["attachments"].items()
    assert (name, kind) == ("invoice-I1.pdf", "application/pdf")
    assert len(PdfReader(io.BytesIO(pdf)).pages) >= 1
    assert w.sending_status("i1") == "sent"


def test_pipeline_550_makes_the_action_manual_provider_rejected(w: World, relay: FakeSMTP) -> None:
    w.customer("c1", plan="p_mail").load_config()
    w.invoice("i1", "c1")
    relay.inject(stage="rcpt", code=550)

    run(w, relay, "2026-12-02T05:00Z")

    action = w.action("i1")
    assert (action["status"], action["manual_reason"]) == ("manual", "provider_rejected")
    assert "550 5.1.1 Recipient address rejected" in action["detail"]
    assert relay.messages == []


def test_pipeline_451_leaves_the_action_for_a_later_run(
    w: World, relay: FakeSMTP, sleeps: list[float]
) -> None:
    w.customer("c1", plan="p_mail").load_config()
    w.invoice("i1", "c1")
    relay.inject(stage="data", code=451, times=RetryPolicy().attempts)

    run(w, relay, "2026-12-02T05:00Z", sleep=sleeps.append)
    first = w.action("i1")
    run(w, relay, "2026-12-03T05:00Z", sleep=sleeps.append)

    assert (first["status"], first["attempts"], first["manual_reason"]) == ("scheduled", 1, None)
    [retry] = [e for e in w.events("i1") if e["event"] == "retry_later"]
    assert "attempt 1/3" in retry["detail"] and "451" in retry["detail"]
    assert (w.action("i1")["status"], w.action("i1")["attempts"]) == ("sent", 2)
    assert len(relay.messages) == 1


def test_pipeline_disconnect_after_data_is_delivery_unknown(w: World, relay: FakeSMTP) -> None:
    w.customer("c1", plan="p_mail").load_config()
    w.invoice("i1", "c1")
    relay.inject(stage="data", disconnect=True)

    run(w, relay, "2026-12-02T05:00Z")
    run(w, relay, "2026-12-03T05:00Z")

    action = w.action("i1")
    assert (action["status"], action["manual_reason"]) == ("manual", "delivery_unknown")
    assert len(relay.messages) == 1  # the relay got it once; nobody sent it again


def test_pipeline_never_sends_ahead_of_the_local_day(w: World, relay: FakeSMTP) -> None:
    w.org("tokyo", timezone="Asia/Tokyo", send_time="08:30", holidays=None, default_owner="u_taro")
    w.plan("p_next_day", org="tokyo", delay=1)
    w.customer("c_jp", org="tokyo", plan="p_next_day").load_config()
    w.invoice("i_jp", "c_jp", issued="2026-11-30")

    run(w, relay, "2026-11-30T05:00Z")  # Mon 14:00 in Tokyo; due Tue 08:30 (23:30Z)
    assert relay.messages == [] and w.action("i_jp")["status"] == "scheduled"

    run(w, relay, "2026-12-01T05:00Z")  # Tue 14:00 in Tokyo: its day has come
    assert w.action("i_jp")["status"] == "sent"
    assert len(relay.messages) == 1
