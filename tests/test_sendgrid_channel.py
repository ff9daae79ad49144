"""The SendGrid e-mail channel against the local SendGrid (``tests/fakes``), through the real
SDK helpers and HTTP: what SendGrid receives, and what each of its answers does to an action.

Channel-level tests call ``send_many`` directly; end-to-end tests drive ``run_pipeline`` with
``DISPATCH_EMAIL_BACKEND=sendgrid`` pointed at the fake, and look at the actions afterwards.
Waits between retries go through a recording fake sleep, so the suite does not sleep; the
fake's clock and the channel's clock are both the run's as-of instant.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass

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
from dispatch.channels.sendgrid import SendGridApi, SendGridChannel, from_settings, retry_after_seconds
from dispatch.config.settings import load_settings
from dispatch.errors import DispatchError
from pypdf import PdfReader

from tests.builders import World, instant
from tests.fakes.sendgrid_server import FakeSendGrid

AS_OF = instant("2026-12-02T05:00Z")  # Wed: the worked example's run
INVOICE_PDF = build_invoice_placeholder_pdf("F-2026-0001", ["Consulting  1 200,00 EUR"])


@dataclass
class Clock:
    """One clock for the fake SendGrid and the channel: the run's as-of instant."""

    now: dt.datetime = AS_OF

    def __call__(self) -> dt.datetime:
        return self.now


def sends(server: FakeSendGrid) -> list:
    """Mail Send requests only: a pipeline run also pulls the suppression lists (bounces)."""
    return [r for r in server.requests if r.path.endswith("/mail/send")]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sleeps() -> list[float]:
    """Every wait the channel asked for, instead of waiting (passed as its ``sleep``)."""
    return []


def no_wait(seconds: float) -> None:
    """The channel's ``sleep`` where a test does not look at the waits."""


@pytest.fixture
def server(clock: Clock) -> Iterator[FakeSendGrid]:
    with FakeSendGrid(clock=clock) as fake:
        yield fake


def channel_for(  # type: ignore[no-untyped-def]
    server: FakeSendGrid, *, key: str | None = None, timeout: float = 5.0, sleep=no_wait, **kw: object
):
    """The channel on the fake's clock (the run's as-of instant), waits through ``sleep``."""
    api = SendGridApi(key or server.api_key, server.url, timeout=timeout, clock=server.clock)
    return SendGridChannel(api, sleep=sleep, **kw)  # type: ignore[arg-type]


def message(action_id: str = "act_1", **changes: object) -> OutgoingMessage:
    fields: dict[str, object] = {
        "action_id": action_id,
        "invoice_id": f"inv_{action_id}",
        "org_id": "acme",
        "channel": "email",
        "recipients": ("ap@client.example", "AP@Client.example", "boss@client.example"),
        "deliver_at": AS_OF,
        "subject": "Invoice F-2026-0001 from ACME SAS",
        "body_text": "Dear Client, please find invoice F-2026-0001 attached.",
        "body_html": "<p>Dear Client, please find invoice F-2026-0001 attached.</p>",
        "sender": "billing@acme.example",
        "sender_name": "ACME SAS",
        "reply_to": "accounts@acme.example",
        "attachments": (Attachment("invoice-F-2026-0001.pdf", INVOICE_PDF),),
    }
    fields.update(changes)
    return OutgoingMessage(**fields)  # type: ignore[arg-type]


# --- what SendGrid receives ---------------------------------------------------------------


def test_one_message_per_invoice_with_everything_sendgrid_needs(server: FakeSendGrid) -> None:
    [result] = channel_for(server).send_many([message()])

    [mail] = server.mails
    assert isinstance(result, SendResult)
    assert (result.provider, result.provider_message_id) == ("sendgrid", mail.message_id)
    assert result.deliver_at == AS_OF
    body = mail.body
    # every recipient in one personalization, the case-insensitive duplicate dropped
    [personalization] = body["personalizations"]
    assert personalization["to"] == [{"email": "ap@client.example"}, {"email": "boss@client.example"}]
    assert personalization["custom_args"] == {
        "action_id": "act_1",
        "invoice_id": "inv_act_1",
        "org_id": "acme",
    }
    assert "send_at" not in personalization and "send_at" not in body  # due now: no schedule
    assert "custom_args" not in body
    assert body["from"] == {"email": "billing@acme.example", "name": "ACME SAS"}
    assert body["reply_to"] == {"email": "accounts@acme.example"}
    assert body["subject"] == "Invoice F-2026-0001 from ACME SAS"
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    assert body["categories"] == ["invoice"]
    [attachment] = body["attachments"]
    assert (attachment["filename"], attachment["type"], attachment["disposition"]) == (
        "invoice-F-2026-0001.pdf",
        "application/pdf",
        "attachment",
    )
    pdf = base64.b64decode(attachment["content"])
    assert pdf == INVOICE_PDF
    assert "F-2026-0001" in PdfReader(io.BytesIO(pdf)).pages[0].extract_text()
    [request] = sends(server)
    assert request.header("Authorization") == f"Bearer {server.api_key}"
    assert server.invalid == []


def test_a_delivery_time_ahead_is_passed_as_send_at_up_to_72_hours(server: FakeSendGrid) -> None:
    ahead = AS_OF + dt.timedelta(hours=71, minutes=59)
    too_far = AS_OF + dt.timedelta(hours=72, minutes=1)
    past = AS_OF - dt.timedelta(hours=5)

    results = channel_for(server).send_many(
        [
            message("a_ahead", deliver_at=ahead),
            message("a_far", deliver_at=too_far),
            message("a_past", deliver_at=past),
        ]
    )

    sent_at = {m.body["personalizations"][0]["custom_args"]["action_id"]: m.send_at for m in server.mails}
    assert sent_at == {"a_ahead": int(ahead.timestamp()), "a_past": None}
    assert isinstance(results[0], SendResult) and results[0].deliver_at == ahead
    # beyond SendGrid's window nothing is sent early: it waits for a later run
    assert isinstance(results[1], TransientError)
    assert "72 h" in str(results[1])
    assert len(sends(server)) == 2
    assert server.invalid == []


def test_the_channel_advertises_the_72_hour_window_and_cannot_tell_about_lost_claims(
    server: FakeSendGrid,
) -> None:
    channel = channel_for(server)
    assert channel.max_schedule_ahead() == dt.timedelta(hours=72)
    assert channel.was_handed_over("act_1") is None


# --- answers and failures -----------------------------------------------------------------


def test_429_waits_as_retry_after_says_then_sends_once(server: FakeSendGrid, sleeps: list[float]) -> None:
    server.inject(status=429, headers={"Retry-After": "7"}, times=2)

    [result] = channel_for(server, sleep=sleeps.append).send_many([message()])

    assert isinstance(result, SendResult)
    assert sleeps == [7.0, 7.0]
    assert [r.status for r in sends(server)] == [429, 429, 202]
    assert len(server.mails) == 1


def test_retry_after_too_long_is_left_to_a_later_run(server: FakeSendGrid, sleeps: list[float]) -> None:
    server.inject(status=429, headers={"Retry-After": "3600"})

    [result] = channel_for(server, sleep=sleeps.append).send_many([message()])

    assert isinstance(result, TransientError) and result.retry_after == 3600
    assert sleeps == []
    assert len(sends(server)) == 1 and server.mails == []


def test_retry_after_as_an_http_date() -> None:
    now = dt.datetime(2026, 12, 2, 5, 0, tzinfo=dt.UTC)
    assert retry_after_seconds("Wed, 02 Dec 2026 05:00:30 GMT", now) == 30.0
    assert retry_after_seconds("12", now) == 12.0
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None


def test_500_is_retried_with_growing_backoff_then_reported_transient(
    server: FakeSendGrid, sleeps: list[float]
) -> None:
    server.inject(status=500, times=10)
    policy = RetryPolicy(attempts=4, base_delay=1.0, max_delay=30.0)

    [result] = channel_for(server, sleep=sleeps.append, policy=policy).send_many([message()])

    assert isinstance(result, TransientError)
    assert "SendGrid 500" in str(result)
    assert len(sends(server)) == 4 and server.mails == []
    assert len(sleeps) == 3
    # exponential with jitter: attempt n waits within [0.5, 1] x base x 2^(n-1)
    for n, waited in enumerate(sleeps, start=1):
        assert 0.5 * 2 ** (n - 1) <= waited <= 2 ** (n - 1)


def test_400_is_a_permanent_refusal_with_sendgrids_reason_and_no_retry(
    server: FakeSendGrid, sleeps: list[float]
) -> None:
    server.inject(
        status=400,
        body={
            "errors": [
                {"message": "The from address does not match a verified Sender Identity.", "field": "from"}
            ]
        },
    )

    [result] = channel_for(server, sleep=sleeps.append).send_many([message()])

    assert isinstance(result, PermanentError)
    assert str(result) == "SendGrid 400: from: The from address does not match a verified Sender Identity."
    assert len(sends(server)) == 1 and sleeps == []


def test_a_message_sendgrid_refuses_by_its_own_rules_is_permanent(server: FakeSendGrid) -> None:
    [result] = channel_for(server).send_many([message(subject="")])

    assert isinstance(result, PermanentError)
    assert "subject" in str(result)
    assert len(server.invalid) == 1


def test_413_is_permanent(server: FakeSendGrid) -> None:
    server.inject(status=413)
    [result] = channel_for(server).send_many([message()])
    assert isinstance(result, PermanentError) and "413" in str(result)


def test_hang_past_the_timeout_is_delivery_unknown_and_never_retried(
    server: FakeSendGrid, sleeps: list[float]
) -> None:
    server.inject(hang=3.0)
    started = time.monotonic()

    [result] = channel_for(server, sleep=sleeps.append, timeout=0.3).send_many([message()])

    assert isinstance(result, DeliveryUnknownError)
    assert time.monotonic() - started < 2.5
    assert len(sends(server)) == 1  # exactly one request: SendGrid has it (below)
    assert len(server.mails) == 1
    assert sleeps == []


@pytest.mark.parametrize("accepted", [True, False])
def test_connection_reset_after_sending_is_delivery_unknown(server: FakeSendGrid, accepted: bool) -> None:
    server.inject(reset_after_read=True, accepted=accepted)
    [result] = channel_for(server).send_many([message()])
    assert isinstance(result, DeliveryUnknownError)
    assert len(sends(server)) == 1


def test_connection_refused_is_transient(sleeps: list[float]) -> None:
    with FakeSendGrid() as gone:
        url = gone.url
    channel = SendGridChannel(
        SendGridApi("SG.key", url, timeout=2), sleep=sleeps.append, policy=RetryPolicy(attempts=2)
    )
    [result] = channel.send_many([message()])
    assert isinstance(result, TransientError) and "cannot connect" in str(result)
    assert len(sleeps) == 1


def test_unknown_host_stops_the_batch(sleeps: list[float]) -> None:
    channel = SendGridChannel(
        SendGridApi("SG.key", "http://api.sendgrid.invalid", timeout=5), sleep=sleeps.append
    )
    with pytest.raises(FatalChannelError, match="cannot be resolved") as stopped:
        channel.send_many([message("a1"), message("a2")])
    assert stopped.value.results == [None, None]
    assert sleeps == []


def test_401_stops_the_batch_with_the_results_of_what_was_accepted(server: FakeSendGrid) -> None:
    channel = channel_for(server, max_in_flight=1)
    server.clear()
    first = channel.send_many([message("a0")])
    assert isinstance(first[0], SendResult)
    server.inject(status=401, times=5)

    with pytest.raises(FatalChannelError) as stopped:
        channel.send_many([message("a1"), message("a2"), message("a3")])

    assert stopped.value.results == [None, None, None]
    assert len(sends(server)) == 2  # the stop came at the first refused request
    assert len(server.mails) == 1


def test_wrong_key_is_fatal_and_never_shows_the_key(
    server: FakeSendGrid, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "SG.not-the-right-key.0123456789"
    channel = channel_for(server, key=secret)
    with pytest.raises(FatalChannelError) as stopped:
        channel.send_many([message()])
    assert "401" in str(stopped.value)
    assert secret not in str(stopped.value)
    assert secret not in repr(channel) and secret not in repr(channel.api)
    assert secret not in caplog.text
    assert server.mails == []


@pytest.mark.parametrize("status", [403, 404])
def test_forbidden_or_a_wrong_api_host_stops_the_batch(server: FakeSendGrid, status: int) -> None:
    server.inject(status=status)
    with pytest.raises(FatalChannelError):
        channel_for(server).send_many([message()])


def test_a_message_without_recipient_or_sender_is_refused_before_any_request(server: FakeSendGrid) -> None:
    results = channel_for(server).send_many([message("a1", recipients=()), message("a2", sender=None)])
    assert [type(r) for r in results] == [PermanentError, PermanentError]
    assert sends(server) == []


def test_sends_overlap_up_to_the_configured_number_in_flight(clock: Clock) -> None:
    with FakeSendGrid(clock=clock, latency=0.2) as slow:
        channel = channel_for(slow, max_in_flight=10)
        started = time.monotonic()
        results = channel.send_many([message(f"a{n}") for n in range(10)])
        elapsed = time.monotonic() - started

    assert all(isinstance(r, SendResult) for r in results)
    assert len({r.provider_message_id for r in results}) == 10  # type: ignore[union-attr]
    assert elapsed < 10 * 0.2 / 2  # one at a time would take 2 s


def test_from_settings_reads_contract_names() -> None:
    settings = load_settings(
        environ={
            "DISPATCH_EMAIL_BACKEND": "sendgrid",
            "SENDGRID_API_KEY": "SG.k",
            "SENDGRID_API_HOST": "http://127.0.0.1:9/",
            "DISPATCH_SEND_CONCURRENCY": "5",
            "DISPATCH_HTTP_TIMEOUT": "2.5",
            "DISPATCH_MAIL_FROM": "noreply@example.com",
        }
    )
    channel = from_settings(settings, "email")
    assert (channel.api.host, channel.max_in_flight, channel.default_sender) == (
        "http://127.0.0.1:9",
        5,
        "noreply@example.com",
    )
    with pytest.raises(DispatchError, match="SENDGRID_API_KEY"):
        from_settings(settings.with_(sendgrid_api_key=None), "email")
    with pytest.raises(DispatchError, match="email"):
        from_settings(settings, "sms")


# --- end to end: run_pipeline with DISPATCH_EMAIL_BACKEND=sendgrid ------------------------------


@pytest.fixture
def w(db_urls: dict[str, str], tmp_path) -> World:  # type: ignore[no-untyped-def]
    world = World.create(db_urls, tmp_path)
    world.org("acme").plan("p_mail", delay=0)
    world.config["organizations"][0]["reply_to"] = "accounts@acme.example"
    return world


def sendgrid_settings(w: World, server: FakeSendGrid, **extra: str):  # type: ignore[no-untyped-def]
    return w.settings(**{"DISPATCH_EMAIL_BACKEND": "sendgrid", **server.env(), **extra})


def run(w: World, server: FakeSendGrid, clock: Clock, at: str, sleep=no_wait, **extra: str):  # type: ignore[no-untyped-def]
    """A pipeline run whose e-mail channel the factory builds from the settings, with the
    test's clock and sleep given to its constructor."""
    clock.now = instant(at)
    settings = sendgrid_settings(w, server, **extra)
    channels = build_channels(settings)
    channels["email"] = from_settings(settings, "email", clock=clock, sleep=sleep)
    try:
        return w.run(at, settings=settings, channels=channels)
    finally:
        close_channels(channels)


def test_pipeline_delivers_through_sendgrid_once_across_reruns(
    w: World, server: FakeSendGrid, clock: Clock
) -> None:
    w.customer("c1", plan="p_mail").contact("c1", email="Boss@Customers.example").load_config()
    w.contact("c1", email="boss@customers.example")  # the same address twice, other case
    w.invoice("i1", "c1", issued="2026-12-02", pdf=True)

    run(w, server, clock, "2026-12-02T05:00Z")
    run(w, server, clock, "2026-12-02T05:00Z")  # the same --at again
    run(w, server, clock, "2026-12-03T05:00Z")

    [mail] = server.mails
    action = w.action("i1")
    assert (action["status"], action["provider"], action["provider_message_id"]) == (
        "sent",
        "sendgrid",
        mail.message_id,
    )
    assert action["deliver_at"] == AS_OF and action["attempts"] == 1
    assert w.sending_status("i1") == "sent"
    assert mail.recipients == ["c1@customers.example", "Boss@customers.example"]  # domain normalized
    assert mail.send_at is None
    personalization = mail.body["personalizations"][0]
    assert personalization["custom_args"] == {
        "action_id": action["action_id"],
        "invoice_id": "i1",
        "org_id": "acme",
    }
    assert mail.body["from"] == {"email": "billing@acme.example", "name": "ACME SAS"}
    assert mail.body["reply_to"] == {"email": "accounts@acme.example"}
    assert mail.body["subject"] == "Invoice I1 from ACME SAS"
    pdf = base64.b64decode(mail.body["attachments"][0]["content"])
    assert len(PdfReader(io.BytesIO(pdf)).pages) >= 1
    assert server.invalid == []


def test_pipeline_hands_a_tokyo_morning_email_over_with_send_at(
    w: World, server: FakeSendGrid, clock: Clock
) -> None:
    w.org("tokyo", timezone="Asia/Tokyo", send_time="08:30", holidays=None, default_owner="u_taro")
    w.plan("p_next_day", org="tokyo", delay=1)
    w.customer("c_jp", org="tokyo", plan="p_next_day").load_config()
    w.invoice("i_jp", "c_jp", issued="2026-11-30")

    run(w, server, clock, "2026-11-30T05:00Z")

    [mail] = server.mails
    expected = instant("2026-11-30T23:30Z")  # Tue 08:30 in Tokyo
    assert mail.send_at == int(expected.timestamp())
    action = w.action("i_jp")
    assert (action["status"], action["deliver_at"]) == ("sent", expected)


def test_pipeline_400_leaves_the_action_manual_with_sendgrids_reason(
    w: World, server: FakeSendGrid, clock: Clock
) -> None:
    w.customer("c1", plan="p_mail").customer("c2", plan="p_mail").load_config()
    w.invoice("i1", "c1").invoice("i2", "c2")
    reason = "The attachment content must be base64 encoded."
    server.inject(status=400, body={"errors": [{"message": reason, "field": "attachments.0.content"}]})

    run(w, server, clock, "2026-12-02T05:00Z", DISPATCH_SEND_CONCURRENCY="1")

    rejected, sent = w.action("i1"), w.action("i2")
    assert (rejected["status"], rejected["manual_reason"]) == ("manual", "provider_rejected")
    assert reason in rejected["detail"]
    assert sent["status"] == "sent"
    assert [r["owner_user_id"] for r in w.rows("SELECT owner_user_id FROM todo_invoicing")] == ["u_alice"]
    assert len(sends(server)) == 2 and len(server.mails) == 1


def test_pipeline_429_is_waited_out_then_sent(
    w: World, server: FakeSendGrid, clock: Clock, sleeps: list[float]
) -> None:
    w.customer("c1", plan="p_mail").load_config()
    w.invoice("i1", "c1")
    server.inject(status=429, headers={"Retry-After": "2"})

    run(w, server, clock, "2026-12-02T05:00Z", sleep=sleeps.append)

    assert w.action("i1")["status"] == "sent"
    assert sleeps == [2.0]
    assert [r.status for r in sends(server)] == [429, 202]


def test_pipeline_500_retries_across_runs_then_provider_error(
    w: World, server: FakeSendGrid, clock: Clock, sleeps: list[float]
) -> None:
    w.customer("c1", plan="p_mail").load_config()
    w.invoice("i1", "c1")
    server.inject(status=500, times=100)

    states = []
    for at in ("2026-12-02T05:00Z", "2026-12-03T05:00Z", "2026-12-04T05:00Z", "2026-12-07T05:00Z"):
        run(w, server, clock, at, sleep=sleeps.append)
        a = w.action("i1")
        states.append((a["status"], a["manual_reason"], a["attempts"]))

    assert states == [
        ("scheduled", None, 1),
        ("scheduled", None, 2),
        ("manual", "provider_error", 3),
        ("manual", "provider_error", 3),  # a person's task now: no more attempts
    ]
    assert len(sends(server)) == 3 * RetryPolicy().attempts  # with backoff inside each run
    assert len(sleeps) == 3 * (RetryPolicy().attempts - 1)
    assert w.event_names("i1").count("retry_later") == 2
    assert server.mails == []


def test_pipeline_hang_is_delivery_unknown_with_exactly_one_request(
    w: World, server: FakeSendGrid, clock: Clock
) -> None:
    w.customer("c1", plan="p_mail").load_config()
    w.invoice("i1", "c1")
    server.inject(hang=3.0)

    run(w, server, clock, "2026-12-02T05:00Z", DISPATCH_HTTP_TIMEOUT="0.3")
    run(w, server, clock, "2026-12-03T05:00Z", DISPATCH_HTTP_TIMEOUT="0.3")

    action = w.action("i1")
    assert (action["status"], action["manual_reason"]) == ("manual", "delivery_unknown")
    assert len(sends(server)) == 1
    assert len(server.mails) == 1  # SendGrid did take it: a retry would have sent it twice


def test_pipeline_401_fails_the_batch_and_changes_no_action(
    w: World, server: FakeSendGrid, clock: Clock
) -> None:
    w.plan("p_next_day", delay=1)
    for n in (1, 2, 3):
        w.customer(f"c{n}", plan="p_next_day")
        w.invoice(f"i{n}", f"c{n}", issued="2026-12-02")
    w.load_config()
    run(w, server, clock, "2026-12-02T05:00Z")  # actions created, due Thu 08:30 Paris
    kept = ("status", "attempts", "manual_reason", "detail", "recipient", "deliver_at", "provider")
    before = {a["invoice_id"]: {k: a[k] for k in kept} for a in w.actions()}
    assert {a["status"] for a in before.values()} == {"scheduled"} and sends(server) == []

    with pytest.raises(FatalChannelError, match="401"):
        run(w, server, clock, "2026-12-03T05:00Z", SENDGRID_API_KEY="SG.revoked")

    after = {a["invoice_id"]: {k: a[k] for k in kept} for a in w.actions()}
    assert after == before
    assert server.mails == [] and len(sends(server)) >= 1
    assert [r["status"] for r in w.rows("SELECT status FROM dispatch_runs ORDER BY as_of")] == [
        "succeeded",
        "failed",
    ]

    run(w, server, clock, "2026-12-03T05:00Z")  # the key fixed: the same day's run sends them, once
    assert {w.action(i)["status"] for i in ("i1", "i2", "i3")} == {"sent"}
    assert {w.action(i)["attempts"] for i in ("i1", "i2", "i3")} == {1}
    assert len(server.mails) == 3


# --- connections and the local SendGrid of the benchmarks -----------------------------------


def test_each_sending_thread_reuses_one_connection_of_its_own(server: FakeSendGrid) -> None:
    channel = channel_for(server, max_in_flight=4)
    results = channel.send_many([message(f"act_{n}") for n in range(24)])

    assert all(isinstance(r, SendResult) for r in results)
    clients = list(channel.api._clients._clients)
    assert 1 <= len(clients) <= 4  # one per sending thread, never more than the bound
    channel.close()
    assert all(c.is_closed for c in clients)


def test_the_local_sendgrid_in_its_own_process_still_refuses_what_sendgrid_refuses() -> None:
    import httpx

    from tests.fakes.sendgrid_server import SendGridProcess

    with SendGridProcess(latency=0.01) as served:
        api = SendGridApi(served.api_key, served.url)
        channel = SendGridChannel(api, sleep=no_wait)
        [sent] = channel.send_many([message(deliver_at=dt.datetime.now(dt.UTC))])
        channel.close()
        refused = httpx.post(
            f"{served.url}/v3/mail/send",
            json={"personalizations": [{"to": [{"email": "a@b.example"}]}], "from": {"email": "c@d.example"}},
            headers={"Authorization": f"Bearer {served.api_key}"},
        )
    summary = served.stop()

    assert isinstance(sent, SendResult) and refused.status_code == 400
    assert (summary.requests, summary.accepted, summary.invalid, summary.errors) == (2, 1, 1, [])
