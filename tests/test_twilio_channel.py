"""SMS through Twilio: the real ``twilio`` SDK against the local Twilio (tests/fakes), first the
channel alone (send_many), then the whole pipeline with ``DISPATCH_SMS_BACKEND=twilio``.

What is asserted is what Twilio received (To in E.164, Body, MessagingServiceSid, ScheduleType /
SendAt), what each failure does to the action (SPEC B1, B3) and that nothing is sent twice.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import pytest
from dispatch.channels.base import (
    ChannelError,
    DeliveryUnknownError,
    FatalChannelError,
    OutgoingMessage,
    PermanentError,
    SendResult,
    TransientError,
)
from dispatch.channels.factory import build_channels
from dispatch.channels.formats.sms_text import GSM7, UCS2, SmsLength, measure_sms, normalize_sms
from dispatch.channels.retry import RetryPolicy
from dispatch.channels.twilio import CLOCK_MARGIN, SCHEDULE_MAX, TwilioChannel, from_settings
from dispatch.config.settings import Settings, load_settings
from dispatch.errors import DispatchError

from tests.builders import World, instant
from tests.fakes.twilio_server import FakeTwilio

UTC = dt.UTC
AS_OF = dt.datetime(2026, 12, 2, 5, 0, tzinfo=UTC)
PARIS = dt.timezone(dt.timedelta(hours=1))
FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05, max_retry_after=5)


class Clock:
    """A settable clock shared by the fake Twilio and the channel (a run's as-of instant)."""

    def __init__(self, now: dt.datetime = AS_OF) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server(clock: Clock) -> Iterator[FakeTwilio]:
    with FakeTwilio(clock=clock) as fake:
        yield fake


def make_channel(server: FakeTwilio, clock: Clock, **options: Any) -> tuple[TwilioChannel, list[float]]:
    """The channel pointed at ``server``; returns it with the list of its retry pauses."""
    pauses: list[float] = []
    settings: dict[str, Any] = {
        "account_sid": server.account_sid,
        "auth_token": server.auth_token,
        "messaging_service_sid": server.messaging_service_sid,
        "api_base": server.url,
        "timeout": 2.0,
        "policy": FAST,
        "sleep": pauses.append,
        "clock": clock,
    }
    settings.update(options)
    return TwilioChannel(**settings), pauses


def sms(action_id: str = "act_1", **changes: Any) -> OutgoingMessage:
    fields: dict[str, Any] = {
        "action_id": action_id,
        "invoice_id": f"inv_{action_id}",
        "org_id": "acme",
        "channel": "sms",
        "recipients": ("+33612345678",),
        "deliver_at": AS_OF,
        "body_text": "ACME: invoice F-7 of 99.00 EUR is available.",
    }
    fields.update(changes)
    return OutgoingMessage(**fields)


# --- length of an SMS -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "encoding", "units", "segments"),
    [
        ("", GSM7, 0, 0),
        ("a" * 160, GSM7, 160, 1),
        ("a" * 161, GSM7, 161, 2),
        ("a" * 306, GSM7, 306, 2),
        ("a" * 307, GSM7, 307, 3),
        ("€" * 80, GSM7, 160, 1),  # extension characters take two units
        ("a" * 152 + "€" + "a" * 10, GSM7, 164, 2),  # the escape pair is not split: 152 + (2+10)
        ("a" * 152 + "€" + "a" * 152, GSM7, 306, 3),  # …which pushes the tail into a third segment
        ("ç" * 70, UCS2, 70, 1),  # "ç" is not GSM-7 ("Ç" is)
        ("ç" * 71, UCS2, 71, 2),
        ("ç" * 134, UCS2, 134, 2),
        ("ç" * 135, UCS2, 135, 3),
        ("😀" * 35, UCS2, 70, 1),  # outside the BMP: a surrogate pair each
    ],
)
def test_sms_length_in_units_and_segments(text: str, encoding: str, units: int, segments: int) -> None:
    assert measure_sms(text) == SmsLength(encoding, units, segments)


def test_typographic_spaces_and_quotes_are_folded_so_a_french_amount_stays_gsm() -> None:
    text = normalize_sms("L\u2019avoir de 1\u202f234,56\u00a0€ \u2013 «\u00a0merci\u00a0»")

    assert text == 'L\'avoir de 1 234,56 € - " merci "'
    assert measure_sms(text).encoding == GSM7


# --- the channel alone ------------------------------------------------------------------------


def test_an_sms_due_now_goes_at_once_through_the_messaging_service(server: FakeTwilio, clock: Clock) -> None:
    channel, _ = make_channel(server, clock)
    [result] = channel.send_many([sms(body_text="Facture F-7 : 99,00\u202f€ à régler.")])

    [accepted] = server.messages
    assert result == SendResult("act_1", "twilio", accepted.sid, AS_OF)
    assert accepted.params == {
        "To": "+33612345678",
        "Body": "Facture F-7 : 99,00 € à régler.",
        "MessagingServiceSid": server.messaging_service_sid,
    }
    assert accepted.status == "queued"
    assert server.invalid == []


def test_a_later_delivery_time_is_scheduled_with_send_at_in_utc(server: FakeTwilio, clock: Clock) -> None:
    channel, _ = make_channel(server, clock, status_callback="https://hooks.acme.example/twilio")
    deliver_at = dt.datetime(2026, 12, 2, 8, 30, tzinfo=PARIS)  # 07:30Z, 2.5 h after the clock
    [result] = channel.send_many([sms(deliver_at=deliver_at)])

    [accepted] = server.messages
    assert accepted.params["ScheduleType"] == "fixed"
    assert accepted.params["SendAt"] == "2026-12-02T07:30:00Z"
    assert accepted.params["StatusCallback"] == "https://hooks.acme.example/twilio"
    assert accepted.status == "scheduled"
    assert isinstance(result, SendResult)
    assert result.deliver_at == instant("2026-12-02T07:30Z")


def test_a_delivery_less_than_15_minutes_ahead_is_sent_now(server: FakeTwilio, clock: Clock) -> None:
    channel, _ = make_channel(server, clock)
    [result] = channel.send_many([sms(deliver_at=AS_OF + dt.timedelta(minutes=10))])

    assert "ScheduleType" not in server.messages[0].params
    assert isinstance(result, SendResult)
    assert result.deliver_at == AS_OF  # what the customer gets: now, not in 10 minutes


def test_without_a_messaging_service_the_from_number_is_used_and_nothing_scheduled(
    server: FakeTwilio, clock: Clock
) -> None:
    channel, _ = make_channel(server, clock, messaging_service_sid=None, from_number="+15005550006")
    [result] = channel.send_many([sms(deliver_at=AS_OF + dt.timedelta(hours=3))])

    assert channel.max_schedule_ahead() is None
    assert server.messages[0].params == {
        "To": "+33612345678",
        "From": "+15005550006",
        "Body": "ACME: invoice F-7 of 99.00 EUR is available.",
    }
    assert isinstance(result, SendResult) and result.deliver_at == AS_OF


def test_a_messaging_service_schedules_up_to_35_days_ahead(server: FakeTwilio, clock: Clock) -> None:
    channel, _ = make_channel(server, clock)
    ahead = channel.max_schedule_ahead()

    assert ahead == SCHEDULE_MAX - CLOCK_MARGIN
    [result] = channel.send_many([sms(deliver_at=AS_OF + ahead)])
    assert isinstance(result, SendResult)
    assert server.messages[0].status == "scheduled"


def test_a_429_waits_as_retry_after_says_then_sends_once(server: FakeTwilio, clock: Clock) -> None:
    channel, pauses = make_channel(server, clock)
    server.inject(status=429, headers={"Retry-After": "2"})
    [result] = channel.send_many([sms()])

    assert isinstance(result, SendResult)
    assert pauses == [2.0]
    assert [r.status for r in server.requests] == [429, 201]
    assert len(server.messages) == 1


def test_a_500_is_retried_with_backoff(server: FakeTwilio, clock: Clock) -> None:
    channel, pauses = make_channel(server, clock)
    server.inject(status=500, times=2)
    [result] = channel.send_many([sms()])

    assert isinstance(result, SendResult)
    assert len(pauses) == 2 and all(0 < p <= FAST.max_delay for p in pauses)
    assert [r.status for r in server.requests] == [500, 500, 201]
    assert len(server.messages) == 1


def test_a_500_that_persists_is_a_transient_error_and_nothing_was_sent(
    server: FakeTwilio, clock: Clock
) -> None:
    channel, _ = make_channel(server, clock)
    server.inject(status=503, times=FAST.attempts)
    [result] = channel.send_many([sms()])

    assert isinstance(result, TransientError)
    assert result.reason == "provider_error"
    assert len(server.requests) == FAST.attempts
    assert server.messages == []


def test_a_hang_after_twilio_took_the_message_is_delivery_unknown_and_never_repeated(
    server: FakeTwilio, clock: Clock
) -> None:
    channel, pauses = make_channel(server, clock, timeout=0.4)
    server.inject(hang=2.0)
    [result] = channel.send_many([sms()])

    assert isinstance(result, DeliveryUnknownError)
    assert result.reason == "delivery_unknown"
    assert len(server.requests) == 1  # exactly one request: no retry without an idempotency key
    assert len(server.messages) == 1  # …because Twilio did take it
    assert pauses == []
    assert channel.was_handed_over("act_1") is None  # Twilio cannot say afterwards either


def test_a_connection_cut_after_the_request_is_delivery_unknown(server: FakeTwilio, clock: Clock) -> None:
    channel, _ = make_channel(server, clock)
    server.inject(reset_after_read=True)
    [result] = channel.send_many([sms()])

    assert isinstance(result, DeliveryUnknownError)
    assert len(server.requests) == 1


def test_a_refused_connection_sent_nothing_and_is_retried(clock: Clock) -> None:
    with FakeTwilio(clock=clock) as stopped:
        account_sid, token, url = stopped.account_sid, stopped.auth_token, stopped.url
    # stopped: its port now refuses connections
    pauses: list[float] = []
    channel = TwilioChannel(
        account_sid=account_sid,
        auth_token=token,
        messaging_service_sid="MG" + "0" * 32,
        api_base=url,
        policy=FAST,
        sleep=pauses.append,
        clock=clock,
    )
    [result] = channel.send_many([sms()])

    assert isinstance(result, TransientError)
    assert len(pauses) == FAST.attempts - 1


def test_a_400_refuses_that_message_with_twilio_s_reason(server: FakeTwilio, clock: Clock) -> None:
    channel, _ = make_channel(server, clock)
    body = {"code": 21610, "message": "Attempt to send to unsubscribed recipient", "status": 400}
    server.inject(status=400, body=body)
    results = channel.send_many([sms("act_1"), sms("act_2", recipients=("+33698765432",))])

    refused = results[0] if isinstance(results[0], ChannelError) else results[1]
    assert isinstance(refused, PermanentError)
    assert refused.reason == "provider_rejected"
    assert "21610" in str(refused) and "unsubscribed recipient" in str(refused)
    assert sum(isinstance(r, SendResult) for r in results) == 1
    assert len(server.requests) == 2  # a 4xx is not retried


def test_a_wrong_token_stops_the_batch_and_sends_nothing(server: FakeTwilio, clock: Clock) -> None:
    channel, pauses = make_channel(server, clock, auth_token="wrong", max_in_flight=1)
    with pytest.raises(FatalChannelError, match="401") as stopped:
        channel.send_many([sms("act_1"), sms("act_2"), sms("act_3")])

    assert stopped.value.results == [None, None, None]
    assert len(server.requests) == 1  # the first 401 stops the batch
    assert server.messages == []
    assert pauses == []


def test_a_sender_refused_for_the_account_stops_the_batch(server: FakeTwilio, clock: Clock) -> None:
    channel, _ = make_channel(server, clock, max_in_flight=1)
    body = {
        "code": 21606,
        "message": "The From phone number is not a valid, SMS-capable number",
        "status": 400,
    }
    server.inject(status=400, body=body)
    with pytest.raises(FatalChannelError, match="21606"):
        channel.send_many([sms("act_1"), sms("act_2")])

    assert len(server.requests) == 1


def test_an_unknown_host_stops_the_batch(clock: Clock) -> None:
    channel = TwilioChannel(
        account_sid="AC" + "0" * 32,
        auth_token="x",
        messaging_service_sid="MG" + "0" * 32,
        api_base="http://twilio-api.invalid",
        clock=clock,
        sleep=lambda _: None,
    )
    with pytest.raises(FatalChannelError, match="cannot be resolved"):
        channel.send_many([sms()])


def test_a_message_too_long_is_refused_before_any_request(server: FakeTwilio, clock: Clock) -> None:
    channel, _ = make_channel(server, clock, max_segments=3)
    ok_gsm = "a" * 459  # 3 GSM-7 segments of 153
    too_long_gsm = "a" * 460
    too_long_ucs2 = "ç" * 202  # 4 UCS-2 segments of 67
    results = channel.send_many(
        [
            sms("act_ok", body_text=ok_gsm),
            sms("act_long", body_text=too_long_gsm),
            sms("act_ucs2", body_text=too_long_ucs2),
            sms("act_empty", body_text="  \n "),
        ]
    )

    assert isinstance(results[0], SendResult)
    for refused, words in zip(
        results[1:], ["460 characters = 4 GSM-7", "202 characters = 4 UCS-2", "empty"], strict=True
    ):
        assert isinstance(refused, PermanentError)
        assert words in str(refused)
    assert "message too long" in str(results[1])
    assert [m.params["Body"] for m in server.messages] == [ok_gsm]


def test_a_recipient_that_is_not_one_e164_number_is_refused(server: FakeTwilio, clock: Clock) -> None:
    channel, _ = make_channel(server, clock)
    results = channel.send_many(
        [sms("act_a", recipients=("0612345678",)), sms("act_b", recipients=("+33611111111", "+33622222222"))]
    )

    assert all(isinstance(r, PermanentError) for r in results)
    assert server.requests == []


def test_requests_go_out_concurrently(clock: Clock) -> None:
    with FakeTwilio(clock=clock, latency=0.2) as slow:
        channel, _ = make_channel(slow, clock, max_in_flight=10)
        started = time.monotonic()
        results = channel.send_many([sms(f"act_{n}", recipients=(f"+3361234567{n}",)) for n in range(10)])
        elapsed = time.monotonic() - started

    assert all(isinstance(r, SendResult) for r in results)
    assert len({r.provider_message_id for r in results if isinstance(r, SendResult)}) == 10
    assert elapsed < 10 * 0.2 / 2  # one after the other would take 2 s


def test_settings_select_and_configure_the_twilio_backend(server: FakeTwilio) -> None:
    env = {**server.env(), "DISPATCH_SMS_BACKEND": "twilio", "TWILIO_MAX_SEGMENTS": "4"}
    env["TWILIO_STATUS_CALLBACK"] = "https://hooks.acme.example/sms"
    channel = build_channels(load_settings(environ=env))["sms"]

    assert isinstance(channel, TwilioChannel)
    assert (channel.max_segments, channel.status_callback) == (4, "https://hooks.acme.example/sms")
    assert channel.messaging_service_sid == server.messaging_service_sid
    with pytest.raises(DispatchError, match="TWILIO_AUTH_TOKEN"):
        from_settings(
            Settings(sms_backend="twilio", twilio_account_sid="AC1", twilio_from_number="+1"), "sms"
        )


# --- through the pipeline ----------------------------------------------------------------------


@pytest.fixture
def w(db_urls: dict[str, str], tmp_path) -> World:  # type: ignore[no-untyped-def]
    return World.create(db_urls, tmp_path)


class TwilioWorld:
    """A World whose SMS go to the local Twilio; each run moves the shared clock to its as-of."""

    def __init__(self, world: World, server: FakeTwilio, clock: Clock, **env: str) -> None:
        self.w, self.server, self.clock = world, server, clock
        world.extra_env.update({**server.env(), "DISPATCH_SMS_BACKEND": "twilio", **env})
        self.channels = build_channels(world.settings())  # the factory, from the settings
        self.channels["sms"] = from_settings(world.settings(), "sms", clock=clock, policy=FAST)

    def run(self, at: str) -> Any:
        self.clock.now = instant(at)
        return self.w.run(at, channels=self.channels)


def sms_plan(w: World, **org: Any) -> None:
    w.org(**org).plan("p_sms", channel="sms", body="Invoice {{ invoice.number }}: {{ invoice.total_amount }}")


def test_pipeline_sends_an_sms_through_twilio_once_and_a_rerun_sends_nothing(
    w: World, server: FakeTwilio, clock: Clock
) -> None:
    tw = TwilioWorld(w, server, clock)
    sms_plan(w)
    w.customer("c_ok", plan="p_sms", email=None, phone="06 12 34 56 78")
    w.customer("c_bad", plan="p_sms", email=None, phone="12")
    w.load_config()
    w.invoice("i_ok", "c_ok", issued="2026-12-02", number="F-2026-0001")
    w.invoice("i_bad", "c_bad", issued="2026-12-02")

    tw.run("2026-12-02T05:00Z")

    [accepted] = server.messages
    assert accepted.params["To"] == "+33612345678"  # national format normalized to E.164
    assert accepted.params["Body"].startswith("Invoice F-2026-0001: ")
    assert accepted.params["MessagingServiceSid"] == server.messaging_service_sid
    assert "SendAt" not in accepted.params
    sent = w.action("i_ok")
    assert (sent["status"], sent["provider"], sent["provider_message_id"]) == ("sent", "twilio", accepted.sid)
    assert (sent["recipient"], sent["deliver_at"].replace(tzinfo=UTC)) == ("+33612345678", AS_OF)
    assert w.sending_status("i_ok") == "sent"
    bad = w.action("i_bad")
    assert (bad["status"], bad["manual_reason"]) == ("manual", "invalid_contact")

    tw.run("2026-12-02T05:00Z")  # the same --at again
    tw.run("2026-12-03T05:00Z")
    assert len(server.requests) == 1
    assert w.event_names("i_ok").count("sent") == 1


def test_pipeline_hands_a_tokyo_sms_over_with_its_delivery_time(
    w: World, server: FakeTwilio, clock: Clock
) -> None:
    """Worked example: Tokyo, 08:30, delay 1, issued Mon 2026-11-30, run at 05:00Z (14:00 local)."""
    tw = TwilioWorld(w, server, clock)
    w.org(
        "tokyo", timezone="Asia/Tokyo", send_time="08:30", holidays=None, country="JP", default_owner="u_ken"
    )
    w.plan("p_sms_tokyo", "tokyo", channel="sms", delay=1, body="Invoice {{ invoice.number }}")
    w.customer("c_t", "tokyo", plan="p_sms_tokyo", email=None, phone="+81 90 1234 5678").load_config()
    w.invoice("i_t", "c_t", issued="2026-11-30")

    tw.run("2026-11-30T05:00Z")

    [accepted] = server.messages
    assert (accepted.params["ScheduleType"], accepted.params["SendAt"]) == ("fixed", "2026-11-30T23:30:00Z")
    assert accepted.params["To"] == "+819012345678"
    assert accepted.status == "scheduled"
    action = w.action("i_t")
    assert action["status"] == "sent"
    assert action["deliver_at"].replace(tzinfo=UTC) == instant("2026-11-30T23:30Z")


def test_pipeline_hang_leaves_delivery_unknown_and_the_sms_is_never_sent_again(
    w: World, server: FakeTwilio, clock: Clock
) -> None:
    tw = TwilioWorld(w, server, clock, DISPATCH_HTTP_TIMEOUT="0.4")
    sms_plan(w)
    w.customer("c1", plan="p_sms", email=None, phone="+33612345678").load_config()
    w.invoice("i1", "c1", issued="2026-12-02")
    server.inject(hang=2.0)

    tw.run("2026-12-02T05:00Z")
    action = w.action("i1")
    assert (action["status"], action["manual_reason"]) == ("manual", "delivery_unknown")
    assert w.view_ids("todo_invoicing") == {"i1"}

    tw.run("2026-12-03T05:00Z")
    assert len(server.requests) == 1
    assert len(server.messages) == 1  # Twilio had it: a retry would have sent a second SMS


def test_pipeline_400_makes_the_action_manual_provider_rejected_with_the_reason(
    w: World, server: FakeTwilio, clock: Clock
) -> None:
    tw = TwilioWorld(w, server, clock)
    sms_plan(w)
    w.customer("c1", plan="p_sms", email=None, phone="+33612345678").load_config()
    w.invoice("i1", "c1", issued="2026-12-02")
    server.inject(status=400, body={"code": 21610, "message": "Attempt to send to unsubscribed recipient"})

    tw.run("2026-12-02T05:00Z")

    action = w.action("i1")
    assert (action["status"], action["manual_reason"]) == ("manual", "provider_rejected")
    details = " ".join(str(e["detail"]) for e in w.events("i1"))
    assert "unsubscribed recipient" in details
    assert server.messages == []


def test_pipeline_500_every_time_ends_manual_provider_error_after_the_attempts(
    w: World, server: FakeTwilio, clock: Clock
) -> None:
    tw = TwilioWorld(w, server, clock, DISPATCH_MAX_ATTEMPTS="2")
    sms_plan(w)
    w.customer("c1", plan="p_sms", email=None, phone="+33612345678").load_config()
    w.invoice("i1", "c1", issued="2026-12-02")
    server.inject(status=500, times=100)

    tw.run("2026-12-02T05:00Z")
    assert (w.action("i1")["status"], w.action("i1")["attempts"]) == ("scheduled", 1)
    tw.run("2026-12-03T05:00Z")
    action = w.action("i1")
    assert (action["status"], action["manual_reason"]) == ("manual", "provider_error")
    assert len(server.requests) == 2 * FAST.attempts
    assert server.messages == []


def test_pipeline_401_fails_the_batch_and_changes_no_action(
    w: World, server: FakeTwilio, clock: Clock
) -> None:
    tw = TwilioWorld(w, server, clock, TWILIO_AUTH_TOKEN="wrong-token")
    sms_plan(w)
    for n in (1, 2, 3):
        w.customer(f"c{n}", plan="p_sms", email=None, phone=f"+3361234567{n}")
    w.load_config()
    for n in (1, 2, 3):
        w.invoice(f"i{n}", f"c{n}", issued="2026-12-02")

    with pytest.raises(FatalChannelError, match="401"):
        tw.run("2026-12-02T05:00Z")

    for n in (1, 2, 3):
        action = w.action(f"i{n}")
        assert (action["status"], action["attempts"], action["manual_reason"]) == ("scheduled", 0, None)
        assert action["provider_message_id"] is None
    assert server.messages == []

    fixed = TwilioWorld(w, server, clock, TWILIO_AUTH_TOKEN=server.auth_token)  # the key is fixed
    fixed.run("2026-12-02T05:00Z")
    assert sorted(m.params["To"] for m in server.messages) == [f"+3361234567{n}" for n in (1, 2, 3)]
    assert {w.action(f"i{n}")["status"] for n in (1, 2, 3)} == {"sent"}


class CrashAfterHandOver:
    """The SMS channel of a run that dies right after Twilio accepted the messages."""

    def __init__(self, real: Any) -> None:
        self.real, self.provider, self.channel = real, real.provider, real.channel

    def max_schedule_ahead(self) -> dt.timedelta | None:
        return self.real.max_schedule_ahead()  # type: ignore[no-any-return]

    def send_many(self, messages: Any) -> list[Any]:
        self.real.send_many(messages)
        raise RuntimeError("worker killed before recording")

    def was_handed_over(self, action_id: str) -> Any:
        return self.real.was_handed_over(action_id)


def test_pipeline_a_run_that_died_after_twilio_accepted_leaves_delivery_unknown_not_a_resend(
    w: World, server: FakeTwilio, clock: Clock
) -> None:
    tw = TwilioWorld(w, server, clock)
    sms_plan(w)
    w.customer("c1", plan="p_sms", email=None, phone="+33612345678").load_config()
    w.invoice("i1", "c1", issued="2026-12-02")
    real = tw.channels["sms"]
    tw.channels["sms"] = CrashAfterHandOver(real)  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="worker killed"):
        tw.run("2026-12-02T05:00Z")
    assert w.action("i1")["status"] == "sending"

    tw.channels["sms"] = real
    tw.run("2026-12-03T05:00Z")

    action = w.action("i1")
    assert (action["status"], action["manual_reason"]) == ("manual", "delivery_unknown")
    assert len(server.requests) == 1
