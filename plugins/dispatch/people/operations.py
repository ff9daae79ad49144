"""People's operations on the to-do list and the invoices (R12–R14, CONTRACT §5).

Guard clauses first: every id is checked and every refusal raised before anything is
written, so a call naming one unknown or refused id changes nothing at all, even for the
valid ids next to it. Repeating an operation that is already done succeeds and changes
nothing (R14).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlalchemy import ColumnElement, Connection, Engine, Table, select, text, update

from dispatch.channels.base import Channel
from dispatch.config.settings import Settings
from dispatch.errors import DispatchError, RefusedError, UnknownIdError
from dispatch.people.actor import resolve_actor
from dispatch.people.recovery import refresh_to_current
from dispatch.runtime.runs import RunContext
from dispatch.sending.claims import claim, new_token
from dispatch.sending.events import record_events
from dispatch.stages.dispatch_batch import send_claimed
from dispatch.stages.write_back import sync_invoice_statuses
from dispatch.storage.bulk import chunks
from dispatch.storage.migrate import is_current
from dispatch.storage.schema import (
    CHANNELS,
    MANUAL_REASONS,
    SENDING_STATUSES,
    action_events,
    invoice_actions,
    invoices,
    organizations,
    users,
)
from dispatch.storage.session import Database
from dispatch.vocabulary import ActionStatus, EventName, SendingStatus, SentHow

OPEN_ACTION = (ActionStatus.SCHEDULED, ActionStatus.MANUAL)


@dataclass
class OperationResult:
    changed: list[str]
    unchanged: list[str]

    def __str__(self) -> str:
        return f"{len(self.changed)} changed, {len(self.unchanged)} already done"

    def summary(self, verb: str) -> str:
        """What a page says after the operation: "2 ignored", "1 marked as sent, 1 already done"."""
        said = f"{len(self.changed)} {verb}"
        return said + (f", {len(self.unchanged)} already done" if self.unchanged else "")


def _unique(ids: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def _fetch(
    conn: Connection, table: Table, key: str, ids: list[str], cols: Sequence[ColumnElement[Any]]
) -> pd.DataFrame:
    frames = [pd.read_sql(select(*cols).where(table.c[key].in_(list(p))), conn) for p in chunks(ids)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[c.name for c in cols])


def _require_known(kind: str, ids: list[str], found: pd.Series) -> None:
    unknown = [i for i in ids if i not in set(found)]
    if unknown:
        raise UnknownIdError(f"unknown {kind} id(s): {', '.join(unknown)} — nothing was changed")


# Instants the listings read through plain SQL: PostgreSQL returns aware datetimes, SQLite
# naive UTC text; both become aware UTC timestamps so a listing reads the same on both.
INSTANT_COLUMNS = ("first_seen_at", "sent_at", "source_updated_at", "created_at", "manual_since")


def instants_as_utc(df: pd.DataFrame) -> pd.DataFrame:
    for column in INSTANT_COLUMNS:
        if column in df.columns:
            df[column] = pd.to_datetime(df[column], utc=True, format="ISO8601")
    return df


def _listing(
    engine: Engine,
    sql: str,
    where: str,
    params: dict[str, str],
    order: str,
    extra: dict[str, str] | None = None,
) -> pd.DataFrame:
    if params:
        sql += f" WHERE {where}"
    with engine.connect() as conn:
        return instants_as_utc(
            pd.read_sql(text(f"{sql} ORDER BY {order}"), conn, params={**params, **(extra or {})})
        )


# What `invoices --status` accepts: a status of the view invoice_status, or a sending status.
INVOICE_FILTERS = tuple(dict.fromkeys(("to_send", "overdue", "not_due", "paid", "void", *SENDING_STATUSES)))


class BadFilterError(DispatchError):
    """A listing filter names a value that does not exist; the message lists the allowed ones."""


def _allowed(values: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(values[:limit])
    return shown + (f", … ({len(values)} in all)" if len(values) > limit else "")


def require_schema(engine: Engine) -> None:
    """Listings read an initialised database only: otherwise one line says what to run."""
    if not is_current(engine):
        raise DispatchError(
            f"the dispatch database {engine.url.render_as_string(hide_password=True)} is not "
            "initialized or not up to date: run `dispatch db init`"
        )


def check_owner(engine: Engine, owner: str) -> None:
    """``owner`` must be a known user: a typo would otherwise list nothing, silently."""
    with engine.connect() as conn:
        known = conn.execute(select(users.c.user_id).order_by(users.c.user_id)).scalars().all()
    if owner not in known:
        raise BadFilterError(
            f"--owner {owner!r}: no such user; known users: {_allowed(known) or '(none loaded)'}"
        )


def check_invoice_status(status: str) -> None:
    if status not in INVOICE_FILTERS:
        raise BadFilterError(f"--status {status!r}: not a status; allowed: {', '.join(INVOICE_FILTERS)}")


def check_choice(option: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise BadFilterError(f"{option} {value!r}: not allowed; allowed: {_allowed(list(allowed))}")


def check_org(engine: Engine, org: str) -> None:
    with engine.connect() as conn:
        known = conn.execute(select(organizations.c.org_id).order_by(organizations.c.org_id)).scalars().all()
    check_choice("--org", org, known)


# the to-do rows with what the pages need beside the view's columns: the plan (a template
# error is fixed there) and the invoice's amount
TODO_SQL = (
    "SELECT t.*, a.plan_id, p.name AS plan_name, i.total_amount, i.currency FROM todo_invoicing t "
    "JOIN invoice_actions a ON a.action_id = t.action_id "
    "JOIN invoices i ON i.invoice_id = t.invoice_id "
    "LEFT JOIN plans p ON p.plan_id = a.plan_id"
)


def todo_list(
    engine: Engine,
    owner: str | None = None,
    *,
    reason: str | None = None,
    channel: str | None = None,
    org: str | None = None,
    first: str | None = None,
) -> pd.DataFrame:
    """The to-do list (view ``todo_invoicing``), for one owner (a known user) or everyone,
    optionally one manual reason, channel or organization; ``first``'s own actions come first."""
    require_schema(engine)
    if owner is not None:
        check_owner(engine, owner)
    if reason is not None:
        check_choice("--reason", reason, MANUAL_REASONS)
    if channel is not None:
        check_choice("--channel", channel, CHANNELS)
    if org is not None:
        check_org(engine, org)
    wanted = {"owner_user_id": owner, "manual_reason": reason, "channel": channel, "org_id": org}
    params = {k: v for k, v in wanted.items() if v is not None}
    order = "t.owner_user_id, t.created_at, t.action_id"
    if first is not None:
        order = "CASE WHEN t.owner_user_id = :first THEN 0 ELSE 1 END, " + order
    return _listing(
        engine,
        TODO_SQL,
        " AND ".join(f"t.{k} = :{k}" for k in params),
        params,
        order,
        extra={"first": first} if first is not None else None,
    )


def invoice_list(engine: Engine, status: str | None = None) -> pd.DataFrame:
    """Invoices with their ``invoice_status``; ``status`` matches it or the sending status
    (one of :data:`INVOICE_FILTERS`)."""
    if status is not None:
        check_invoice_status(status)
    require_schema(engine)
    return _listing(
        engine,
        "SELECT i.*, s.status FROM invoices i JOIN invoice_status s ON s.invoice_id = i.invoice_id",
        "s.status = :status OR i.sending_status = :status",
        {"status": status} if status is not None else {},
        "i.org_id, i.issue_date, i.number",
    )


def ignore_actions(
    db: Database,
    action_ids: Sequence[str],
    at: dt.datetime,
    *,
    event: EventName = EventName.IGNORED,
    actor: str | None = None,
) -> OperationResult:
    """Ignore actions: each invoice then counts as sent (R13). ``actor`` is who (default:
    :func:`dispatch.people.actor.default_actor`); it is stored on each event."""
    ids = _unique(action_ids)
    who = resolve_actor(actor)
    A = invoice_actions
    with db.tx() as conn:
        found = _fetch(conn, A, "action_id", ids, [A.c.action_id, A.c.invoice_id, A.c.status])
        _require_known("action", ids, found["action_id"])
        refused = found[
            found["status"].isin((ActionStatus.SENT, ActionStatus.CANCELLED, ActionStatus.SENDING))
        ]
        if not refused.empty:
            listed = ", ".join(
                f"{a} ({s})" for a, s in zip(refused["action_id"], refused["status"], strict=True)
            )
            raise RefusedError(
                f"cannot ignore action(s) already sent, cancelled or being sent: {listed} "
                "— nothing was changed"
            )
        todo = _close_open_actions(conn, found[found["status"].isin(OPEN_ACTION)], event, at, who)
        sync_invoice_statuses(conn, todo["invoice_id"].tolist())
    return OperationResult(
        todo["action_id"].tolist(), found.loc[found["status"] == ActionStatus.IGNORED, "action_id"].tolist()
    )


def _close_open_actions(
    conn: Connection, actions: pd.DataFrame, event: EventName, at: dt.datetime, who: str
) -> pd.DataFrame:
    """Close the still-open ones of ``actions`` (``action_id``, ``invoice_id``) as ignored and
    record ``event`` for exactly the rows the guarded UPDATE changed: an action a run claimed
    in the meantime stays the run's, and the log never says a person closed it."""
    closed: list[str] = []
    for part in chunks(actions["action_id"].tolist()):
        closed += conn.execute(
            update(invoice_actions)
            .where(invoice_actions.c.action_id.in_(list(part)), invoice_actions.c.status.in_(OPEN_ACTION))
            .values(status=ActionStatus.IGNORED, updated_at=at)
            .returning(invoice_actions.c.action_id)
        ).scalars()
    done = actions[actions["action_id"].isin(closed)]
    record_events(
        conn,
        zip(done["action_id"], done["invoice_id"], strict=True),
        event=event,
        at=at,
        run_id=None,
        actor=who,
    )
    return done


def mark_sent(
    db: Database, invoice_ids: Sequence[str], at: dt.datetime, *, actor: str | None = None
) -> OperationResult:
    """Mark invoices as sent without sending anything (R14); closes their open action.
    ``actor`` is who (default: :func:`dispatch.people.actor.default_actor`)."""
    ids = _unique(invoice_ids)
    who = resolve_actor(actor)
    A = invoice_actions
    with db.tx() as conn:
        found = _fetch(conn, invoices, "invoice_id", ids, [invoices.c.invoice_id, invoices.c.sending_status])
        _require_known("invoice", ids, found["invoice_id"])
        acts = _fetch(conn, A, "invoice_id", ids, [A.c.action_id, A.c.invoice_id, A.c.status])
        cancelled = found[found["sending_status"] == SendingStatus.CANCELLED]
        sending = acts[acts["status"] == ActionStatus.SENDING]
        if not cancelled.empty or not sending.empty:
            bad = [f"{i} (cancelled)" for i in cancelled["invoice_id"]] + [
                f"{i} (being sent)" for i in sending["invoice_id"]
            ]
            raise RefusedError(f"cannot mark as sent: {', '.join(bad)} — nothing was changed")
        todo = found.loc[found["sending_status"] == SendingStatus.TO_SEND, "invoice_id"].tolist()
        open_acts = acts[acts["invoice_id"].isin(todo) & acts["status"].isin(OPEN_ACTION)]
        _close_open_actions(conn, open_acts, EventName.MARKED_SENT, at, who)
        for part in chunks(todo):
            conn.execute(
                update(invoices)
                .where(
                    invoices.c.invoice_id.in_(list(part)), invoices.c.sending_status == SendingStatus.TO_SEND
                )
                .values(sending_status=SendingStatus.SENT, sent_how=SentHow.MARKED_SENT, sent_at=at)
            )
    return OperationResult(todo, [i for i in ids if i not in set(todo)])


def send_action_now(
    db: Database,
    accounting: Engine,
    action_id: str,
    at: dt.datetime,
    channels: dict[str, Channel],
    settings: Settings,
    *,
    actor: str | None = None,
) -> dict:
    """A person sends a manual action through its channel now (R12).

    It goes out with the plan's **current** template version (:mod:`dispatch.people.recovery`), so
    a template fixed and reloaded after a ``template_error`` is the one rendered. Every event
    of the send carries the actor and that version.
    """
    A = invoice_actions
    who = resolve_actor(actor)
    with db.read() as conn:
        row = conn.execute(select(A.c.status, A.c.invoice_id).where(A.c.action_id == action_id)).first()
    if row is None:
        raise UnknownIdError(f"unknown action id: {action_id} — nothing was changed")
    if row.status not in OPEN_ACTION:
        raise RefusedError(f"cannot send action {action_id}: it is {row.status} — nothing was changed")
    ctx = RunContext.new(at, run_id=f"manual__{at:%Y%m%dT%H%M%SZ}__{action_id}")
    token = new_token(ctx.run_id, "manual")
    with db.tx() as conn:
        version = refresh_to_current(conn, [action_id], at=ctx.as_of, actor=who, run_id=ctx.run_id)
        won = claim(conn, [action_id], token=token, ctx=ctx, from_status=row.status)
        if not won:  # raised inside: the template refresh is rolled back with it
            raise RefusedError(f"action {action_id} changed while we looked at it; try again")
    counts = send_claimed(db, accounting, ctx, token, {action_id: ctx.as_of}, channels, settings, manual=True)
    with db.tx() as conn:
        conn.execute(  # who sent it, and which template version went out
            update(action_events)
            .where(action_events.c.run_id == ctx.run_id, action_events.c.action_id == action_id)
            .values(actor=who, template_id=version.get(action_id))
        )
        sync_invoice_statuses(conn, [row.invoice_id])
        after = conn.execute(
            select(A.c.status, A.c.manual_reason, A.c.detail, A.c.recipient, A.c.provider_message_id).where(
                A.c.action_id == action_id
            )
        ).first()
    return {
        "action_id": action_id,
        "events": dict(counts),
        "template_id": version.get(action_id),
        **(after._asdict() if after is not None else {}),
    }


def send_actions_now(
    db: Database,
    accounting: Engine,
    action_ids: Sequence[str],
    at: dt.datetime,
    channels: dict[str, Channel],
    settings: Settings,
    *,
    actor: str | None = None,
) -> list[dict]:
    """Send several manual actions now, one after the other (:func:`send_action_now`).

    Every id is checked first: one unknown id or one action that is not open refuses the
    whole call before anything goes out, as for ignoring."""
    ids = _unique(action_ids)
    A = invoice_actions
    with db.read() as conn:
        found = _fetch(conn, A, "action_id", ids, [A.c.action_id, A.c.status])
    _require_known("action", ids, found["action_id"])
    closed = found[~found["status"].isin(OPEN_ACTION)]
    if not closed.empty:
        listed = ", ".join(f"{a} ({s})" for a, s in zip(closed["action_id"], closed["status"], strict=True))
        raise RefusedError(f"cannot send action(s) that are not open: {listed} — nothing was changed")
    return [send_action_now(db, accounting, a, at, channels, settings, actor=actor) for a in ids]
