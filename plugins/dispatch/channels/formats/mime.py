"""Turn an :class:`OutgoingMessage` of channel 'email' into a complete RFC 5322 message.

Shared by the backends that hand over raw MIME (the embedded outbox, SMTP), so that what
the outbox records is exactly what a relay would receive. The Message-ID derives from the
action, so a message handed over twice by mistake is recognisable as one by any mail
system that de-duplicates on it. :func:`email_safe` is the gate every e-mail backend's
message passes (the SendGrid request too): no control character reaches an e-mail
(:mod:`dispatch.rules.control_chars`), and a line break in a header field is refused.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from email import policy
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

from dispatch.channels.base import OutgoingMessage
from dispatch.rules.control_chars import clean_body, clean_line, has_controls

#: Domain part of every Message-ID this system generates.
MESSAGE_ID_DOMAIN = "invoice-dispatch"

# Everything str.splitlines() breaks on: the email package folds headers with it, so any of
# these in a value could start a new header line (header injection), not only CR and LF.
_LINE_BREAKS = frozenset("\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029")

# RFC 5322 dot-atom-text, the only form an id-left may take without quoting.
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


def deliver_at_iso(deliver_at: dt.datetime) -> str:
    """ISO 8601 in UTC with a ``Z``, as recorded in ``X-Deliver-At`` and the SMS outbox."""
    if deliver_at.tzinfo is None:
        raise ValueError("deliver_at must be timezone-aware")
    return deliver_at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def parse_deliver_at(value: str) -> dt.datetime:
    """Inverse of :func:`deliver_at_iso` (aware, UTC)."""
    parsed = dt.datetime.fromisoformat(value.strip())
    if parsed.tzinfo is None:
        raise ValueError(f"deliver_at without time zone: {value!r}")
    return parsed.astimezone(dt.UTC)


def check_header_value(name: str, value: str) -> str:
    """Return ``value`` unchanged, or raise ``ValueError`` if it would break the header."""
    if any(ch in _LINE_BREAKS for ch in value):
        raise ValueError(f"header {name} contains a line break")
    return value


def _header_text(name: str, value: str) -> str:
    """A header field's text: a line break refused, any other control character dropped."""
    return clean_line(check_header_value(name, value))


def _check_address(name: str, addr_spec: str) -> str:
    check_header_value(name, addr_spec)
    if has_controls(addr_spec):
        raise ValueError(f"header {name}: invalid address {addr_spec!r} (control character)")
    return addr_spec


def email_safe(message: OutgoingMessage) -> OutgoingMessage:
    """``message`` as it may become an e-mail: subject, sender name and attachment names
    without control characters, bodies with only tab and newline among them.

    Raises ``ValueError`` for a line break in a header field or a control character in an
    address: those are refused, not repaired (the action becomes manual with the reason).
    """
    for name, address in (
        ("From", message.sender),
        ("Reply-To", message.reply_to),
        *(("To", recipient) for recipient in message.recipients),
    ):
        if address:
            _check_address(name, address)
    return dataclasses.replace(
        message,
        subject=None if message.subject is None else _header_text("Subject", message.subject),
        sender_name=None if message.sender_name is None else _header_text("From", message.sender_name),
        body_text=clean_body(message.body_text),
        body_html=None if message.body_html is None else clean_body(message.body_html),
        attachments=tuple(
            dataclasses.replace(a, filename=_header_text("attachment filename", a.filename))
            for a in message.attachments
        ),
    )


def _address(name: str, addr_spec: str, display_name: str | None = None) -> Address:
    """One mailbox; an internationalized domain is sent in its IDNA (ASCII) form, since the
    message is not SMTPUTF8 and a raw UTF-8 domain would be encoded into garbage."""
    _check_address(name, addr_spec)
    if display_name is not None:
        display_name = _header_text(name, display_name)
    local, at, domain = addr_spec.strip().rpartition("@")
    try:
        if at and not domain.isascii():
            domain = domain.encode("idna").decode("ascii")
        return Address(display_name=display_name or "", addr_spec=f"{local}{at}{domain}")
    # The parser raises defects (ValueError), HeaderParseError, or IndexError on an empty string.
    except (ValueError, HeaderParseError, IndexError) as exc:
        raise ValueError(f"header {name}: invalid address {addr_spec!r}") from exc


def message_id_for(action_id: str) -> str:
    """The deterministic Message-ID of an action's e-mail."""
    if not _DOT_ATOM.fullmatch(action_id):
        raise ValueError(f"action id {action_id!r} cannot form a Message-ID")
    return f"<{action_id}@{MESSAGE_ID_DOMAIN}>"


def build_email(message: OutgoingMessage, *, default_sender: str | None) -> EmailMessage:
    """The full MIME message: text (and HTML) alternatives, then the attachments.

    Raises ``ValueError`` for anything that cannot become a valid message: no sender, no
    recipient, an invalid address, a line break in a header value, a naive ``deliver_at``.
    Control characters are dropped first (:func:`email_safe`).
    """
    message = email_safe(message)
    sender = message.sender or default_sender
    if not sender:
        raise ValueError("no sender address: the organization sets none and DISPATCH_MAIL_FROM is unset")
    if not message.recipients:
        raise ValueError("no recipient")

    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = _address("From", sender, message.sender_name)
    msg["To"] = [_address("To", recipient) for recipient in message.recipients]
    if message.reply_to:
        msg["Reply-To"] = _address("Reply-To", message.reply_to)
    msg["Subject"] = check_header_value("Subject", message.subject or "")
    msg["Date"] = format_datetime(message.deliver_at.astimezone(dt.UTC))
    msg["Message-ID"] = message_id_for(message.action_id)
    msg["X-Deliver-At"] = deliver_at_iso(message.deliver_at)
    msg["X-Invoice-Dispatch-Action"] = check_header_value("X-Invoice-Dispatch-Action", message.action_id)
    msg["X-Invoice-Dispatch-Invoice"] = check_header_value("X-Invoice-Dispatch-Invoice", message.invoice_id)
    msg["X-Invoice-Dispatch-Org"] = check_header_value("X-Invoice-Dispatch-Org", message.org_id)

    msg.set_content(message.body_text)
    if message.body_html is not None:
        msg.add_alternative(message.body_html, subtype="html")
    for attachment in message.attachments:
        maintype, _, subtype = attachment.mime_type.partition("/")
        if not maintype or not subtype:
            raise ValueError(f"attachment {attachment.filename!r}: bad MIME type {attachment.mime_type!r}")
        msg.add_attachment(
            attachment.content,
            maintype=maintype,
            subtype=subtype,
            filename=check_header_value("attachment filename", attachment.filename),
        )
    return msg
