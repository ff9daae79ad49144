"""SPEC B8, preview: for a date, every action that would go out (channel, recipient,
delivery time) and every invoice that would not, with the reason — changing nothing.

"Nothing" is checked as a full dump of every table and view of the dispatch database and
the outbox listing (names, sizes, mtimes), before and after; then the real run of the same
instant is compared with what the preview announced.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from dispatch.runtime.preview import preview
from dispatch.stages.resolve_templates import action_id_for

from tests.builders import World, instant, open_world

T1, T2 = "2026-12-02T05:00Z", "2026-12-03T05:00Z"
KEYS = ["invoice_id", "action_id", "channel", "recipient", "deliver_at", "outcome", "reason"]


@pytest.fixture
def w(backend: str, tmp_path: Path) -> Iterator[World]:
    with open_world(backend, tmp_path) as world:
        yield world


def scenario(w: World) -> None:
    """After the run of T1 and some accounting changes, T2's run has one invoice of each outcome."""
    w.org().plan("p_next_day", delay=1).plan("p_now").plan("p_later", delay=5)
    w.plan("p_manual", delay=1, automatic=False)
    w.customer("c1", plan="p_next_day").customer("c_no_mail", plan="p_next_day", email=None)
    w.customer("c_now", plan="p_now").customer("c_later", plan="p_later")
    w.customer("c_manual", plan="p_manual")
    w.customer("c_none", email="ap@none.example").load_config()
    w.invoice("i_send", "c1").invoice("i_void", "c1").invoice("i_no_contact", "c_no_mail")
    w.invoice("i_later", "c_later").invoice("i_manual", "c_manual").invoice("i_no_template", "c_none")
    w.invoice("i_sent_before", "c_now")
    w.run(T1)
    w.update_invoice("i_void", updated="2026-12-02T12:00Z", status="void")
    w.invoice("i_new", "c_now", issued="2026-12-03", updated="2026-12-02T12:00Z")


def test_b8_preview_changes_nothing_and_lists_every_outcome_with_its_reason(w: World) -> None:
    scenario(w)
    dump, files = w.dump(), w.outbox_state()

    df = preview(w.settings(), instant(T2))
    assert list(df.columns) == KEYS
    assert w.dump() == dump
    assert w.outbox_state() == files

    records = df.astype(object).where(df.notna(), None).to_dict("records")  # NaN: no value
    rows = {r["invoice_id"]: r for r in records}
    assert set(rows) == {"i_send", "i_void", "i_no_contact", "i_later", "i_manual", "i_no_template", "i_new"}
    outcome = {inv: (r["outcome"], r["reason"]) for inv, r in rows.items()}
    assert outcome["i_send"] == ("send", None)
    assert outcome["i_new"] == ("send", None)
    assert outcome["i_void"][0] == "cancel" and "void" in outcome["i_void"][1]
    assert outcome["i_no_contact"] == ("manual", "no_contact")
    assert outcome["i_manual"] == ("manual", "manual_template")
    assert outcome["i_later"] == ("not_due", "scheduled later")
    assert outcome["i_no_template"][0] == "no_template" and outcome["i_no_template"][1]

    send = rows["i_send"]
    assert (send["action_id"], send["channel"], send["recipient"]) == (
        action_id_for("i_send"),
        "email",
        "c1@customers.example",
    )
    assert send["deliver_at"] == pd.Timestamp("2026-12-03T07:30Z")
    new = rows["i_new"]
    assert new["action_id"] is None  # the run would create it
    assert (new["channel"], new["recipient"]) == ("email", "c_now@customers.example")
    assert new["deliver_at"] == pd.Timestamp(T2)  # delay 0: the importing run, at once
    assert rows["i_later"]["deliver_at"] == pd.Timestamp("2026-12-07T07:30Z")  # its scheduled instant
    assert rows["i_no_template"]["action_id"] is None

    # the run of the same instant does what the preview said
    w.run(T2)
    after = {a["invoice_id"]: a for a in w.actions()}
    status = {"send": "sent", "cancel": "cancelled", "manual": "manual", "not_due": "scheduled"}
    for inv, r in rows.items():
        if r["outcome"] == "no_template":
            assert inv not in after
            continue
        assert after[inv]["status"] == status[r["outcome"]], inv
        if r["outcome"] == "send":
            assert after[inv]["deliver_at"] == r["deliver_at"].to_pydatetime(), inv
            assert after[inv]["recipient"] == r["recipient"], inv
    assert len(w.outbox_files()) == len(files) + 2


def test_b8_preview_on_the_command_line_prints_the_contract_keys_and_changes_nothing(w: World) -> None:
    scenario(w)
    dump, files = w.dump(), w.outbox_state()

    result = w.cli("preview", "--at", "2026-12-03T05:00:00Z", "--json")
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert all(list(r) == KEYS for r in listed)
    by_id = {r["invoice_id"]: r for r in listed}
    assert by_id["i_send"]["deliver_at"] == "2026-12-03T07:30:00Z"
    assert by_id["i_new"]["action_id"] is None
    assert by_id["i_no_contact"]["outcome"] == "manual"

    table = w.cli("preview", "--at", "2026-12-03T05:00:00Z")
    assert table.exit_code == 0 and "i_no_template" in table.stdout and "no_template" in table.stdout
    assert w.dump() == dump
    assert w.outbox_state() == files
