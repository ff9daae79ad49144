"""The words the dispatch database stores: statuses, reasons, channels and event names.

Each set of values is defined once, here; the schema's CHECK constraints
(:mod:`dispatch.storage.schema`) are built from these enums, so Python and the database
cannot drift, and code names a value (``ActionStatus.MANUAL``) instead of spelling a
string that a typo would silently turn into another state. They are ``StrEnum``: a member
*is* its string, so it goes into SQL, pandas and JSON unchanged and compares equal to the
bare value read back from the database. The order of the members is the order of the
values in the CHECK constraints (and in the migrations that froze them): keep it.
docs/data-dictionary.md explains each value.
"""

from __future__ import annotations

from enum import StrEnum


class SendingStatus(StrEnum):
    """``invoices.sending_status``: where an invoice stands (NULL only between extract and tag)."""

    TO_SEND = "to_send"
    SENT = "sent"
    NOT_REQUIRED = "not_required"
    CANCELLED = "cancelled"


class SentHow(StrEnum):
    """``invoices.sent_how``: how a sent invoice came to count as sent."""

    AUTOMATIC = "automatic"
    MANUAL = "manual"
    IGNORED = "ignored"
    MARKED_SENT = "marked_sent"


class ActionStatus(StrEnum):
    """``invoice_actions.status``: the state of an invoicing action."""

    SCHEDULED = "scheduled"
    SENDING = "sending"
    SENT = "sent"
    MANUAL = "manual"
    IGNORED = "ignored"
    CANCELLED = "cancelled"


class ManualReason(StrEnum):
    """``invoice_actions.manual_reason``: why an action is on the to-do list (status ``manual``)."""

    MANUAL_TEMPLATE = "manual_template"
    NO_CONTACT = "no_contact"
    INVALID_CONTACT = "invalid_contact"
    TEMPLATE_ERROR = "template_error"
    PROVIDER_REJECTED = "provider_rejected"
    PROVIDER_ERROR = "provider_error"
    DELIVERY_UNKNOWN = "delivery_unknown"
    BOUNCED = "bounced"
    MISSING_PDF = "missing_pdf"  # beyond the contract: the PDF file is not where pdf_path says
    PDF_OUTSIDE_ROOT = "pdf_outside_root"  # beyond the contract: pdf_path leads outside DISPATCH_PDF_ROOT
    INVALID_PDF = "invalid_pdf"  # beyond the contract: not a regular file, too large, or not a PDF


class ChannelName(StrEnum):
    """``invoice_templates.channel`` / ``invoice_actions.channel``: how an invoice goes out.

    (Named ``ChannelName`` because :class:`dispatch.channels.base.Channel` is the protocol
    of the delivery backends.)
    """

    EMAIL = "email"
    LETTER = "letter"
    SMS = "sms"


class AccountingStatus(StrEnum):
    """``invoices.accounting_status``: the accounting system's status of an invoice."""

    OPEN = "open"
    PAID = "paid"
    VOID = "void"


class PlanLevel(StrEnum):
    """``plans.level``: whether a plan's template is chosen per customer or per invoice."""

    CUSTOMER = "customer"
    INVOICE = "invoice"


class RunStatus(StrEnum):
    """``dispatch_runs.status``."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class EventName(StrEnum):
    """``action_events.event``: every event the append-only audit log holds (SPEC B9).

    A run's counts (``dispatch_runs.counts.run``) carry ``events.<name>`` for each of them,
    zeros included.
    """

    CREATED = "created"  # a run created the action (template resolved, scheduled_for computed)
    CLAIMED = "claimed"  # a run or a person took the action to send it
    SENT = "sent"  # a run handed it over
    SENT_MANUALLY = "sent_manually"  # a person's `todo send` handed it over
    MANUAL = "manual"  # it went to the to-do list (manual_reason on the action)
    CANCELLED = "cancelled"  # the invoice is void or deleted in the accounting system
    RETRY_LATER = "retry_later"  # a provider failed transiently; back to scheduled for a later run
    RELEASED = "released"  # a claim given back untouched (a fatal provider error stopped the batch)
    SETTLED_SENT = "settled_sent"  # a dead run's claim: the provider has the message
    CLAIM_RELEASED = "claim_released"  # a dead run's claim: never handed over, back to scheduled
    BOUNCED = "bounced"  # the provider reported the sent message did not reach the customer
    IGNORED = "ignored"  # a person ignored it (the invoice counts as sent)
    MARKED_SENT = "marked_sent"  # a person marked the invoice as sent
    TEMPLATE_REFRESHED = "template_refreshed"  # moved to the plan's current template version
    REQUEUED = "requeued"  # a template_error / missing_pdf whose cause is fixed: scheduled again


class StuckReason(StrEnum):
    """``stuck_invoices.reason`` for an invoice that has no open manual action; beside these
    the view gives the action's :class:`ManualReason`."""

    NO_PLAN = "no_plan"
    NO_TEMPLATE = "no_template"
    DEAD_RUN = "dead_run"


class DeliveryProvider(StrEnum):
    """``delivery_events.provider``: whose signed webhook reported the event (docs/webhooks.md)."""

    SENDGRID = "sendgrid"
    TWILIO = "twilio"
    PRINTAPI = "printapi"


class DeliveryState(StrEnum):
    """``delivery_events.state``: what a provider's delivery event means for the invoice, in the
    order a message goes through them (the latest state of a recipient is the furthest one)."""

    OTHER = "other"  # says nothing about the invoice reaching the customer (kept all the same)
    ACCEPTED = "accepted"  # the provider took it in (SendGrid processed, Twilio queued, letter created)
    DEFERRED = "deferred"  # the receiving side asked to try again later
    IN_TRANSIT = "in_transit"  # on its way (Twilio handed it to the carrier; a letter in the mail)
    DELIVERED = "delivered"  # it reached the recipient's mailbox, phone or letterbox
    OPENED = "opened"  # the recipient opened it (e-mail open tracking, a read receipt)
    CLICKED = "clicked"  # the recipient followed a link in it
    UNSUBSCRIBED = "unsubscribed"  # the recipient unsubscribed
    COMPLAINED = "complained"  # the recipient reported it as spam
    BOUNCED = "bounced"  # it did not reach the recipient: bounced, dropped, undelivered, failed, returned


def values(kind: type[StrEnum]) -> tuple[str, ...]:
    """The plain string values of ``kind``, in definition order (for CHECKs and messages)."""
    return tuple(member.value for member in kind)
