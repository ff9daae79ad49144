"""One end-to-end test per SPEC rule (R1–R14, B2–B9) and per worked example, through the
whole pipeline on real databases (SQLite and PostgreSQL) and the embedded outbox.

Runs happen on weekdays at 05:00 UTC like the DAG's, as of explicit instants; a test asserts
the outcome a person would check: statuses, the file in the outbox (or its absence), who
receives it, when it is delivered, who has it in their to-do list.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from dispatch.channels.base import (
    DeliveryUnknownError,
    FatalChannelError,
    PermanentError,
    SendResult,
    TransientError,
)
from dispatch.errors import ConfigError
from dispatch.stages.resolve_templates import action_id_for

from tests.builders import World, eml_parts, instant, only, open_world, weekday_runs

UTC = dt.UTC
OWNER_VIEWS = ("analytics_invoices", "dunning_invoices", "portal_invoices")


@pytest.fixture
def w(backend: str, tmp_path: Path) -> Iterator[World]:
    with open_world(backend, tmp_path) as world:
        yield world


def at(text: str) -> dt.datetime:
    return instant(text)


# --- R1–R2: which invoices are to send ---------------------------------------------------


def test_r1_paid_direct_debit_invoice_imported_after_switch_on_is_to_send_and_sent(w: World) -> None:
    w.org(enabled_at="2026-11-01T00:00:00+01:00").plan("p_next_day", delay=1)
    w.customer("c_dd", plan="p_next_day").load_config()
    w.invoice("i_paid", "c_dd", issued="2026-12-02", status="paid")  # paid by direct debit
    w.invoice("i_open", "c_dd", issued="2026-12-02", status="open")

    w.run("2026-12-02T05:00Z")
    for inv in ("i_paid", "i_open"):
        assert w.sending_status(inv) == "to_send"
        assert w.action(inv)["status"] == "scheduled"
    assert w.rows("SELECT status FROM invoice_status WHERE invoice_id = 'i_paid'") == [{"status": "to_send"}]

    w.run("2026-12-03T05:00Z")
    paid = w.invoice_row("i_paid")
    assert (paid["sending_status"], paid["sent_how"]) == ("sent", "automatic")
    assert w.outbox_path("i_paid").exists()  # the customer still receives the copy
    assert w.email_of("i_paid")["To"] == "c_dd@customers.example"
    # once sent it shows its collection status again
    assert w.rows("SELECT status FROM invoice_status WHERE invoice_id = 'i_paid'") == [{"status": "paid"}]


def test_r2_invoices_imported_before_switch_on_or_while_off_are_never_sent(w: World) -> None:
    w.org("acme", enabled_at="2026-12-03T00:00:00+01:00")  # 2026-12-02T23:00Z
    w.org("beta", enabled_at=None, default_owner="u_bea", mail_from=None)  # sending off
    w.plan("p_mail").plan("p_beta", org="beta")
    w.customer("c1", plan="p_mail").customer("c_beta", "beta", plan="p_beta").load_config()
    w.invoice("i_before", "c1", issued="2026-12-01", updated="2026-12-01T10:00Z")
    w.invoice("i_off", "c_beta", issued="2026-12-01", updated="2026-12-01T10:00Z")

    w.run("2026-12-02T05:00Z")  # before the switch-on instant
    assert w.sending_status("i_before") == "not_required"
    assert w.sending_status("i_off") == "not_required"

    # after the switch-on: a new invoice is to send; the old one, changed in accounting and
    # re-read by the extract, stays not_required
    w.invoice("i_after", "c1", issued="2026-12-02", updated="2026-12-02T23:30Z")
    w.update_invoice("i_before", updated="2026-12-02T23:30Z", status="paid")
    w.invoice("i_off2", "c_beta", issued="2026-12-03", updated="2026-12-03T00:00Z")
    for run in weekday_runs("2026-12-03", "2026-12-08"):
        w.run(run)

    assert w.sending_status("i_after") == "sent"
    assert w.invoice_row("i_before")["accounting_status"] == "paid"
    for inv in ("i_before", "i_off", "i_off2"):
        assert w.sending_status(inv) == "not_required"
        assert w.action(inv) is None
    assert w.outbox_files() == [f"email/{action_id_for('i_after')}.eml"]
    # not_required invoices are ordinary invoices for analytics (R3 only hides to_send)
    assert {"i_before", "i_off", "i_off2"} <= w.view_ids("analytics_invoices")


# --- R3–R5: what the views show, one action per invoice -----------------------------------


def test_r3_to_send_invoices_are_left_out_of_analytics_dunning_and_portal_until_sent(w: World) -> None:
    w.org().plan("p_next_day", delay=1).customer("c1", plan="p_next_day").load_config()
    w.invoice("i1", "c1", issued="2026-12-02")

    w.run("2026-12-02T05:00Z")
    assert w.sending_status("i1") == "to_send"
    for view in OWNER_VIEWS:
        assert "i1" not in w.view_ids(view), view

    w.run("2026-12-03T05:00Z")
    assert w.sending_status("i1") == "sent"
    for view in OWNER_VIEWS:
        assert "i1" in w.view_ids(view), view


def test_r4_all_to_send_invoices_are_listed_by_the_invoices_command(w: World) -> None:
    w.org().plan("p_mail").plan("p_later", delay=3)
    w.customer("c_now", plan="p_mail").customer("c_later", plan="p_later").customer("c_none")
    w.load_config()
    w.invoice("i_sent", "c_now").invoice("i_scheduled", "c_later").invoice("i_no_template", "c_none")
    w.run("2026-12-02T05:00Z")

    result = w.cli("invoices", "--status", "to_send", "--json")
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert {r["invoice_id"] for r in listed} == {"i_scheduled", "i_no_template"}
    assert all(r["sending_status"] == "to_send" and r["status"] == "to_send" for r in listed)
    for key in (
        "invoice_id",
        "org_id",
        "customer_id",
        "number",
        "issue_date",
        "due_date",
        "currency",
        "total_amount",
        "accounting_status",
        "first_seen_at",
        "sending_status",
        "sent_at",
        "sent_how",
        "status",
    ):
        assert key in listed[0], key
    assert listed[0]["first_seen_at"] == "2026-12-02T05:00:00Z"

    everything = json.loads(w.cli("invoices", "--json").stdout)
    assert {r["invoice_id"] for r in everything} == {"i_sent", "i_scheduled", "i_no_template"}


def test_r5_each_to_send_invoice_has_exactly_one_action_even_after_many_runs(w: World) -> None:
    w.org().plan("p_mail").plan("p_later", delay=2).plan("p_manual", automatic=False, owner="u_bob")
    w.user("u_bob")
    w.customer("c1", plan="p_mail").customer("c2", plan="p_later").customer("c3", plan="p_manual")
    w.load_config()
    w.invoice("i1", "c1").invoice("i2", "c2").invoice("i3", "c3")

    runs = weekday_runs("2026-12-02", "2026-12-11")
    for run in runs + runs[:3]:  # and a few days again (a backfill)
        w.run(run)

    actions = w.actions()
    assert [a["invoice_id"] for a in actions] == ["i1", "i2", "i3"]
    for inv in ("i1", "i2", "i3"):
        assert w.event_names(inv).count("created") == 1
    assert w.outbox_files() == sorted(
        [f"email/{action_id_for('i1')}.eml", f"email/{action_id_for('i2')}.eml"]
    )
    for inv in ("i1", "i2"):
        assert w.event_names(inv).count("sent") == 1
    # the manual one shows once in the to-do list, under its owner
    todo = w.rows("SELECT invoice_id, owner_user_id, manual_reason FROM todo_invoicing")
    assert todo == [{"invoice_id": "i3", "owner_user_id": "u_bob", "manual_reason": "manual_template"}]


# --- R6–R8: which template -------------------------------------------------------------


def test_r6_only_customer_level_plans_carry_templates_and_an_empty_plan_can_hold_one(w: World) -> None:
    w.org()
    w.plan("p_invoice_level", channel=None, level="invoice")  # invoice-level dunning: no template
    w.plan("p_dunning_only", channel=None)  # customer-level plan without a template
    w.plan("p_send_only", subject="Your invoice {{ invoice.number }}")  # "empty" plan, template only
    w.customer("c_dunning", plan="p_dunning_only").customer("c_invoice_level", plan="p_send_only")
    w.load_config()
    w.invoice("i_dunning", "c_dunning").invoice("i_inv_level", "c_invoice_level")

    w.run("2026-12-02T05:00Z")
    assert w.action("i_dunning") is None
    assert w.sending_status("i_dunning") == "to_send"
    assert w.view_ids("invoices_without_template") == {"i_dunning"}
    assert w.action("i_inv_level")["plan_id"] == "p_send_only"
    assert w.email_of("i_inv_level")["Subject"] == "Your invoice I_INV_LEVEL"

    # an invoice-level plan can neither carry a template nor be assigned to a customer
    before = w.dump()
    w.plan("p_invoice_level", channel="email", level="invoice")
    with pytest.raises(ConfigError, match="invoice_sending"):
        w.load_config()
    w.plan("p_invoice_level", channel=None, level="invoice").assign("c_dunning", "p_invoice_level")
    with pytest.raises(ConfigError, match="p_invoice_level"):
        w.load_config()
    assert w.dump() == before


def test_r7_a_childs_invoice_uses_the_childs_own_plan_not_the_parents(w: World) -> None:
    w.org()
    w.plan("p_parent", subject="PARENT {{ invoice.number }}")
    w.plan("p_child", channel="sms", body="CHILD {{ invoice.number }} for {{ customer.name }}")
    w.customer("c_group", plan="p_parent", name="Groupe")
    w.customer(
        "c_sub", parent="c_group", plan="p_child", name="Filiale Lille", email=None, phone="+33612345678"
    )
    w.load_config()
    w.invoice("i_group", "c_group").invoice("i_sub", "c_sub")

    w.run("2026-12-02T05:00Z")
    child = w.action("i_sub")
    assert (child["plan_id"], child["channel"], child["status"]) == ("p_child", "sms", "sent")
    sms = w.sms_of("i_sub")
    assert sms["to"] == "+33612345678"
    assert sms["body"] == "CHILD I_SUB for Filiale Lille"
    assert not (w.outbox / "email" / f"{child['action_id']}.eml").exists()
    parent = w.email_of("i_group")
    assert parent["Subject"] == "PARENT I_GROUP"
    assert parent["To"] == "c_group@customers.example"


def test_r8_a_child_without_plan_gets_no_action_until_a_plan_is_assigned(w: World) -> None:
    w.org().plan("p_parent").plan("p_child_later", subject="Child {{ invoice.number }}")
    w.customer("c_group", plan="p_parent").customer("c_sub", parent="c_group")
    w.load_config()
    w.invoice("i_sub", "c_sub", issued="2026-12-02")

    for run in ("2026-12-02T05:00Z", "2026-12-03T05:00Z"):
        report = w.run(run)
        assert w.action("i_sub") is None  # no fallback to the parent's plan
        assert w.sending_status("i_sub") == "to_send"
        assert w.view_ids("invoices_without_template") == {"i_sub"}
        assert report.counts["totals"]["without_template"] == 1
    assert w.outbox_files() == []

    w.assign("c_sub", "p_child_later").load_config()
    w.run("2026-12-04T05:00Z")
    action = w.action("i_sub")
    assert (action["plan_id"], action["status"]) == ("p_child_later", "sent")
    assert action["created_at"] == at("2026-12-04T05:00Z")
    assert action["deliver_at"] == at("2026-12-04T05:00Z")  # overdue: handed over now
    assert w.email_of("i_sub")["Subject"] == "Child I_SUB"
    assert w.view_ids("invoices_without_template") == set()


def test_r9_subject_and_body_use_customer_invoice_organization_and_owner_variables(w: World) -> None:
    w.org(name="ACME France").user("u_bob", name="Bob Martin")
    w.plan(
        "p_custom",
        owner="u_bob",
        subject="{{ organization.name }}: invoice {{ invoice.number }} for {{ customer.name }}",
        body="Hello {{ customer.name }}, {{ invoice.total_amount|money(invoice.currency) }} "
        "due {{ invoice.due_date }}. {{ owner.name }} ({{ owner.email }})",
    )
    w.customer("c1", plan="p_custom", name="Durand SA", language="en").load_config()
    w.invoice("i1", "c1", number="F-2026-001", total="1234.50", due="2027-01-01")
    w.run("2026-12-02T05:00Z")

    message = w.email_of("i1")
    assert message["Subject"] == "ACME France: invoice F-2026-001 for Durand SA"
    text = eml_parts(message)["text"]
    assert "Hello Durand SA, €1,234.50 due 2027-01-01. Bob Martin (u_bob@staff.example)" in text


# --- R10–R12: automatic and manual actions ---------------------------------------------


def test_r10_automatic_actions_go_out_after_their_delay_on_business_days(w: World) -> None:
    w.org().org("tokyo", timezone="Asia/Tokyo", holidays=None, default_owner="u_kenji", mail_from=None)
    w.plan("p_d0").plan("p_d1", delay=1).plan("p_d2", delay=2)
    w.plan("p_letter_tokyo", "tokyo", channel="letter", delay=1, body="Invoice {{ invoice.number }}")
    w.plan("p_mail_tokyo", "tokyo", delay=1)
    w.customer("c0", plan="p_d0").customer("c1", plan="p_d1").customer("c2", plan="p_d2")
    w.customer("c_tl", "tokyo", plan="p_letter_tokyo", email=None, address="Kenji Sato\n1-1 Chiyoda\nTokyo")
    w.customer("c_tm", "tokyo", plan="p_mail_tokyo")
    w.load_config()
    for inv, cust in (("i0", "c0"), ("i1", "c1"), ("i2", "c2"), ("i_tl", "c_tl"), ("i_tm", "c_tm")):
        w.invoice(inv, cust, issued="2026-12-03")  # a Thursday
    # issued long ago, first seen now: its day (Monday 23 Nov) has passed; sent late, once
    w.invoice("i_late", "c1", issued="2026-11-20", updated="2026-12-03T00:00Z")

    sent_by = w.run_days(
        weekday_runs("2026-12-03", "2026-12-08"), watch=["i0", "i1", "i2", "i_tl", "i_tm", "i_late"]
    )

    expected = {
        # delay 0: the importing run, at once
        "i0": ("2026-12-03T05:00Z", "2026-12-03T05:00Z", "2026-12-03T05:00Z"),
        # delay 1: Friday 08:30 Paris
        "i1": ("2026-12-04T07:30Z", "2026-12-04T05:00Z", "2026-12-04T07:30Z"),
        # delay 2: Saturday → Monday 08:30 Paris; Friday's run covers until Monday 05:00Z only
        "i2": ("2026-12-07T07:30Z", "2026-12-07T05:00Z", "2026-12-07T07:30Z"),
        # Tokyo, Friday 08:30 local = Thursday 23:30Z: an e-mail is handed over by Thursday's
        # run with that delivery time; a letter never goes ahead of its local day
        "i_tm": ("2026-12-03T23:30Z", "2026-12-03T05:00Z", "2026-12-03T23:30Z"),
        "i_tl": ("2026-12-03T23:30Z", "2026-12-04T05:00Z", "2026-12-04T05:00Z"),
        "i_late": ("2026-11-23T07:30Z", "2026-12-03T05:00Z", "2026-12-03T05:00Z"),
    }
    for inv, (scheduled, run, deliver) in expected.items():
        action = w.action(inv)
        assert action["scheduled_for"] == at(scheduled), inv
        assert sent_by[inv] == at(run), inv
        assert action["deliver_at"] == at(deliver), inv
        assert w.event_names(inv).count("sent") == 1, inv
    assert w.email_of("i2")["X-Deliver-At"] == "2026-12-07T07:30:00Z"
    letter = w.outbox_path("i_tl").read_bytes()
    assert letter.startswith(b"%PDF")


def test_r11_an_automatic_action_without_usable_contact_becomes_manual_for_its_owner(w: World) -> None:
    w.org(default_owner="u_alice").user("u_bob")
    w.plan("p_mail_bob", owner="u_bob").plan("p_mail_default")
    w.plan("p_sms", channel="sms", body="Invoice {{ invoice.number }}")
    w.plan("p_letter", channel="letter", body="Invoice {{ invoice.number }}")
    w.customer("c_phone_only", plan="p_mail_bob", email=None, phone="+33612345678")
    w.customer("c_nothing", plan="p_mail_default", email=None)
    w.customer("c_bad_email", plan="p_mail_bob", email="jean.dupont@@example")
    w.customer("c_no_phone", plan="p_sms")
    w.customer("c_bad_phone", plan="p_sms", email=None, phone="12")
    w.customer("c_no_address", plan="p_letter")
    w.customer("c_ok", plan="p_mail_bob")
    w.load_config()
    cases = {
        "i_phone_only": ("c_phone_only", "no_contact", "u_bob"),
        "i_nothing": ("c_nothing", "no_contact", "u_alice"),  # the org's default owner
        "i_bad_email": ("c_bad_email", "invalid_contact", "u_bob"),
        "i_no_phone": ("c_no_phone", "no_contact", "u_alice"),
        "i_bad_phone": ("c_bad_phone", "invalid_contact", "u_alice"),
        "i_no_address": ("c_no_address", "no_contact", "u_alice"),
    }
    for inv, (cust, _, _) in cases.items():
        w.invoice(inv, cust)
    w.invoice("i_ok", "c_ok")

    report = w.run("2026-12-02T05:00Z")
    for inv, (_, reason, owner) in cases.items():
        action = w.action(inv)
        assert (action["status"], action["manual_reason"], action["owner_user_id"]) == (
            "manual",
            reason,
            owner,
        ), inv
        assert action["detail"], inv  # says why, for the person fixing it
        assert not w.outbox_path(inv).exists(), inv
        assert w.sending_status(inv) == "to_send"
    assert "jean.dupont@@example" in w.action("i_bad_email")["detail"]
    todo = {
        r["invoice_id"]: (r["owner_user_id"], r["manual_reason"])
        for r in w.rows("SELECT * FROM todo_invoicing")
    }
    assert todo == {inv: (owner, reason) for inv, (_, reason, owner) in cases.items()}
    assert w.action("i_ok")["status"] == "sent"
    assert report.counts["run"]["manual.no_contact"] == 4
    assert report.counts["run"]["manual.invalid_contact"] == 2


def test_r12_manual_actions_enter_the_owners_todo_on_their_day_and_can_be_sent_once_fixed(w: World) -> None:
    w.org(default_owner="u_alice").user("u_bob")
    w.plan("p_manual", delay=2, automatic=False, owner="u_bob", subject="Manual {{ invoice.number }}")
    w.plan("p_auto")
    w.customer("c_manual", plan="p_manual", email=None).customer("c_auto", plan="p_auto", email=None)
    w.load_config()
    w.invoice("i_manual", "c_manual", issued="2026-12-02").invoice("i_auto", "c_auto", issued="2026-12-02")

    w.run("2026-12-02T05:00Z")
    w.run("2026-12-03T05:00Z")
    assert w.action("i_manual")["status"] == "scheduled"  # not before its day (Friday)
    assert w.view_ids("todo_invoicing") == {"i_auto"}
    w.run("2026-12-04T05:00Z")
    manual = w.action("i_manual")
    assert (manual["status"], manual["manual_reason"]) == ("manual", "manual_template")
    bob = json.loads(w.cli("todo", "--owner", "u_bob", "--json").stdout)
    assert [r["invoice_id"] for r in bob] == ["i_manual"]
    alice = json.loads(w.cli("todo", "--owner", "u_alice", "--json").stdout)
    assert [(r["invoice_id"], r["manual_reason"]) for r in alice] == [("i_auto", "no_contact")]

    # sending while the cause is not fixed: refused, the action stays in the to-do list
    result = w.cli("todo", "send", manual["action_id"], "--at", "2026-12-04T09:00Z")
    assert result.exit_code == 2
    assert "no_contact" in result.stderr
    assert w.action("i_manual")["status"] == "manual"
    assert not w.outbox_path("i_manual").exists()

    w.contact("c_manual", email="ap@manual.example").contact("c_auto", email="ap@auto.example")
    for inv in ("i_manual", "i_auto"):
        action_id = w.action(inv)["action_id"]
        result = w.cli("todo", "send", action_id, "--at", "2026-12-04T09:00Z")
        assert result.exit_code == 0, result.output
        action = w.action(inv)
        assert action["status"] == "sent"
        assert w.invoice_row(inv)["sent_how"] == "manual"
        assert w.email_of(inv)["X-Deliver-At"] == "2026-12-04T09:00:00Z"
    assert w.email_of("i_manual")["To"] == "ap@manual.example"
    assert w.email_of("i_manual")["Subject"] == "Manual I_MANUAL"
    assert w.view_ids("todo_invoicing") == set()
    sent_at = instant("2026-12-04T09:00Z")  # the person's instant, not the wall clock
    assert [(e["event"], e["at"]) for e in w.events("i_manual")][-2:] == [
        ("claimed", sent_at),
        ("sent_manually", sent_at),
    ]
    # sending it again is refused and writes nothing
    state = w.outbox_state()
    result = w.cli("todo", "send", w.action("i_manual")["action_id"])
    assert result.exit_code == 2
    assert w.outbox_state() == state


def test_r13_ignoring_an_action_counts_the_invoice_as_sent(w: World) -> None:
    w.org().plan("p_manual", automatic=False).customer("c1", plan="p_manual").load_config()
    w.invoice("i1", "c1", issued="2026-12-02", status="paid")
    w.run("2026-12-02T05:00Z")
    action_id = w.action("i1")["action_id"]
    assert w.view_ids("todo_invoicing") == {"i1"}
    assert "i1" not in w.view_ids("dunning_invoices")

    result = w.cli("todo", "ignore", action_id, "--at", "2026-12-02T10:00Z")
    assert result.exit_code == 0, result.output
    assert w.action("i1")["status"] == "ignored"
    invoice = w.invoice_row("i1")
    assert (invoice["sending_status"], invoice["sent_how"]) == ("sent", "ignored")
    for view in OWNER_VIEWS:
        assert "i1" in w.view_ids(view), view
    assert w.view_ids("todo_invoicing") == set()
    assert w.rows("SELECT status FROM invoice_status WHERE invoice_id = 'i1'") == [{"status": "paid"}]
    for run in weekday_runs("2026-12-03", "2026-12-07"):
        w.run(run)
    assert w.outbox_files() == []
    assert w.action("i1")["status"] == "ignored"


def test_r14_mark_sent_on_one_or_many_is_idempotent_and_refuses_sent_or_cancelled(w: World) -> None:
    w.org().plan("p_later", delay=3).plan("p_manual", automatic=False).plan("p_now")
    w.customer("c_later", plan="p_later").customer("c_manual", plan="p_manual")
    w.customer("c_none").customer("c_now", plan="p_now").load_config()
    w.invoice("i_later", "c_later", status="paid").invoice("i_manual", "c_manual", due="2031-01-01")
    w.invoice("i_none", "c_none", due="2000-01-01").invoice("i_now", "c_now")
    w.invoice("i_voided", "c_later")
    w.run("2026-12-02T05:00Z")
    w.update_invoice("i_voided", updated="2026-12-02T12:00Z", status="void")
    w.run("2026-12-03T05:00Z")
    assert w.action("i_now")["status"] == "sent"

    # (a) one invoice
    result = w.cli("invoices", "mark-sent", "i_later", "--at", "2026-12-03T09:00Z")
    assert result.exit_code == 0, result.output
    later = w.invoice_row("i_later")
    assert (later["sending_status"], later["sent_how"], later["sent_at"]) == (
        "sent",
        "marked_sent",
        at("2026-12-03T09:00Z"),
    )
    assert w.action("i_later")["status"] == "ignored"  # its open action is closed
    assert w.event_names("i_later")[-1] == "marked_sent"
    # (c) many at once, one with an open manual action, one without template
    result = w.cli("invoices", "mark-sent", "i_manual", "i_none", "--at", "2026-12-03T09:00Z")
    assert result.exit_code == 0, result.output
    assert w.action("i_manual")["status"] == "ignored"
    assert {w.sending_status(i) for i in ("i_manual", "i_none")} == {"sent"}
    statuses = {r["invoice_id"]: r["status"] for r in json.loads(w.cli("invoices", "--json").stdout)}
    assert (statuses["i_later"], statuses["i_manual"], statuses["i_none"]) == ("paid", "not_due", "overdue")

    # repeating is a success that changes nothing
    before = w.dump()
    for args in (
        ("invoices", "mark-sent", "i_later", "i_manual"),
        ("todo", "ignore", w.action("i_manual")["action_id"]),
    ):
        result = w.cli(*args, "--at", "2026-12-03T10:00Z")
        assert result.exit_code == 0, result.output
    assert w.dump() == before

    # refused: ignoring or sending an action already sent or cancelled; marking a cancelled invoice
    w.run("2026-12-07T05:00Z")  # i_voided's day: cancelled at the re-check
    assert w.action("i_voided")["status"] == "cancelled"
    before = w.dump()
    for args in (
        ("todo", "ignore", w.action("i_now")["action_id"]),
        ("todo", "send", w.action("i_now")["action_id"]),
        ("todo", "ignore", w.action("i_voided")["action_id"]),
        ("todo", "send", w.action("i_voided")["action_id"]),
        ("invoices", "mark-sent", "i_voided"),
        ("todo", "ignore", w.action("i_voided")["action_id"], w.action("i_later")["action_id"]),
    ):
        result = w.cli(*args)
        assert result.exit_code == 2, (args, result.output)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert w.dump() == before
    for run in weekday_runs("2026-12-08", "2026-12-09"):
        w.run(run)
    assert w.outbox_files() == [f"email/{action_id_for('i_now')}.eml"]


# --- B2–B9 -------------------------------------------------------------------------------


def test_b2_every_invoice_is_in_exactly_one_outcome_and_the_counts_add_up_on_every_run(w: World) -> None:
    w.org().org("beta", enabled_at=None, default_owner="u_bea", mail_from=None)
    w.plan("p_now").plan("p_manual", automatic=False).plan("p_later", delay=3).plan("p_far", delay=10)
    w.plan("p_beta", "beta")
    w.customer("c_now", plan="p_now").customer("c_manual", plan="p_manual")
    w.customer("c_later", plan="p_later")
    w.customer("c_far", plan="p_far").customer("c_no_mail", plan="p_now", email=None).customer("c_none")
    w.customer("c_beta", "beta", plan="p_beta").load_config()
    w.invoice("i_sent", "c_now").invoice("i_no_contact", "c_no_mail").invoice("i_ignored", "c_manual")
    w.invoice("i_marked", "c_later").invoice("i_void", "c_now", status="void").invoice("i_far", "c_far")
    w.invoice("i_nt", "c_none").invoice("i_beta", "c_beta")
    w.raw_invoice(
        invoice_id="i_bad",
        org_id="acme",
        customer_id="c_now",
        number="BAD",
        issue_date="2026-12-02",
        currency="EURO",
        total_amount="10.00",
        status="open",
    )

    def check(report, expected: dict[str, int]) -> None:  # type: ignore[no-untyped-def]
        totals = report.counts["totals"]
        outcomes = (
            "sent",
            "manual",
            "ignored_or_marked_sent",
            "cancelled",
            "scheduled",
            "without_template",
            "not_required",
        )
        assert {k: totals[k] for k in outcomes} == expected
        assert totals["imported"] == sum(expected.values()) == len(w.rows("SELECT invoice_id FROM invoices"))
        assert totals["rejected"] == 1
        stored = only(w.rows("SELECT counts, status FROM dispatch_runs WHERE run_id = :r", r=report.run_id))
        counts = stored["counts"] if isinstance(stored["counts"], dict) else json.loads(stored["counts"])
        assert (counts["totals"], stored["status"]) == (totals, "succeeded")

    first = w.run("2026-12-02T05:00Z")
    check(
        first,
        {
            "sent": 1,
            "manual": 2,
            "ignored_or_marked_sent": 0,
            "cancelled": 1,
            "scheduled": 2,
            "without_template": 1,
            "not_required": 1,
        },
    )
    assert (first.counts["run"]["imported"], first.counts["run"]["rejected"]) == (8, 1)

    assert w.cli("todo", "ignore", w.action("i_ignored")["action_id"]).exit_code == 0
    assert w.cli("invoices", "mark-sent", "i_marked").exit_code == 0
    w.invoice("i_new", "c_now", issued="2026-12-03")
    second = w.run("2026-12-03T05:00Z")
    check(
        second,
        {
            "sent": 2,
            "manual": 1,
            "ignored_or_marked_sent": 2,
            "cancelled": 1,
            "scheduled": 1,
            "without_template": 1,
            "not_required": 1,
        },
    )
    assert (second.counts["run"]["imported"], second.counts["run"]["events.sent"]) == (1, 1)

    third = w.run("2026-12-16T05:00Z")  # i_far's day
    check(
        third,
        {
            "sent": 3,
            "manual": 1,
            "ignored_or_marked_sent": 2,
            "cancelled": 1,
            "scheduled": 0,
            "without_template": 1,
            "not_required": 1,
        },
    )
    assert third.counts["run"]["imported"] == 0


class ScriptedProvider:
    """A remote e-mail provider stand-in (Channel protocol): answers each invoice's attempts
    as scripted — "ok" accepts, an exception instance is returned (or raised, for a fatal
    error) — and, like SendGrid, cannot tell afterwards whether it has a message."""

    provider = "scripted"
    channel = "email"

    def __init__(self, script: dict[str, list[object]]) -> None:
        self.script = {action_id_for(inv): list(answers) for inv, answers in script.items()}
        self.accepted: list[str] = []

    def max_schedule_ahead(self) -> dt.timedelta | None:
        return dt.timedelta(hours=72)

    def send_many(self, messages):  # type: ignore[no-untyped-def]
        results = []
        for m in messages:
            answers = self.script.get(m.action_id) or ["ok"]
            answer = answers.pop(0) if len(answers) > 1 else answers[0]
            if isinstance(answer, FatalChannelError):
                raise answer
            if answer == "ok":
                self.accepted.append(m.action_id)
                results.append(SendResult(m.action_id, self.provider, f"msg-{m.action_id}", m.deliver_at))
            else:
                results.append(answer)
        return results

    def was_handed_over(self, action_id: str) -> None:
        return None


def test_b3_sent_means_accepted_transient_errors_retry_permanent_and_unknown_go_to_a_person(w: World) -> None:
    w.org().plan("p_mail").customer("c1", plan="p_mail").load_config()
    for inv in ("i_ok", "i_flaky", "i_down", "i_refused", "i_lost"):
        w.invoice(inv, "c1")
    provider = ScriptedProvider(
        {
            "i_flaky": [TransientError("503"), TransientError("429", retry_after=30), "ok"],
            "i_down": [TransientError("connection refused")],
            "i_refused": [PermanentError("550 mailbox unavailable")],
            "i_lost": [DeliveryUnknownError("read timeout after the request was sent")],
        }
    )
    channels = {"email": provider}
    w.run("2026-12-02T05:00Z", channels=channels)
    status = lambda inv: (w.action(inv)["status"], w.action(inv)["manual_reason"])  # noqa: E731
    assert status("i_ok") == ("sent", None)
    assert w.action("i_ok")["provider_message_id"] == f"msg-{action_id_for('i_ok')}"
    assert status("i_flaky") == status("i_down") == ("scheduled", None)  # retried by the next run
    assert w.sending_status("i_flaky") == "to_send"
    assert status("i_refused") == ("manual", "provider_rejected")
    assert status("i_lost") == ("manual", "delivery_unknown")

    w.run("2026-12-03T05:00Z", channels=channels)
    w.run("2026-12-04T05:00Z", channels=channels)
    assert status("i_flaky") == ("sent", None)
    assert w.action("i_flaky")["attempts"] == 3
    assert w.event_names("i_flaky").count("retry_later") == 2
    assert status("i_down") == ("manual", "provider_error")  # attempts exhausted
    assert sorted(provider.accepted) == sorted([action_id_for("i_ok"), action_id_for("i_flaky")])
    assert provider.accepted.count(action_id_for("i_lost")) == 0

    # an authentication error stops the batch and touches no action
    w.invoice("i_later", "c1", issued="2026-12-07")
    failing = {"email": ScriptedProvider({"i_later": [FatalChannelError("401 bad API key")]})}
    with pytest.raises(FatalChannelError):
        w.run("2026-12-07T05:00Z", channels=failing)
    action = w.action("i_later")
    assert (action["status"], action["attempts"], action["manual_reason"]) == ("scheduled", 0, None)
    assert w.event_names("i_later")[-1] == "released"
    assert w.rows("SELECT status FROM dispatch_runs ORDER BY as_of DESC")[0]["status"] == "failed"
    w.run("2026-12-08T05:00Z", channels={"email": ScriptedProvider({})})
    assert status("i_later") == ("sent", None)


def test_b4_public_holidays_are_skipped_like_weekends(w: World) -> None:
    w.org("acme", holidays="FR").org("plain", holidays=None, default_owner="u_paul", mail_from=None)
    w.org(
        "ny",
        timezone="America/New_York",
        send_time="09:00",
        holidays="US",
        default_owner="u_nina",
        mail_from=None,
    )
    w.plan("p_fr", delay=1).plan("p_plain", "plain", delay=1).plan("p_ny", "ny", delay=1)
    w.customer("c_fr", plan="p_fr").customer("c_plain", "plain", plan="p_plain")
    w.customer("c_ny", "ny", plan="p_ny")
    w.load_config()
    w.invoice("i_fr", "c_fr", issued="2026-11-10").invoice("i_plain", "c_plain", issued="2026-11-10")
    w.invoice("i_ny", "c_ny", issued="2026-11-25")

    runs = [f"2026-11-{d}T05:00Z" for d in ("10", "11", "12", "25", "26", "27")]
    sent_by = w.run_days(runs, watch=["i_fr", "i_plain", "i_ny"])
    # Wed 11 Nov is Armistice Day in France; Thu 26 Nov is Thanksgiving in the US
    assert w.action("i_fr")["scheduled_for"] == at("2026-11-12T07:30Z")
    assert sent_by["i_fr"] == at("2026-11-12T05:00Z")
    assert w.action("i_plain")["scheduled_for"] == at("2026-11-11T07:30Z")
    assert sent_by["i_plain"] == at("2026-11-11T05:00Z")
    assert w.action("i_ny")["scheduled_for"] == at("2026-11-27T14:00Z")
    assert sent_by["i_ny"] == at("2026-11-27T05:00Z")


def test_b5_an_invoice_voided_or_deleted_in_accounting_after_import_is_cancelled_not_sent(w: World) -> None:
    w.org().plan("p_friday", delay=2).plan("p_manual", automatic=False)
    w.customer("c1", plan="p_friday").customer("c_manual", plan="p_manual").load_config()
    for inv in ("i_voided", "i_deleted", "i_voided_quietly", "i_kept"):
        w.invoice(inv, "c1", issued="2026-12-02")
    w.invoice("i_born_void", "c1", issued="2026-12-02", status="void")
    w.invoice("i_in_todo", "c_manual", issued="2026-12-02")
    w.run("2026-12-02T05:00Z")
    assert w.sending_status("i_born_void") == "cancelled"
    assert w.action("i_born_void") is None

    # a person sending an action whose invoice was voided meanwhile: re-checked, cancelled
    w.update_invoice("i_in_todo", updated="2026-12-02T09:00Z", status="void")
    result = w.cli("todo", "send", w.action("i_in_todo")["action_id"], "--at", "2026-12-02T10:00Z")
    assert result.exit_code == 2 and "cancelled" in result.stderr, result.output
    assert (w.action("i_in_todo")["status"], w.sending_status("i_in_todo")) == ("cancelled", "cancelled")
    assert w.view_ids("todo_invoicing") == set()

    w.update_invoice("i_voided", updated="2026-12-02T15:00Z", status="void")
    w.delete_invoice("i_deleted")
    # a source that does not bump updated_at: only the re-check at send time can see it
    w.update_invoice("i_voided_quietly", updated="2026-12-02T00:00Z", status="void")
    w.run("2026-12-03T05:00Z")
    assert w.invoice_row("i_voided")["accounting_status"] == "void"
    for run in ("2026-12-04T05:00Z", "2026-12-07T05:00Z"):
        w.run(run)

    details = {}
    for inv in ("i_voided", "i_deleted", "i_voided_quietly"):
        assert w.action(inv)["status"] == "cancelled", inv
        assert w.sending_status(inv) == "cancelled", inv
        assert w.event_names(inv).count("cancelled") == 1
        details[inv] = next(e["detail"] for e in w.events(inv) if e["event"] == "cancelled")
    assert "void" in details["i_voided"] and "deleted" in details["i_deleted"]
    assert w.outbox_files() == [f"email/{action_id_for('i_kept')}.eml"]
    status = {r["invoice_id"]: r["status"] for r in w.rows("SELECT invoice_id, status FROM invoice_status")}
    assert status["i_voided"] == status["i_born_void"] == "void"


def test_b7_a_template_that_fails_at_render_makes_its_action_manual_and_the_run_continues(w: World) -> None:
    w.org().plan("p_typo", body="Dear {{ customer.nmae }}").plan("p_good")
    w.customer("c_typo", plan="p_typo").customer("c_good", plan="p_good").load_config()  # it parses
    w.invoice("i_typo", "c_typo").invoice("i_good", "c_good")

    report = w.run("2026-12-02T05:00Z")
    action = w.action("i_typo")
    assert (action["status"], action["manual_reason"]) == ("manual", "template_error")
    assert "nmae" in action["detail"]
    assert not w.outbox_path("i_typo").exists()
    assert w.view_ids("todo_invoicing") == {"i_typo"}
    assert w.action("i_good")["status"] == "sent"
    assert report.counts["run"]["manual.template_error"] == 1
    assert only(w.rows("SELECT status FROM dispatch_runs"))["status"] == "succeeded"


def test_b9_every_state_change_is_logged_at_the_as_of_instant_and_the_action_keeps_what_it_used(
    w: World,
) -> None:
    w.org().plan("p_next_day", delay=1, subject="Old {{ invoice.number }}").plan("p_manual", automatic=False)
    w.customer("c_auto", plan="p_next_day").customer("c_manual", plan="p_manual").load_config()
    w.invoice("i_auto", "c_auto").invoice("i_manual", "c_manual")
    t1, t2, t3 = at("2026-12-02T05:00Z"), at("2026-12-03T05:00Z"), at("2026-12-03T11:00Z")

    first = w.run(t1)
    template_then = only(w.rows("SELECT template_id FROM plans WHERE plan_id = 'p_next_day'"))["template_id"]
    log_after_first = w.events()
    # the plan's template changes after the action was created
    w.plan("p_next_day", delay=1, subject="New {{ invoice.number }}").load_config()
    assert (
        only(w.rows("SELECT template_id FROM plans WHERE plan_id = 'p_next_day'"))["template_id"]
        != template_then
    )
    second = w.run(t2)
    assert w.cli("todo", "ignore", w.action("i_manual")["action_id"], "--at", t3.isoformat()).exit_code == 0

    def log(inv: str) -> list[tuple]:
        return [(e["event"], e["at"], e["run_id"]) for e in w.events(inv)]

    assert log("i_auto") == [
        ("created", t1, first.run_id),
        ("claimed", t2, second.run_id),
        ("sent", t2, second.run_id),
    ]
    assert log("i_manual") == [
        ("created", t1, first.run_id),
        ("manual", t1, first.run_id),
        ("ignored", t3, None),
    ]
    assert w.events()[: len(log_after_first)] == log_after_first  # append-only

    action = w.action("i_auto")
    assert action["template_id"] == template_then
    assert w.email_of("i_auto")["Subject"] == "Old I_AUTO"  # the template it was created with
    assert (action["recipient"], action["deliver_at"], action["provider"]) == (
        "c_auto@customers.example",
        at("2026-12-03T07:30Z"),
        "outbox",
    )
    assert action["provider_message_id"] == f"email/{action['action_id']}.eml"
    assert action["scheduled_for"] == at("2026-12-03T07:30Z")
    sent = next(e for e in w.events("i_auto") if e["event"] == "sent")
    assert "c_auto@customers.example" in sent["detail"]


# --- the worked examples of SPEC (org Europe/Paris, 08:30, holidays FR unless said) ---------


def _example(
    w: World,
    *,
    issued: str,
    imported: str,
    delay: int,
    runs: list[str],
    channel: str = "email",
    **org: str,
) -> tuple[dict, dt.datetime | None]:
    """One invoice of one customer, first imported by the run at ``imported``; runs the
    listed days and returns (its action, the run that sent it)."""
    w.org(**org)
    body = "Invoice {{ invoice.number }}"
    w.plan("p", channel=channel, delay=delay, body=body)
    w.customer("c1", plan="p", phone="+33612345678").load_config()
    w.invoice("i1", "c1", issued=issued, updated=imported)
    sent_by = w.run_days([imported, *runs], watch=["i1"])
    return w.action("i1"), sent_by["i1"]


def test_example_delay_0_issued_and_imported_on_the_same_day_is_sent_by_the_importing_run(w: World) -> None:
    action, sent_by = _example(w, issued="2026-12-02", imported="2026-12-02T05:00Z", delay=0, runs=[])
    assert action["scheduled_for"] == at("2026-12-02T05:00Z")
    assert sent_by == at("2026-12-02T05:00Z")
    assert action["deliver_at"] == at("2026-12-02T05:00Z")
    assert w.email_of("i1")["X-Deliver-At"] == "2026-12-02T05:00:00Z"


def test_example_delay_0_issued_after_import_is_sent_on_its_issue_day(w: World) -> None:
    action, sent_by = _example(
        w,
        issued="2026-12-07",
        imported="2026-12-02T05:00Z",
        delay=0,
        runs=["2026-12-03T05:00Z", "2026-12-04T05:00Z", "2026-12-07T05:00Z"],
    )
    assert action["scheduled_for"] == at("2026-12-07T07:30Z")
    assert sent_by == at("2026-12-07T05:00Z")
    assert action["deliver_at"] == at("2026-12-07T07:30Z")
    assert w.email_of("i1")["X-Deliver-At"] == "2026-12-07T07:30:00Z"


def test_example_delay_3_falling_on_saturday_is_sent_by_mondays_run_not_fridays(w: World) -> None:
    action, sent_by = _example(
        w,
        issued="2026-12-02",
        imported="2026-12-02T05:00Z",
        delay=3,
        runs=["2026-12-03T05:00Z", "2026-12-04T05:00Z", "2026-12-07T05:00Z"],
    )
    assert action["scheduled_for"] == at("2026-12-07T07:30Z")
    assert sent_by == at("2026-12-07T05:00Z")
    assert action["deliver_at"] == at("2026-12-07T07:30Z")
    assert w.email_of("i1")["X-Deliver-At"] == "2026-12-07T07:30:00Z"


def test_example_delay_3_falling_on_christmas_is_sent_on_monday_28(w: World) -> None:
    action, sent_by = _example(
        w,
        issued="2026-12-22",
        imported="2026-12-22T05:00Z",
        delay=3,
        runs=["2026-12-23T05:00Z", "2026-12-24T05:00Z", "2026-12-25T05:00Z", "2026-12-28T05:00Z"],
    )
    assert action["scheduled_for"] == at("2026-12-28T07:30Z")
    assert sent_by == at("2026-12-28T05:00Z")
    assert action["deliver_at"] == at("2026-12-28T07:30Z")
    assert w.email_of("i1")["X-Deliver-At"] == "2026-12-28T07:30:00Z"


def test_example_sms_delay_1_in_summer_time_is_sent_at_0630_utc(w: World) -> None:
    action, sent_by = _example(
        w,
        issued="2026-07-06",
        imported="2026-07-06T05:00Z",
        delay=1,
        runs=["2026-07-07T05:00Z"],
        channel="sms",
    )
    assert action["scheduled_for"] == at("2026-07-07T06:30Z")
    assert sent_by == at("2026-07-07T05:00Z")
    assert action["deliver_at"] == at("2026-07-07T06:30Z")
    sms = w.sms_of("i1")
    assert (sms["deliver_at"], sms["to"], sms["body"]) == (
        "2026-07-07T06:30:00Z",
        "+33612345678",
        "Invoice I1",
    )


def test_example_new_york_delay_1_is_sent_at_0900_local(w: World) -> None:
    action, sent_by = _example(
        w,
        issued="2026-11-02",
        imported="2026-11-02T05:00Z",
        delay=1,
        runs=["2026-11-03T05:00Z"],
        timezone="America/New_York",
        send_time="09:00",
        holidays="US",
    )
    assert action["scheduled_for"] == at("2026-11-03T14:00Z")
    assert sent_by == at("2026-11-03T05:00Z")
    assert action["deliver_at"] == at("2026-11-03T14:00Z")
    assert w.email_of("i1")["X-Deliver-At"] == "2026-11-03T14:00:00Z"


def test_example_tokyo_delay_1_is_handed_over_by_mondays_run_with_its_delivery_time(w: World) -> None:
    action, sent_by = _example(
        w,
        issued="2026-11-30",
        imported="2026-11-30T05:00Z",
        delay=1,
        runs=["2026-12-01T05:00Z"],
        timezone="Asia/Tokyo",
        holidays="JP",
    )
    assert action["scheduled_for"] == at("2026-11-30T23:30Z")
    assert sent_by == at("2026-11-30T05:00Z")
    assert action["deliver_at"] == at("2026-11-30T23:30Z")
    assert w.email_of("i1")["X-Deliver-At"] == "2026-11-30T23:30:00Z"


def test_example_customer_without_email_contact_becomes_manual_no_contact_at_its_due_run(w: World) -> None:
    w.org().plan("p", delay=1)
    w.customer("c_phone_only", plan="p", email=None, phone="+33612345678")
    w.customer("c_added_later", plan="p", email=None).load_config()
    w.invoice("i1", "c_phone_only").invoice("i2", "c_added_later")

    w.run("2026-12-02T05:00Z")
    assert w.action("i1")["status"] == "scheduled"  # decided at the due run, not at import
    w.contact("c_added_later", email="ap@added.example")
    w.run("2026-12-03T05:00Z")
    action = w.action("i1")
    assert (action["status"], action["manual_reason"], action["owner_user_id"]) == (
        "manual",
        "no_contact",
        "u_alice",
    )
    assert w.outbox_files() == [f"email/{action_id_for('i2')}.eml"]
    assert w.email_of("i2")["To"] == "ap@added.example"


def test_example_child_customer_without_plan_has_no_action_and_is_listed_without_template(w: World) -> None:
    w.org().plan("p").customer("c_parent", plan="p").customer("c_child", parent="c_parent").load_config()
    w.invoice("i1", "c_child")
    w.run("2026-12-02T05:00Z")
    w.run("2026-12-03T05:00Z")
    assert w.action("i1") is None
    assert w.sending_status("i1") == "to_send"
    listed = only(w.rows("SELECT * FROM invoices_without_template"))
    assert (listed["invoice_id"], listed["customer_id"], listed["number"]) == ("i1", "c_child", "I1")
    assert w.outbox_files() == []
