"""Manual actions whose cause has been fixed go again (SPEC R12: "send them once the cause
is fixed").

Two causes can be fixed without touching the action itself:

* ``template_error`` — someone corrected the plan's template and loaded the configuration:
  the plan now points at a new template version. A person's ``todo send`` and the next run
  both use that **current** version (an action otherwise keeps the version it was created
  with, so a configuration change never alters what an already-sent action said).
* ``missing_pdf`` / ``pdf_outside_root`` — the invoice PDF is now inside the invoice folder
  where ``pdf_path`` says.

The run re-queues such actions (``manual`` → ``scheduled``, event ``requeued``) at the start
of compute due, so they go out in that very run; the template version they go out with is
on the ``template_refreshed`` / ``requeued`` event. A template fixed into a *manual* one, or
onto another channel, is left to a person: only ``todo send`` follows it. The update is
guarded by ``status = 'manual'`` and the reason, so a person sending the same action at the
same moment wins or loses cleanly (the claim is conditional too) — nothing goes twice.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from sqlalchemy import ColumnElement, Connection, and_, or_, select

from dispatch.sending.events import record_events
from dispatch.sending.invoice_pdf import locate_invoice_pdf
from dispatch.storage.bulk import chunks, update_rows
from dispatch.storage.schema import invoice_actions, invoice_templates, invoices, plans
from dispatch.storage.session import Database
from dispatch.vocabulary import ActionStatus, EventName, ManualReason

PDF_REASONS = (ManualReason.MISSING_PDF, ManualReason.PDF_OUTSIDE_ROOT)
REQUEUED_REASONS = (ManualReason.TEMPLATE_ERROR, *PDF_REASONS)

A, T, P = invoice_actions, invoice_templates, plans


def _current(conn: Connection, where: ColumnElement[bool]) -> pd.DataFrame:
    """Actions with their plan's current template version beside their own."""
    stmt = (
        select(
            A.c.action_id,
            A.c.invoice_id,
            A.c.status,
            A.c.manual_reason,
            A.c.template_id,
            A.c.channel,
            A.c.automatic,
            P.c.template_id.label("current_template_id"),
            T.c.channel.label("current_channel"),
            T.c.automatic.label("current_automatic"),
            invoices.c.pdf_path,
        )
        .join(P, P.c.plan_id == A.c.plan_id)
        .join(invoices, invoices.c.invoice_id == A.c.invoice_id)
        .outerjoin(T, T.c.template_id == P.c.template_id)
        .where(where)
    )
    return pd.read_sql(stmt, conn)


def refresh_to_current(
    conn: Connection, action_ids: Sequence[str], *, at: dt.datetime, actor: str | None, run_id: str | None
) -> dict[str, str]:
    """Point open actions at their plan's current template version; returns every action's
    template version after the call (changed or not). A plan without a template now keeps
    the action's own version."""
    frames = [_current(conn, A.c.action_id.in_(list(part))) for part in chunks(list(action_ids))]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if df.empty:
        return {}
    stale = df[df["current_template_id"].notna() & (df["current_template_id"] != df["template_id"])]
    if not stale.empty:
        update_rows(
            conn,
            A,
            "action_id",
            [
                {
                    "action_id": r.action_id,
                    "template_id": r.current_template_id,
                    "channel": r.current_channel,
                    "automatic": bool(r.current_automatic),
                    "updated_at": at,
                }
                for r in stale.itertuples(index=False)
            ],
            guard=or_(
                A.c.status == ActionStatus.SCHEDULED, A.c.status == ActionStatus.MANUAL
            ),  # no IN: executemany
        )
        record_events(
            conn,
            zip(stale["action_id"], stale["invoice_id"], strict=True),
            event=EventName.TEMPLATE_REFRESHED,
            at=at,
            run_id=run_id,
            actor=actor,
            details={
                str(r.action_id): f"template {r.template_id} -> {r.current_template_id} (plan's current)"
                for r in stale.itertuples(index=False)
            },
            template_ids=dict(zip(stale["action_id"], stale["current_template_id"], strict=True)),
        )
    now = df["current_template_id"].where(df["current_template_id"].notna(), df["template_id"])
    return dict(zip(df["action_id"], now, strict=True))


def _pdf_now_there(pdf_path: object, root: Path) -> bool:
    if not isinstance(pdf_path, str) or not pdf_path:
        return False
    found = locate_invoice_pdf(pdf_path, root)
    return isinstance(found, Path) and found.is_file()


def requeue_fixed(db: Database, *, at: dt.datetime, run_id: str, pdf_root: Path) -> dict[str, int]:
    """Re-queue the manual actions whose cause is fixed; returns counts per former reason.

    The candidates are the (few) open ``template_error`` and PDF actions, not the invoices;
    the PDF check looks at one path per candidate, nothing is read.
    """
    counts = {reason.value: 0 for reason in REQUEUED_REASONS}
    with db.tx() as conn:
        df = _current(conn, and_(A.c.status == ActionStatus.MANUAL, A.c.manual_reason.in_(REQUEUED_REASONS)))
        if df.empty:
            return counts
        fixed_template = (
            (df["manual_reason"] == ManualReason.TEMPLATE_ERROR)
            & df["current_template_id"].notna()
            & (df["current_template_id"] != df["template_id"])
            & (df["current_channel"] == df["channel"])
            & df["current_automatic"].astype(object).fillna(False).astype(bool)
        )
        pdf_rows = df["manual_reason"].isin(PDF_REASONS) & df["automatic"].astype(bool)
        fixed_pdf = pd.Series(
            [pdf_rows[i] and _pdf_now_there(df.at[i, "pdf_path"], pdf_root) for i in df.index],
            index=df.index,
            dtype=bool,
        )
        go = df[fixed_template | fixed_pdf]
        if go.empty:
            return counts
        template_now = go["current_template_id"].where(fixed_template[go.index], go["template_id"])
        rows = [
            {
                "action_id": a,
                "template_id": t,
                "status": ActionStatus.SCHEDULED,
                "manual_reason": None,
                "detail": None,
                "updated_at": at,
            }
            for a, t in zip(go["action_id"], template_now, strict=True)
        ]
        update_rows(
            conn,
            A,
            "action_id",
            rows,
            # equalities, not IN: an executemany cannot expand an IN list
            guard=and_(
                A.c.status == ActionStatus.MANUAL, or_(*(A.c.manual_reason == r for r in REQUEUED_REASONS))
            ),
        )
        record_events(
            conn,
            zip(go["action_id"], go["invoice_id"], strict=True),
            event=EventName.REQUEUED,
            at=at,
            run_id=run_id,
            details={
                str(r.action_id): (
                    f"template_error fixed: template {r.template_id} -> {r.current_template_id}"
                    if r.manual_reason == ManualReason.TEMPLATE_ERROR
                    else f"{r.manual_reason!s} fixed: the invoice PDF is now in the invoice folder"
                )
                for r in go.itertuples(index=False)
            },
            template_ids=dict(zip(go["action_id"], template_now, strict=True)),
        )
        for reason, n in go["manual_reason"].value_counts().items():
            counts[str(reason)] = int(n)
    return counts
