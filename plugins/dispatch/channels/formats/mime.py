"""Turn an :class:`OutgoingMessage` of channel 'email' into a complete RFC 5322 message.

Shared by the backends that hand over raw MIME (the embedded outbox, SMTP), so that what
the outbox records is exactly what a relay would receive. The Message-ID derives from the
action, so a message handed over twice by mistake is recognisable as one by any mail
system that de-duplicates on it. :func:`email_safe` is the gate every e-mail backend's
message passes (the SendGrid request too): no control character reaches an e-mail
(:mod:`dispatch.rules.control_chars`), and a line break in a header field is refused.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import random
import re
from email import policy, quoprimime
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


# --- the same bytes, written directly -----------------------------------------------------------
#
# ``build_email(...).as_bytes()`` parses every header value it is given through
# ``email.headerregistry`` and parses and refolds it again when it writes the message: about
# two thirds of an outbox e-mail's cost. For a message whose every header is plain ASCII
# that no parser could read otherwise (no encoded word, no quoting beyond a display name's,
# nothing to fold), the parsing changes nothing, so :func:`email_bytes` writes those bytes
# itself. Anything else takes the standard library's path: the plain forms below are a
# strict subset of what it accepts, so nothing it refuses is written, and
# ``tests/test_mime_bytes.py`` checks that both give the same bytes.

_MAX_LINE: int = policy.SMTP.max_line_length or 78  # 78 in the SMTP policy
_CRLF = "\r\n"
_BOUNDARY_DIGITS = 19  # as email.generator: len(repr(sys.maxsize - 1)) on a 64-bit build
_BOUNDARY_TOKENS = 10**_BOUNDARY_DIGITS
_NL = re.compile(r"\r\n|\r|\n")  # email.generator.NLCRE: how the generator breaks payload lines
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
#: dot-atom local part @ a host name: parsed by the standard library exactly as written
_PLAIN_ADDRESS = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*@{_LABEL}(?:\.{_LABEL})*")
#: printable ASCII words, single spaces: an unstructured header the parser keeps as is
_PLAIN_TEXT = re.compile(r"[!-~]+(?: [!-~]+)*")
#: the same without the two characters a quoted display name would have to escape
_PLAIN_PHRASE = re.compile(r"[!#-\[\]-~]+(?: [!#-\[\]-~]+)*")
_PLAIN_FILENAME = re.compile(r"[A-Za-z0-9_.-]+")
_PLAIN_MIME_TYPE = re.compile(r"[a-z0-9][a-z0-9.+-]*/[a-z0-9][a-z0-9.+-]*")
#: email.headerregistry.Address quotes a display name holding any of these
_SPECIALS = frozenset(r"()<>@,:;.\"[]")


def email_bytes(message: OutgoingMessage, *, default_sender: str | None) -> bytes:
    """``build_email(message, default_sender=...).as_bytes()``: the same bytes (the random
    MIME boundaries aside), the same checks, the same errors, at a fraction of the cost
    for a message whose headers are plain (above); any other goes through :func:`build_email`."""
    safe = email_safe(message)
    plain = _plain_email(safe, default_sender)
    if plain is not None:
        return plain
    return build_email(safe, default_sender=default_sender).as_bytes()


def _header_line(name: str, value: str) -> str | None:
    """``Name: value`` CRLF when the standard library would write exactly that, else None."""
    line = f"{name}: {value}"
    if len(line) > _MAX_LINE or "=?" in value or not _PLAIN_TEXT.fullmatch(value):
        return None
    return line + _CRLF


def _mailbox(addr_spec: str, display_name: str | None = None) -> str | None:
    """What ``str(Address(display_name, addr_spec=...))`` gives for a plain mailbox, else None."""
    if "=?" in addr_spec or not _PLAIN_ADDRESS.fullmatch(addr_spec):
        return None
    if not display_name:
        return addr_spec
    if "=?" in display_name or not _PLAIN_PHRASE.fullmatch(display_name):
        return None
    if not _SPECIALS.isdisjoint(display_name):
        display_name = f'"{display_name}"'  # no quote or backslash inside: nothing to escape
    return f"{display_name} <{addr_spec}>"


def _plain_headers(message: OutgoingMessage, default_sender: str | None) -> list[str] | None:
    """The header lines :func:`build_email` sets, in its order, or None if any is not plain
    (or the message is one :func:`build_email` refuses: it then says why)."""
    sender = message.sender or default_sender
    if not sender or not message.recipients or message.deliver_at.tzinfo is None:
        return None
    if not message.subject or not _DOT_ATOM.fullmatch(message.action_id):
        return None
    from_ = _mailbox(sender, message.sender_name)
    to = [_mailbox(recipient) for recipient in message.recipients]
    reply_to = _mailbox(message.reply_to) if message.reply_to else ""
    if from_ is None or reply_to is None or any(t is None for t in to):
        return None
    fields = [("From", from_), ("To", ", ".join(t for t in to if t))]
    if reply_to:
        fields.append(("Reply-To", reply_to))
    fields += [
        ("Subject", message.subject),
        ("Date", format_datetime(message.deliver_at.astimezone(dt.UTC))),
        ("Message-ID", f"<{message.action_id}@{MESSAGE_ID_DOMAIN}>"),
        ("X-Deliver-At", deliver_at_iso(message.deliver_at)),
        ("X-Invoice-Dispatch-Action", message.action_id),
        ("X-Invoice-Dispatch-Invoice", message.invoice_id),
        ("X-Invoice-Dispatch-Org", message.org_id),
        ("MIME-Version", "1.0"),
    ]
    lines = [_header_line(name, value) for name, value in fields]
    return None if any(line is None for line in lines) else [line for line in lines if line]


def _encoded_text(text: str) -> tuple[str, bytes]:
    """A text part's Content-Transfer-Encoding and body as written, chosen as
    ``email.contentmanager.set_text_content`` chooses them (utf-8, the SMTP policy)."""
    lines = text.encode("utf-8").splitlines()
    if max((len(line) for line in lines), default=0) <= _MAX_LINE:
        body = b"\r\n".join(lines) + b"\r\n"
        return ("7bit" if body.isascii() else "8bit"), body
    sniff = b"\r\n".join(lines[:10]) + b"\r\n"
    sniff_qp = quoprimime.body_encode(sniff.decode("latin-1"), _MAX_LINE)
    if len(sniff_qp) > len(binascii.b2a_base64(sniff)):
        return "base64", base64.encodebytes(b"\r\n".join(lines) + b"\r\n").replace(b"\n", b"\r\n")
    if len(lines) <= 10:
        payload = sniff_qp
    else:
        payload = quoprimime.body_encode((b"\n".join(lines) + b"\n").decode("latin-1"), _MAX_LINE)
    return "quoted-printable", _CRLF.join(_NL.split(payload)).encode("ascii")


def _text_part(text: str, subtype: str, *, mime_version: bool) -> list[bytes]:
    cte, body = _encoded_text(text)
    head = f'Content-Type: text/{subtype}; charset="utf-8"{_CRLF}Content-Transfer-Encoding: {cte}{_CRLF}'
    if mime_version:
        head += f"MIME-Version: 1.0{_CRLF}"
    return [head.encode("ascii"), _CRLF.encode("ascii"), body]


def _new_boundary(parts: list[bytes]) -> str:
    """A boundary in the standard library's form, found in none of the parts it separates."""
    while True:
        boundary = f"==============={random.randrange(_BOUNDARY_TOKENS):0{_BOUNDARY_DIGITS}d}=="
        marker = b"--" + boundary.encode("ascii")
        if not any(marker in part for part in parts):
            return boundary


def _multipart(subtype: str, parts: list[list[bytes]]) -> tuple[str, list[bytes]]:
    """The Content-Type line and the body of a multipart of ``parts``, as the generator writes them."""
    boundary = _new_boundary([chunk for part in parts for chunk in part])
    content_type = f'Content-Type: multipart/{subtype}; boundary="{boundary}"'
    if len(content_type) > _MAX_LINE:  # folded where the generator folds it
        content_type = f'Content-Type: multipart/{subtype};{_CRLF} boundary="{boundary}"'
    body: list[bytes] = []
    for i, part in enumerate(parts):
        body.append(f"{_CRLF if i else ''}--{boundary}{_CRLF}".encode("ascii"))
        body.extend(part)
    body.append(f"{_CRLF}--{boundary}--{_CRLF}".encode("ascii"))
    return content_type + _CRLF, body


def _plain_email(message: OutgoingMessage, default_sender: str | None) -> bytes | None:
    """The bytes of a message (already :func:`email_safe`) whose every header is plain, else None."""
    headers = _plain_headers(message, default_sender)
    if headers is None:
        return None
    attachments: list[list[bytes]] = []
    for attachment in message.attachments:
        if not _PLAIN_MIME_TYPE.fullmatch(attachment.mime_type):
            return None
        disposition = _header_line("Content-Disposition", f'attachment; filename="{attachment.filename}"')
        if disposition is None or not _PLAIN_FILENAME.fullmatch(attachment.filename):
            return None
        head = (
            f"Content-Type: {attachment.mime_type}{_CRLF}Content-Transfer-Encoding: base64{_CRLF}"
            f"{disposition}MIME-Version: 1.0{_CRLF}{_CRLF}"
        )
        attachments.append(
            [head.encode("ascii"), base64.encodebytes(attachment.content).replace(b"\n", b"\r\n")]
        )
    text = _text_part(message.body_text, "plain", mime_version=False)
    if message.body_html is None:
        if not attachments:  # a single part: its headers are the message's, MIME-Version first
            mime_version = headers.pop()
            text[0] += mime_version.encode("ascii")
            return "".join(headers).encode("ascii") + b"".join(text)
        content = text
    else:
        html = _text_part(message.body_html, "html", mime_version=True)
        content_type, body = _multipart("alternative", [text, html])
        if not attachments:
            return "".join([*headers, content_type, _CRLF]).encode("ascii") + b"".join(body)
        content = [content_type.encode("ascii"), _CRLF.encode("ascii"), *body]
    content_type, body = _multipart("mixed", [content, *attachments])
    return "".join([*headers, content_type, _CRLF]).encode("ascii") + b"".join(body)
