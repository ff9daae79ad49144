"""SPEC B1, exactly once: no invoice is ever sent twice, whatever happens.

Re-running a date, backfilling an earlier one, two runs at once, a run dying between the
provider's acceptance and the status write, a retried run: every test counts what reached
the outbox (or a provider stand-in) per action and the ``sent`` events per action.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from dispatch.channels.base import OutgoingMessage, SendResult
from dispatch.channels.outbox import OutboxChannel
from dispatch.runtime.runs import RunContext
from dispatch.sending.claims import claim
from dispatch.sending.liveness import database_now, holder_identity
from dispatch.stages.resolve_templates import action_id_for
from dispatch.storage.schema import claim_leases
from dispatch.storage.session import Database
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import update

from tests.builders import World, instant, open_world

UTC = dt.UTC


@pytest.fixture
def w(backend: str, tmp_path: Path) -> Iterator[World]:
    with open_world(backend, tmp_path) as world:
        yield world


def sent_events(w: World) -> Counter:
    """Per action, how many times it was recorded handed over (by a run or a settlement)."""
    return Counter(
        e["action_id"] for e in w.events() if e["event"] in ("sent", "settled_sent", "sent_manually")
    )


def claims(w: World) -> Counter:
    return Counter(e["action_id"] for e in w.events() if e["event"] == "claimed")


class DyingOutbox:
    """The real outbox, but the process "dies" (SystemExit) right after handing over
    ``survive`` messages: the provider has them, the database does not know yet."""

    def __init__(self, real: OutboxChannel, survive: int) -> None:
        self.real, self.survive = real, survive
        self.provider, self.channel = real.provider, real.channel

    def max_schedule_ahead(self) -> dt.timedelta | None:
        return self.real.max_schedule_ahead()

    def send_many(self, messages: Sequence[OutgoingMessage]) -> list:
        results = []
        for m in messages:
            if len(results) == self.survive:
                raise SystemExit("worker killed")
            results.extend(self.real.send_many([m]))
        return results

    def was_handed_over(self, action_id: str) -> SendResult | bool:
        return self.real.was_handed_over(action_id)


class RemoteProvider:
    """A stand-in for a remote provider (SendGrid, Twilio): it keeps what it accepted, but
    the dispatcher cannot ask it afterwards whether it has a message (``None``)."""

    provider, channel = "remote", "email"

    def __init__(self, accepted: list[str], die_after: int | None = None) -> None:
        self.accepted, self.die_after, self.accepted_here = accepted, die_after, 0

    def max_schedule_ahead(self) -> dt.timedelta | None:
        return dt.timedelta(hours=72)

    def send_many(self, messages: Sequence[OutgoingMessage]) -> list:
        results = []
        for m in messages:
            if self.die_after is not None and self.accepted_here == self.die_after:
                raise SystemExit("worker killed after the provider accepted")
            self.accepted.append(m.action_id)
            self.accepted_here += 1
            results.append(SendResult(m.action_id, self.provider, f"remote-{m.action_id}", m.deliver_at))
        return results

    def was_handed_over(self, action_id: str) -> None:
        return None


def setup_mail(
    w: World, n: int, *, delay: int = 0, customers: int = 1, issued: str = "2026-12-02"
) -> list[str]:
    w.org().plan("p_mail", delay=delay)
    for c in range(customers):
        w.customer(f"c{c}", plan="p_mail")
    w.load_config()
    ids = [f"i{k:03d}" for k in range(n)]
    for k, inv in enumerate(ids):
        w.invoice(inv, f"c{k % customers}", issued=issued)
    return ids


def test_b1_the_same_run_twice_or_a_backfill_sends_nothing_again(w: World) -> None:
    w.org().plan("p_mail").plan("p_sms", channel="sms", body="Invoice {{ invoice.number }}")
    w.plan("p_letter", channel="letter", body="Invoice {{ invoice.number }}")
    w.customer("c_mail", plan="p_mail")
    w.customer("c_sms", plan="p_sms", phone="+33612345678")
    w.customer("c_letter", plan="p_letter", address="Jean Dupont\n1 rue de la Paix\n75002 Paris")
    w.load_config()
    w.invoice("i_mail", "c_mail", pdf=True).invoice("i_sms", "c_sms")
    w.invoice("i_letter", "c_letter", pdf=True)

    result = w.cli("run", "--at", "2026-12-02T05:00:00Z")
    assert result.exit_code == 0, result.output
    files = w.outbox_state()  # the messages, and the letters' print manifest
    assert w.outbox_files() == sorted(
        [
            f"email/{action_id_for('i_mail')}.eml",
            f"sms/{action_id_for('i_sms')}.json",
            f"letter/{action_id_for('i_letter')}.pdf",
        ]
    )
    n_events = len(w.events())
    actions = w.actions()

    for again in ("2026-12-02T05:00:00Z", "2026-12-01T05:00:00Z", "2026-12-02T05:00:00Z"):
        result = w.cli("run", "--at", again)  # the same date, a backfill, the same date again
        assert result.exit_code == 0, result.output
        assert w.outbox_state() == files  # no new file, none rewritten (same size and mtime)
        assert len(w.events()) == n_events
        assert w.actions() == actions
    w.run("2026-12-03T05:00Z")
    assert w.outbox_state() == files
    assert set(sent_events(w).values()) == {1}


@pytest.mark.slow
def test_b1_two_runs_started_at_once_send_each_due_action_exactly_once(w: World) -> None:
    # PostgreSQL is where runs truly overlap (SQLite serializes writers): 200 actions there
    n = 200 if w.backend == "postgresql" else 60
    ids = setup_mail(w, n, delay=1, customers=20)
    w.run("2026-12-02T05:00Z")  # imports; everything is due on Thursday
    assert {a["status"] for a in w.actions()} == {"scheduled"}

    settings = w.settings(DISPATCH_BATCH_SIZE="20")
    barrier = threading.Barrier(2)
    reports, errors = {}, []

    def run(run_id: str) -> None:
        try:
            barrier.wait()
            reports[run_id] = w.run("2026-12-03T05:00Z", settings=settings, run_id=run_id)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f"overlap_{k}",)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors

    expected = {f"email/{action_id_for(i)}.eml" for i in ids}
    assert set(w.outbox_files()) == expected  # one file per action: each handed over once
    assert sent_events(w) == Counter({action_id_for(i): 1 for i in ids})
    assert claims(w) == Counter({action_id_for(i): 1 for i in ids})  # no action claimed by both
    assert {a["status"] for a in w.actions()} == {"sent"}
    sent_per_run = [r.counts["run"].get("events.sent", 0) for r in reports.values()]
    assert sum(sent_per_run) == n
    assert {w.sending_status(i) for i in ids} == {"sent"}


@pytest.mark.slow
def test_b1_two_runs_that_both_import_the_same_new_invoices_send_each_once(w: World) -> None:
    ids = setup_mail(w, 60, delay=0, customers=6)
    settings = w.settings(DISPATCH_BATCH_SIZE="10")
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(run_id: str) -> None:
        try:
            barrier.wait()
            w.run("2026-12-02T05:00Z", settings=settings, run_id=run_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f"twin_{k}",)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    w.run("2026-12-03T05:00Z")  # whatever one run left, the next one finishes

    assert len(w.rows("SELECT invoice_id FROM invoices")) == 60
    assert Counter(e["invoice_id"] for e in w.events() if e["event"] == "created") == Counter(
        dict.fromkeys(ids, 1)
    )
    assert set(w.outbox_files()) == {f"email/{action_id_for(i)}.eml" for i in ids}
    assert sent_events(w) == Counter({action_id_for(i): 1 for i in ids})


def test_b1_actions_left_sending_by_a_dead_run_are_settled_from_the_outbox_without_a_second_write(
    w: World,
) -> None:
    ids = setup_mail(w, 5)
    dying = {"email": DyingOutbox(OutboxChannel(w.outbox, "email"), survive=2)}
    with pytest.raises(SystemExit):
        w.run("2026-12-02T05:00Z", channels=dying, run_id="dies")
    assert {a["status"] for a in w.actions()} == {"sending"}
    handed_over = w.outbox_state()
    assert len(handed_over) == 2
    assert w.rows("SELECT status FROM dispatch_runs WHERE run_id = 'dies'") == [{"status": "failed"}]

    # the next run (a minute later: the dead run is recorded failed, no need to wait the lease)
    report = w.run("2026-12-02T05:01Z")
    assert {a["status"] for a in w.actions()} == {"sent"}
    files = w.outbox_state()
    assert len(files) == 5
    assert {k: files[k] for k in handed_over} == handed_over  # not rewritten
    assert sent_events(w) == Counter({action_id_for(i): 1 for i in ids})
    settled = {e["invoice_id"] for e in w.events() if e["event"] == "settled_sent"}
    resent = {e["invoice_id"] for e in w.events() if e["event"] == "sent"}
    assert len(settled) == 2 and len(resent) == 3 and settled.isdisjoint(resent)
    for inv in resent:
        assert w.event_names(inv) == ["created", "claimed", "claim_released", "claimed", "sent"]
    for inv in settled:
        assert w.event_names(inv) == ["created", "claimed", "settled_sent"]
        action = w.action(inv)
        assert action["deliver_at"] == instant("2026-12-02T05:00Z")
        assert action["provider_message_id"] == f"email/{action['action_id']}.eml"
    assert report.counts["totals"]["sent"] == 5


def test_b1_a_retried_run_with_the_same_id_never_sends_twice(w: World) -> None:
    ids = setup_mail(w, 5)
    dying = {"email": DyingOutbox(OutboxChannel(w.outbox, "email"), survive=3)}
    with pytest.raises(SystemExit):
        w.run("2026-12-02T05:00Z", channels=dying, run_id="daily_20261202")
    first = w.outbox_state()
    w.run("2026-12-02T05:00Z", run_id="daily_20261202")  # the scheduler retries the run
    w.run("2026-12-03T05:00Z")  # and the next day
    files = w.outbox_state()
    assert len(files) == 5
    assert {k: files[k] for k in first} == first
    assert sent_events(w) == Counter({action_id_for(i): 1 for i in ids})
    assert {a["status"] for a in w.actions()} == {"sent"}


def _claim_live(w: World, inv: str, as_of: str, token: str = "live_run#b0#x") -> None:
    """A claim held by a run still working (this very process holds it, its lease is fresh)."""
    live = RunContext.new(instant(as_of), run_id=token.split("#")[0])
    with Database(w.dispatch).tx() as conn:
        assert claim(conn, [action_id_for(inv)], token=token, ctx=live) == [action_id_for(inv)]


def _age_lease(w: World, token: str, seconds: int) -> None:
    """The claimant stopped renewing its lease ``seconds`` ago (wall clock)."""
    with w.dispatch.begin() as conn:
        old = database_now(conn) - dt.timedelta(seconds=seconds)
        conn.execute(update(claim_leases).where(claim_leases.c.claim_token == token).values(heartbeat_at=old))


def test_b1_a_live_claim_is_left_alone_by_any_as_of_and_settled_once_its_lease_is_not_renewed(
    w: World,
) -> None:
    (inv,) = setup_mail(w, 1, delay=1)
    w.run("2026-12-02T05:00Z")
    _claim_live(w, inv, "2026-12-03T06:00Z")

    # liveness is a fact about processes: neither the same instant nor a week later on the
    # as-of clock (a backfill or a daily run beside the live claimant) touches the claim
    for at in ("2026-12-03T06:00Z", "2026-12-03T06:10Z", "2026-12-10T06:00Z"):
        w.run(at)
        action = w.action(inv)
        assert (action["status"], action["claim_token"]) == ("sending", "live_run#b0#x"), at
    assert w.outbox_files() == []
    assert w.event_names(inv) == ["created", "claimed"]
    # nor may a person ignore it or mark it sent while it is being sent (R14: refused, exit 2)
    before = w.dump()
    for args in (("todo", "ignore", action_id_for(inv)), ("invoices", "mark-sent", inv)):
        result = w.cli(*args, "--at", "2026-12-03T06:03Z")
        assert result.exit_code == 2 and "being sent" in result.stderr, result.output
    assert w.dump() == before

    _age_lease(w, "live_run#b0#x", 60)  # renewed a minute ago: within the 5-minute lease
    w.run("2026-12-03T06:00Z")
    assert w.action(inv)["status"] == "sending"

    _age_lease(w, "live_run#b0#x", 301)  # not renewed for longer than the lease: dead
    w.run("2026-12-03T06:00Z")  # the same instant, re-run after the crash
    assert w.action(inv)["status"] == "sent"
    assert w.event_names(inv) == ["created", "claimed", "claim_released", "claimed", "sent"]
    assert len(w.outbox_files()) == 1
    assert w.rows("SELECT claim_token FROM claim_leases") == []  # leases do not pile up


def test_b1_a_claim_whose_process_is_gone_is_settled_at_once_by_a_run_of_the_same_instant(
    w: World,
) -> None:
    (inv,) = setup_mail(w, 1, delay=1)
    w.run("2026-12-02T05:00Z")
    _claim_live(w, inv, "2026-12-03T06:00Z", token="killed#b0#x")
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    holder = holder_identity().rpartition("|")[0] + "|" + gone.stdout.strip()
    with w.dispatch.begin() as conn:
        conn.execute(update(claim_leases).values(holder=holder))  # the claimant was kill -9'd

    w.run("2026-12-03T06:00Z")  # its lease is fresh, but its process is gone from this machine
    assert w.action(inv)["status"] == "sent"
    released = [e for e in w.events() if e["event"] == "claim_released"]
    assert len(released) == 1 and "process is gone" in released[0]["detail"]


def test_b1_a_kill_leaves_unknown_only_the_window_in_flight_and_the_rest_is_sent(w: World) -> None:
    ids = setup_mail(w, 7)
    accepted: list[str] = []
    settings = w.settings(DISPATCH_SEND_CONCURRENCY="2")  # windows of 2 requests
    with pytest.raises(SystemExit):  # dies inside the second window, after one acceptance
        w.run("2026-12-02T05:00Z", channels={"email": RemoteProvider(accepted, 3)}, settings=settings)
    assert len(accepted) == 3
    handing = w.rows(
        "SELECT action_id FROM invoice_actions WHERE handover_at IS NOT NULL AND status = 'sending'"
    )
    assert len(handing) == 2  # one write per window recorded which two were going out

    w.run("2026-12-02T05:00Z", channels={"email": RemoteProvider(accepted)}, settings=settings)
    by_status = Counter((a["status"], a["manual_reason"]) for a in w.actions())
    assert by_status == Counter({("sent", None): 5, ("manual", "delivery_unknown"): 2})
    assert len(accepted) == len(set(accepted)) == 6  # the window's unknown one was not re-sent
    unknown = [a for a in w.actions() if a["status"] == "manual"]
    for a in unknown:  # whom it was going to and when, for the person who checks
        assert a["recipient"] and a["deliver_at"] == instant("2026-12-02T05:00Z")
    assert sent_events(w) == Counter({a["action_id"]: 1 for a in w.actions() if a["status"] == "sent"})
    assert set(accepted) <= {action_id_for(i) for i in ids}


def test_b1_when_the_backend_cannot_tell_a_left_sending_action_becomes_delivery_unknown(w: World) -> None:
    ids = setup_mail(w, 4)
    accepted: list[str] = []
    with pytest.raises(SystemExit):
        w.run("2026-12-02T05:00Z", channels={"email": RemoteProvider(accepted, die_after=2)})
    assert len(accepted) == 2

    for day in ("2026-12-03T05:00Z", "2026-12-04T05:00Z"):
        w.run(day, channels={"email": RemoteProvider(accepted)})
    for inv in ids:
        action = w.action(inv)
        assert (action["status"], action["manual_reason"]) == ("manual", "delivery_unknown"), inv
        assert w.event_names(inv) == ["created", "claimed", "manual"]
    assert len(accepted) == len(set(accepted)) == 2  # never re-sent
    assert set(accepted) <= {action_id_for(i) for i in ids}
    assert w.view_ids("todo_invoicing") == set(ids)  # a person checks with the provider


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(min_value=1, max_value=12),
    in_flight=st.integers(min_value=1, max_value=5),
    survive=st.integers(min_value=0, max_value=12),
)
def test_property_a_kill_anywhere_costs_at_most_one_window_and_sends_the_rest_once(
    n: int, in_flight: int, survive: int
) -> None:
    """Whatever the batch, the window and the point of the kill: after a re-run, every action
    is sent or (only if it was in the window in flight) delivery_unknown; nothing twice."""
    survive = min(survive, n)
    with tempfile.TemporaryDirectory() as root, open_world("sqlite", Path(root)) as w:
        setup_mail(w, n)
        accepted: list[str] = []
        settings_ = w.settings(DISPATCH_SEND_CONCURRENCY=str(in_flight))
        dying = {"email": RemoteProvider(accepted, survive)}
        with contextlib.suppress(SystemExit):
            w.run("2026-12-02T05:00Z", channels=dying, settings=settings_)
        w.run("2026-12-02T05:00Z", channels={"email": RemoteProvider(accepted)}, settings=settings_)
        actions = w.actions()
        unknown = {a["action_id"] for a in actions if a["manual_reason"] == "delivery_unknown"}
        sent = {a["action_id"] for a in actions if a["status"] == "sent"}
        assert len(sent) + len(unknown) == n
        assert len(unknown) <= in_flight
        assert len(accepted) == len(set(accepted))  # nothing twice
        assert sent <= set(accepted)  # nothing recorded sent that the provider did not get
        assert set(accepted) <= sent | unknown  # what the provider got is recorded, or checked
