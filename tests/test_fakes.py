"""The provider fakes, driven by the real client libraries.

Why these tests: the channel tests trust the fakes to behave like SendGrid, Twilio, Lob and an
SMTP relay — accept what the provider accepts, refuse what its document refuses with its error
shape, and fail on demand exactly as injected. Each behaviour a channel test will lean on is
pinned here, through the SDK the project uses (sendgrid, twilio) or plain HTTP (Lob).
"""

from __future__ import annotations

import base64
import json
import smtplib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import requests
import sendgrid
from fpdf import FPDF
from jsonschema import Draft202012Validator
from python_http_client import exceptions as sg_errors
from sendgrid.helpers.mail import Attachment, Disposition, FileContent, FileName, FileType, Mail
from twilio.base import values
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client as TwilioClient

from tests.fakes.conformance import disagreements
from tests.fakes.lob_server import FakeLob
from tests.fakes.openapi import (
    PROVIDER_APIS_ENV,
    SCHEMAS_DIR,
    _SchemaWalker,
    coerce_strings,
    decode_form,
    load_document,
    published_apis_dir,
)
from tests.fakes.sendgrid_server import FakeSendGrid
from tests.fakes.smtp_server import FakeSMTP
from tests.fakes.twilio_server import FakeTwilio

AS_OF = datetime(2026, 12, 2, 5, 0, tzinfo=UTC)  # the worked example's run instant (SPEC)
SERVICE = "MG" + "5" * 32  # the fake Twilio's Messaging Service
DROP = object()  # in valid_mail_body(): leave this field out


def fixed_clock() -> datetime:
    return AS_OF


# ----------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def sendgrid_server() -> Iterator[FakeSendGrid]:
    with FakeSendGrid(clock=fixed_clock) as server:
        yield server


@pytest.fixture
def sg(sendgrid_server: FakeSendGrid) -> sendgrid.SendGridAPIClient:
    return sendgrid.SendGridAPIClient(api_key=sendgrid_server.api_key, host=sendgrid_server.url)


@pytest.fixture
def twilio_server() -> Iterator[FakeTwilio]:
    with FakeTwilio(messaging_service_sid=SERVICE, clock=fixed_clock) as server:
        yield server


def twilio_client(server: FakeTwilio, token: str | None = None, timeout: float = 5.0) -> TwilioClient:
    client = TwilioClient(
        server.account_sid, token or server.auth_token, http_client=TwilioHttpClient(timeout=timeout)
    )
    client.api.base_url = server.url  # the SDK builds every Messages URL from this domain attribute
    return client


@pytest.fixture
def lob_server() -> Iterator[FakeLob]:
    with FakeLob(clock=fixed_clock) as server:
        yield server


@pytest.fixture
def smtp_relay() -> Iterator[FakeSMTP]:
    with FakeSMTP() as relay:
        yield relay


@pytest.fixture(scope="module")
def invoice_pdf() -> bytes:
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    pdf.cell(text="Invoice F-2026-0001")
    return bytes(pdf.output())


def invoice_mail(pdf: bytes | None = None) -> Mail:
    mail = Mail(
        from_email="billing@acme.example",
        to_emails=["alice@client.example", "bob@client.example"],
        subject="Invoice F-2026-0001",
        plain_text_content="Please find your invoice attached.",
        html_content="<p>Please find your invoice attached.</p>",
    )
    if pdf is not None:
        mail.attachment = Attachment(
            FileContent(base64.b64encode(pdf).decode()),
            FileName("F-2026-0001.pdf"),
            FileType("application/pdf"),
            Disposition("attachment"),
        )
    return mail


def valid_mail_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "personalizations": [{"to": [{"email": "alice@client.example"}]}],
        "from": {"email": "billing@acme.example"},
        "subject": "Invoice F-2026-0001",
        "content": [{"type": "text/plain", "value": "Your invoice."}],
    }
    body.update(overrides)
    return {key: value for key, value in body.items() if value is not DROP}


# ----------------------------------------------------------------------------------------------
# the documents
# ----------------------------------------------------------------------------------------------
def test_form_keys_nest_and_repeat_like_twilio_and_lob_encode_them() -> None:
    decoded = decode_form(
        [
            ("to[name]", "Jean"),
            ("to[address_zip]", "75002"),
            ("cards[]", "card_a"),
            ("MediaUrl", "u1"),
            ("MediaUrl", "u2"),
        ]
    )
    assert decoded == {
        "to": {"name": "Jean", "address_zip": "75002"},
        "cards": ["card_a"],
        "MediaUrl": ["u1", "u2"],
    }


def test_form_strings_take_the_type_the_twilio_schema_declares() -> None:
    operation = load_document("twilio-messages.json").operation("CreateMessage")
    body = operation.decode_form_body(
        "application/x-www-form-urlencoded",
        [("To", "+33612345678"), ("ValidityPeriod", "600"), ("Body", "600")],
    )
    assert body == {"To": "+33612345678", "ValidityPeriod": 600, "Body": "600"}


def test_form_strings_become_booleans_and_one_item_arrays_where_the_schema_says_so() -> None:
    schema = {
        "type": "object",
        "properties": {
            "color": {"type": "boolean"},
            "cards": {"type": "array", "items": {"type": "integer"}},
        },
    }
    decoded = coerce_strings({"color": "false", "cards": "3"}, [schema], _SchemaWalker(schema))
    assert decoded == {"color": False, "cards": [3]}


def test_a_field_our_schema_does_not_name_is_refused_by_its_name() -> None:
    lob = load_document("lob-letters.json").operation("letter_create")
    letter = {
        "to": "adr_a1",
        "from": "adr_b2",
        "file": "upload.pdf",
        "color": False,
        "use_type": "operational",
    }
    assert lob.check_body("multipart/form-data", letter) == []
    problems = lob.check_body("multipart/form-data", {**letter, "cards": ["card_1"]})
    assert [(p.field, p.keyword) for p in problems] == [("cards", "additionalProperties")]
    mail = load_document("sendgrid-mail-send.json").operation("SendMail")
    problems = mail.check_body("application/json", valid_mail_body(subject=None))
    assert [(p.field, p.keyword) for p in problems] == [("subject", "type")]


@pytest.mark.parametrize("name", sorted(p.name for p in SCHEMAS_DIR.glob("*.json")))
def test_our_request_schemas_are_valid_json_schema_and_serve_operations(name: str) -> None:
    document = load_document(name)
    for schema in document.raw["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    operations = [spec["operationId"] for item in document.raw["paths"].values() for spec in item.values()]
    assert operations and all(document.operation(op).operation_id == op for op in operations)


def published_documents() -> Path:
    published = published_apis_dir()
    if published is None:
        pytest.skip(f"{PROVIDER_APIS_ENV} does not name the providers' published documents")
    if not published.is_dir():
        pytest.fail(f"{PROVIDER_APIS_ENV}={published}: not a folder")
    return published


@pytest.mark.parametrize("name", sorted(p.name for p in SCHEMAS_DIR.glob("*.json")))
def test_our_request_schemas_agree_with_the_providers_published_documents(name: str) -> None:
    """Each operation, parameter and property our schemas name exists in the provider's own
    document at the same place, with a type and values it allows (tests/fakes/conformance.py)."""
    published = published_documents()
    ours = load_document(name)
    their_name = ours.raw["x-published-document"]
    if their_name is None:
        pytest.skip(f"{name}: {ours.raw['info']['description']}")
    assert disagreements(ours, load_document(their_name, published)) == []


def test_the_comparison_names_a_property_and_a_value_the_provider_does_not_know(tmp_path: Path) -> None:
    published = published_documents()
    changed = json.loads((SCHEMAS_DIR / "twilio-messages.json").read_text(encoding="utf-8"))
    fields = changed["components"]["schemas"]["CreateMessage"]["properties"]
    fields["Colour"] = {"type": "string"}
    fields["ScheduleType"]["enum"] = ["fixed", "whenever"]
    fields["ValidityPeriod"]["type"] = "boolean"
    (tmp_path / "twilio-messages.json").write_text(json.dumps(changed), encoding="utf-8")

    found = disagreements(
        load_document("twilio-messages.json", tmp_path),
        load_document(changed["x-published-document"], published),
    )
    body = "POST /2010-04-01/Accounts/{AccountSid}/Messages.json body (application/x-www-form-urlencoded)"
    assert found == [
        f"{body}.Colour: no such property in theirs",
        f"{body}.ScheduleType: values ['whenever'] are not theirs",
        f"{body}.ValidityPeriod: we say ['boolean'], they say ['integer']",
    ]


# ----------------------------------------------------------------------------------------------
# SendGrid
# ----------------------------------------------------------------------------------------------
def test_sendgrid_sdk_mail_is_accepted_with_202_and_a_message_id(
    sendgrid_server: FakeSendGrid, sg: sendgrid.SendGridAPIClient, invoice_pdf: bytes
) -> None:
    response = sg.send(invoice_mail(invoice_pdf))

    assert response.status_code == 202
    assert response.body == b""
    message_id = response.headers["X-Message-Id"]
    [mail] = sendgrid_server.mails
    assert mail.message_id == message_id
    assert mail.recipients == ["alice@client.example", "bob@client.example"]
    assert mail.body["from"] == {"email": "billing@acme.example"}
    assert [a["filename"] for a in mail.body["attachments"]] == ["F-2026-0001.pdf"]
    assert base64.b64decode(mail.body["attachments"][0]["content"]) == invoice_pdf
    [request] = sendgrid_server.requests
    assert (request.method, request.path, request.status) == ("POST", "/v3/mail/send", 202)
    assert request.header("authorization") == f"Bearer {sendgrid_server.api_key}"
    assert sendgrid_server.invalid == []
    assert sendgrid_server.env() == {
        "SENDGRID_API_KEY": sendgrid_server.api_key,
        "SENDGRID_API_HOST": sendgrid_server.url,
    }


def test_sendgrid_mail_without_from_is_refused_and_listed_as_invalid(
    sendgrid_server: FakeSendGrid, sg: sendgrid.SendGridAPIClient
) -> None:
    body = valid_mail_body(**{"from": DROP})
    with pytest.raises(sg_errors.BadRequestsError) as refused:
        sg.client.mail.send.post(request_body=body)

    assert refused.value.status_code == 400
    assert refused.value.to_dict == {
        "errors": [{"message": "'from' is a required property", "field": "from", "help": None}]
    }
    [invalid] = sendgrid_server.invalid
    assert [p.field for p in invalid.problems] == ["from"]
    assert sendgrid_server.mails == []


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"personalizations": [{"to": [{"email": "not-an-address"}]}]}, "personalizations.0.to.0.email"),
        ({"personalizations": []}, "personalizations"),
        (
            {
                "personalizations": [
                    {"to": [{"email": "a@client.example"}], "cc": [{"email": "A@client.example"}]}
                ]
            },
            "personalizations.0",
        ),
        ({"subject": DROP}, "subject"),
        (
            {"content": [{"type": "text/html", "value": "<p>x</p>"}, {"type": "text/plain", "value": "x"}]},
            "content",
        ),
        ({"send_at": int((AS_OF + timedelta(hours=73)).timestamp())}, "send_at"),
        ({"attachments": [{"content": "%%% not base64", "filename": "F.pdf"}]}, "attachments.0.content"),
        ({"custom_args": {"action_id": "a1"}}, "custom_args"),  # they go in the personalization
    ],
)
def test_sendgrid_refuses_what_its_document_and_rules_refuse(
    sendgrid_server: FakeSendGrid, sg: sendgrid.SendGridAPIClient, overrides: dict[str, Any], field: str
) -> None:
    body = valid_mail_body(**overrides)
    with pytest.raises(sg_errors.BadRequestsError) as refused:
        sg.client.mail.send.post(request_body=body)

    assert field in [error["field"] for error in refused.value.to_dict["errors"]]
    assert len(sendgrid_server.invalid) == 1
    assert sendgrid_server.mails == []


def test_sendgrid_send_at_within_72_hours_of_the_clock_is_accepted(
    sendgrid_server: FakeSendGrid, sg: sendgrid.SendGridAPIClient
) -> None:
    send_at = int((AS_OF + timedelta(hours=71, minutes=59)).timestamp())
    response = sg.client.mail.send.post(request_body=valid_mail_body(send_at=send_at))

    assert response.status_code == 202
    assert sendgrid_server.mails[0].send_at == send_at


def test_sendgrid_wrong_key_gets_401_and_creates_nothing(sendgrid_server: FakeSendGrid) -> None:
    client = sendgrid.SendGridAPIClient(api_key="SG.wrong", host=sendgrid_server.url)
    with pytest.raises(sg_errors.UnauthorizedError) as denied:
        client.send(invoice_mail())

    assert denied.value.status_code == 401
    assert denied.value.to_dict["errors"][0]["field"] is None
    assert sendgrid_server.mails == []
    assert sendgrid_server.invalid == []


def test_sendgrid_faults_apply_in_order_with_retry_after(
    sendgrid_server: FakeSendGrid, sg: sendgrid.SendGridAPIClient
) -> None:
    sendgrid_server.inject(status=429, headers={"Retry-After": "1"}, times=2)
    sendgrid_server.inject(status=500)
    seen: list[tuple[int, str | None]] = []
    for _ in range(3):
        with pytest.raises(sg_errors.HTTPError) as failed:
            sg.send(invoice_mail())
        seen.append((failed.value.status_code, failed.value.headers.get("Retry-After")))
    response = sg.send(invoice_mail())

    assert seen == [(429, "1"), (429, "1"), (500, None)]
    assert response.status_code == 202
    assert len(sendgrid_server.mails) == 1
    assert [r.status for r in sendgrid_server.requests] == [429, 429, 500, 202]
    assert sendgrid_server.pending_faults == []


def test_sendgrid_injected_400_carries_the_given_body(
    sendgrid_server: FakeSendGrid, sg: sendgrid.SendGridAPIClient
) -> None:
    body = {
        "errors": [
            {"message": "The from address does not match a verified Sender Identity.", "field": "from"}
        ]
    }
    sendgrid_server.inject(status=403, body=body)
    with pytest.raises(sg_errors.ForbiddenError) as refused:
        sg.send(invoice_mail())

    assert refused.value.to_dict == body
    assert sendgrid_server.mails == []


def test_sendgrid_hang_times_the_client_out_although_the_mail_was_accepted(
    sendgrid_server: FakeSendGrid, sg: sendgrid.SendGridAPIClient
) -> None:
    sendgrid_server.inject(hang=3.0)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        sg.client.mail.send.post(request_body=invoice_mail().get(), timeout=0.3)

    assert time.monotonic() - started < 2.0
    assert len(sendgrid_server.mails) == 1  # the provider has it: a blind retry would send twice
    assert sendgrid_server.requests[0].answered is False


def test_sendgrid_reset_after_read_gives_a_connection_error(
    sendgrid_server: FakeSendGrid, sg: sendgrid.SendGridAPIClient
) -> None:
    sendgrid_server.inject(reset_after_read=True, accepted=False)
    with pytest.raises(ConnectionError):
        sg.send(invoice_mail())

    assert len(sendgrid_server.requests) == 1
    assert sendgrid_server.requests[0].status is None
    assert sendgrid_server.mails == []


def test_sendgrid_hang_then_close_drops_the_line_after_accepting_the_mail(
    sendgrid_server: FakeSendGrid, sg: sendgrid.SendGridAPIClient
) -> None:
    sendgrid_server.inject(hang=0.2, close_after_hang=True)
    with pytest.raises(ConnectionError):  # http.client.RemoteDisconnected
        sg.client.mail.send.post(request_body=valid_mail_body(), timeout=5)

    assert len(sendgrid_server.mails) == 1
    assert sendgrid_server.requests[0].status is None


def test_sendgrid_sandbox_mode_is_checked_but_not_sent(
    sendgrid_server: FakeSendGrid, sg: sendgrid.SendGridAPIClient
) -> None:
    body = valid_mail_body(mail_settings={"sandbox_mode": {"enable": True}})
    response = sg.client.mail.send.post(request_body=body)

    assert response.status_code == 200
    assert sendgrid_server.mails == []


def test_sendgrid_suppression_lists_filter_by_time_and_paginate(
    sendgrid_server: FakeSendGrid, sg: sendgrid.SendGridAPIClient
) -> None:
    for n, created in enumerate([1000, 2000, 3000, 4000]):
        sendgrid_server.add_bounce(f"user{n}@client.example", created, f"550 5.1.1 unknown {n}")
    sendgrid_server.add_block("blocked@client.example", AS_OF - timedelta(hours=1))
    sendgrid_server.add_invalid_email("bad@client", 2500)

    window = sg.client.suppression.bounces.get(query_params={"start_time": 2000, "end_time": 3000})
    page = sg.client.suppression.bounces.get(query_params={"limit": 2, "offset": 1})
    prefix = sg.client.suppression.bounces.get(query_params={"email": "user3"})
    blocks = sg.client.suppression.blocks.get(query_params={"start_time": int(AS_OF.timestamp()) - 7200})
    invalid = sg.client.suppression.invalid_emails.get(query_params={"start_time": 0, "end_time": 9999})

    assert [e["email"] for e in window.to_dict] == ["user1@client.example", "user2@client.example"]
    assert window.to_dict[0] == {
        "created": 2000,
        "email": "user1@client.example",
        "reason": "550 5.1.1 unknown 1",
        "status": "5.1.1",
    }
    assert [e["created"] for e in page.to_dict] == [2000, 3000]
    assert [e["email"] for e in prefix.to_dict] == ["user3@client.example"]
    assert [e["email"] for e in blocks.to_dict] == ["blocked@client.example"]
    assert invalid.to_dict == [
        {
            "created": 2500,
            "email": "bad@client",
            "reason": "Mail domain mentioned in email address is unknown",
        }
    ]
    document = load_document("sendgrid-suppressions.json")
    assert document.operation("ListSuppressionBlock").check_response(200, blocks.to_dict) == []
    assert sendgrid_server.invalid == []


def test_sendgrid_suppression_limit_outside_the_document_is_refused(
    sendgrid_server: FakeSendGrid, sg: sendgrid.SendGridAPIClient
) -> None:
    with pytest.raises(sg_errors.BadRequestsError) as refused:
        sg.client.suppression.bounces.get(query_params={"limit": 501})

    assert refused.value.to_dict["errors"][0]["field"] == "limit"


def test_faults_can_target_one_path_only(
    sendgrid_server: FakeSendGrid, sg: sendgrid.SendGridAPIClient
) -> None:
    sendgrid_server.inject(status=503, path=r"^/v3/mail/send$")
    listing = sg.client.suppression.bounces.get()
    with pytest.raises(sg_errors.ServiceUnavailableError):
        sg.send(invoice_mail())

    assert listing.status_code == 200


def test_unknown_path_and_wrong_method_answer_in_the_provider_shape(sendgrid_server: FakeSendGrid) -> None:
    headers = {"Authorization": f"Bearer {sendgrid_server.api_key}"}
    missing = httpx.get(f"{sendgrid_server.url}/v3/nothing", headers=headers)
    wrong_method = httpx.get(f"{sendgrid_server.url}/v3/mail/send", headers=headers)

    assert missing.status_code == 404
    assert missing.json()["errors"][0]["message"] == "not found"
    assert wrong_method.status_code == 405


def test_latency_is_added_to_every_answer_and_requests_are_served_concurrently() -> None:
    with FakeTwilio(latency=0.2) as server:
        client = twilio_client(server)

        def send(n: int) -> str:
            return client.messages.create(to=f"+3361234567{n}", from_="+15005550006", body="x").sid

        started = time.monotonic()
        send(0)
        single = time.monotonic() - started
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=10) as pool:
            sids = list(pool.map(send, range(10)))
        parallel = time.monotonic() - started

    assert single >= 0.2
    assert len(set(sids)) == 10
    assert parallel < 10 * 0.2 / 2  # ten answers overlapped instead of queueing behind each other


def test_stop_cuts_a_hanging_request_short() -> None:
    server = FakeSendGrid().start()
    server.inject(hang=60.0)
    client = sendgrid.SendGridAPIClient(api_key=server.api_key, host=server.url)
    with pytest.raises(TimeoutError):
        client.client.mail.send.post(request_body=valid_mail_body(), timeout=0.2)
    started = time.monotonic()
    server.stop()

    assert time.monotonic() - started < 3.0


def test_a_bug_in_the_fake_fails_the_test_instead_of_passing_for_a_provider_500() -> None:
    server = FakeSendGrid()

    def broken(*args: object) -> None:
        raise KeyError("personalizations")

    server._send_mail = broken  # type: ignore[method-assign]
    with pytest.raises(AssertionError, match="KeyError"), server:
        answer = httpx.post(
            f"{server.url}/v3/mail/send",
            headers={"Authorization": f"Bearer {server.api_key}"},
            json=valid_mail_body(),
        )
        assert answer.status_code == 500


def test_a_fault_must_do_something() -> None:
    with pytest.raises(ValueError, match="status="):
        FakeSendGrid().inject(times=2)


# ----------------------------------------------------------------------------------------------
# Twilio
# ----------------------------------------------------------------------------------------------
def test_twilio_sdk_message_is_created_queued(twilio_server: FakeTwilio) -> None:
    message = twilio_client(twilio_server).messages.create(
        to="+33612345678", from_="+15005550006", body="Invoice F-2026-0001: 120.00 EUR"
    )

    assert message.sid.startswith("SM") and len(message.sid) == 34
    assert message.status == "queued"
    assert message.date_created == AS_OF
    [accepted] = twilio_server.messages
    assert accepted.sid == message.sid
    assert accepted.params == {
        "To": "+33612345678",
        "From": "+15005550006",
        "Body": "Invoice F-2026-0001: 120.00 EUR",
    }
    [request] = twilio_server.requests
    assert request.path == f"/2010-04-01/Accounts/{twilio_server.account_sid}/Messages.json"
    assert request.header("content-type") == "application/x-www-form-urlencoded"
    operation = load_document("twilio-messages.json").operation("CreateMessage")
    assert operation.check_response(201, accepted.resource) == []
    assert twilio_server.invalid == []


def test_twilio_scheduled_message_is_scheduled_for_its_send_at(twilio_server: FakeTwilio) -> None:
    send_at = AS_OF + timedelta(hours=2, minutes=30)
    message = twilio_client(twilio_server).messages.create(
        to="+33612345678",
        messaging_service_sid=twilio_server.messaging_service_sid,
        body="Invoice F-2026-0001",
        schedule_type="fixed",
        send_at=send_at,
    )

    assert message.status == "scheduled"
    assert twilio_server.messages[0].send_at == send_at
    assert twilio_server.messages[0].params["SendAt"] == "2026-12-02T07:30:00Z"


@pytest.mark.parametrize("ahead", [timedelta(minutes=15), timedelta(days=35)])
def test_twilio_schedule_window_bounds_are_inclusive(twilio_server: FakeTwilio, ahead: timedelta) -> None:
    message = twilio_client(twilio_server).messages.create(
        to="+33612345678",
        messaging_service_sid=twilio_server.messaging_service_sid,
        body="x",
        schedule_type="fixed",
        send_at=AS_OF + ahead,
    )

    assert message.status == "scheduled"


def test_twilio_sdk_writes_an_aware_send_at_as_wall_time_with_z(twilio_server: FakeTwilio) -> None:
    """The SDK formats SendAt with strftime(...Z) without converting: pass UTC, or it is shifted."""
    paris = (AS_OF + timedelta(hours=2)).astimezone(ZoneInfo("Europe/Paris"))
    twilio_client(twilio_server).messages.create(
        to="+33612345678",
        messaging_service_sid=twilio_server.messaging_service_sid,
        body="x",
        schedule_type="fixed",
        send_at=paris,
    )

    assert twilio_server.messages[0].send_at == AS_OF + timedelta(hours=3)  # one hour late


@pytest.mark.parametrize(
    ("arguments", "code"),
    [
        ({"to": values.unset, "from_": "+15005550006", "body": "x"}, 21604),
        ({"to": "0612345678", "from_": "+15005550006", "body": "x"}, 21211),
        ({"to": "+33612345678", "body": "x"}, 21603),
        ({"to": "+33612345678", "from_": "+15005550006"}, 21602),
        (
            {
                "to": "+33612345678",
                "from_": "+15005550006",
                "body": "x",
                "schedule_type": "fixed",
                "send_at": AS_OF + timedelta(hours=1),
            },
            35118,
        ),
        (
            {"to": "+33612345678", "messaging_service_sid": SERVICE, "body": "x", "schedule_type": "fixed"},
            35111,
        ),
        (
            {
                "to": "+33612345678",
                "messaging_service_sid": SERVICE,
                "body": "x",
                "schedule_type": "fixed",
                "send_at": AS_OF + timedelta(minutes=14),
            },
            35114,
        ),
        (
            {
                "to": "+33612345678",
                "messaging_service_sid": SERVICE,
                "body": "x",
                "schedule_type": "fixed",
                "send_at": AS_OF + timedelta(days=35, seconds=1),
            },
            35114,
        ),
        ({"to": "+33612345678", "from_": "+15005550006", "body": "x", "validity_period": "soon"}, 20001),
    ],
)
def test_twilio_refuses_with_its_error_codes(
    twilio_server: FakeTwilio, arguments: dict[str, Any], code: int
) -> None:
    with pytest.raises(TwilioRestException) as refused:
        twilio_client(twilio_server).messages.create(**arguments)

    assert (refused.value.status, refused.value.code) == (400, code)
    assert len(twilio_server.invalid) == 1
    assert twilio_server.messages == []


def test_twilio_wrong_token_gets_401_20003(twilio_server: FakeTwilio) -> None:
    with pytest.raises(TwilioRestException) as denied:
        twilio_client(twilio_server, token="wrong").messages.create(
            to="+33612345678", from_="+15005550006", body="x"
        )

    assert (denied.value.status, denied.value.code) == (401, 20003)
    assert twilio_server.messages == []


def test_twilio_429_exposes_retry_after_through_the_http_client(twilio_server: FakeTwilio) -> None:
    twilio_server.inject(status=429, headers={"Retry-After": "7"})
    client = twilio_client(twilio_server)
    with pytest.raises(TwilioRestException) as limited:
        client.messages.create(to="+33612345678", from_="+15005550006", body="x")

    assert (limited.value.status, limited.value.code) == (429, 20429)
    # TwilioRestException carries no headers; the SDK's HTTP client keeps the last response.
    assert client.http_client._test_only_last_response.headers["Retry-After"] == "7"


def test_twilio_hang_is_a_read_timeout_after_the_message_was_accepted(twilio_server: FakeTwilio) -> None:
    twilio_server.inject(hang=3.0)
    with pytest.raises(requests.exceptions.ReadTimeout):
        twilio_client(twilio_server, timeout=0.3).messages.create(
            to="+33612345678", from_="+15005550006", body="x"
        )

    assert [m.status for m in twilio_server.messages] == ["queued"]


def test_twilio_reset_is_a_connection_error(twilio_server: FakeTwilio) -> None:
    twilio_server.inject(reset_after_read=True, accepted=False)
    with pytest.raises(requests.exceptions.ConnectionError):
        twilio_client(twilio_server).messages.create(to="+33612345678", from_="+15005550006", body="x")

    assert twilio_server.messages == []
    assert len(twilio_server.requests) == 1


def test_twilio_reset_after_the_provider_took_the_message(twilio_server: FakeTwilio) -> None:
    twilio_server.inject(reset_after_read=True)  # accepted=True: created, then the line is cut
    with pytest.raises(requests.exceptions.ConnectionError):
        twilio_client(twilio_server).messages.create(to="+33612345678", from_="+15005550006", body="x")

    assert [m.params["To"] for m in twilio_server.messages] == ["+33612345678"]


def test_twilio_created_message_can_be_fetched(twilio_server: FakeTwilio) -> None:
    client = twilio_client(twilio_server)
    created = client.messages.create(to="+33612345678", from_="+15005550006", body="x")

    assert client.messages(created.sid).fetch().to == "+33612345678"


# ----------------------------------------------------------------------------------------------
# Lob
# ----------------------------------------------------------------------------------------------
LETTER_FIELDS = {
    "to[name]": "Jean Dupont",
    "to[address_line1]": "1 rue de la Paix",
    "to[address_city]": "Paris",
    "to[address_zip]": "75002",
    "to[address_country]": "FR",
    "from[name]": "ACME",
    "from[address_line1]": "210 King St",
    "from[address_city]": "San Francisco",
    "from[address_state]": "CA",
    "from[address_zip]": "94107",
    "color": "false",
    "use_type": "operational",
    "metadata[invoice_id]": "inv_0001",
}


def post_letter(
    server: FakeLob,
    pdf: bytes,
    *,
    key: str | None = None,
    fields: dict[str, str] | None = None,
    timeout: float = 5.0,
    api_key: str | None = None,
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return httpx.post(
        f"{server.api_base}/letters",
        auth=(api_key or server.api_key, ""),
        headers=headers,
        data=fields or LETTER_FIELDS,
        files={"file": ("F-2026-0001.pdf", pdf, "application/pdf")},
        timeout=timeout,
    )


def test_lob_multipart_letter_is_created_as_the_document_says(
    lob_server: FakeLob, invoice_pdf: bytes
) -> None:
    response = post_letter(lob_server, invoice_pdf, key="inv_0001-letter")

    assert response.status_code == 200
    letter = response.json()
    assert letter["id"].startswith("ltr_")
    assert letter["to"]["address_country"] == "FRANCE"
    assert letter["metadata"] == {"invoice_id": "inv_0001"}
    assert response.headers["ratelimit-limit"] == "150"
    [created] = lob_server.letters
    assert created.id == letter["id"]
    assert created.file is not None and created.file.content == invoice_pdf
    assert created.params["color"] is False
    assert created.idempotency_key == "inv_0001-letter"
    operation = load_document("lob-letters.json").operation("letter_create")
    assert operation.check_response(200, letter) == []
    assert lob_server.invalid == []
    assert lob_server.env()["PRINTAPI_URL"] == f"{lob_server.url}/v1"


def test_lob_json_letter_with_html_is_accepted(lob_server: FakeLob) -> None:
    body = {
        "to": {
            "name": "Jean Dupont",
            "address_line1": "1 rue de la Paix",
            "address_city": "Paris",
            "address_zip": "75002",
            "address_country": "FR",
        },
        "from": {
            "company": "ACME",
            "address_line1": "210 King St",
            "address_city": "San Francisco",
            "address_state": "CA",
            "address_zip": "94107",
        },
        "file": "<html><body>Invoice F-2026-0001</body></html>",
        "color": True,
        "use_type": "operational",
    }
    response = httpx.post(f"{lob_server.api_base}/letters", auth=(lob_server.api_key, ""), json=body)

    assert response.status_code == 200
    assert lob_server.letters[0].resource["color"] is True


def test_lob_same_idempotency_key_returns_the_same_letter_once(
    lob_server: FakeLob, invoice_pdf: bytes
) -> None:
    first = post_letter(lob_server, invoice_pdf, key="k-1").json()
    again = post_letter(lob_server, invoice_pdf, key="k-1").json()
    other = post_letter(lob_server, invoice_pdf, key="k-2").json()
    by_query = httpx.post(
        f"{lob_server.api_base}/letters",
        params={"idempotency_key": "k-2"},
        auth=(lob_server.api_key, ""),
        data=LETTER_FIELDS,
        files={"file": ("F.pdf", invoice_pdf, "application/pdf")},
    ).json()

    assert again == first
    assert other["id"] != first["id"]
    assert by_query["id"] == other["id"]
    assert [letter.id for letter in lob_server.letters] == [first["id"], other["id"]]
    assert len(lob_server.requests) == 4


def test_lob_racing_retries_with_one_key_make_one_letter(lob_server: FakeLob, invoice_pdf: bytes) -> None:
    barrier = threading.Barrier(8)

    def send(_: int) -> str:
        barrier.wait()
        return str(post_letter(lob_server, invoice_pdf, key="race").json()["id"])

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = set(pool.map(send, range(8)))

    assert len(ids) == 1
    assert len(lob_server.letters) == 1


def test_lob_lost_answer_then_retry_with_the_key_prints_once(lob_server: FakeLob, invoice_pdf: bytes) -> None:
    lob_server.inject(hang=3.0)
    with pytest.raises(httpx.ReadTimeout):
        post_letter(lob_server, invoice_pdf, key="inv_0001-letter", timeout=0.3)
    retried = post_letter(lob_server, invoice_pdf, key="inv_0001-letter")

    assert retried.status_code == 200
    assert [letter.id for letter in lob_server.letters] == [retried.json()["id"]]


def test_lob_hang_without_acceptance_creates_nothing_and_closes(
    lob_server: FakeLob, invoice_pdf: bytes
) -> None:
    lob_server.inject(hang=0.2, accepted=False)
    with pytest.raises(httpx.RemoteProtocolError):
        post_letter(lob_server, invoice_pdf, key="k", timeout=5)

    assert lob_server.letters == []
    assert len(lob_server.requests) == 1


def test_lob_reset_after_read_is_a_transport_error(lob_server: FakeLob, invoice_pdf: bytes) -> None:
    lob_server.inject(reset_after_read=True, accepted=False)
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        post_letter(lob_server, invoice_pdf, key="k")

    assert lob_server.letters == []


@pytest.mark.parametrize(
    ("change", "code", "words"),
    [
        ({"use_type": None}, "invalid", '"use_type" is required'),
        ({"to[address_state]": "IDF"}, "invalid", "valid under each of"),  # state+city+zip abroad
        ({"from[address_zip]": "941"}, "invalid", '"from.address_zip"'),
        ({"return_envelope": "true"}, "invalid_perforation_return_envelope", '"perforated_page"'),
    ],
)
def test_lob_refuses_with_422_and_its_error_shape(
    lob_server: FakeLob, invoice_pdf: bytes, change: dict[str, str | None], code: str, words: str
) -> None:
    fields = {**LETTER_FIELDS, **change}
    fields = {k: v for k, v in fields.items() if v is not None}
    response = post_letter(lob_server, invoice_pdf, fields=fields)

    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["status_code"], error["code"]) == (422, code)
    assert words in error["message"]
    assert len(lob_server.invalid) == 1
    assert lob_server.letters == []


def test_lob_refuses_a_file_that_is_not_a_pdf(lob_server: FakeLob) -> None:
    response = post_letter(lob_server, b"<html>not a pdf</html>")

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_file"


def test_lob_wrong_key_gets_401(lob_server: FakeLob, invoice_pdf: bytes) -> None:
    response = post_letter(lob_server, invoice_pdf, api_key="test_wrong")

    assert response.status_code == 401
    assert response.json()["error"] == {
        "message": "Your API key is not valid. Please sign up on lob.com to get a valid api key.",
        "status_code": 401,
        "code": "unauthorized",
    }


def test_lob_saved_addresses_are_used_and_unknown_ones_are_404(
    lob_server: FakeLob, invoice_pdf: bytes
) -> None:
    lob_server.add_address(
        "adr_acme",
        company="ACME",
        address_line1="210 King St",
        address_city="San Francisco",
        address_state="CA",
        address_zip="94107",
    )
    fields = {k: v for k, v in LETTER_FIELDS.items() if not k.startswith("from[")}
    known = post_letter(lob_server, invoice_pdf, fields={**fields, "from": "adr_acme"})
    unknown = post_letter(lob_server, invoice_pdf, fields={**fields, "from": "adr_nobody"})

    assert known.json()["from"]["id"] == "adr_acme"
    assert (unknown.status_code, unknown.json()["error"]["message"]) == (404, "from address not found")
    assert len(lob_server.letters) == 1


# ----------------------------------------------------------------------------------------------
# SMTP
# ----------------------------------------------------------------------------------------------
def invoice_email(pdf: bytes | None = None) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "billing@acme.example"
    message["To"] = "alice@client.example, bob@client.example"
    message["Subject"] = "Invoice F-2026-0001"
    message.set_content("Please find your invoice attached.")
    if pdf is not None:
        message.add_attachment(pdf, maintype="application", subtype="pdf", filename="F-2026-0001.pdf")
    return message


def test_smtp_relay_records_the_message(smtp_relay: FakeSMTP, invoice_pdf: bytes) -> None:
    with smtplib.SMTP(smtp_relay.host, smtp_relay.port, timeout=5) as client:
        refused = client.send_message(invoice_email(invoice_pdf))

    assert refused == {}
    [mail] = smtp_relay.messages
    assert mail.mail_from == "billing@acme.example"
    assert mail.rcpt_tos == ("alice@client.example", "bob@client.example")
    assert mail.message["Subject"] == "Invoice F-2026-0001"
    [attachment] = mail.message.iter_attachments()
    assert attachment.get_content() == invoice_pdf
    assert mail.answered is True


def test_smtp_550_on_one_recipient_delivers_to_the_others(smtp_relay: FakeSMTP) -> None:
    smtp_relay.inject(stage="rcpt", code=550, address="bob@client.example")
    with smtplib.SMTP(smtp_relay.host, smtp_relay.port, timeout=5) as client:
        refused = client.send_message(invoice_email())

    assert refused == {"bob@client.example": (550, b"5.1.1 Recipient address rejected: User unknown")}
    assert smtp_relay.messages[0].rcpt_tos == ("alice@client.example",)


def test_smtp_550_on_every_recipient_refuses_the_message(smtp_relay: FakeSMTP) -> None:
    smtp_relay.inject(stage="rcpt", code=550, times=2)
    with (
        smtplib.SMTP(smtp_relay.host, smtp_relay.port, timeout=5) as client,
        pytest.raises(smtplib.SMTPRecipientsRefused) as refused,
    ):
        client.send_message(invoice_email())

    assert {code for code, _ in refused.value.recipients.values()} == {550}
    assert smtp_relay.messages == []


def test_smtp_451_after_data_is_a_temporary_failure(smtp_relay: FakeSMTP) -> None:
    smtp_relay.inject(stage="data", code=451)
    with smtplib.SMTP(smtp_relay.host, smtp_relay.port, timeout=5) as client:
        with pytest.raises(smtplib.SMTPDataError) as failed:
            client.send_message(invoice_email())
        retried = client.send_message(invoice_email())

    assert failed.value.smtp_code == 451
    assert retried == {}
    assert len(smtp_relay.messages) == 1


def test_smtp_disconnect_after_data_leaves_a_received_but_unanswered_message(smtp_relay: FakeSMTP) -> None:
    smtp_relay.inject(stage="data", disconnect=True)
    client = smtplib.SMTP(smtp_relay.host, smtp_relay.port, timeout=5)
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client.send_message(invoice_email())

    [mail] = smtp_relay.messages
    assert mail.answered is False
    assert mail.message["Subject"] == "Invoice F-2026-0001"


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_smtp_auth_checks_the_account() -> None:
    with FakeSMTP(user="dispatch", password="s3cret") as relay:
        with (
            smtplib.SMTP(relay.host, relay.port, timeout=5) as client,
            pytest.raises(smtplib.SMTPAuthenticationError) as denied,
        ):
            client.login("dispatch", "wrong")
        with smtplib.SMTP(relay.host, relay.port, timeout=5) as client:
            client.login("dispatch", "s3cret")
            client.send_message(invoice_email())

        assert denied.value.smtp_code == 535
        # smtplib tries PLAIN then LOGIN before giving up: every attempt but the last failed.
        assert relay.auth_attempts[-1] == ("dispatch", True)
        assert {ok for _, ok in relay.auth_attempts[:-1]} == {False}
        assert len(relay.messages) == 1
        assert relay.env()["SMTP_USER"] == "dispatch"
