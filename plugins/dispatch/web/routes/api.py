"""The JSON API under ``/dispatch/api`` (CONTRACT §8), for tools that drive the to-do list:
the same listings and operations as the pages and the CLI, one or many ids per call.

Refusals keep the CLI's rules and words: an unknown id answers 404, an operation that is
not allowed 409, a bad filter 400 — each with ``detail`` saying why, and nothing changed.
A browser session needs the ``X-CSRF-Token`` header (``GET /api/session`` gives it); a tool
sending its credential in the Authorization header does not.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from dispatch.errors import DispatchError
from dispatch.people import operations
from dispatch.people.listing import jsonable
from dispatch.runtime.run_history import list_runs
from dispatch.vocabulary import ActionStatus
from dispatch.web import queries
from dispatch.web.deps import Context, User, csrf_for, now, require_csrf
from dispatch.web.routes.todo import send_now, sent_words, status_of, todo_rows


class _RefusingRoute(APIRoute):
    """Every API route answers a :class:`DispatchError` as its refusal (404 unknown id, 409 not
    allowed, 400 bad input), in one place rather than a ``try`` in each route."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except DispatchError as exc:
                raise HTTPException(status_code=status_of(exc), detail=str(exc)) from None

        return answer


router = APIRouter(prefix="/api", tags=["api"], route_class=_RefusingRoute)
changes = [Depends(require_csrf)]

Ids = Field(min_length=1, max_length=10_000)


class ActionIds(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action_ids: list[str] = Ids


class InvoiceIds(BaseModel):
    model_config = ConfigDict(extra="forbid")
    invoice_ids: list[str] = Ids


class Outcome(BaseModel):
    """What an operation changed: ``changed`` ids, ``unchanged`` ids (already done)."""

    changed: list[str]
    unchanged: list[str]
    message: str


class SendOutcome(BaseModel):
    action_id: str
    status: str
    sent: bool
    message: str
    recipient: str | None = None
    provider_message_id: str | None = None
    template_id: str | None = None


class Session(BaseModel):
    user: str
    csrf_token: str


def _records(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: jsonable(v) for k, v in row.items()} for row in rows]


@router.get("/session", response_model=Session)
def session(request: Request, user: User) -> Session:
    """Who is logged in, and the CSRF token a browser session sends with its changes."""
    return Session(user=user, csrf_token=csrf_for(request))


@router.get("/todo")
def todo(
    web: Context,
    user: User,
    owner: str | None = None,
    reason: str | None = None,
    channel: str | None = None,
    org: str | None = None,
) -> list[dict[str, Any]]:
    """The open manual actions (view ``todo_invoicing``), the caller's own first, each with
    its reason in words (``reason_words``)."""
    return _records(todo_rows(web, user, owner, reason, channel, org))


@router.post("/todo/ignore", response_model=Outcome, dependencies=changes)
def ignore(body: ActionIds, web: Context, user: User) -> Outcome:
    """Ignore actions (each invoice then counts as sent); all or nothing."""
    result = operations.ignore_actions(web.db, body.action_ids, now(), actor=user)
    return Outcome(changed=result.changed, unchanged=result.unchanged, message=result.summary("ignored"))


def _send_outcome(result: dict) -> SendOutcome:
    sent = result["status"] == ActionStatus.SENT
    return SendOutcome(
        action_id=result["action_id"],
        status=result["status"],
        sent=sent,
        message=f"sent {result['action_id']} to {result['recipient']}"
        if sent
        else sent_words(result["action_id"], result),
        recipient=result.get("recipient"),
        provider_message_id=result.get("provider_message_id"),
        template_id=result.get("template_id"),
    )


@router.post("/todo/send", response_model=list[SendOutcome], dependencies=changes)
def send(body: ActionIds, web: Context, user: User) -> list[SendOutcome]:
    """Send manual actions now through their channel; every id is checked before any goes.
    An action that still cannot go (its cause not fixed) stays manual: ``sent`` is false."""
    from dispatch.channels.factory import open_channels

    with open_channels(web.settings) as channels:
        results = operations.send_actions_now(
            web.db, web.accounting_engine, body.action_ids, now(), channels, web.settings, actor=user
        )
    return [_send_outcome(r) for r in results]


@router.post("/todo/{action_id}/send", response_model=SendOutcome, dependencies=changes)
def send_one(action_id: str, web: Context, user: User) -> SendOutcome:
    return _send_outcome(send_now(web, action_id, user))


@router.post("/invoices/mark-sent", response_model=Outcome, dependencies=changes)
def mark_sent(body: InvoiceIds, web: Context, user: User) -> Outcome:
    """Mark invoices as sent without sending anything; closes their open action."""
    result = operations.mark_sent(web.db, body.invoice_ids, now(), actor=user)
    return Outcome(
        changed=result.changed, unchanged=result.unchanged, message=result.summary("marked as sent")
    )


@router.get("/invoices")
def invoices(
    web: Context,
    user: User,
    status: str | None = None,
    q: str | None = None,
    after: str | None = None,
    before: str | None = None,
    last: bool = False,
) -> dict[str, Any]:
    """One page of invoices by key (``after``/``before`` an invoice id, or the ``last``)."""
    page = queries.invoice_page(web.engine, status=status, q=q, after=after, before=before, last=last)
    return {"invoices": _records(page.rows), "has_next": page.has_next, "has_previous": page.has_previous}


@router.get("/invoices/{invoice_id}")
def invoice(invoice_id: str, web: Context, user: User) -> dict[str, Any]:
    """One invoice: its statuses, its action, its events oldest first, and each recipient's
    latest delivery state (the providers' webhooks)."""
    detail = queries.invoice_detail(web.engine, invoice_id)
    if detail is None:
        raise HTTPException(status_code=404, detail=f"unknown invoice id: {invoice_id}")
    return {
        "invoice": _records([detail["invoice"]])[0],
        "action": _records([detail["action"]])[0] if detail["action"] else None,
        "events": _records(detail["events"]),
        # each recipient's latest delivery state, and the states it went through on its way
        "deliveries": [{**d, "steps": _records(d["steps"])} for d in _records(detail["deliveries"])],
    }


@router.get("/runs")
def runs(web: Context, user: User, limit: int = 20) -> list[dict[str, Any]]:
    """The recorded runs, newest first, with their counts (as ``dispatch runs --json``)."""
    operations.require_schema(web.engine)
    return _records(
        [
            {str(k): v for k, v in r.items()}
            for r in list_runs(web.engine, max(1, min(limit, 1000))).to_dict("records")
        ]
    )


# Each page's JSON twin at the same URL with ``.json`` (as Datasette does), so the page and
# the API cannot disagree: the same functions as ``/api/...``.
twins = APIRouter(tags=["api"])
twins.add_api_route("/todo.json", todo, methods=["GET"], summary="The to-do page as JSON")
twins.add_api_route("/invoices.json", invoices, methods=["GET"], summary="The invoices page as JSON")
twins.add_api_route("/invoices/{invoice_id}.json", invoice, methods=["GET"], summary="An invoice as JSON")
twins.add_api_route("/runs.json", runs, methods=["GET"], summary="The runs page as JSON")
