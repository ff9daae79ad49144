"""Stage 2, tag: newly imported invoices become ``to_send`` or ``not_required`` (R1, R2).

The rule: an invoice first seen at or after its organization switched sending on is
``to_send`` whatever its accounting status (R1: a direct-debit invoice already paid still
gets its copy); before that, or while sending is off, it is ``not_required`` and never sent
(R2). An invoice already void when imported is ``cancelled`` at once: void invoices are
never sent. Each new ``to_send`` invoice joins the template queue (``template_queue``),
which resolve templates works from.

The extract applies the rule as it inserts a new invoice (:func:`initial_statuses`, the
same rule on the chunk's columns) and queues it in the same transaction, so a first run
does not write every invoice twice (an UPDATE of a row rewrites it and each of its index
entries). This stage then applies it, in one set-based UPDATE, to any invoice still
without a status — one imported by a version from before that, for instance — and reports
what the run's import decided.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sqlalchemy import and_, case, exists, func, literal, select, update

from dispatch.runtime.runs import RunContext
from dispatch.storage.bulk import dialect_insert
from dispatch.storage.schema import UTCDateTime, invoices, organizations, template_queue
from dispatch.storage.session import Database


@dataclass
class TagSummary:
    to_send: int = 0
    not_required: int = 0
    cancelled: int = 0

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def initial_statuses(
    enabled_at: pd.Series, first_seen_at: pd.Timestamp, accounting_status: pd.Series
) -> np.ndarray:
    """The rule on columns: ``enabled_at`` is the organization's sending switch of each
    invoice (NaT: off), ``first_seen_at`` the import instant."""
    enabled = (enabled_at.notna() & (enabled_at <= first_seen_at)).to_numpy()
    void = (accounting_status.astype(str) == "void").to_numpy()
    return np.select([enabled & void, enabled], ["cancelled", "to_send"], "not_required").astype(object)


def tag_new_invoices(db: Database, ctx: RunContext) -> TagSummary:
    enabled = exists().where(
        and_(
            organizations.c.org_id == invoices.c.org_id,
            organizations.c.invoice_sending_enabled_at.is_not(None),
            organizations.c.invoice_sending_enabled_at <= invoices.c.first_seen_at,
        )
    )
    status = case(
        (and_(enabled, invoices.c.accounting_status == "void"), "cancelled"),
        (enabled, "to_send"),
        else_="not_required",
    )
    summary = TagSummary()
    with db.tx() as conn:
        # the invoices about to become to_send wait for their action in the template queue
        queued = select(invoices.c.invoice_id, literal(ctx.as_of, UTCDateTime()).label("queued_at")).where(
            invoices.c.sending_status.is_(None), enabled, invoices.c.accounting_status != "void"
        )
        conn.execute(
            dialect_insert(conn, template_queue)
            .from_select(["invoice_id", "queued_at"], queued)
            .on_conflict_do_nothing(index_elements=["invoice_id"])
        )
        conn.execute(
            update(invoices).where(invoices.c.sending_status.is_(None)).values(sending_status=status)
        )
        counts = conn.execute(
            select(invoices.c.sending_status, func.count())
            .where(invoices.c.first_seen_run_id == ctx.run_id)
            .group_by(invoices.c.sending_status)
        ).all()
    for status_value, n in counts:
        if hasattr(summary, str(status_value)):
            setattr(summary, str(status_value), int(n))
    return summary
