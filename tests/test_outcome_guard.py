"""An outcome write guarded by the claim token logs and counts only the rows it changed.

A slow claimant whose claim a finder already settled (it was thought dead) still reports
what its provider answered; the guard keeps the row as the finder left it, and the audit
log must not say the action was sent (SPEC B1, B9).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dispatch.runtime.runs import RunContext
from dispatch.sending.claims import claim
from dispatch.sending.outcomes import Outcome, apply_outcomes
from dispatch.stages.resolve_templates import action_id_for
from dispatch.storage.session import Database

from tests.builders import World, instant, open_world


@pytest.fixture
def w(backend: str, tmp_path: Path) -> Iterator[World]:
    with open_world(backend, tmp_path) as world:
        yield world


def test_an_outcome_for_an_action_settled_by_someone_else_is_neither_logged_nor_counted(w: World) -> None:
    w.org().plan("p_mail", delay=1).customer("c1", plan="p_mail").load_config()
    w.invoice("i1", "c1", issued="2026-12-02").invoice("i2", "c1", issued="2026-12-02")
    w.run("2026-12-02T05:00Z")  # actions created, due tomorrow
    a1, a2 = action_id_for("i1"), action_id_for("i2")
    ctx = RunContext.new(instant("2026-12-03T05:00Z"), run_id="slow")
    token = "slow#b0#x"
    db = Database(w.dispatch)
    with db.tx() as conn:
        assert sorted(claim(conn, [a1, a2], token=token, ctx=ctx)) == sorted([a1, a2])
    finder = RunContext.new(instant("2026-12-03T05:10Z"), run_id="finder")
    with db.tx() as conn:  # a finder judged the claimant dead and settled a1 for a person
        settled = Outcome(
            action_id=a1,
            invoice_id="i1",
            status="manual",
            event="manual",
            manual_reason="delivery_unknown",
        )
        assert apply_outcomes(conn, [settled], token=token, at=finder.as_of, run_id="finder") == {"manual": 1}

    sent = [
        Outcome(action_id=a, invoice_id=i, status="sent", event="sent", provider="outbox")
        for a, i in ((a1, "i1"), (a2, "i2"))
    ]
    with db.tx() as conn:  # the slow claimant reports both as sent
        counts = apply_outcomes(conn, sent, token=token, at=ctx.as_of, run_id="slow")

    assert counts == {"sent": 1}
    assert w.event_names("i1") == ["created", "claimed", "manual"]  # not "sent": it was not
    assert w.event_names("i2") == ["created", "claimed", "sent"]
    assert (w.action("i1")["status"], w.action("i1")["manual_reason"]) == ("manual", "delivery_unknown")
    assert w.action("i2")["status"] == "sent"
