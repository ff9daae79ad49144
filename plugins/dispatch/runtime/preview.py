"""``dispatch preview``: what ``run`` would do as of an instant, changing nothing (SPEC B8).

The preview runs the very same stages inside one database transaction that is rolled back
at the end, with channels that accept messages without handing them to anyone. So the
answer cannot drift from what a run does, and nothing is written: no table row, no outbox
file, no watermark.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pandas as pd
from sqlalchemy import select, text

from dispatch.channels.base import Channel, ChannelError, OutgoingMessage, SendResult
from dispatch.channels.factory import open_channels
from dispatch.config.settings import Settings
from dispatch.runtime.pipeline import Engines, ensure_schema, run_pipeline
from dispatch.storage.schema import invoice_actions
from dispatch.storage.session import rollback_database

COLUMNS = ["invoice_id", "action_id", "channel", "recipient", "deliver_at", "outcome", "reason"]


class PreviewChannel:
    """Accepts every message (as the real backend would be asked to) and sends nothing."""

    def __init__(self, real: Channel) -> None:
        self.real = real
        self.provider = real.provider
        self.channel = real.channel

    def max_schedule_ahead(self) -> dt.timedelta | None:
        return self.real.max_schedule_ahead()

    def send_many(self, messages: Sequence[OutgoingMessage]) -> list[SendResult | ChannelError]:
        return [SendResult(m.action_id, self.provider, "(preview)", m.deliver_at) for m in messages]

    def was_handed_over(self, action_id: str) -> SendResult | bool | None:
        return self.real.was_handed_over(action_id)  # read-only

    def close(self) -> None:
        """Nothing of its own to close: :func:`preview` closes the real channels."""


def preview(settings: Settings, as_of: dt.datetime, *, engines: Engines | None = None) -> pd.DataFrame:
    engines = engines or Engines.from_settings(settings)
    ensure_schema(engines.dispatch)
    with open_channels(settings) as real, rollback_database(engines.dispatch) as db:
        channels: dict[str, Channel] = {k: PreviewChannel(v) for k, v in real.items()}
        with db.read() as conn:
            existing = set(conn.execute(select(invoice_actions.c.action_id)).scalars())
        report = run_pipeline(settings, as_of, engines=engines, db=db, channels=channels, run_id="preview")
        with db.read() as conn:
            df = pd.read_sql(text(_OUTCOME_SQL), conn, params={"run_id": report.run_id})
    df["action_id"] = df["action_id"].where(df["action_id"].isin(existing), None)
    df["deliver_at"] = pd.to_datetime(df["deliver_at"], utc=True)
    return df[COLUMNS].sort_values(["outcome", "invoice_id"], kind="stable").reset_index(drop=True)


_OUTCOME_SQL = """
SELECT i.invoice_id, a.action_id, a.channel, a.recipient,
       CASE WHEN a.status = 'scheduled' THEN a.scheduled_for ELSE a.deliver_at END AS deliver_at,
       CASE
         WHEN a.action_id IS NULL THEN 'no_template'
         WHEN a.status = 'sent' THEN 'send'
         WHEN a.status = 'cancelled' THEN 'cancel'
         WHEN a.status = 'manual' THEN 'manual'
         ELSE 'not_due'
       END AS outcome,
       CASE
         WHEN a.action_id IS NULL AND cp.customer_id IS NULL
           THEN 'no plan assigned to the customer that owns the invoice'
         WHEN a.action_id IS NULL THEN 'plan ' || cp.plan_id || ' has no invoice-sending template'
         WHEN a.status = 'scheduled' THEN 'scheduled later'
         WHEN a.status = 'manual' THEN a.manual_reason
         WHEN a.status = 'cancelled' THEN a.detail
         ELSE NULL
       END AS reason
FROM invoices i
LEFT JOIN invoice_actions a ON a.invoice_id = i.invoice_id
LEFT JOIN customer_plans cp ON cp.customer_id = i.customer_id
WHERE (i.sending_status = 'to_send' AND (a.action_id IS NULL OR a.status IN ('scheduled', 'sending')))
   OR a.action_id IN (SELECT e.action_id FROM action_events e
                      WHERE e.run_id = :run_id AND e.event IN ('sent', 'manual', 'cancelled'))
"""
