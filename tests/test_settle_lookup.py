"""Settling an e-mail a dead run left in flight through SendGrid's Email Activity API.

The local SendGrid records what it accepted and answers ``GET /v3/messages`` filtered on the
``action_id`` custom arg. A run is killed (``SystemExit`` from inside the real channel, after
some requests went out) in the middle of a window; the next run of the same instant asks
SendGrid about the window's actions: the ones it has are recorded sent with their message
id, the ones it does not have are sent by that run ("full"), or left to a person ("found").
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from dispatch.channels.base import OutgoingMessage, SendResult
from dispatch.channels.factory import build_channels
from dispatch.channels.sendgrid import SendGridApi, SendGridChannel, look_up_action
from dispatch.errors import DispatchError

from tests.builders import World, open_world
from tests.fakes.sendgrid_server import FakeSendGrid


@pytest.fixture
def server() -> Iterator[FakeSendGrid]:
    with FakeSendGrid() as fake:
        yield fake


@pytest.fixture
def w(backend: str, tmp_path: Path) -> Iterator[World]:
    with open_world(backend, tmp_path) as world:
        yield world


def _channel(server: FakeSendGrid, lookup: str) -> SendGridChannel:
    return SendGridChannel(SendGridApi(server.api_key, server.url, timeout=5.0), activity_lookup=lookup)


def _message(action_id: str) -> OutgoingMessage:
    return OutgoingMessage(
        action_id=action_id,
        invoice_id=f"inv_{action_id}",
        org_id="acme",
        channel="email",
        recipients=("ap@client.example",),
        deliver_at=dt.datetime(2026, 12, 2, 5, tzinfo=dt.UTC),
        subject="Invoice",
        body_text="Dear client",
        sender="billing@acme.example",
    )


def test_the_activity_look_up_finds_an_accepted_message_by_its_action_id(server: FakeSendGrid) -> None:
    channel = _channel(server, "full")
    [sent] = channel.send_many([_message("act_1")])
    assert isinstance(sent, SendResult)
    found = look_up_action(channel.api, "act_1")
    assert isinstance(found, SendResult) and found.provider_message_id == sent.provider_message_id
    assert look_up_action(channel.api, "act_2") is False
    lookups = [r for r in server.requests if r.path == "/v3/messages"]
    assert lookups[0].query["query"] == ["unique_args['action_id']=\"act_1\""]


def test_what_each_look_up_mode_makes_of_an_answer(server: FakeSendGrid) -> None:
    _channel(server, "off").send_many([_message("act_1")])
    assert _channel(server, "off").was_handed_over("act_1") is None  # never asks
    assert [r for r in server.requests if r.path == "/v3/messages"] == []
    assert isinstance(_channel(server, "found").was_handed_over("act_1"), SendResult)
    assert _channel(server, "found").was_handed_over("act_2") is None  # not listed (yet): a person checks
    assert _channel(server, "full").was_handed_over("act_2") is False  # not listed: send it again
    server.inject(status=403, path="/v3/messages")  # no Email Activity add-on
    assert _channel(server, "full").was_handed_over("act_1") is None
    with pytest.raises(DispatchError, match="SENDGRID_ACTIVITY_LOOKUP"):
        _channel(server, "always")


class DyingSendGrid:
    """The real SendGrid channel; the process dies once ``survive`` messages were accepted,
    in the middle of a window (the rest of the window never went out)."""

    def __init__(self, real: SendGridChannel, survive: int) -> None:
        self.real, self.survive, self.accepted = real, survive, 0
        self.provider, self.channel = real.provider, real.channel

    def max_schedule_ahead(self) -> dt.timedelta | None:
        return self.real.max_schedule_ahead()

    def send_many(self, messages: Sequence[OutgoingMessage]) -> list:
        results = []
        for m in messages:
            if self.accepted == self.survive:
                raise SystemExit("worker killed")
            results.extend(self.real.send_many([m]))
            self.accepted += 1
        return results

    def was_handed_over(self, action_id: str) -> SendResult | bool | None:
        return self.real.was_handed_over(action_id)


@pytest.mark.parametrize("lookup", ["full", "found"])
def test_after_a_kill_sendgrid_settles_the_window_in_flight(
    w: World, server: FakeSendGrid, lookup: str
) -> None:
    w.org().plan("p_mail", delay=0)
    w.customer("c0", plan="p_mail")
    w.load_config()
    for k in range(9):
        w.invoice(f"i{k}", "c0", issued="2026-12-02")
    settings = w.settings(
        DISPATCH_EMAIL_BACKEND="sendgrid",
        DISPATCH_SEND_CONCURRENCY="4",
        SENDGRID_ACTIVITY_LOOKUP=lookup,
        DISPATCH_MAIL_FROM="billing@acme.example",
        **server.env(),
    )
    channels = build_channels(settings)
    dying = {**channels, "email": DyingSendGrid(channels["email"], survive=6)}  # dies in window 2
    with pytest.raises(SystemExit):
        w.run("2026-12-02T05:00Z", settings=settings, channels=dying)

    w.run("2026-12-02T05:00Z", settings=settings)  # the same instant, re-run after the crash
    received = Counter(m.body["personalizations"][0]["custom_args"]["action_id"] for m in server.mails)
    assert max(received.values()) == 1  # nothing twice
    statuses = Counter((a["status"], a["manual_reason"]) for a in w.actions())
    if lookup == "full":
        assert statuses == Counter({("sent", None): 9}) and len(received) == 9
    else:  # two of window 2 never went out: SendGrid does not list them, a person checks
        assert statuses == Counter({("sent", None): 7, ("manual", "delivery_unknown"): 2})
        assert len(received) == 7
    for a in w.actions():
        if a["status"] == "sent":
            assert received[a["action_id"]] == 1 and a["provider_message_id"]
    settled = [e for e in w.events() if e["event"] == "settled_sent"]
    assert len(settled) == 2  # the window's two that SendGrid had
