"""The ``dispatch`` command line end to end (CONTRACT §5), as a user drives it over a week.

From empty databases: ``db init`` (twice), ``config load``, ``run --at`` on several weekdays;
then what reached the outbox (recipients, subjects, attachments, SMS and letters), the
invoice statuses, the to-do list, ``todo ignore`` and ``invoices mark-sent`` in bulk, and the
refusals: an unknown id is exit 2 with one line on stderr and changes nothing, even next to
valid ids.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import Result
from dispatch.channels.formats.letter_pdf import read_letter_metadata
from dispatch.stages.resolve_templates import action_id_for

from tests.builders import World, eml_parts, parse_eml

WEEK = ["2026-12-02T05:00:00Z", "2026-12-03T05:00:00Z", "2026-12-04T05:00:00Z", "2026-12-07T05:00:00Z"]
TODO_KEYS = [
    "action_id",
    "invoice_id",
    "invoice_number",
    "org_id",
    "customer_id",
    "customer_name",
    "channel",
    "owner_user_id",
    "manual_reason",
    "created_at",
]


@pytest.fixture
def w(db_urls: dict[str, str], tmp_path: Path) -> Iterator[World]:
    """Fresh, empty databases: this test starts with ``dispatch db init``."""
    world = World.create(db_urls, tmp_path, migrate=False)
    yield world
    world.dispatch.dispose()
    world.accounting.dispose()


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.output, result.stderr)
    return result


def refused(result: Result) -> str:
    """Exit 2 with exactly one line on stderr; returns that line."""
    assert result.exit_code == 2, (result.output, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def statuses(w: World) -> dict[str, tuple[str, str | None, str]]:
    listed = json.loads(ok(w.cli("invoices", "--json")).stdout)
    return {r["invoice_id"]: (r["sending_status"], r["sent_how"], r["status"]) for r in listed}


def accounting_and_config(w: World) -> Path:
    w.org(send_time="08:30").user("u_bob", name="Bob Martin")
    w.plan("p_mail", subject="Invoice {{ invoice.number }} for {{ customer.name }}")
    w.plan("p_sms", channel="sms", delay=1, body="{{ organization.name }}: invoice {{ invoice.number }}")
    w.plan(
        "p_letter", channel="letter", body="Dear {{ customer.name }}, here is invoice {{ invoice.number }}."
    )
    w.plan("p_manual", automatic=False, owner="u_bob").plan("p_mail3", delay=3)
    w.customer("c_mail", plan="p_mail", name="Durand SA", email="compta@durand.example")
    w.contact("c_mail", email="ap@durand.example")  # a second billing contact: both receive it
    w.contact("c_mail", email="ceo@durand.example", is_billing=False)  # not a billing contact
    w.customer("c_sms", plan="p_sms", email=None, phone="06 12 34 56 78")  # national: read as FR
    w.customer("c_letter", plan="p_letter", email=None, address="Martin SARL\n3 rue Neuve\n69001 Lyon")
    w.customer("c_manual", plan="p_manual").customer("c_no_mail", plan="p_mail", email=None)
    w.customer("c_later", plan="p_mail3").customer("c_parent", plan="p_mail")
    w.customer("c_child", parent="c_parent")  # no plan of its own
    w.invoice("i_mail", "c_mail", number="F-001", due="2031-01-01", pdf=True).invoice("i_sms", "c_sms")
    w.invoice("i_letter", "c_letter", pdf=True)
    w.invoice("i_manual1", "c_manual").invoice("i_manual2", "c_manual")
    w.invoice("i_no_mail", "c_no_mail").invoice("i_later", "c_later").invoice("i_child", "c_child")
    w.invoice("i_mark1", "c_later").invoice("i_mark2", "c_later")
    return w.config_file()


@pytest.mark.slow
def test_cli_a_week_of_runs_from_empty_databases(w: World) -> None:
    line = refused(w.cli("run", "--at", WEEK[0]))  # before `db init`
    assert "db init" in line

    first = ok(w.cli("db", "init")).stdout
    assert "upgraded" in first
    schema = w.dump()
    assert "up to date" in ok(w.cli("db", "init")).stdout  # idempotent
    assert w.dump() == schema

    ok(w.cli("config", "load", str(accounting_and_config(w))))
    report = json.loads(ok(w.cli("run", "--at", WEEK[0], "--json")).stdout)
    totals = report["counts"]["totals"]
    assert (totals["imported"], totals["sent"], totals["manual"], totals["scheduled"]) == (10, 2, 3, 4)
    assert totals["without_template"] == 1

    # e-mail: both billing contacts in one message, the subject, the invoice PDF attached
    mail = parse_eml(w.outbox / "email" / f"{action_id_for('i_mail')}.eml")
    assert sorted(a.strip() for a in mail["To"].split(",")) == ["ap@durand.example", "compta@durand.example"]
    assert mail["Subject"] == "Invoice F-001 for Durand SA"
    assert mail["From"].addresses[0].addr_spec == "billing@acme.example"
    assert mail["X-Deliver-At"] == "2026-12-02T05:00:00Z"
    (attachment,) = eml_parts(mail)["attachments"].items()
    assert attachment[0] == "invoice-F-001.pdf"
    assert attachment[1][0] == "application/pdf" and attachment[1][1].startswith(b"%PDF")
    # letter: a PDF to the postal address, its delivery time in the metadata
    letter = w.outbox / "letter" / f"{action_id_for('i_letter')}.pdf"
    assert letter.read_bytes().startswith(b"%PDF")
    assert read_letter_metadata(letter)["DeliverAt"] == "2026-12-02T05:00:00Z"
    assert w.action("i_letter")["recipient"] == "Martin SARL\n3 rue Neuve\n69001 Lyon"
    assert not (w.outbox / "sms").exists()  # SMS: delay 1

    # the to-do list: keys are the view's columns
    todo = json.loads(ok(w.cli("todo", "--json")).stdout)
    with w.dispatch.connect() as conn:
        view_columns = list(conn.execute(sa.text("SELECT * FROM todo_invoicing")).keys())
    assert all(list(r) == view_columns for r in todo)
    assert view_columns[: len(TODO_KEYS)] == TODO_KEYS
    assert {(r["invoice_id"], r["owner_user_id"], r["manual_reason"]) for r in todo} == {
        ("i_manual1", "u_bob", "manual_template"),
        ("i_manual2", "u_bob", "manual_template"),
        ("i_no_mail", "u_alice", "no_contact"),
    }
    assert todo[0]["created_at"] == "2026-12-02T05:00:00Z"
    table = ok(w.cli("todo", "--owner", "u_bob")).stdout
    assert "i_manual1" in table and "i_no_mail" not in table

    # unknown ids: exit 2, one line, nothing changed — even with valid ids in the same call
    before = w.dump()
    for args in (
        ("todo", "ignore", action_id_for("i_manual1"), "act_nope"),
        ("invoices", "mark-sent", "i_mark1", "i_nope"),
        ("todo", "send", "act_nope"),
    ):
        assert "nope" in refused(w.cli(*args))
    assert w.dump() == before

    # bulk: ignore two actions, mark two invoices sent
    ok(
        w.cli(
            "todo",
            "ignore",
            action_id_for("i_manual1"),
            action_id_for("i_manual2"),
            "--at",
            "2026-12-02T10:00Z",
        )
    )
    ok(w.cli("invoices", "mark-sent", "i_mark1", "i_mark2", "--at", "2026-12-02T10:00Z"))
    now = statuses(w)
    assert now["i_manual1"][:2] == now["i_manual2"][:2] == ("sent", "ignored")
    assert now["i_mark1"][:2] == now["i_mark2"][:2] == ("sent", "marked_sent")
    assert [r["invoice_id"] for r in json.loads(ok(w.cli("todo", "--json")).stdout)] == ["i_no_mail"]

    for day in WEEK[1:]:
        ok(w.cli("run", "--at", day))
    sms = json.loads((w.outbox / "sms" / f"{action_id_for('i_sms')}.json").read_text())
    assert (sms["to"], sms["body"], sms["deliver_at"]) == (
        "+33612345678",
        "ACME SAS: invoice I_SMS",
        "2026-12-03T07:30:00Z",
    )
    later = parse_eml(w.outbox / "email" / f"{action_id_for('i_later')}.eml")
    assert later["X-Deliver-At"] == "2026-12-07T07:30:00Z"  # 2 Dec + 3 = Saturday → Monday
    assert w.outbox_files() == sorted(
        [
            f"email/{action_id_for('i_mail')}.eml",
            f"email/{action_id_for('i_later')}.eml",
            f"letter/{action_id_for('i_letter')}.pdf",
            f"sms/{action_id_for('i_sms')}.json",
        ]
    )
    final = statuses(w)
    assert {i: s[:2] for i, s in final.items()} == {
        "i_mail": ("sent", "automatic"),
        "i_sms": ("sent", "automatic"),
        "i_letter": ("sent", "automatic"),
        "i_later": ("sent", "automatic"),
        "i_manual1": ("sent", "ignored"),
        "i_manual2": ("sent", "ignored"),
        "i_mark1": ("sent", "marked_sent"),
        "i_mark2": ("sent", "marked_sent"),
        "i_no_mail": ("to_send", None),
        "i_child": ("to_send", None),
    }
    assert final["i_child"][2] == "to_send" and final["i_mail"][2] == "not_due"
    to_send = json.loads(ok(w.cli("invoices", "--status", "to_send", "--json")).stdout)
    assert {r["invoice_id"] for r in to_send} == {"i_no_mail", "i_child"}
    summary = ok(w.cli("run", "--at", WEEK[-1])).stdout  # the same day again: nothing to do
    assert "sent 0" in summary and "= 10 imported" in summary
