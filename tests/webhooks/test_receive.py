"""Storing, matching and acting on delivery events, below HTTP (SQLite and PostgreSQL): the
events come from the provider modules' parsers, fed what the providers send."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from dispatch.delivery import printapi, sendgrid, twilio
from dispatch.delivery.receive import receive
from dispatch.runtime.runs import RunContext
from dispatch.stages.pull_bounces import pull_bounces
from dispatch.storage.session import Database

from tests.webhooks.sender import letter_event, sendgrid_event, twilio_status
from tests.webhooks.worlds import SentWorld, sent_world

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


@pytest.fixture
def sw(backend: str, tmp_path: Path) -> Iterator[SentWorld]:
    with sent_world(backend, tmp_path) as world:
        yield world


def post_sendgrid(sw: SentWorld, *events: dict, sweep: bool = False):  # type: ignore[no-untyped-def]
    parsed = sendgrid.parse(json.dumps(list(events)).encode())
    return receive(Database(sw.w.dispatch), parsed, sweep=sweep)


def test_events_are_stored_once_and_matched_to_their_action(sw: SentWorld) -> None:
    e1 = sw.message_id("e1")
    delivered = sendgrid_event("delivered", e1, "c1@customers.example", at=NOW)
    opened = sendgrid_event("open", e1, "c1@customers.example", at=NOW + dt.timedelta(minutes=5))

    first = post_sendgrid(sw, delivered, opened)
    again = post_sendgrid(sw, delivered, opened)  # SendGrid retried the batch

    assert first.as_dict() == {"events": 2, "stored": 2, "matched": 2, "bounced": 0}
    assert again.as_dict() == {"events": 2, "stored": 0, "matched": 0, "bounced": 0}
    action_id = sw.w.action("e1")["action_id"]
    assert [(d["action_id"], d["event"], d["state"]) for d in sw.deliveries()] == [
        (action_id, "delivered", "delivered"),
        (action_id, "open", "opened"),
    ]
    assert sw.w.action("e1")["status"] == "sent"
    [status] = sw.w.rows("SELECT * FROM delivery_status")
    assert (status["invoice_id"], status["recipient"], status["state"], status["events"]) == (
        "e1",
        "c1@customers.example",
        "opened",
        2,
    )


def test_out_of_order_events_show_the_furthest_state(sw: SentWorld) -> None:
    sid = sw.message_id("s1")
    db = Database(sw.w.dispatch)
    for status in ("delivered", "sent", "queued"):  # Twilio's callbacks, arriving backwards
        receive(db, twilio.parse(twilio.read_form(_form(twilio_status(sid, status, "+33612345678")))))
    [status] = sw.w.rows("SELECT invoice_id, state, event, events FROM delivery_status")
    assert status == {"invoice_id": "s1", "state": "delivered", "event": "delivered", "events": 3}


def test_a_bounce_makes_the_action_manual_once_with_the_providers_reason(sw: SentWorld) -> None:
    e2 = sw.message_id("e2")
    bounce = sendgrid_event(
        "bounce", e2, "c2@customers.example", at=NOW, reason="550 5.1.1 The email account does not exist",
        type="bounce", status="5.1.1",
    )  # fmt: skip
    dropped = sendgrid_event("dropped", e2, "c2@customers.example", at=NOW, reason="Bounced Address")

    summary = post_sendgrid(sw, bounce, dropped)
    post_sendgrid(sw, bounce)

    assert (summary.matched, summary.bounced) == (2, 1)
    action = sw.w.action("e2")
    assert (action["status"], action["manual_reason"], action["owner_user_id"]) == (
        "manual",
        "bounced",
        "u_bob",
    )
    assert action["detail"].startswith("sendgrid bounce: c2@customers.example at ")
    assert action["detail"].endswith("550 5.1.1 The email account does not exist")
    assert sw.w.event_names("e2").count("bounced") == 1
    todo = sw.w.rows("SELECT invoice_id, owner_user_id, manual_reason, detail FROM todo_invoicing")
    assert [(t["invoice_id"], t["owner_user_id"], t["manual_reason"]) for t in todo] == [
        ("e2", "u_bob", "bounced")
    ]
    assert "550 5.1.1" in todo[0]["detail"]
    assert sw.w.action("e1")["status"] == "sent"


def test_undelivered_sms_and_returned_letter_bounce_too(sw: SentWorld) -> None:
    db = Database(sw.w.dispatch)
    params = twilio_status(sw.message_id("s1"), "undelivered", "+33612345678", ErrorCode="30005",
                           ErrorMessage="Unknown destination handset")  # fmt: skip
    receive(db, twilio.parse(twilio.read_form(_form(params))))
    returned = letter_event(
        "letter.returned_to_sender", sw.message_id("l1"), at=NOW,
        tracking_events=[{"id": "evnt_1", "object": "tracking_event", "type": "normal",
                          "name": "Returned to Sender", "location": "69003"}],
    )  # fmt: skip
    receive(db, printapi.parse(json.dumps(returned).encode()))

    sms, letter = sw.w.action("s1"), sw.w.action("l1")
    assert (sms["status"], sms["manual_reason"]) == ("manual", "bounced")
    assert sms["detail"].endswith("error 30005 Unknown destination handset")
    assert (letter["status"], letter["manual_reason"]) == ("manual", "bounced")
    assert letter["detail"].endswith("Returned to Sender (69003)")


def test_events_before_the_send_or_unknown_wait_and_are_matched_later(sw: SentWorld) -> None:
    db = Database(sw.w.dispatch)
    e1 = sw.message_id("e1")
    # the send's write is not there yet: the action does not carry its message id
    with sw.w.dispatch.begin() as conn:
        conn.exec_driver_sql("UPDATE invoice_actions SET provider_message_id = NULL WHERE invoice_id = 'e1'")
    early = post_sendgrid(sw, sendgrid_event("bounce", e1, "c1@customers.example", at=NOW, reason="550 gone"))
    unknown = post_sendgrid(sw, sendgrid_event("delivered", "someone-elses-mail", "x@elsewhere.example"))
    assert (early.stored, early.matched, unknown.stored, unknown.matched) == (1, 0, 1, 0)
    assert sw.w.action("e1")["status"] == "sent"

    with sw.w.dispatch.begin() as conn:
        conn.exec_driver_sql(
            f"UPDATE invoice_actions SET provider_message_id = '{e1}' WHERE invoice_id = 'e1'"
        )
    # the next request sweeps the recent unmatched events
    later = receive(db, [], sweep=True)
    assert (later.matched, later.bounced) == (1, 1)
    assert sw.w.action("e1")["manual_reason"] == "bounced"
    assert [d["action_id"] is None for d in sw.deliveries()] == [False, True]  # the unknown one is kept


def test_webhook_bounce_and_the_daily_pull_make_one_manual_action_and_one_event(sw: SentWorld) -> None:
    e1 = sw.message_id("e1")
    post_sendgrid(sw, sendgrid_event("bounce", e1, "c1@customers.example", at=NOW, reason="550 no such user"))
    sw.sendgrid.add_bounce("c1@customers.example", NOW, "550 no such user")

    summary = pull_bounces(
        Database(sw.w.dispatch), sw.w.settings(), RunContext.new(NOW + dt.timedelta(hours=1))
    )

    assert (summary.entries, summary.bounced) == ({"bounces": 1}, 0)
    assert sw.w.action("e1")["manual_reason"] == "bounced"
    assert sw.w.event_names("e1").count("bounced") == 1


def test_the_daily_pull_first_then_the_webhook_still_one_event(sw: SentWorld) -> None:
    e1 = sw.message_id("e1")
    sw.sendgrid.add_bounce("c1@customers.example", NOW, "550 no such user")
    pulled = pull_bounces(
        Database(sw.w.dispatch), sw.w.settings(), RunContext.new(NOW + dt.timedelta(hours=1))
    )
    hooked = post_sendgrid(sw, sendgrid_event("bounce", e1, "c1@customers.example", at=NOW, reason="550"))

    assert (pulled.bounced, hooked.matched, hooked.bounced) == (1, 1, 0)
    assert sw.w.event_names("e1").count("bounced") == 1


def test_the_daily_run_matches_what_the_webhooks_could_not(sw: SentWorld) -> None:
    sid = sw.message_id("s1")
    with sw.w.dispatch.begin() as conn:
        conn.exec_driver_sql("UPDATE invoice_actions SET provider_message_id = NULL WHERE invoice_id = 's1'")
    receive(
        Database(sw.w.dispatch),
        twilio.parse(twilio.read_form(_form(twilio_status(sid, "failed", "+33612345678")))),
    )
    with sw.w.dispatch.begin() as conn:
        conn.exec_driver_sql(
            f"UPDATE invoice_actions SET provider_message_id = '{sid}' WHERE invoice_id = 's1'"
        )

    summary = pull_bounces(
        Database(sw.w.dispatch), sw.w.settings(), RunContext.new(NOW + dt.timedelta(hours=2))
    )

    assert (summary.webhook_matched, summary.webhook_bounced) == (1, 1)
    assert sw.w.action("s1")["manual_reason"] == "bounced"
    [event] = [e for e in sw.w.events("s1") if e["event"] == "bounced"]
    assert event["run_id"] is not None


def test_daily_sends_counts_delivered_opened_and_bounced(sw: SentWorld) -> None:
    post_sendgrid(
        sw,
        sendgrid_event("delivered", sw.message_id("e1"), "c1@customers.example", at=NOW),
        sendgrid_event("open", sw.message_id("e1"), "c1@customers.example", at=NOW),
        sendgrid_event("bounce", sw.message_id("e2"), "c2@customers.example", at=NOW, reason="550"),
    )
    rows = sw.w.rows("SELECT channel, invoices, delivered, opened, bounced FROM daily_sends ORDER BY channel")
    assert [tuple(r.values()) for r in rows] == [
        ("email", 2, 1, 1, 1),
        ("letter", 1, 0, 0, 0),
        ("sms", 1, 0, 0, 0),
    ]


def _form(params: dict[str, str]) -> bytes:
    from urllib.parse import urlencode

    return urlencode(params).encode()
