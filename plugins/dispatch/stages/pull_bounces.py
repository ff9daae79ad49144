"""The bounces stage: SendGrid's suppression lists turn sent e-mails back into to-do items.

SendGrid accepting a message (202) is not the customer receiving it. When the receiving side
bounces it, blocks it, or the address turns out invalid, SendGrid lists the address on one of
its suppression lists (bounces, blocks, invalid e-mails) with the time and the reason. This
stage reads the entries created since the last pull and makes every matching ``sent`` e-mail
action manual with reason ``bounced``, in its owner's to-do list (SPEC B3), once: the update
is guarded by ``status = 'sent'``, so a second pull over the same entries changes nothing and
appends no second event.

Matching. The lists are per address, not per message, so an entry is matched to the e-mails
SendGrid delivered to that address (one of the action's recipients, compared without case)
at or before the entry's time and within :data:`MATCH_WINDOW` before it — the span over which
SendGrid keeps retrying a deferred message. An invoice delivered fine months ago is not
turned into a task by a bounce today; several invoices sent to a dead mailbox the same day
all are. A person checks each one: a false alarm costs a look, a missed bounce costs an
invoice nobody received.

Webhooks first. When the providers' signed webhooks are set up (``dispatch.delivery``,
docs/webhooks.md) a bounce reaches the to-do list within seconds and this pull is the
fallback. The stage starts by matching the delivery events still unmatched (those that came
before their send's write, or while the web app could not reach the database's newest
actions) over :data:`dispatch.delivery.matching.MATCH_WINDOW`, with their consequences.
Both paths move an action only while it is ``sent``, so a bounce seen by both makes one
manual action and one event, whichever comes first.

Watermark. ``watermarks['sendgrid.suppressions']`` holds the end of the last pull (the as-of
instant of its run). The next pull reads from a little before it (:data:`LOOKBACK`, for
entries SendGrid lists late) to its own as-of instant; the actions and the watermark move in
one transaction, so a pull that fails moves nothing and the next one reads the same entries.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
from sqlalchemy import Connection, and_, bindparam, select, update

from dispatch.channels.base import ChannelError
from dispatch.channels.retry import RetryPolicy, call_with_retry
from dispatch.channels.sendgrid import PROVIDER, SendGridApi
from dispatch.config.settings import Settings, reveal
from dispatch.delivery import matching
from dispatch.delivery.consequences import apply_consequences
from dispatch.runtime.runs import RunContext
from dispatch.sending.events import record_events
from dispatch.storage.bulk import chunks, upsert
from dispatch.storage.schema import invoice_actions, watermarks
from dispatch.storage.session import Database
from dispatch.vocabulary import ActionStatus, ChannelName, EventName, ManualReason

log = logging.getLogger(__name__)

WATERMARK = "sendgrid.suppressions"
#: suppression list -> its path in SendGrid's v3 API
LISTS: dict[str, str] = {
    "bounces": "/v3/suppression/bounces",
    "blocks": "/v3/suppression/blocks",
    "invalid_emails": "/v3/suppression/invalid_emails",
}
#: the largest page SendGrid's document allows
PAGE_SIZE = 500
#: an entry is matched to e-mails delivered at most this long before it
MATCH_WINDOW = dt.timedelta(days=7)
#: each pull re-reads this much before the watermark
LOOKBACK = dt.timedelta(hours=1)

ENTRY_COLUMNS = ["kind", "email", "created", "reason", "status"]


@dataclass
class BounceSummary:
    """What one pull did."""

    skipped: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    entries: dict[str, int] = field(default_factory=dict)
    matched: int = 0
    bounced: int = 0
    #: delivery events (webhooks) this pull matched to their actions, and the actions they bounced
    webhook_matched: int = 0
    webhook_bounced: int = 0

    def as_dict(self) -> dict:
        return {
            "skipped": self.skipped,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "entries": dict(self.entries),
            "matched": self.matched,
            "bounced": self.bounced,
            "webhook_matched": self.webhook_matched,
            "webhook_bounced": self.webhook_bounced,
        }


def pull_bounces(
    db: Database,
    settings: Settings,
    ctx: RunContext,
    *,
    api: SendGridApi | None = None,
    policy: RetryPolicy | None = None,
    sleep: Callable[[float], None] | None = None,
) -> BounceSummary:
    """Pull the suppression entries created since the last pull, up to ``ctx.as_of``, and make
    the matching sent e-mails manual ``bounced``.

    Raises the channel's typed errors (:class:`~dispatch.channels.base.FatalChannelError` for
    a bad key, :class:`~dispatch.channels.base.TransientError` when SendGrid stays
    unavailable after the retries); nothing is changed then.
    """
    summary = BounceSummary()
    summary.webhook_matched, summary.webhook_bounced = match_delivery_events(db, ctx)
    if api is None and settings.email_backend != PROVIDER:
        summary.skipped = f"the e-mail backend is {settings.email_backend}, not sendgrid"
        return summary
    with db.read() as conn:
        mark = conn.execute(select(watermarks.c.value).where(watermarks.c.name == WATERMARK)).scalar()
    since = mark - LOOKBACK if mark is not None else None
    until = ctx.as_of
    summary.since, summary.until = since, until
    if since is not None and since >= until:
        summary.skipped = "nothing new: the last pull already covers this instant"
        return summary

    own_api = api is None
    api = api or SendGridApi(
        reveal(settings.sendgrid_api_key) or "", settings.sendgrid_api_host, timeout=settings.http_timeout
    )
    try:
        entries = fetch_entries(api, since, until, policy or RetryPolicy(), sleep or time.sleep)
    finally:
        if own_api:
            api.close()
    summary.entries = (
        {str(k): int(n) for k, n in entries["kind"].value_counts().items()} if not entries.empty else {}
    )

    with db.tx() as conn:
        matches = match_sent_actions(conn, entries)
        summary.matched = len(matches)
        summary.bounced = mark_bounced(conn, matches, ctx)
        new_mark = until if mark is None else max(mark, until)
        upsert(conn, watermarks, [{"name": WATERMARK, "value": new_mark}], ["name"], ["value"])
    if summary.bounced:
        log.warning("bounces: %d sent e-mails became manual 'bounced'", summary.bounced)
    return summary


def match_delivery_events(db: Database, ctx: RunContext) -> tuple[int, int]:
    """Match the webhooks' delivery events still unmatched and apply their consequences
    (whatever the e-mail backend: SMS and letters have webhooks too); (matched, bounced)."""
    with db.tx() as conn:
        matched = matching.match_received_since(conn, ctx.as_of - matching.MATCH_WINDOW)
        bounced = apply_consequences(conn, matched, at=ctx.as_of, run_id=ctx.run_id)
    if bounced:
        log.warning("bounces: %d sent actions became manual 'bounced' from delivery webhooks", bounced)
    return len(matched), bounced


def fetch_entries(
    api: SendGridApi,
    since: dt.datetime | None,
    until: dt.datetime,
    policy: RetryPolicy,
    sleep: Callable[[float], None],
) -> pd.DataFrame:
    """Every entry of the three lists created in [since, until], page by page."""
    params: dict[str, int] = {"end_time": int(until.timestamp()), "limit": PAGE_SIZE}
    if since is not None:
        params["start_time"] = int(since.timestamp())
    rows: list[dict] = []
    for kind, path in LISTS.items():
        offset = 0
        while True:
            page_params = {**params, "offset": offset}

            def get(path: str = path, page_params: dict[str, int] = page_params) -> list:
                return _page(api, path, page_params)

            page = call_with_retry(get, policy, sleep)
            rows.extend({"kind": kind, **entry} for entry in page)
            if len(page) < PAGE_SIZE:
                break
            offset += len(page)
    frame = pd.DataFrame(rows, columns=ENTRY_COLUMNS)
    frame["email"] = frame["email"].astype(str).str.strip().str.lower()
    frame["created"] = pd.to_datetime(frame["created"].astype("int64"), unit="s", utc=True)
    return frame


def _page(api: SendGridApi, path: str, params: dict[str, int]) -> list:
    response = api.request("GET", path, params=params)
    try:
        payload = response.json()
    except ValueError as exc:
        raise ChannelError(f"SendGrid {path}: the answer is not JSON") from exc
    if not isinstance(payload, list):
        raise ChannelError(f"SendGrid {path}: expected a list, got {type(payload).__name__}")
    return [e for e in payload if isinstance(e, dict) and e.get("email") and e.get("created") is not None]


def match_sent_actions(conn: Connection, entries: pd.DataFrame) -> pd.DataFrame:
    """One row per sent SendGrid e-mail action an entry matches (its earliest such entry):
    action_id, invoice_id, kind, email, created, reason."""
    out_columns = ["action_id", "invoice_id", "kind", "email", "created", "reason"]
    if entries.empty:
        return pd.DataFrame(columns=out_columns)
    a = invoice_actions.c
    earliest = entries["created"].min().to_pydatetime()
    latest = entries["created"].max().to_pydatetime()
    sent = pd.read_sql(
        select(a.action_id, a.invoice_id, a.recipient, a.deliver_at).where(
            a.status == ActionStatus.SENT,
            a.channel == ChannelName.EMAIL,
            a.provider == PROVIDER,
            a.deliver_at >= earliest - MATCH_WINDOW,
            a.deliver_at <= latest,
        ),
        conn,
    )
    if sent.empty:
        return pd.DataFrame(columns=out_columns)
    sent["deliver_at"] = pd.to_datetime(sent["deliver_at"], utc=True)
    addresses = (
        sent.assign(email=sent["recipient"].fillna("").str.split(","))
        .explode("email")
        .assign(email=lambda f: f["email"].str.strip().str.lower())
    )
    pairs = addresses.merge(entries, on="email", how="inner")
    in_window = (pairs["deliver_at"] <= pairs["created"]) & (
        pairs["deliver_at"] >= pairs["created"] - MATCH_WINDOW
    )
    pairs = pairs.loc[in_window].sort_values(["action_id", "created", "kind"])
    return pairs.drop_duplicates("action_id")[out_columns].reset_index(drop=True)


def mark_bounced(conn: Connection, matches: pd.DataFrame, ctx: RunContext) -> int:
    """Move the matched actions still ``sent`` to manual ``bounced``, with one event each."""
    if matches.empty:
        return 0
    a = invoice_actions.c
    detail = {
        str(rec.action_id): (
            f"{str(rec.kind).replace('_', ' ')}: {rec.email!s} "
            f"at {rec.created:%Y-%m-%d %H:%M:%S}Z: {rec.reason!s}"
        )[:1000]
        for rec in matches.itertuples(index=False)
    }
    moved: list[tuple[str, str]] = []
    for part in chunks(list(detail)):
        moved.extend(
            (r[0], r[1])
            for r in conn.execute(
                update(invoice_actions)
                .where(a.action_id.in_(list(part)), a.status == ActionStatus.SENT)
                .values(status=ActionStatus.MANUAL, manual_reason=ManualReason.BOUNCED, updated_at=ctx.as_of)
                .returning(a.action_id, a.invoice_id)
            ).all()
        )
    if not moved:
        return 0
    conn.execute(
        update(invoice_actions)
        .where(and_(a.action_id == bindparam("_id"), a.manual_reason == ManualReason.BOUNCED))
        .values(detail=bindparam("detail")),
        [{"_id": action_id, "detail": detail[action_id]} for action_id, _ in moved],
    )
    record_events(
        conn,
        moved,
        event=EventName.BOUNCED,
        at=ctx.as_of,
        run_id=ctx.run_id,
        details={action_id: f"bounced; {detail[action_id]}" for action_id, _ in moved},
    )
    return len(moved)
