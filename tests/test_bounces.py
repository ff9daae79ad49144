"""The bounces stage: SendGrid's suppression lists (bounces, blocks, invalid e-mails) turn the
matching sent e-mails into manual ``bounced`` actions for their owner, once each.

Invoices are sent through the real pipeline with ``DISPATCH_EMAIL_BACKEND=sendgrid`` against
the local SendGrid, whose suppression lists the tests then fill; the pull goes through
``pull_bounces`` (the stage) and ``dispatch bounces pull`` (the CLI).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from dispatch.channels import sendgrid as sg_module
from dispatch.channels.base import FatalChannelError
from dispatch.channels.factory import open_channels
from dispatch.runtime.runs import RunContext
from dispatch.stages.pull_bounces import LOOKBACK, WATERMARK, pull_bounces
from dispatch.storage.session import Database

from tests.builders import World, instant
from tests.fakes.sendgrid_server import FakeSendGrid

AS_OF = instant("2026-12-02T05:00Z")
HOUR = dt.timedelta(hours=1)


@pytest.fixture
def server() -> Iterator[FakeSendGrid]:
    with FakeSendGrid(clock=lambda: AS_OF) as fake:
        yield fake


@pytest.fixture
def w(db_urls: dict[str, str], tmp_path, server: FakeSendGrid) -> World:  # type: ignore[no-untyped-def]
    """Three customers whose invoices went out through SendGrid at AS_OF."""
    world = World.create(db_urls, tmp_path)
    world.extra_env.update({"DISPATCH_EMAIL_BACKEND": "sendgrid", **server.env()})
    world.org("acme").plan("p_mail", delay=0, owner="u_bob").user("u_bob")
    for n in (1, 2, 3):
        world.customer(f"c{n}", plan="p_mail")
        world.invoice(f"i{n}", f"c{n}", issued="2026-12-02")
    world.load_config()
    settings = world.settings()
    with open_channels(settings) as channels:
        channels["email"].close()
        channels["email"] = sg_module.from_settings(settings, "email", clock=lambda: AS_OF)
        world.run(AS_OF, channels=channels)
    assert [a["status"] for a in world.actions()] == ["sent"] * 3
    assert len(server.mails) == 3
    return world


def pull(w: World, at: dt.datetime):  # type: ignore[no-untyped-def]
    return pull_bounces(Database(w.dispatch), w.settings(), RunContext.new(at))


def state(w: World, invoice_id: str) -> tuple[str, str | None]:
    a = w.action(invoice_id)
    return a["status"], a["manual_reason"]


def test_bounced_and_blocked_emails_become_manual_once(w: World, server: FakeSendGrid) -> None:
    server.add_bounce("C1@Customers.example", AS_OF + HOUR, "550 5.1.1 The email account does not exist")
    server.add_block("c3@customers.example", AS_OF + 2 * HOUR, "554 blocked by the receiving server")
    server.add_bounce("c2@customers.example", AS_OF - HOUR)  # before i2 went out: not its bounce
    server.add_bounce("1@customers.example", AS_OF + HOUR)  # a different address inside c1's
    server.add_invalid_email("someone@elsewhere.example", AS_OF + HOUR)

    first = pull(w, AS_OF + 3 * HOUR)
    second = pull(w, AS_OF + 4 * HOUR)

    assert (first.entries, first.matched, first.bounced) == (
        {"bounces": 3, "blocks": 1, "invalid_emails": 1},
        2,
        2,
    )
    # the overlap re-reads the block; its action is no longer sent, so nothing happens twice
    assert (second.entries, second.matched, second.bounced) == ({"blocks": 1}, 0, 0)
    assert [state(w, i) for i in ("i1", "i2", "i3")] == [
        ("manual", "bounced"),
        ("sent", None),
        ("manual", "bounced"),
    ]
    assert "550 5.1.1 The email account does not exist" in w.action("i1")["detail"]
    assert w.action("i3")["detail"].startswith("blocks: c3@customers.example")
    assert w.action("i1")["updated_at"] == AS_OF + 3 * HOUR
    todo = w.rows("SELECT invoice_id, owner_user_id, manual_reason FROM todo_invoicing ORDER BY invoice_id")
    assert todo == [
        {"invoice_id": "i1", "owner_user_id": "u_bob", "manual_reason": "bounced"},
        {"invoice_id": "i3", "owner_user_id": "u_bob", "manual_reason": "bounced"},
    ]
    assert [w.event_names(i).count("bounced") for i in ("i1", "i2", "i3")] == [1, 0, 1]
    assert server.invalid == []


def test_each_pull_reads_from_the_last_one_with_a_small_overlap(w: World, server: FakeSendGrid) -> None:
    pull(w, AS_OF + 3 * HOUR)
    server.clear()
    pull(w, AS_OF + 27 * HOUR)

    [mark] = w.rows("SELECT value FROM watermarks WHERE name = :n", n=WATERMARK)
    assert instant(str(mark["value"])) == AS_OF + 27 * HOUR
    windows = {
        r.path.rsplit("/", 1)[1]: (int(r.query["start_time"][0]), int(r.query["end_time"][0]))
        for r in server.requests
    }
    expected = (int((AS_OF + 3 * HOUR - LOOKBACK).timestamp()), int((AS_OF + 27 * HOUR).timestamp()))
    assert windows == {"bounces": expected, "blocks": expected, "invalid_emails": expected}

    server.clear()
    skipped = pull(w, AS_OF + HOUR)  # a replay of an earlier instant: nothing new to read
    assert skipped.skipped and server.requests == []


def test_a_bounce_weeks_later_does_not_blame_an_old_delivery(w: World, server: FakeSendGrid) -> None:
    server.add_bounce("c1@customers.example", AS_OF + dt.timedelta(days=10))

    summary = pull(w, AS_OF + dt.timedelta(days=11))

    assert (summary.matched, summary.bounced) == (0, 0)
    assert state(w, "i1") == ("sent", None)


def test_long_lists_are_read_page_by_page(w: World, server: FakeSendGrid) -> None:
    for n in range(1100):
        server.add_bounce(f"stranger{n}@elsewhere.example", AS_OF + dt.timedelta(seconds=n))
    server.add_bounce("c2@customers.example", AS_OF + 2 * HOUR)

    before = len(server.requests)  # the world's own run pulled once already
    summary = pull(w, AS_OF + 3 * HOUR)

    offsets = [int(r.query["offset"][0]) for r in server.requests[before:] if r.path.endswith("/bounces")]
    assert offsets == [0, 500, 1000]
    assert summary.entries["bounces"] == 1101
    assert state(w, "i2") == ("manual", "bounced")


def test_a_refused_key_changes_nothing_and_the_next_pull_catches_up(w: World, server: FakeSendGrid) -> None:
    server.add_bounce("c1@customers.example", AS_OF + HOUR)
    server.inject(status=401, path="suppression")
    mark = w.rows("SELECT value FROM watermarks WHERE name = :n", n=WATERMARK)  # the world's run pulled

    with pytest.raises(FatalChannelError, match="401"):
        pull(w, AS_OF + 2 * HOUR)
    assert state(w, "i1") == ("sent", None)
    assert w.rows("SELECT value FROM watermarks WHERE name = :n", n=WATERMARK) == mark

    assert pull(w, AS_OF + 3 * HOUR).bounced == 1
    assert state(w, "i1") == ("manual", "bounced")


def test_nothing_to_pull_when_email_does_not_go_through_sendgrid(w: World, server: FakeSendGrid) -> None:
    server.clear()
    summary = pull_bounces(
        Database(w.dispatch), w.settings(DISPATCH_EMAIL_BACKEND="outbox"), RunContext.new(AS_OF + HOUR)
    )
    assert summary.skipped and server.requests == []


def test_cli_bounces_pull(w: World, server: FakeSendGrid) -> None:
    server.add_invalid_email(
        "c2@customers.example", AS_OF + HOUR, "Mail domain mentioned in email address is unknown"
    )

    first = w.cli("bounces", "pull", "--at", "2026-12-02T08:00:00Z")
    again = w.cli("bounces", "pull", "--at", "2026-12-02T09:00:00Z")

    assert first.exit_code == 0, first.output
    assert "invalid_emails 1" in first.output and "1 sent e-mails became manual" in first.output
    assert "0 sent e-mails became manual" in again.output
    assert state(w, "i2") == ("manual", "bounced")
    assert w.event_names("i2").count("bounced") == 1
