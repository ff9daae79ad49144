"""The pages in headless Chromium, as a person uses them, against a real ``dispatch web``
process on a demo-like database: filter, tick, Ignore selected; Mark as sent from the
invoice page's menu; Send a fixed manual action; refusals change nothing."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.builders import World
from tests.web.conftest import ROOT, build_todo_world

SCREENSHOT = ROOT / "docs" / "todo-page.png"


@pytest.fixture
def world(tmp_path: Path):  # type: ignore[no-untyped-def]
    from tests.builders import open_world

    with open_world("sqlite", tmp_path) as w:
        build_todo_world(w)
        yield w


@pytest.fixture
def server(web_server, world: World):  # type: ignore[no-untyped-def]
    return web_server(world.env(), user="claire")


def _open(page, server) -> None:  # type: ignore[no-untyped-def]
    page.goto(server.url)  # the token opens the session, then the URL loses it
    assert "token=" not in page.url


def _action(w: World, invoice_id: str) -> dict:
    return w.action(invoice_id)  # type: ignore[return-value]


def test_filter_by_owner_tick_two_rows_and_ignore_selected(page, server, world: World) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    _open(page, server)
    expect(page.get_by_role("heading", name="To do › Invoicing")).to_be_visible()
    page.get_by_label("Owner").select_option("u_alice")
    page.get_by_role("button", name="Filter").click()
    rows = page.locator("tbody tr")
    expect(rows).to_have_count(4)  # alice's three manual-plan actions and the missing e-mail
    if os.environ.get("DISPATCH_UPDATE_SCREENSHOT"):
        page.screenshot(path=str(SCREENSHOT), full_page=True)
    expect(page.get_by_text("Alpha <b>One</b>")).to_be_visible()  # a name holding HTML is text
    page.get_by_role("checkbox", name="Select F-2026-001").check()
    page.get_by_role("checkbox", name="Select F-2026-002").check()
    page.get_by_role("button", name="Ignore selected").click()
    expect(page.get_by_role("status")).to_have_text("2 ignored")
    expect(rows).to_have_count(2)
    assert page.get_by_label("Owner").input_value() == "u_alice"  # the filter stays
    for inv in ("i1", "i2"):
        assert _action(world, inv)["status"] == "ignored"
        assert world.sending_status(inv) == "sent"
        assert [(e["event"], e["actor"]) for e in world.events(inv)][-1] == ("ignored", "claire")
    assert _action(world, "i3")["status"] == "manual"


def test_mark_as_sent_from_the_invoice_pages_menu(page, server, world: World) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    _open(page, server)
    page.get_by_role("link", name="Invoices").click()
    page.get_by_label("Status").select_option("to_send")
    page.get_by_role("button", name="Filter").click()
    page.get_by_role("link", name="F-2026-004").click()
    expect(page.get_by_role("heading", name="Invoice F-2026-004")).to_be_visible()
    menu_item = page.get_by_role("menuitem", name="Mark as sent")
    expect(menu_item).to_be_hidden()
    page.get_by_role("button", name="More actions").focus()  # by keyboard, as a person may
    page.keyboard.press("Enter")
    expect(menu_item).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_have_text("1 marked as sent")
    row = world.invoice_row("i4")
    assert (row["sending_status"], row["sent_how"]) == ("sent", "marked_sent")  # type: ignore[index]
    assert [(e["event"], e["actor"]) for e in world.events("i4")][-1] == ("marked_sent", "claire")
    expect(page.get_by_label("Timeline")).to_contain_text("marked sent · by claire")


def test_send_a_manual_action_whose_contact_was_fixed(page, server, world: World) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    world.contact("c_nomail", email="ap@nomail.example")  # the person fixed the contact
    _open(page, server)
    row = page.locator("tbody tr", has=page.get_by_role("checkbox", name="Select F-2026-006"))
    row.get_by_role("button", name="Send").click()
    expect(page.get_by_role("status")).to_contain_text("1 sent")
    action = _action(world, "i6")
    assert (action["status"], action["recipient"]) == ("sent", "ap@nomail.example")
    assert world.email_of("i6")["To"] == "ap@nomail.example"
    assert (world.outbox / "email" / f"{action['action_id']}.eml").is_file()
    expect(page.get_by_role("checkbox", name="Select F-2026-006")).to_have_count(0)
    # its invoice page shows the e-mail as it went out, in a sandboxed frame
    page.goto(f"{server.base_url}/dispatch/invoices/i6")
    frame = page.locator("iframe[title='E-mail preview']")
    assert frame.get_attribute("sandbox") == ""
    expect(page.frame_locator("iframe[title='E-mail preview']").locator("body")).to_contain_text("F-2026-006")


def test_an_unknown_id_changes_nothing(page, server, world: World) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    before = world.dump()
    _open(page, server)
    box = page.get_by_role("checkbox", name="Select F-2026-003")
    box.evaluate("el => { el.value = 'act_does_not_exist' }")  # an id that does not exist
    box.check()
    page.get_by_role("checkbox", name="Select F-2026-004").check()
    page.get_by_role("button", name="Ignore selected").click()
    expect(page.get_by_role("status")).to_contain_text("unknown action id(s): act_does_not_exist")
    expect(page.get_by_role("status")).to_contain_text("nothing was changed")
    assert world.dump() == before


def test_a_post_without_its_csrf_token_is_refused(page, server, world: World) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    before = world.dump()
    _open(page, server)
    page.locator("input[name=csrf_token]").first.evaluate("el => el.remove()")
    page.get_by_role("checkbox", name="Select F-2026-003").check()
    with page.expect_response(re.compile(r"/dispatch/todo/ignore$")) as answer:
        page.get_by_role("button", name="Ignore selected").click()
    assert answer.value.status == 403
    expect(page.get_by_role("alert")).to_contain_text("CSRF")
    assert world.dump() == before
    # and a page without a session says how to log in
    fresh = page.context.browser.new_page()
    response = fresh.goto(f"{server.base_url}/dispatch/todo")
    assert response.status == 401
    expect(fresh.get_by_role("heading", name="Log in")).to_be_visible()
    fresh.close()


def test_runs_page_has_the_table_and_the_chart(page, server, world: World) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    _open(page, server)
    page.get_by_role("link", name="Runs").click()
    expect(page.get_by_role("img", name="Invoices sent per day and channel")).to_be_visible()
    # the one e-mail the run sent on Dec 02, in the chart's text alternative and as its bar
    expect(page.locator("svg.chart desc")).to_have_text("Dec 02: 1")
    expect(page.locator("svg.chart rect title")).to_have_text(["2026-12-02 email: 1"])
    expect(page.locator("tbody tr")).to_have_count(1)


def test_mark_selected_as_sent_on_the_invoices_page(page, server, world: World) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    _open(page, server)
    page.get_by_role("link", name="Invoices").click()
    page.get_by_role("checkbox", name="Select F-2026-005").check()
    page.get_by_role("checkbox", name="Select F-2026-007").check()  # already sent: "already done"
    page.get_by_role("button", name="Mark selected as sent").click()
    expect(page.get_by_role("status")).to_have_text("1 marked as sent, 1 already done")
    assert world.invoice_row("i5")["sent_how"] == "marked_sent"  # type: ignore[index]
    assert [(e["event"], e["actor"]) for e in world.events("i5")][-1] == ("marked_sent", "claire")
