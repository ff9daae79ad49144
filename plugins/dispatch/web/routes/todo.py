"""To do › Invoicing (CONTRACT §8): the open manual actions, with Send, Ignore and Ignore
selected. Every operation is :mod:`dispatch.people.operations`, as ``dispatch todo`` calls it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse

from dispatch.errors import DispatchError, RefusedError, UnknownIdError
from dispatch.people import operations
from dispatch.people.listing import reason_in_words
from dispatch.storage.schema import CHANNELS, MANUAL_REASONS, organizations, users
from dispatch.vocabulary import ActionStatus
from dispatch.web.deps import Context, User, WebContext, now, require_csrf
from dispatch.web.pages import render

router = APIRouter(tags=["pages"], include_in_schema=False)


def _blank(value: str | None) -> str | None:
    return value or None


def todo_rows(
    web: WebContext,
    user: str,
    owner: str | None,
    reason: str | None,
    channel: str | None,
    org: str | None,
) -> list[dict]:
    """The to-do rows for ``user`` (their own first), each with its reason in words."""
    df = operations.todo_list(web.engine, owner, reason=reason, channel=channel, org=org, first=user)
    rows = df.astype(object).where(df.notna(), None).to_dict("records")  # NaN: nothing to show
    for row in rows:
        row["reason_words"] = reason_in_words(
            row["manual_reason"], row["channel"], row["customer_name"], row["plan_name"], row["detail"]
        )
    return rows


def _choices(web: WebContext) -> dict[str, list[str]]:
    from sqlalchemy import select

    with web.engine.connect() as conn:
        people = conn.execute(select(users.c.user_id).order_by(users.c.user_id)).scalars().all()
        orgs = conn.execute(select(organizations.c.org_id).order_by(organizations.c.org_id)).scalars().all()
    return {
        "owners": list(people),
        "orgs": list(orgs),
        "reasons": list(MANUAL_REASONS),
        "channels": list(CHANNELS),
    }


def page(
    request: Request,
    web: WebContext,
    user: str,
    filters: dict[str, str | None],
    flash: str | None = None,
    flash_kind: str = "ok",
    status_code: int = 200,
) -> HTMLResponse:
    try:
        rows = todo_rows(web, user, **filters)
    except operations.BadFilterError as exc:
        rows, flash, flash_kind, status_code = [], str(exc), "error", 400
    return render(
        request,
        "todo.html",
        status_code=status_code,
        page="todo",
        rows=rows,
        filters=filters,
        flash=flash,
        flash_kind=flash_kind,
        **_choices(web),
    )


@router.get("/todo", response_class=HTMLResponse)
def todo(
    request: Request,
    web: Context,
    user: User,
    owner: str | None = None,
    reason: str | None = None,
    channel: str | None = None,
    org: str | None = None,
) -> HTMLResponse:
    filters = {
        "owner": _blank(owner),
        "reason": _blank(reason),
        "channel": _blank(channel),
        "org": _blank(org),
    }
    return page(request, web, user, filters)


def status_of(exc: DispatchError) -> int:
    return 404 if isinstance(exc, UnknownIdError) else 409 if isinstance(exc, RefusedError) else 400


FilterForm = Annotated[str | None, Form()]


def _filters(owner: str | None, reason: str | None, channel: str | None, org: str | None) -> dict:
    return {"owner": _blank(owner), "reason": _blank(reason), "channel": _blank(channel), "org": _blank(org)}


@router.post("/todo/ignore", response_class=HTMLResponse, dependencies=[Depends(require_csrf)])
def ignore_selected(
    request: Request,
    web: Context,
    user: User,
    selected: Annotated[list[str], Form()] = [],  # noqa: B006 - FastAPI copies the default
    only: FilterForm = None,
    owner: FilterForm = None,
    reason: FilterForm = None,
    channel: FilterForm = None,
    org: FilterForm = None,
) -> HTMLResponse:
    """Ignore selected, or one row's Ignore (``only``): each invoice then counts as sent (R13)."""
    filters = _filters(owner, reason, channel, org)
    ids = [only] if only else selected
    if not ids:
        return page(request, web, user, filters, "Nothing selected: tick the rows to ignore.", "error", 400)
    try:
        result = operations.ignore_actions(web.db, ids, now(), actor=user)
    except DispatchError as exc:
        return page(request, web, user, filters, str(exc), "error", status_of(exc))
    return page(request, web, user, filters, result.summary("ignored"))


@router.post("/todo/send", response_class=HTMLResponse, dependencies=[Depends(require_csrf)])
def send(
    request: Request,
    web: Context,
    user: User,
    action_id: Annotated[str, Form()],
    owner: FilterForm = None,
    reason: FilterForm = None,
    channel: FilterForm = None,
    org: FilterForm = None,
) -> HTMLResponse:
    """Send one manual action now through its channel (R12), as ``dispatch todo send``."""
    filters = _filters(owner, reason, channel, org)
    try:
        result = send_now(web, action_id, user)
    except DispatchError as exc:
        return page(request, web, user, filters, str(exc), "error", status_of(exc))
    if result["status"] == ActionStatus.SENT:
        return page(request, web, user, filters, f"1 sent: {action_id} to {result['recipient']}")
    return page(request, web, user, filters, sent_words(action_id, result), "error", 409)


def send_now(web: WebContext, action_id: str, user: str) -> dict:
    from dispatch.channels.factory import open_channels

    with open_channels(web.settings) as channels:
        return operations.send_action_now(
            web.db, web.accounting_engine, action_id, now(), channels, web.settings, actor=user
        )


def sent_words(action_id: str, result: dict) -> str:
    """Why a send did not go, as the CLI says it."""
    if result["status"] == ActionStatus.CANCELLED:
        return f"action {action_id} not sent and cancelled: {result['detail']}"
    return (
        f"action {action_id} not sent: {result['manual_reason']} ({result['detail']}); "
        "it stays in the to-do list"
    )
