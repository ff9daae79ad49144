"""The demo's delivery events (``dispatch.devtools.demo_webhooks``): posted signed to a real
``dispatch web``, they make the invoice pages show delivered / opened and one bounce, and
the bounced e-mail is in its owner's to-do list with SendGrid's reason."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from dispatch.devtools.demo_webhooks import demo_keys, post_demo_events

from tests.web.conftest import WebServer
from tests.webhooks.worlds import sent_world

pytestmark = pytest.mark.slow


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_demo_events_show_on_the_invoice_pages(
    backend: str, tmp_path: Path, web_server: Callable[..., WebServer]
) -> None:
    with sent_world(backend, tmp_path) as sw:
        keys = demo_keys()
        server = web_server(sw.w.env(**keys.env()))

        story = post_demo_events(server.base_url, sw.w.urls["dispatch"], keys)

        assert (len(story.delivered), len(story.opened), story.answer["matched"]) == (1, 1, 5)
        [opened], bounced = story.opened, story.bounced
        assert {opened, bounced} == {"e1", "e2"}
        with httpx.Client(base_url=server.base_url, follow_redirects=True, timeout=30) as client:
            client.get(f"/dispatch/todo?token={server.token}")
            opened_page = _text(client.get(f"/dispatch/invoices/{opened}").text)
            bounced_page = _text(client.get(f"/dispatch/invoices/{bounced}").text)
            todo = _text(client.get("/dispatch/todo").text)
            twin = client.get(f"/dispatch/invoices/{opened}.json").json()
        email = {"e1": "c1@customers.example", "e2": "c2@customers.example"}
        assert re.search(rf"{email[opened]}: opened \d{{4}}-\d\d-\d\d \d\d:\d\d UTC", opened_page)
        assert re.search(rf"{email[bounced]}: bounced .* sendgrid bounce · 550 5\.1\.1", bounced_page)
        assert "550 5.1.1 The email account that you tried to reach does not exist" in todo
        [delivery] = twin["deliveries"]  # the page's JSON twin says the same
        assert (delivery["recipient"], delivery["state"], delivery["event"]) == (
            email[opened],
            "opened",
            "open",
        )
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", delivery["at"])
        # the page shows both what the provider delivered and when it was opened, in that order
        steps = [s["state"] for s in delivery["steps"]]
        assert "delivered" in steps and steps.index("delivered") < steps.index("opened") == len(steps) - 1
        assert all(
            re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", s["at"]) for s in delivery["steps"]
        )
        assert re.search(r"delivered \d{4}-\d\d-\d\d \d\d:\d\d UTC → opened \d{4}-\d\d-\d\d", opened_page)
        assert sw.w.action(bounced)["manual_reason"] == "bounced"
        states = {
            r["invoice_id"]: r["state"] for r in sw.w.rows("SELECT invoice_id, state FROM delivery_status")
        }
        assert states == {opened: "opened", bounced: "bounced"}


def test_demo_events_about_the_outboxs_e_mails_as_in_make_demo(
    backend: str, tmp_path: Path, web_server: Callable[..., WebServer]
) -> None:
    from tests.builders import open_world

    with open_world(backend, tmp_path) as w:
        w.org("acme").plan("p_mail")
        for n in (1, 2, 3):
            w.customer(f"c{n}", plan="p_mail").invoice(f"i{n}", f"c{n}", issued="2026-11-30")
        w.load_config()
        w.run("2026-11-30T09:00Z")  # the demo's backend: the file outbox
        assert {a["provider"] for a in w.actions()} == {"outbox"}
        keys = demo_keys()
        server = web_server(w.env(**keys.env()))

        story = post_demo_events(server.base_url, w.urls["dispatch"], keys)

        states = sorted(r["state"] for r in w.rows("SELECT state FROM delivery_status"))
        assert states == ["bounced", "delivered", "opened"]
        assert (len(story.delivered), len(story.opened), story.bounced is not None) == (2, 1, True)
        assert story.answer["matched"] == story.answer["events"] == 7  # processed, delivered (open); bounce


def test_the_demo_command_starts_its_own_web_app_and_leaves_the_events_in_the_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dispatch.devtools.demo_webhooks import run_with_own_web

    from tests.builders import open_world

    with open_world("sqlite", tmp_path) as w:
        w.org("acme").plan("p_mail")
        for n in (1, 2):
            w.customer(f"c{n}", plan="p_mail").invoice(f"i{n}", f"c{n}", issued="2026-11-30")
        w.load_config()
        w.run("2026-11-30T09:00Z")

        story = run_with_own_web(w.settings())

        assert story.answer["stored"] == 5
        assert capsys.readouterr().out.startswith(
            "delivery webhooks: 1 e-mails delivered, 1 opened, bounced: i"
        )
        assert sorted(r["state"] for r in w.rows("SELECT state FROM delivery_status")) == [
            "bounced",
            "opened",
        ]
