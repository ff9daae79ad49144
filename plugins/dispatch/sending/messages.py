"""Turn claimed actions into rendered messages, or into the manual outcome that stops them.

The checks run in the order a person would fix them: the invoice is still valid (B5), a
recipient exists and is valid (R11), the template renders (B7), the invoice PDF is there
(inside the invoice folder, and a PDF: :mod:`dispatch.sending.invoice_pdf`).
Rendering is per message by nature; everything else was prepared as whole columns.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
from babel import Locale, UnknownLocaleError
from babel.dates import format_date
from sqlalchemy import Connection, func, select

from dispatch.channels.base import Attachment, OutgoingMessage
from dispatch.rendering.context import build_context
from dispatch.rendering.engine import TemplateSpec, render_message
from dispatch.rendering.errors import TemplateError
from dispatch.rendering.filters import FALLBACK_LANGUAGE, resolve_locale
from dispatch.rendering.lookup import templates_dirs
from dispatch.sending.invoice_pdf import PdfRefusal, read_invoice_pdf
from dispatch.sending.outcomes import Outcome
from dispatch.storage.schema import (
    customers,
    invoice_actions,
    invoice_templates,
    invoices,
    organizations,
    users,
)
from dispatch.storage.source import one_per_invoice
from dispatch.vocabulary import AccountingStatus, ActionStatus, ChannelName, EventName, ManualReason

FALLBACK_SENDER = "invoices@localhost"


@dataclass(frozen=True)
class Prepared:
    messages: list[OutgoingMessage]
    outcomes: list[Outcome]  # actions that stop here (cancelled or manual)


def claimed_details(conn: Connection, token: str) -> pd.DataFrame:
    """Everything needed to render and address the actions claimed with ``token``."""
    a, i, c, o, u, t = invoice_actions, invoices, customers, organizations, users, invoice_templates
    stmt = (
        select(
            a.c.action_id,
            a.c.invoice_id,
            a.c.org_id,
            a.c.plan_id,
            a.c.template_id,
            a.c.channel,
            a.c.automatic,
            a.c.owner_user_id,
            a.c.attempts,
            a.c.status,
            i.c.customer_id,
            i.c.number,
            i.c.issue_date,
            i.c.due_date,
            i.c.currency,
            i.c.total_amount,
            i.c.accounting_status,
            i.c.pdf_path,
            c.c.name.label("customer_name"),
            c.c.language,
            o.c.name.label("org_name"),
            func.coalesce(o.c.country, o.c.holidays).label("org_country"),  # the phone numbers' region
            o.c.mail_from,
            o.c.reply_to,
            o.c.timezone,
            u.c.name.label("owner_name"),
            u.c.email.label("owner_email"),
            t.c.subject,
            t.c.body,
            t.c.template_file,
        )
        .join(i, i.c.invoice_id == a.c.invoice_id)
        .join(o, o.c.org_id == a.c.org_id)
        .join(t, t.c.template_id == a.c.template_id)
        .outerjoin(c, c.c.customer_id == i.c.customer_id)
        .outerjoin(u, u.c.user_id == a.c.owner_user_id)
        .where(a.c.claim_token == token, a.c.status == ActionStatus.SENDING)
        .order_by(a.c.action_id)
    )
    return pd.read_sql(stmt, conn)


_DEFAULT_FILE: dict[str, str] = {
    ChannelName.EMAIL: "email.txt.j2",
    ChannelName.SMS: "sms.txt.j2",
    ChannelName.LETTER: "letter.txt.j2",
}


def wording_locale(spec: TemplateSpec, language: str | None) -> Locale:
    """The language the message's words are in, so its date line speaks the same one.

    A default template falls back to English for a language without its own folder (a
    German customer without ``de/`` gets English words): the date line follows the words,
    not the customer. A template file under a language folder (``fr/…``) is in that
    language; an inline body is taken to be in the customer's language.
    """
    locale = resolve_locale(language)
    if spec.body and spec.body.strip():
        return locale
    if spec.template_file and spec.template_file.strip():
        folder, _, rest = spec.template_file.strip().partition("/")
        try:
            return Locale.parse(folder) if rest else locale
        except (ValueError, TypeError, UnknownLocaleError):  # 'email/…', 'layout/…': not a language folder
            return locale
    filename = _DEFAULT_FILE.get(spec.channel, "letter.txt.j2")
    for candidate in dict.fromkeys((str(locale), locale.language, FALLBACK_LANGUAGE)):
        if any((folder / candidate / filename).is_file() for folder in templates_dirs()):
            return resolve_locale(candidate)
    return resolve_locale(FALLBACK_LANGUAGE)


def template_fix_hint(error: str, plan_id: str, template_id: str) -> str:
    """What a person reads in the to-do list for a ``template_error``: the error, where it
    is, and how the action then goes (the plan's current version is used, dispatch.people.recovery)."""
    return (
        f"{error} — fix the template of plan {plan_id} (version {template_id}) in the configuration "
        "file and load it (dispatch config load); the next run then sends it, or send it now "
        "with dispatch todo send"
    )


def pdf_fix_hint(detail: str) -> str:
    """The PDF refusal's own advice, and what happens once the file is where it belongs."""
    return f"{detail}; once it is there, the next run sends it (or dispatch todo send)"


def _none(value: Any) -> Any:
    return None if value is None or (not isinstance(value, str) and pd.isna(value)) else value


def prepare_messages(
    details: pd.DataFrame,
    recheck: pd.DataFrame,
    recipients: pd.DataFrame,
    deliver_at: dict[str, dt.datetime],
    *,
    default_sender: str | None,
    as_of: dt.datetime,
    pdf_root: Path,
    pdf_max_bytes: int,
) -> Prepared:
    """Messages for the actions that can go, outcomes for those that cannot.

    The invoice PDF is read only through :func:`dispatch.sending.invoice_pdf.read_invoice_pdf`, from
    ``pdf_root`` and up to ``pdf_max_bytes``: whatever ``pdf_path`` says, no other file of the
    server can become an attachment or a letter's pages. The template's ``today`` is the
    as-of date in the organization's time zone: at the 05:00 UTC run, an organization in
    Los Angeles is still on the day before.
    """
    local_today: dict[str, dt.date] = {}  # per time zone, not per message
    outcomes: list[Outcome] = []
    messages: list[OutgoingMessage] = []
    recheck = one_per_invoice(recheck)  # a repeated invoice would make .get() return a Series
    # Plain dicts, read once per column: a pandas lookup per message and column cost more
    # than rendering the message's subject.
    now_status: dict[Any, Any] = {}
    now_pdf: dict[Any, Any] = {}
    if not recheck.empty:
        now_status = dict(zip(recheck["invoice_id"], recheck["status"], strict=True))
        now_pdf = dict(zip(recheck["invoice_id"], recheck["pdf_path"], strict=True))
    rec: dict[Any, tuple[Any, Any, Any]] = {
        aid: (problem, detail, to)
        for aid, problem, detail, to in zip(
            recipients["action_id"],
            recipients["problem"],
            recipients["problem_detail"],
            recipients["recipients"],
            strict=True,
        )
    }
    rows: Iterable[Any] = details.itertuples(index=False)  # a frame row: its columns are untyped
    for row in rows:
        aid, iid = row.action_id, row.invoice_id
        status = now_status.get(iid)
        if status is None or status == AccountingStatus.VOID:
            why = "deleted in the accounting system" if status is None else "void in the accounting system"
            outcomes.append(
                Outcome(
                    action_id=aid,
                    invoice_id=iid,
                    status=ActionStatus.CANCELLED,
                    event=EventName.CANCELLED,
                    detail=why,
                )
            )
            continue
        problem, problem_detail, to = rec[aid]
        if _none(problem) is not None:
            outcomes.append(
                Outcome.manual(
                    action_id=aid,
                    invoice_id=iid,
                    reason=ManualReason(problem),
                    detail=_none(problem_detail),
                )
            )
            continue
        context = build_context(
            customer={
                "id": row.customer_id,
                "name": _none(row.customer_name) or "",
                "language": row.language,
            },
            invoice={
                "id": iid,
                "number": row.number,
                "issue_date": row.issue_date,
                "due_date": _none(row.due_date),
                "currency": row.currency,
                "total_amount": row.total_amount,
                "status": status,
                "pdf_path": _none(now_pdf.get(iid, row.pdf_path)),
            },
            organization={"id": row.org_id, "name": row.org_name},
            owner={"id": row.owner_user_id, "name": _none(row.owner_name), "email": _none(row.owner_email)},
            today=local_today.get(row.timezone)
            or local_today.setdefault(row.timezone, as_of.astimezone(ZoneInfo(row.timezone)).date()),
        )
        spec = TemplateSpec(
            channel=row.channel,
            subject=_none(row.subject),
            body=_none(row.body),
            template_file=_none(row.template_file),
        )
        try:
            rendered = render_message(spec, context, _none(row.language))
        except TemplateError as exc:
            outcomes.append(
                Outcome.manual(
                    action_id=aid,
                    invoice_id=iid,
                    reason=ManualReason.TEMPLATE_ERROR,
                    detail=template_fix_hint(str(exc), row.plan_id, row.template_id),
                )
            )
            continue
        attachments: tuple[Attachment, ...] = ()
        pdf_path = _none(now_pdf.get(iid, row.pdf_path))
        if pdf_path:
            pdf = read_invoice_pdf(str(pdf_path), pdf_root, pdf_max_bytes)
            if isinstance(pdf, PdfRefusal):
                outcomes.append(
                    Outcome.manual(
                        action_id=aid,
                        invoice_id=iid,
                        reason=pdf.reason,
                        detail=pdf_fix_hint(pdf.detail),
                    )
                )
                continue
            attachments = (Attachment(f"invoice-{row.number}.pdf".replace("/", "-"), pdf.content),)
        messages.append(
            OutgoingMessage(
                action_id=aid,
                invoice_id=iid,
                org_id=row.org_id,
                channel=row.channel,
                recipients=tuple(to),
                deliver_at=deliver_at[aid],
                subject=rendered.subject,
                body_text=rendered.text,
                body_html=rendered.html,
                # From: the organization's address, else the deployment's, else the owner's.
                sender=_none(row.mail_from) or default_sender or _none(row.owner_email) or FALLBACK_SENDER,
                sender_name=row.org_name,
                reply_to=_none(row.reply_to),
                attachments=attachments,
                metadata={
                    "invoice_number": str(row.number),
                    "customer_id": str(row.customer_id),
                    # the letter's date is the local day it goes out, in the customer's language
                    "date_line": format_date(
                        deliver_at[aid].astimezone(ZoneInfo(row.timezone)).date(),
                        format="long",
                        locale=wording_locale(spec, _none(row.language)),
                    ),
                },
            )
        )
    return Prepared(messages, outcomes)
