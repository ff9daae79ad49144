"""Invoices (the list, with Mark selected as sent) and one invoice's page (statuses, action,
timeline, the message as it went out, More actions › Mark as sent). Marking is
:func:`dispatch.people.operations.mark_sent`, as ``dispatch invoices mark-sent`` calls it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

from dispatch.errors import DispatchError
from dispatch.people import operations
from dispatch.web import queries
from dispatch.web.deps import Context, User, WebContext, now, require_csrf
from dispatch.web.pages import render
from dispatch.web.routes.todo import status_of

router = APIRouter(tags=["pages"], include_in_schema=False)

STATUS_CHOICES = ("to_send", "not_due", "overdue", "paid", "void")
Text = Annotated[str | None, Form()]


def _list(
    request: Request,
    web: WebContext,
    *,
    status: str | None,
    q: str | None,
    after: str | None = None,
    before: str | None = None,
    last: bool = False,
    flash: str | None = None,
    flash_kind: str = "ok",
    status_code: int = 200,
) -> HTMLResponse:
    try:
        page = queries.invoice_page(web.engine, status=status, q=q, after=after, before=before, last=last)
    except operations.BadFilterError as exc:
        page = queries.InvoicePage([], False, False)
        flash, flash_kind, status_code = str(exc), "error", 400
    return render(
        request,
        "invoices.html",
        status_code=status_code,
        page="invoices",
        listing=page,
        status=status,
        q=q or "",
        statuses=STATUS_CHOICES,
        flash=flash,
        flash_kind=flash_kind,
    )


@router.get("/invoices", response_class=HTMLResponse)
def invoices(
    request: Request,
    web: Context,
    user: User,
    status: str | None = None,
    q: str | None = None,
    after: str | None = None,
    before: str | None = None,
    last: bool = False,
) -> HTMLResponse:
    return _list(request, web, status=status or None, q=q or None, after=after, before=before, last=last)


@router.post("/invoices/mark-sent", response_class=HTMLResponse, dependencies=[Depends(require_csrf)])
def mark_selected(
    request: Request,
    web: Context,
    user: User,
    selected: Annotated[list[str], Form()] = [],  # noqa: B006 - FastAPI copies the default
    status: Text = None,
    q: Text = None,
) -> HTMLResponse:
    """Mark selected as sent: nothing is sent; each open action is closed (R14)."""
    status, q = status or None, q or None
    if not selected:
        return _list(
            request, web, status=status, q=q, flash="Nothing selected: tick the invoices.", flash_kind="error"
        )
    try:
        result = operations.mark_sent(web.db, selected, now(), actor=user)
    except DispatchError as exc:
        return _list(
            request, web, status=status, q=q, flash=str(exc), flash_kind="error", status_code=status_of(exc)
        )
    return _list(request, web, status=status, q=q, flash=result.summary("marked as sent"))


def _invoice(
    request: Request,
    web: WebContext,
    invoice_id: str,
    flash: str | None = None,
    flash_kind: str = "ok",
    status_code: int = 200,
) -> HTMLResponse:
    detail = queries.invoice_detail(web.engine, invoice_id)
    if detail is None:
        raise HTTPException(status_code=404, detail=f"unknown invoice id: {invoice_id}")
    action = detail["action"]
    message = (
        queries.sent_message(web.settings.outbox_dir, action["channel"], action["action_id"])
        if action
        else None
    )
    return render(
        request,
        "invoice.html",
        status_code=status_code,
        page="invoices",
        flash=flash,
        flash_kind=flash_kind,
        message=message,
        **detail,
    )


@router.get("/invoices/{invoice_id}", response_class=HTMLResponse)
def invoice(request: Request, web: Context, user: User, invoice_id: str) -> HTMLResponse:
    return _invoice(request, web, invoice_id)


@router.post(
    "/invoices/{invoice_id}/mark-sent", response_class=HTMLResponse, dependencies=[Depends(require_csrf)]
)
def mark_one(request: Request, web: Context, user: User, invoice_id: str) -> HTMLResponse:
    try:
        result = operations.mark_sent(web.db, [invoice_id], now(), actor=user)
    except DispatchError as exc:
        return _invoice(request, web, invoice_id, str(exc), "error", status_of(exc))
    return _invoice(request, web, invoice_id, result.summary("marked as sent"))


# The e-mail as it went out is shown in a sandboxed iframe: no script, no form, no plugin,
# no request anywhere (the CSP's default-src 'none'); images only when inlined as data: URLs.
# A customer's name holding <script> stays inert in the staff's browser.
PREVIEW_CSP = "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _message(web: WebContext, invoice_id: str) -> queries.SentMessage:
    detail = queries.invoice_detail(web.engine, invoice_id)
    action = detail["action"] if detail else None
    message = (
        queries.sent_message(web.settings.outbox_dir, action["channel"], action["action_id"])
        if action
        else None
    )
    if message is None:
        raise HTTPException(status_code=404, detail=f"no message kept for invoice {invoice_id}")
    return message


@router.get("/invoices/{invoice_id}/message.html")
def message_html(web: Context, user: User, invoice_id: str) -> Response:
    message = _message(web, invoice_id)
    if message.html is None:
        raise HTTPException(status_code=404, detail=f"the message of invoice {invoice_id} has no HTML part")
    return Response(
        message.html,
        media_type="text/html; charset=utf-8",
        headers={"Content-Security-Policy": PREVIEW_CSP, "X-Content-Type-Options": "nosniff"},
    )


@router.get("/invoices/{invoice_id}/message.pdf")
def message_pdf(web: Context, user: User, invoice_id: str) -> Response:
    message = _message(web, invoice_id)
    if message.pdf is None:
        raise HTTPException(status_code=404, detail=f"the message of invoice {invoice_id} carries no PDF")
    name = (
        "".join(ch for ch in (message.pdf_name or "invoice.pdf") if ch.isalnum() or ch in "._-")
        or "invoice.pdf"
    )
    return Response(
        message.pdf,
        media_type="application/pdf",
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "X-Content-Type-Options": "nosniff",
        },
    )
