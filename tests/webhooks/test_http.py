"""The providers' webhooks over real HTTP to a real ``dispatch web`` process (SQLite and
PostgreSQL): requests signed as each provider documents are stored and acted on; a bad
signature, a replay, a missing key are refused with 403 and leave nothing behind."""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.web.conftest import WebServer
from tests.webhooks.sender import (
    PrintApiSender,
    SendGridSender,
    TwilioSender,
    letter_event,
    sendgrid_event,
    twilio_status,
)
from tests.webhooks.worlds import SentWorld, sent_world

pytestmark = pytest.mark.slow


class Hooks:
    """A running ``dispatch web`` over a SentWorld, and the three signed senders."""

    def __init__(self, sw: SentWorld, start: Callable[..., WebServer], **env: str) -> None:
        self.sw = sw
        self.sendgrid = SendGridSender()
        self.twilio = TwilioSender(sw.twilio.auth_token)
        self.printapi = PrintApiSender()
        self.server = start(
            sw.w.env(
                SENDGRID_WEBHOOK_PUBLIC_KEY=self.sendgrid.public_key,
                PRINTAPI_WEBHOOK_SECRET=self.printapi.secret,
                **env,
            )
        )
        self.client = httpx.Client(timeout=30)

    def url(self, provider: str) -> str:
        return f"{self.server.base_url}/dispatch/webhooks/{provider}"

    def page_text(self, path: str) -> str:
        """A page's text as a person reads it, logged in with the server's token."""
        with httpx.Client(base_url=self.server.base_url, follow_redirects=True, timeout=30) as client:
            client.get(f"/dispatch/todo?token={self.server.token}")
            html = client.get(f"/dispatch{path}").text
        return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


@pytest.fixture
def hooks(backend: str, tmp_path: Path, web_server: Callable[..., WebServer]) -> Iterator[Hooks]:
    with sent_world(backend, tmp_path) as sw:
        h = Hooks(sw, web_server)
        yield h
        h.client.close()


def test_signed_events_of_each_provider_are_stored_and_matched(hooks: Hooks) -> None:
    sw, now = hooks.sw, dt.datetime.now(dt.UTC)
    e1, sid, letter = sw.message_id("e1"), sw.message_id("s1"), sw.message_id("l1")
    batch = [
        sendgrid_event("processed", e1, "c1@customers.example", at=now),
        sendgrid_event("delivered", e1, "c1@customers.example", at=now),
        sendgrid_event("open", e1, "c1@customers.example", at=now + dt.timedelta(minutes=3)),
    ]
    answers = [
        hooks.sendgrid.post(hooks.client, hooks.url("sendgrid"), batch),
        hooks.twilio.post(hooks.client, hooks.url("twilio"), twilio_status(sid, "delivered", "+33612345678")),
        hooks.printapi.post(hooks.client, hooks.url("printapi"), letter_event("letter.in_transit", letter)),
    ]

    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    assert answers[0].json() == {"events": 3, "stored": 3, "matched": 3, "bounced": 0}
    status = {
        r["invoice_id"]: (r["state"], r["provider"]) for r in sw.w.rows("SELECT * FROM delivery_status")
    }
    assert status == {
        "e1": ("opened", "sendgrid"),
        "s1": ("delivered", "twilio"),
        "l1": ("in_transit", "printapi"),
    }
    assert [a["status"] for a in sw.w.actions()] == ["sent"] * 4


def test_a_bad_signature_is_refused_and_nothing_recorded(hooks: Hooks) -> None:
    sw = hooks.sw
    bounce = [sendgrid_event("bounce", sw.message_id("e1"), "c1@customers.example", reason="550")]
    impostor = SendGridSender()  # signs with another key
    forged_sms = twilio_status(sw.message_id("s1"), "failed", "+33612345678")
    letter = letter_event("letter.returned_to_sender", sw.message_id("l1"))

    answers = [
        impostor.post(hooks.client, hooks.url("sendgrid"), bounce),
        hooks.client.post(hooks.url("sendgrid"), json=bounce),  # not signed at all
        TwilioSender("not-the-auth-token").post(hooks.client, hooks.url("twilio"), forged_sms),
        # signed for another URL than the one it was posted to
        hooks.twilio.post(hooks.client, hooks.url("twilio"), forged_sms, signed_url="https://evil.example/x"),
        PrintApiSender("another-secret").post(hooks.client, hooks.url("printapi"), letter),
    ]
    # a body changed after signing
    body = b'[{"event": "bounce"}]'
    headers = hooks.sendgrid.headers(b'[{"event": "delivered"}]')
    answers.append(hooks.client.post(hooks.url("sendgrid"), content=body, headers=headers))

    # a body too large to be a provider's batch is refused before it is read to the end
    huge = hooks.client.post(hooks.url("sendgrid"), content=b"[" + b" " * (11 * 1024 * 1024) + b"]")

    assert [a.status_code for a in answers] == [403] * 6
    assert huge.status_code == 413
    assert "nothing was recorded" in answers[0].json()["detail"]
    assert sw.deliveries() == []
    assert [a["status"] for a in sw.w.actions()] == ["sent"] * 4


def test_a_replayed_request_with_an_old_timestamp_is_refused(hooks: Hooks) -> None:
    sw = hooks.sw
    old = int(time.time()) - 3600
    bounce = [sendgrid_event("bounce", sw.message_id("e1"), "c1@customers.example", reason="550")]
    letter = letter_event("letter.returned_to_sender", sw.message_id("l1"))

    answers = [
        hooks.sendgrid.post(hooks.client, hooks.url("sendgrid"), bounce, timestamp=old),
        hooks.printapi.post(hooks.client, hooks.url("printapi"), letter, timestamp=old * 1000),
        hooks.sendgrid.post(hooks.client, hooks.url("sendgrid"), bounce, timestamp=int(time.time()) + 3600),
    ]

    assert [a.status_code for a in answers] == [403, 403, 403]
    assert "a replay?" in answers[0].json()["detail"]
    assert sw.deliveries() == []


def test_duplicates_are_one_row_and_one_consequence(hooks: Hooks) -> None:
    sw = hooks.sw
    bounce = sendgrid_event("bounce", sw.message_id("e2"), "c2@customers.example", reason="550 5.1.1 unknown")
    failed = twilio_status(sw.message_id("s1"), "failed", "+33612345678", ErrorCode="30003")
    returned = letter_event("letter.returned_to_sender", sw.message_id("l1"))

    for _ in range(3):  # every provider retries when it is unsure its delivery arrived
        assert hooks.sendgrid.post(hooks.client, hooks.url("sendgrid"), [bounce, bounce]).status_code == 200
        assert hooks.twilio.post(hooks.client, hooks.url("twilio"), failed).status_code == 200
        assert hooks.printapi.post(hooks.client, hooks.url("printapi"), returned).status_code == 200

    assert len(sw.deliveries()) == 3
    for invoice_id in ("e2", "s1", "l1"):
        action = sw.w.action(invoice_id)
        assert (action["status"], action["manual_reason"]) == ("manual", "bounced"), invoice_id
        assert sw.w.event_names(invoice_id).count("bounced") == 1
    assert sw.w.action("e1")["status"] == "sent"
    todo = hooks.page_text("/todo")
    assert "The e-mail bounced: fix the e-mail address of customer Customer c2" in todo
    assert "550 5.1.1 unknown" in todo
    assert "The SMS was not delivered: fix the mobile number" in todo and "error 30003" in todo
    assert "The letter came back: fix the postal address" in todo and "Returned to Sender" in todo


def test_out_of_order_and_unknown_messages_are_kept(hooks: Hooks) -> None:
    sw, now = hooks.sw, dt.datetime.now(dt.UTC)
    e1 = sw.message_id("e1")
    late_first = [
        sendgrid_event("open", e1, "c1@customers.example", at=now + dt.timedelta(minutes=2)),
        sendgrid_event("unknown-kind", e1, "c1@customers.example", at=now + dt.timedelta(minutes=9)),
    ]
    earlier = [sendgrid_event("delivered", e1, "c1@customers.example", at=now)]
    stranger = [sendgrid_event("delivered", "not-ours", "x@elsewhere.example", at=now)]

    for batch in (late_first, earlier, stranger):
        assert hooks.sendgrid.post(hooks.client, hooks.url("sendgrid"), batch).status_code == 200

    [status] = sw.w.rows("SELECT invoice_id, state, events FROM delivery_status")
    assert status == {"invoice_id": "e1", "state": "opened", "events": 2}  # the unknown kind is kept apart
    assert ("unknown-kind", "other") in [(d["event"], d["state"]) for d in sw.deliveries()]
    unmatched = [d for d in sw.deliveries() if d["action_id"] is None]
    assert [(d["provider_message_id"], d["state"]) for d in unmatched] == [("not-ours", "delivered")]


def test_a_receiver_without_its_key_refuses_everything(
    backend: str, tmp_path: Path, web_server: Callable[..., WebServer]
) -> None:
    with sent_world(backend, tmp_path) as sw:
        server = web_server(sw.w.env(TWILIO_AUTH_TOKEN=""))
        sender = SendGridSender()
        url = f"{server.base_url}/dispatch/webhooks"
        with httpx.Client(timeout=30) as client:
            answers = [
                sender.post(client, f"{url}/sendgrid", [sendgrid_event("delivered", "m", "a@b.example")]),
                TwilioSender("x").post(client, f"{url}/twilio", twilio_status("SM1", "sent", "+33612345678")),
                PrintApiSender().post(client, f"{url}/printapi", letter_event("letter.mailed", "ltr_1")),
            ]
        assert [a.status_code for a in answers] == [403, 403, 403]
        assert "SENDGRID_WEBHOOK_PUBLIC_KEY is not set" in answers[0].json()["detail"]
        assert sw.deliveries() == []


def test_the_same_bounce_posted_concurrently_is_one_row_and_one_event(hooks: Hooks) -> None:
    from concurrent.futures import ThreadPoolExecutor

    sw = hooks.sw
    batch = [
        sendgrid_event("delivered", sw.message_id("e1"), "c1@customers.example"),
        sendgrid_event("bounce", sw.message_id("e2"), "c2@customers.example", reason="550 gone"),
    ]
    body_posts = [batch, list(reversed(batch))] * 8  # the same events, in two orders, 16 at once

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(
            pool.map(lambda b: hooks.sendgrid.post(hooks.client, hooks.url("sendgrid"), b), body_posts)
        )

    assert [a.status_code for a in answers] == [200] * 16
    assert sum(a.json()["stored"] for a in answers) == 2
    assert sum(a.json()["bounced"] for a in answers) == 1
    assert len(sw.deliveries()) == 2
    assert sw.w.event_names("e2").count("bounced") == 1 and sw.w.action("e1")["status"] == "sent"
