"""The provider modules alone: what each event means (state), which message it is about,
and the signature checks against requests signed as the providers document."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dispatch.delivery import clock, printapi, sendgrid, twilio
from dispatch.delivery.event import STATE_RANK, PayloadError, SignatureError

from tests.webhooks.sender import PrintApiSender, SendGridSender, TwilioSender, letter_event, sendgrid_event

NOW = dt.datetime.now(dt.UTC)


@pytest.mark.parametrize(
    ("event", "state"),
    [
        ("processed", "accepted"), ("deferred", "deferred"), ("delivered", "delivered"), ("open", "opened"),
        ("click", "clicked"), ("bounce", "bounced"), ("dropped", "bounced"), ("spamreport", "complained"),
        ("unsubscribe", "unsubscribed"), ("group_resubscribe", "other"),
    ],
)  # fmt: skip
def test_sendgrid_events_and_their_states(event: str, state: str) -> None:
    [parsed] = sendgrid.parse(json.dumps([sendgrid_event(event, "14c5d75ce93", "A@b.example")]).encode())
    assert (parsed.event, parsed.state, parsed.provider_message_id) == (event, state, "14c5d75ce93")


@pytest.mark.parametrize(
    ("sg_message_id", "message_id"),
    [
        ("QkOb7HlO608pYJG6828RNw.filterdrecv-5645d9c87f-2x7nm-1-61A4-19.0", "QkOb7HlO608pYJG6828RNw"),
        ("QkOb7HlO608pYJG6828RNw.recvd-7f9c-1-5F5FC1BC-9.0", "QkOb7HlO608pYJG6828RNw"),
        (
            "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
            "14c5d75ce93.dfd.64b469",
        ),  # SendGrid's example
        ("email/act_1.eml.filterdrecv-demo-0", "email/act_1.eml"),  # the demo's outbox messages
        ("QkOb7HlO608pYJG6828RNw.0", "QkOb7HlO608pYJG6828RNw"),
        ("", None),
    ],
)
def test_the_message_id_is_the_x_message_id_before_sendgrids_suffix(
    sg_message_id: str, message_id: str
) -> None:
    assert sendgrid.sg_message_id(sg_message_id) == message_id


def test_sendgrid_event_fields() -> None:
    raw = sendgrid_event("bounce", "abc", "a@b.example", at=NOW, reason="550 5.1.1 unknown", type="blocked")
    [parsed] = sendgrid.parse(json.dumps([raw]).encode())
    assert parsed.provider_event_id == raw["sg_event_id"]
    assert parsed.occurred_at == NOW.replace(microsecond=0)
    assert (parsed.recipient, parsed.reason) == ("a@b.example", "550 5.1.1 unknown")
    assert parsed.payload == raw
    # an event without sg_event_id is identified by its content: a retry of it is the same event
    del raw["sg_event_id"]
    first, again = (sendgrid.parse(json.dumps([raw]).encode())[0] for _ in range(2))
    assert first.provider_event_id == again.provider_event_id and first.provider_event_id.startswith(
        "sha256:"
    )


@pytest.mark.parametrize("body", [b"{}", b"not json", b'[{"email": "a@b.example"}]', b"[1, 2]"])
def test_sendgrid_refuses_what_is_not_a_list_of_events(body: bytes) -> None:
    with pytest.raises(PayloadError):
        sendgrid.parse(body)


def test_sendgrid_signature_check() -> None:
    now = dt.datetime.now(dt.UTC)  # the signing clock, not the collection time
    sender = SendGridSender()
    key = sendgrid.load_public_key(sender.public_key)
    body = json.dumps([sendgrid_event("delivered", "m", "a@b.example")]).encode()
    headers = sender.headers(body)
    sig, stamp = headers[sendgrid.SIGNATURE_HEADER], headers[sendgrid.TIMESTAMP_HEADER]
    signed = dt.datetime.fromtimestamp(int(stamp), dt.UTC)

    sendgrid.verify(key, body, sig, stamp, now)  # valid: no exception
    pem = "-----BEGIN PUBLIC KEY-----\n" + sender.public_key + "\n-----END PUBLIC KEY-----\n"
    sendgrid.verify(sendgrid.load_public_key(pem), body, sig, stamp, now)
    for args in (
        (body + b" ", sig, stamp),  # the body changed
        (body, sig, str(int(stamp) + 1)),  # the timestamp changed
        (body, "not base64!", stamp),
        (body, None, stamp),
    ):
        with pytest.raises(SignatureError):
            sendgrid.verify(key, *args, now)  # type: ignore[arg-type]
    with pytest.raises(SignatureError, match="a replay"):
        sendgrid.verify(key, body, sig, stamp, signed + clock.TOLERANCE + dt.timedelta(seconds=5))
    with pytest.raises(ValueError):
        sendgrid.load_public_key("bm90IGEga2V5")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    rsa_der = rsa_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ValueError, match="not an ECDSA public key"):
        sendgrid.load_public_key(base64.b64encode(rsa_der).decode())


@pytest.mark.parametrize(
    ("status", "state"),
    [("queued", "accepted"), ("sent", "in_transit"), ("delivered", "delivered"), ("undelivered", "bounced"),
     ("failed", "bounced"), ("read", "opened"), ("canceled", "other")],
)  # fmt: skip
def test_twilio_statuses_and_their_states(status: str, state: str) -> None:
    params = twilio.read_form(f"MessageSid=SM1&MessageStatus={status}&To=%2B33612345678&ErrorCode=".encode())
    [parsed] = twilio.parse(params)
    assert (parsed.provider_event_id, parsed.state, parsed.recipient) == (
        f"SM1:{status}",
        state,
        "+33612345678",
    )
    assert parsed.occurred_at is None and params["ErrorCode"] == [""]


def test_twilio_signature_covers_the_url_and_every_parameter() -> None:
    url = "https://dispatch.example/dispatch/webhooks/twilio"
    params = {"MessageSid": "SM1", "MessageStatus": "failed", "To": "+33612345678", "ErrorCode": ""}
    form = "&".join(f"{k}={v}" for k, v in params.items()).replace("+", "%2B").encode()
    signature = TwilioSender("token").signature(url, params)

    twilio.verify("token", ["", url], twilio.read_form(form), signature)
    for token, urls, body in (
        ("other", [url], form),
        ("token", [url + "?x=1"], form),
        ("token", [url], form.replace(b"failed", b"delivered")),
    ):
        with pytest.raises(SignatureError):
            twilio.verify(token, urls, twilio.read_form(body), signature)
    with pytest.raises(PayloadError):
        twilio.parse(twilio.read_form(b"MessageStatus=sent"))


@pytest.mark.parametrize(
    ("event_type", "state"),
    [("letter.created", "accepted"), ("letter.mailed", "in_transit"), ("letter.in_local_area", "in_transit"),
     ("letter.delivered", "delivered"), ("letter.certified.delivered", "delivered"),
     ("letter.returned_to_sender", "bounced"), ("letter.deleted", "other")],
)  # fmt: skip
def test_letter_events_and_their_states(event_type: str, state: str) -> None:
    [parsed] = printapi.parse(json.dumps(letter_event(event_type, "ltr_abc", at=NOW)).encode())
    assert (parsed.event, parsed.state, parsed.provider_message_id) == (event_type, state, "ltr_abc")
    assert parsed.recipient == "Leroy Paysage, 12 RUE DES LILAS, LYON"
    assert parsed.occurred_at == NOW.replace(microsecond=0)


def test_letter_events_of_other_resources_are_refused() -> None:
    postcard = {"id": "evt_1", "event_type": {"id": "postcard.delivered"}, "body": {"id": "psc_1"}}
    for body in (json.dumps(postcard).encode(), b"[]", b"{"):
        with pytest.raises(PayloadError):
            printapi.parse(body)


def test_print_api_signature_check() -> None:
    now = dt.datetime.now(dt.UTC)  # the signing clock, not the collection time
    sender = PrintApiSender("s3cret")
    body = json.dumps(letter_event("letter.mailed", "ltr_1")).encode()
    headers = sender.headers(body)
    sig, stamp = headers[printapi.SIGNATURE_HEADER], headers[printapi.TIMESTAMP_HEADER]

    printapi.verify("s3cret", body, sig, stamp, now)
    printapi.verify("s3cret", body, sig.upper(), stamp, now)
    seconds = str(int(time.time()))
    printapi.verify("s3cret", body, printapi.sign("s3cret", seconds, body), seconds, now)  # seconds too
    for secret, payload, signature, timestamp in (
        ("other", body, sig, stamp),
        ("s3cret", body + b"\n", sig, stamp),
        ("s3cret", body, sig, None),
        ("s3cret", body, sig, "yesterday"),
    ):
        with pytest.raises(SignatureError):
            printapi.verify(secret, payload, signature, timestamp, now)


def test_the_latest_state_is_the_furthest_one() -> None:
    order = ["accepted", "deferred", "in_transit", "delivered", "opened", "clicked", "bounced"]
    assert sorted(order, key=STATE_RANK.__getitem__) == order
    assert STATE_RANK["other"] < STATE_RANK["accepted"]
