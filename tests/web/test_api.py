"""The JSON API (FastAPI's TestClient on the real application and real databases): every
rule the CLI has — mixed valid and unknown ids, already done, refused — answers the same
way here and changes nothing when it refuses; the actor is the logged-in user."""

from __future__ import annotations

import pytest
from dispatch.web.server import build
from fastapi.testclient import TestClient

from tests.builders import World

TOKEN = "api-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(todo_world: World) -> TestClient:
    return TestClient(build(todo_world.settings(), TOKEN, "claire"))


def _action(w: World, invoice_id: str) -> str:
    return w.action(invoice_id)["action_id"]  # type: ignore[index]


def test_listing_filters_and_puts_my_own_actions_first(todo_world: World) -> None:
    bob = TestClient(build(todo_world.settings(), TOKEN, "u_bob"))
    rows = bob.get("/dispatch/api/todo", headers=AUTH).json()
    assert [r["owner_user_id"] for r in rows][:2] == ["u_bob", "u_bob"]
    assert len(rows) == 6  # five manual-plan actions and the customer without e-mail
    only_alice = bob.get("/dispatch/api/todo?owner=u_alice&reason=no_contact", headers=AUTH).json()
    assert [r["invoice_number"] for r in only_alice] == ["F-2026-006"]
    assert only_alice[0]["reason_words"].startswith("Add an e-mail address to customer Customer c_nomail")
    bad = bob.get("/dispatch/api/todo?owner=nobody", headers=AUTH)
    assert bad.status_code == 400 and "no such user" in bad.json()["detail"]
    assert bob.get("/dispatch/api/todo?channel=fax", headers=AUTH).status_code == 400


def test_ignore_many_records_the_actor_and_repeating_changes_nothing(
    client: TestClient, todo_world: World
) -> None:
    ids = [_action(todo_world, "i1"), _action(todo_world, "i2")]
    done = client.post("/dispatch/api/todo/ignore", json={"action_ids": ids}, headers=AUTH)
    assert done.status_code == 200, done.text
    assert done.json() == {"changed": ids, "unchanged": [], "message": "2 ignored"}
    assert {todo_world.sending_status(i) for i in ("i1", "i2")} == {"sent"}
    assert [(e["event"], e["actor"]) for e in todo_world.events("i1")][-1] == ("ignored", "claire")
    again = client.post("/dispatch/api/todo/ignore", json={"action_ids": ids}, headers=AUTH).json()
    assert again == {"changed": [], "unchanged": ids, "message": "0 ignored, 2 already done"}


def test_one_unknown_id_among_valid_ones_changes_nothing(client: TestClient, todo_world: World) -> None:
    before = todo_world.dump()
    valid = _action(todo_world, "i3")
    for path, body in (
        ("/dispatch/api/todo/ignore", {"action_ids": [valid, "act_nope"]}),
        ("/dispatch/api/todo/send", {"action_ids": [valid, "act_nope"]}),
        ("/dispatch/api/invoices/mark-sent", {"invoice_ids": ["i4", "inv_nope"]}),
    ):
        answer = client.post(path, json=body, headers=AUTH)
        assert answer.status_code == 404, (path, answer.text)
        assert "nothing was changed" in answer.json()["detail"] and "nope" in answer.json()["detail"]
    assert client.post("/dispatch/api/todo/act_nope/send", headers=AUTH).status_code == 404
    assert todo_world.dump() == before
    assert todo_world.outbox_files() == ["email/" + _action(todo_world, "i7") + ".eml"]


def test_refused_operations_answer_409_and_change_nothing(client: TestClient, todo_world: World) -> None:
    sent_action = _action(todo_world, "i7")  # the automatic e-mail went out on the run
    before = todo_world.dump()
    refused = client.post("/dispatch/api/todo/ignore", json={"action_ids": [sent_action]}, headers=AUTH)
    assert refused.status_code == 409 and "already sent" in refused.json()["detail"]
    send = client.post("/dispatch/api/todo/send", json={"action_ids": [sent_action]}, headers=AUTH)
    assert send.status_code == 409 and "not open" in send.json()["detail"]
    assert todo_world.dump() == before
    # marking an invoice already sent is "already done", not a refusal
    marked = client.post("/dispatch/api/invoices/mark-sent", json={"invoice_ids": ["i7", "i5"]}, headers=AUTH)
    assert marked.json() == {
        "changed": ["i5"],
        "unchanged": ["i7"],
        "message": "1 marked as sent, 1 already done",
    }
    assert [(e["event"], e["actor"]) for e in todo_world.events("i5")][-1] == ("marked_sent", "claire")
    bad_body = client.post("/dispatch/api/todo/ignore", json={"action_ids": [], "x": 1}, headers=AUTH)
    assert bad_body.status_code == 422


def test_send_goes_once_the_contact_is_fixed(client: TestClient, todo_world: World) -> None:
    action = _action(todo_world, "i6")
    still = client.post(f"/dispatch/api/todo/{action}/send", headers=AUTH).json()
    assert (still["sent"], still["status"]) == (False, "manual")
    todo_world.contact("c_nomail", email="ap@nomail.example")
    sent = client.post("/dispatch/api/todo/send", json={"action_ids": [action]}, headers=AUTH).json()
    assert [(s["sent"], s["recipient"]) for s in sent] == [(True, "ap@nomail.example")]
    assert todo_world.sending_status("i6") == "sent"
    assert todo_world.email_of("i6")["To"] == "ap@nomail.example"
    assert {e["actor"] for e in todo_world.events("i6") if e["event"] in ("sent", "sent_manually")} == {
        "claire"
    }


def test_a_browser_session_needs_the_csrf_token(client: TestClient, todo_world: World) -> None:
    assert client.get("/dispatch/api/todo").status_code == 401
    assert client.post("/dispatch/api/todo/ignore", json={"action_ids": ["x"]}).status_code == 401
    login = client.get(f"/dispatch/todo?owner=u_bob&token={TOKEN}", follow_redirects=False)
    assert (login.status_code, login.headers["location"]) == (303, "/dispatch/todo?owner=u_bob")
    body = {"action_ids": [_action(todo_world, "i4")]}
    refused = client.post("/dispatch/api/todo/ignore", json=body)
    assert refused.status_code == 403 and todo_world.sending_status("i4") == "to_send"
    forged = client.post("/dispatch/api/todo/ignore", json=body, headers={"X-CSRF-Token": "a.b"})
    assert forged.status_code == 403
    token = client.get("/dispatch/api/session").json()["csrf_token"]
    assert (
        client.post("/dispatch/api/todo/ignore", json=body, headers={"X-CSRF-Token": token}).status_code
        == 200
    )
    assert todo_world.sending_status("i4") == "sent"
    # a page form without its token: 403 and nothing changes
    page = client.post("/dispatch/invoices/mark-sent", data={"selected": "i5"})
    assert page.status_code == 403 and todo_world.sending_status("i5") == "to_send"


def test_invoices_page_by_key_and_one_invoice(client: TestClient, todo_world: World) -> None:
    first = client.get("/dispatch/api/invoices", headers=AUTH).json()
    assert [r["invoice_id"] for r in first["invoices"]] == [f"i{n}" for n in range(1, 8)]
    assert (first["has_next"], first["has_previous"]) == (False, False)
    after = client.get("/dispatch/api/invoices?after=i5", headers=AUTH).json()
    assert [r["invoice_id"] for r in after["invoices"]] == ["i6", "i7"]
    sent = client.get("/dispatch/api/invoices?status=sent", headers=AUTH).json()
    assert [r["invoice_id"] for r in sent["invoices"]] == ["i7"]
    found = client.get("/dispatch/api/invoices?q=F-2026-003", headers=AUTH).json()
    assert [r["invoice_id"] for r in found["invoices"]] == ["i3"]
    by_name = client.get("/dispatch/api/invoices?q=alpha", headers=AUTH).json()
    assert [r["invoice_id"] for r in by_name["invoices"]] == ["i1"]
    assert client.get("/dispatch/api/invoices?status=lost", headers=AUTH).status_code == 400
    one = client.get("/dispatch/api/invoices/i7", headers=AUTH).json()
    assert one["invoice"]["sending_status"] == "sent" and one["invoice"]["status"] in ("not_due", "overdue")
    assert [e["event"] for e in one["events"]][-1] == "sent"
    assert client.get("/dispatch/api/invoices/nope", headers=AUTH).status_code == 404


def test_the_email_preview_cannot_run_script(client: TestClient, todo_world: World) -> None:
    page = client.get("/dispatch/invoices/i7", headers=AUTH)
    assert '<iframe class="preview" title="E-mail preview" sandbox src=' in page.text
    preview = client.get("/dispatch/invoices/i7/message.html", headers=AUTH)
    assert preview.status_code == 200 and "F-2026-007" in preview.text
    assert preview.headers["content-security-policy"].startswith("sandbox; default-src 'none'")
    assert client.get("/dispatch/invoices/i1/message.html", headers=AUTH).status_code == 404  # not sent
    assert client.get("/dispatch/invoices/i7/message.html").status_code == 401


def test_every_page_has_its_json_twin(client: TestClient, todo_world: World) -> None:
    api = client.get("/dispatch/api/todo", headers=AUTH).json()
    assert client.get("/dispatch/todo.json", headers=AUTH).json() == api
    sent = client.get("/dispatch/invoices.json?status=sent", headers=AUTH).json()
    assert [r["number"] for r in sent["invoices"]] == ["F-2026-007"]
    assert client.get("/dispatch/invoices/i7.json", headers=AUTH).json()["invoice"]["invoice_id"] == "i7"
    assert client.get("/dispatch/invoices/nope.json", headers=AUTH).json()["detail"].startswith("unknown")
    assert len(client.get("/dispatch/runs.json", headers=AUTH).json()) == 1
    assert client.get("/dispatch/todo.json").status_code == 401


def test_the_invoice_page_shows_an_sms_text_and_a_letters_pdf(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.builders import open_world

    with open_world("sqlite", tmp_path) as w:
        w.org().plan("p_sms", channel="sms", body="Invoice {{ invoice.number }} <script>x</script>")
        w.plan("p_letter", channel="letter", body="Invoice {{ invoice.number }}")
        w.customer("c_sms", plan="p_sms", email=None, phone="+33612345678")
        w.customer(
            "c_letter", plan="p_letter", email=None, address="Jean Dupont\n1 rue de la Paix\n75002 Paris"
        )
        w.load_config()
        w.invoice("i_sms", "c_sms", number="S-1").invoice("i_letter", "c_letter", number="L-1", pdf=True)
        w.run("2026-12-02T05:00Z")
        client = TestClient(build(w.settings(), TOKEN, "claire"))
        sms = client.get("/dispatch/invoices/i_sms", headers=AUTH)
        assert "Invoice S-1 &lt;script&gt;x&lt;/script&gt;" in sms.text and "<script>x" not in sms.text
        letter = client.get("/dispatch/invoices/i_letter", headers=AUTH)
        assert "Download the letter (PDF)" in letter.text
        pdf = client.get("/dispatch/invoices/i_letter/message.pdf", headers=AUTH)
        assert pdf.headers["content-type"] == "application/pdf" and pdf.content.startswith(b"%PDF")


def test_keyset_pages_forward_backward_and_last(todo_world: World) -> None:
    from dispatch.web.queries import invoice_page

    def ids(page) -> list[str]:  # type: ignore[no-untyped-def]
        return [r["invoice_id"] for r in page.rows]

    first = invoice_page(todo_world.dispatch, size=3)
    assert (ids(first), first.has_previous, first.has_next) == (["i1", "i2", "i3"], False, True)
    second = invoice_page(todo_world.dispatch, size=3, after=first.last_id)
    assert (ids(second), second.has_previous, second.has_next) == (["i4", "i5", "i6"], True, True)
    last = invoice_page(todo_world.dispatch, size=3, last=True)
    assert (ids(last), last.has_previous, last.has_next) == (["i5", "i6", "i7"], True, False)
    back = invoice_page(todo_world.dispatch, size=3, before=second.first_id)
    assert (ids(back), back.has_previous, back.has_next) == (["i1", "i2", "i3"], False, True)
    to_send_last = invoice_page(todo_world.dispatch, size=2, status="to_send", last=True)
    assert ids(to_send_last) == ["i5", "i6"]
