"""Issue 11: the audit log says who (item 9), a fixed template or PDF lets a manual action go
(item 1), preview names a missing plan (item 7), the analysts' views (item 10) — on SQLite
and PostgreSQL."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from dispatch.people.actor import BadActorError, default_actor, resolve_actor
from dispatch.people.operations import ignore_actions, mark_sent
from dispatch.runtime.preview import preview
from dispatch.storage.schema import VIEWS, metadata, view_sql
from dispatch.storage.session import Database

from tests.builders import World, instant, open_world

T1, T2 = "2026-12-02T05:00Z", "2026-12-03T05:00Z"
BROKEN = "Hello {{ customer.nmae }}, invoice {{ invoice.number }}."
FIXED = "Hello {{ customer.name }}, invoice {{ invoice.number }}."


@pytest.fixture
def w(backend: str, tmp_path: Path) -> Iterator[World]:
    with open_world(backend, tmp_path) as world:
        yield world


# --- item 9: the actor ------------------------------------------------------------------------


def test_people_operations_record_who_did_them(w: World, monkeypatch: pytest.MonkeyPatch) -> None:
    w.org().plan("p_manual", automatic=False).customer("c1", plan="p_manual").customer("c2", plan="p_manual")
    w.load_config()
    w.invoice("i1", "c1").invoice("i2", "c2")
    w.run(T1)
    db = Database(w.dispatch)
    ignore_actions(db, [w.action("i1")["action_id"]], instant("2026-12-02T10:00Z"), actor="claire")
    monkeypatch.setenv("DISPATCH_ACTOR", "julien")
    mark_sent(db, ["i2"], instant("2026-12-02T10:00Z"))
    last = {inv: w.events(inv)[-1] for inv in ("i1", "i2")}
    assert (last["i1"]["event"], last["i1"]["actor"]) == ("ignored", "claire")
    assert (last["i2"]["event"], last["i2"]["actor"]) == ("marked_sent", "julien")
    # what the run did on its own has no actor
    assert {e["actor"] for e in w.events("i1")[:-1]} == {None}


def test_actor_defaults_to_dispatch_actor_then_the_os_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCH_ACTOR", "  maria ")
    assert default_actor() == "maria"
    monkeypatch.delenv("DISPATCH_ACTOR")
    monkeypatch.setattr("getpass.getuser", lambda: "osuser")
    assert default_actor() == "osuser"
    assert resolve_actor("derek") == "derek"
    for bad in ("", "   ", "x" * 65, "bad\x1bname"):
        with pytest.raises(BadActorError, match="actor"):
            resolve_actor(bad)


# --- item 1: a fixed cause lets the action go ---------------------------------------------------


def _broken_template_world(w: World) -> str:
    w.org().plan("p1", body=BROKEN).customer("c1", plan="p1").load_config()
    w.invoice("i1", "c1")
    w.run(T1)
    action = w.action("i1")
    assert (action["status"], action["manual_reason"]) == ("manual", "template_error")
    # the person is told what to fix and how the action then goes
    assert "nmae" in action["detail"] and "plan p1" in action["detail"]
    assert "dispatch config load" in action["detail"] and "dispatch todo send" in action["detail"]
    return action["template_id"]


def test_todo_send_renders_the_plans_current_template_after_a_fix(w: World) -> None:
    old = _broken_template_world(w)
    w.plan("p1", body=FIXED).load_config()
    result = w.cli(
        "todo", "send", w.action("i1")["action_id"], "--at", "2026-12-02T09:00Z", DISPATCH_ACTOR="claire"
    )
    assert result.exit_code == 0, result.output
    action = w.action("i1")
    assert action["status"] == "sent" and action["template_id"] != old
    assert "Hello Customer c1, invoice I1." in w.email_of("i1").get_body(("plain",)).get_content()
    assert w.sending_status("i1") == "sent"
    events = w.events("i1")
    refreshed = [e for e in events if e["event"] == "template_refreshed"]
    sent = [e for e in events if e["event"] == "sent_manually"]
    assert len(refreshed) == 1 and len(sent) == 1
    assert refreshed[0]["template_id"] == sent[0]["template_id"] == action["template_id"]
    assert sent[0]["actor"] == refreshed[0]["actor"] == "claire"
    assert old in refreshed[0]["detail"]


def test_next_run_sends_a_template_error_action_once_the_template_is_fixed(w: World) -> None:
    _broken_template_world(w)
    w.customer("c2", plan="p1").load_config()
    w.invoice("i2", "c2", issued="2026-12-01", updated="2026-12-02T01:00Z")  # two to re-queue
    w.run("2026-12-02T06:00Z")
    assert w.action("i2")["manual_reason"] == "template_error"
    w.run(T2)  # nothing changed: it stays in the to-do list
    assert w.action("i1")["manual_reason"] == "template_error"
    assert w.outbox_files() == []
    w.plan("p1", body=FIXED).load_config()
    w.run("2026-12-04T05:00Z")
    action = w.action("i1")
    assert action["status"] == "sent"
    requeued = [e for e in w.events("i1") if e["event"] == "requeued"]
    assert len(requeued) == 1 and requeued[0]["template_id"] == action["template_id"]
    assert w.action("i2")["status"] == "sent"
    assert len(w.outbox_files()) == 2
    w.run("2026-12-07T05:00Z")  # sent once
    assert len(w.outbox_files()) == 2 and w.event_names("i1").count("sent") == 1


def test_a_template_fixed_into_a_manual_one_is_left_to_a_person(w: World) -> None:
    _broken_template_world(w)
    w.plan("p1", body=FIXED, automatic=False).load_config()
    w.run(T2)
    assert w.action("i1")["manual_reason"] == "template_error" and w.outbox_files() == []


def test_next_run_sends_a_missing_pdf_action_once_the_file_is_there(w: World) -> None:
    w.org().plan("p1").customer("c1", plan="p1").load_config()
    w.invoice("i1", "c1", pdf=True)
    pdf = w.pdf_root / "i1.pdf"
    content = pdf.read_bytes()
    pdf.unlink()
    w.run(T1)
    action = w.action("i1")
    assert (action["status"], action["manual_reason"]) == ("manual", "missing_pdf")
    assert "the next run sends it" in action["detail"]
    w.run(T2)
    assert w.action("i1")["status"] == "manual"
    pdf.write_bytes(content)
    w.run("2026-12-04T05:00Z")
    assert w.action("i1")["status"] == "sent"
    attachments = [p.get_filename() for p in w.email_of("i1").iter_attachments()]
    assert attachments == ["invoice-I1.pdf"]


# --- item 7: preview ---------------------------------------------------------------------------


def test_preview_says_a_child_has_no_plan_and_a_plan_has_no_template(w: World) -> None:
    w.org().plan("p_parent").plan("p_empty", channel=None)
    w.customer("c_parent", plan="p_parent").customer("c_child", parent="c_parent")
    w.customer("c_empty", plan="p_empty").load_config()
    w.invoice("i_child", "c_child").invoice("i_empty", "c_empty")
    df = preview(w.settings(), instant(T1)).set_index("invoice_id")
    assert df.loc["i_child", "outcome"] == df.loc["i_empty", "outcome"] == "no_template"
    assert df.loc["i_child", "reason"] == "no plan assigned to the customer that owns the invoice"
    assert df.loc["i_empty", "reason"] == "plan p_empty has no invoice-sending template"


# --- item 10: views and schema -----------------------------------------------------------------


def test_daily_sends_counts_per_day_org_channel_and_how(w: World) -> None:
    w.org().plan("p_mail").plan("p_manual", automatic=False).plan(
        "p_sms", channel="sms", body="{{ invoice.number }}"
    )
    w.customer("c1", plan="p_mail").customer("c2", plan="p_mail").customer("c3", plan="p_manual")
    w.customer("c4", plan="p_manual").customer("c5", email=None, phone="+33612345678", plan="p_sms")
    w.customer("c6").load_config()
    for inv, cust in (("i1", "c1"), ("i2", "c2"), ("i3", "c3"), ("i4", "c4"), ("i5", "c5"), ("i6", "c6")):
        w.invoice(inv, cust)
    w.run(T1)
    db = Database(w.dispatch)
    assert w.cli("todo", "send", w.action("i3")["action_id"], "--at", "2026-12-02T09:00Z").exit_code == 0
    ignore_actions(db, [w.action("i4")["action_id"]], instant("2026-12-03T10:00Z"), actor="a")
    mark_sent(db, ["i6"], instant("2026-12-03T11:00Z"), actor="a")
    rows = w.rows("SELECT * FROM daily_sends ORDER BY day, channel, how")
    got = {(str(r["day"]), r["org_id"], r["channel"], r["how"]): r["invoices"] for r in rows}
    assert got == {
        ("2026-12-02", "acme", "email", "automatic"): 2,
        ("2026-12-02", "acme", "email", "manual"): 1,
        ("2026-12-02", "acme", "sms", "automatic"): 1,
        ("2026-12-03", "acme", "email", "ignored"): 1,
        ("2026-12-03", "acme", None, "marked_sent"): 1,
    }


def test_stuck_invoices_lists_every_to_send_invoice_not_scheduled_to_go(w: World) -> None:
    w.org().plan("p_mail").plan("p_later", delay=5).plan("p_empty", channel=None)
    w.plan("p_broken", body=BROKEN)
    w.customer("c_ok", plan="p_mail").customer("c_later", plan="p_later").customer("c_parent", plan="p_mail")
    w.customer("c_child", parent="c_parent").customer("c_empty", plan="p_empty")
    w.customer("c_nomail", email=None, plan="p_mail").customer("c_broken", plan="p_broken").load_config()
    for inv, cust in (
        ("i_ok", "c_ok"), ("i_later", "c_later"), ("i_child", "c_child"), ("i_empty", "c_empty"),
        ("i_nomail", "c_nomail"), ("i_broken", "c_broken"), ("i_dead", "c_later"),
    ):  # fmt: skip
        w.invoice(inv, cust)
    w.run(T1)
    # a run that died holding a claim: recorded failed, its action left 'sending'
    with w.dispatch.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO dispatch_runs (run_id, as_of, started_at, status) "
                "VALUES ('dead_run', :t, :t, 'failed')"
            ),
            {"t": instant(T1) if w.backend == "postgresql" else "2026-12-02 05:00:00.000000"},
        )
        conn.execute(
            sa.text(
                "UPDATE invoice_actions SET status = 'sending', claimed_by_run = 'dead_run', "
                "claim_token = 'dead_run:x' WHERE invoice_id = 'i_dead'"
            )
        )
    rows = {r["invoice_id"]: r for r in w.rows("SELECT * FROM stuck_invoices")}
    assert set(rows) == {"i_child", "i_empty", "i_nomail", "i_broken", "i_dead"}
    assert rows["i_child"]["reason"] == "no_plan"
    assert rows["i_child"]["reason_text"] == "no plan assigned to the customer that owns the invoice"
    assert rows["i_empty"]["reason"] == "no_template" and "p_empty" in rows["i_empty"]["reason_text"]
    assert rows["i_nomail"]["reason"] == "no_contact"
    assert rows["i_nomail"]["reason_text"].startswith("manual (no_contact): ")
    assert rows["i_broken"]["reason"] == "template_error" and "nmae" in rows["i_broken"]["reason_text"]
    assert rows["i_dead"]["reason"] == "dead_run" and "dead_run" in rows["i_dead"]["reason_text"]


def test_migrated_schema_matches_the_metadata_and_the_views_match_the_migration(w: World) -> None:
    with w.dispatch.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
        views = set(sa.inspect(conn).get_view_names())
    assert diff == []
    assert set(VIEWS) <= views
    latest = {}  # view name -> the newest migration that defines it
    versions = Path(__file__).parents[1] / "plugins/dispatch/storage/migrations/versions"
    for path in sorted(versions.glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"m_{path.stem}", path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if hasattr(module, "view_sql"):
            latest.update(dict.fromkeys(module.VIEWS, module))
    for name in VIEWS:
        assert latest[name].view_sql(name, w.backend) == view_sql(name, w.backend), name
