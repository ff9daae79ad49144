"""The extract tags a new invoice as it inserts it and queues it for its template in the same
transaction (so a first run does not rewrite every invoice); tag still decides any invoice
left without a status, e.g. by a version from before. Either way the statuses (R1, R2, void)
and the queue are the ones the rule gives."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from dispatch.runtime.pipeline import Engines
from dispatch.runtime.runs import RunContext
from dispatch.stages.extract_invoices import extract_invoices
from dispatch.stages.resolve_templates import resolve_templates
from dispatch.stages.tag_new_invoices import tag_new_invoices
from dispatch.storage.session import Database

from tests.builders import World, instant, open_world

AS_OF = "2026-12-02T05:00Z"


@pytest.fixture
def w(backend: str, tmp_path: Path) -> Iterator[World]:
    with open_world(backend, tmp_path) as world:
        world.org().org("off", enabled_at=None, default_owner="u_off")
        world.plan("p_mail")
        world.customer("c_mail", plan="p_mail").customer("c_none").customer("c_off", org="off")
        world.load_config()
        world.invoice("i_mail", "c_mail").invoice("i_void", "c_mail", status="void")
        world.invoice("i_paid", "c_mail", status="paid").invoice("i_none", "c_none")
        world.invoice("i_off", "c_off")
        yield world


def _stage(w: World, *stages: str) -> None:
    settings = w.settings()
    engines = Engines.from_settings(settings)
    db, ctx = Database(engines.dispatch), RunContext.new(instant(AS_OF), run_id="r_tag")
    try:
        for stage in stages:
            if stage == "extract":
                extract_invoices(db, engines.accounting, ctx, settings.extract_lookback)
            elif stage == "tag":
                tag_new_invoices(db, ctx)
            else:
                resolve_templates(db, ctx)
    finally:
        engines.dispatch.dispose()
        engines.accounting.dispose()


def _queue(w: World) -> set[str]:
    return {r["invoice_id"] for r in w.rows("SELECT invoice_id FROM template_queue")}


EXPECTED = {
    "i_mail": "to_send",
    "i_paid": "to_send",  # R1: paid is still sent its copy
    "i_void": "cancelled",
    "i_none": "to_send",
    "i_off": "not_required",  # R2: sending off
}


def test_extract_inserts_new_invoices_tagged_and_queued(w: World) -> None:
    _stage(w, "extract")
    assert {i: w.sending_status(i) for i in EXPECTED} == EXPECTED
    assert _queue(w) == {"i_mail", "i_paid", "i_none"}
    _stage(w, "tag", "resolve")
    assert {a["invoice_id"] for a in w.actions()} == {"i_mail", "i_paid"}
    assert _queue(w) == {"i_none"}  # no template yet: it waits


def test_tag_decides_invoices_left_without_status(w: World) -> None:
    _stage(w, "extract")
    engine = sa.create_engine(w.urls["dispatch"])
    try:
        with engine.begin() as conn:  # what an import by an older version leaves behind
            conn.execute(sa.text("UPDATE invoices SET sending_status = NULL"))
            conn.execute(sa.text("DELETE FROM template_queue"))
    finally:
        engine.dispose()
    _stage(w, "tag", "resolve")
    assert {i: w.sending_status(i) for i in EXPECTED} == EXPECTED
    assert {a["invoice_id"] for a in w.actions()} == {"i_mail", "i_paid"}
    assert _queue(w) == {"i_none"}
