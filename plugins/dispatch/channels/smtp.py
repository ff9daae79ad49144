"""E-mail through a company's own SMTP relay (CONTRACT §1 ``DISPATCH_EMAIL_BACKEND=smtp``).

The message is exactly what the outbox would record (``dispatch.channels.formats.mime.build_email``), so
its Message-ID — derived from the action — is the provider message id. A relay cannot hold a
message for later (``max_schedule_ahead`` is None): the due rule hands this backend only
actions whose local day has come, and they go out at once.

A few connections are opened per batch and reused, each carrying its messages one after the
other (SMTP has one transaction at a time per connection). The transaction is driven command
by command, not through ``smtplib.sendmail``, because exactly-once depends on knowing where a
failure happened (SPEC B1, B3):

=====================================================  ==========================================
connection refused, timeout before DATA, 4xx reply     :class:`TransientError` (retried)
5xx to MAIL / RCPT (every recipient) / DATA            :class:`PermanentError` (``provider_rejected``)
5xx to some recipients only                            sent to the others; the refusals are noted
authentication refused (535), no STARTTLS, TLS error,  :class:`FatalChannelError` (stop the batch,
host name does not resolve, 5xx greeting               touch no action)
line lost after the message was sent, before the       :class:`DeliveryUnknownError` (never
relay's answer to it                                   retried: the relay may have queued it)
=====================================================  ==========================================
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from email.utils import format_datetime
from typing import Any

from dispatch.channels.base import (
    ChannelError,
    DeliveryUnknownError,
    FatalChannelError,
    OutgoingMessage,
    PermanentError,
    SendResult,
    TransientError,
)
from dispatch.channels.formats.mime import build_email, message_id_for
from dispatch.channels.retry import ConcurrentSender, RetryPolicy
from dispatch.config.settings import Settings, reveal
from dispatch.errors import DispatchError
from dispatch.vocabulary import ChannelName

log = logging.getLogger(__name__)

PROVIDER = "smtp"
#: The port of SMTP over implicit TLS (RFC 8314): the connection is TLS from the first byte.
IMPLICIT_TLS_PORT = 465
_CRLF = b"\r\n"


def real_clock() -> dt.datetime:
    """The hand-over instant written in the Date header: the real clock, unless a test gives its own."""
    return dt.datetime.now(dt.UTC)


def _reply_text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return " ".join(text.split())


def refusal(stage: str, code: int, reply: bytes | str) -> ChannelError:
    """A relay's negative reply to one message: 4xx try again later, 5xx never."""
    text = f"SMTP {stage} refused: {code} {_reply_text(reply)}"
    return TransientError(text) if 400 <= code < 500 else PermanentError(text)


def dot_stuffed(data: bytes) -> bytes:
    """The DATA payload: leading dots doubled, CRLF-terminated, then the lone dot (RFC 5321)."""
    payload = re.sub(rb"(?m)^\.", b"..", data)
    if not payload.endswith(_CRLF):
        payload += _CRLF
    return payload + b"." + _CRLF


def _close_quietly(conn: smtplib.SMTP) -> None:
    with contextlib.suppress(Exception):  # closing a broken connection may fail; nothing to do
        conn.close()


class SmtpChannel:
    """The e-mail channel through an SMTP relay; implements :class:`dispatch.channels.base.Channel`."""

    provider = PROVIDER
    channel = ChannelName.EMAIL

    def __init__(
        self,
        host: str,
        port: int = 587,
        *,
        user: str | None = None,
        password: str | None = None,
        starttls: bool = True,
        implicit_tls: bool | None = None,
        timeout: float = 60.0,
        max_connections: int = 4,
        default_sender: str | None = None,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], dt.datetime] = real_clock,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.user = user
        self._password = password
        self.implicit_tls = port == IMPLICIT_TLS_PORT if implicit_tls is None else implicit_tls
        self.starttls = starttls and not self.implicit_tls
        self.timeout = timeout
        self.max_connections = max(1, max_connections)
        self.default_sender = default_sender
        self.policy = policy or RetryPolicy()
        self._clock = clock
        self._ssl_context = ssl_context
        self._idle: list[smtplib.SMTP] = []
        self._lock = threading.Lock()
        self._sender = ConcurrentSender(
            self.send_one, max_in_flight=self.max_connections, policy=self.policy, sleep=sleep
        )

    def __repr__(self) -> str:
        return f"SmtpChannel(host={self.host!r}, port={self.port}, user={self.user!r})"

    # --- Channel protocol -------------------------------------------------------------

    def max_schedule_ahead(self) -> dt.timedelta | None:
        """A relay delivers at once: never ahead of the scheduled local day."""
        return None

    def send_many(self, messages: Sequence[OutgoingMessage]) -> list[SendResult | ChannelError]:
        """Every message over at most ``max_connections`` reused connections; raises
        :class:`FatalChannelError` (with the results so far) when the batch must stop."""
        try:
            return self._sender.send_many(messages)
        finally:
            self._quit_idle()  # a relay drops idle sessions anyway: none is kept between batches

    def was_handed_over(self, action_id: str) -> SendResult | bool | None:
        """A relay cannot be asked whether it queued a message: unknown."""
        return None

    # --- one message --------------------------------------------------------------------

    def send_one(self, message: OutgoingMessage) -> SendResult:
        """One SMTP transaction on a pooled connection (no retry); raises the typed errors."""
        sender, recipients, data = self._envelope(message)
        conn = self._acquire()
        reusable = False
        try:
            refused = self._transaction(conn, sender, recipients, data)
            reusable = True
        except (PermanentError, TransientError) as exc:
            reusable = getattr(exc, "session_usable", False) and self._reset(conn)
            raise
        finally:
            self._release(conn, reusable)
        note = None
        if refused:
            note = "the relay refused some recipients, sent to the others: " + "; ".join(
                f"{address} {code} {_reply_text(reply)}" for address, (code, reply) in refused.items()
            )
            log.warning("action %s: %s", message.action_id, note)
        return SendResult(
            action_id=message.action_id,
            provider=self.provider,
            provider_message_id=message_id_for(message.action_id),
            deliver_at=message.deliver_at.astimezone(dt.UTC),
            note=note,
        )

    def _envelope(self, message: OutgoingMessage) -> tuple[str, list[str], bytes]:
        """Envelope sender, recipients (as the headers carry them: IDNA domains) and the bytes."""
        if message.channel != ChannelName.EMAIL:
            raise PermanentError(f"SMTP sends e-mail, not {message.channel}")
        try:
            mime = build_email(message, default_sender=self.default_sender)
            # The relay sends it now, whatever the scheduled time of day: say so.
            del mime["Date"]
            mime["Date"] = format_datetime(self._clock())
            sender = mime["From"].addresses[0].addr_spec
            recipients: list[str] = []
            for address in mime["To"].addresses:
                if address.addr_spec.lower() not in {r.lower() for r in recipients}:
                    recipients.append(address.addr_spec)
            data = mime.as_bytes()
            for value in (sender, *recipients):
                value.encode("ascii")  # no SMTPUTF8: a non-ASCII mailbox cannot be sent here
        except (ValueError, UnicodeError) as exc:
            raise PermanentError(f"the e-mail could not be built: {exc}") from exc
        return sender, recipients, data

    def _transaction(
        self, conn: smtplib.SMTP, sender: str, recipients: list[str], data: bytes
    ) -> dict[str, tuple[int, bytes]]:
        """MAIL, RCPT…, DATA; returns the recipients the relay refused while taking the message."""
        stage = "MAIL FROM"
        try:
            code, reply = conn.mail(sender)
            if code != 250:
                raise _usable(refusal(stage, code, reply))
            stage = "RCPT TO"
            refused: dict[str, tuple[int, bytes]] = {}
            for address in recipients:
                code, reply = conn.rcpt(address)
                if code not in (250, 251):
                    refused[address] = (code, reply)
            if len(refused) == len(recipients):
                every = "; ".join(f"{a} {c} {_reply_text(r)}" for a, (c, r) in refused.items())
                temporary = any(400 <= c < 500 for c, _ in refused.values())
                error: ChannelError = (
                    TransientError(f"SMTP RCPT TO refused: {every}")
                    if temporary
                    else PermanentError(f"SMTP RCPT TO refused every recipient: {every}")
                )
                raise _usable(error)
            stage = "DATA"
            code, reply = conn.docmd("data")
            if code != 354:
                raise _usable(refusal(stage, code, reply))
            stage = "message"
            conn.send(dot_stuffed(data))
            stage = "end of data"  # the relay has the whole message; its answer decides
            code, reply = conn.getreply()
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            if stage == "end of data":
                raise DeliveryUnknownError(
                    f"the SMTP relay took the message but the line failed before its answer: {exc}"
                ) from exc
            # A kept connection the relay closed meanwhile fails at once: reconnect, no wait.
            raise TransientError(
                f"SMTP connection lost at {stage}: {exc}", retry_after=0.0 if stage == "MAIL FROM" else None
            ) from exc
        if code != 250:
            raise _usable(refusal("message", code, reply))
        return refused

    # --- connections --------------------------------------------------------------------

    def _acquire(self) -> smtplib.SMTP:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._open()

    def _release(self, conn: smtplib.SMTP, reusable: bool) -> None:
        if reusable:
            with self._lock:
                self._idle.append(conn)
        else:
            _close_quietly(conn)

    @staticmethod
    def _reset(conn: smtplib.SMTP) -> bool:
        """RSET after a refused transaction; False when the connection is no longer usable."""
        try:
            return conn.rset()[0] == 250
        except (smtplib.SMTPException, OSError):
            return False

    def close(self) -> None:
        """Stop the worker threads and QUIT every connection."""
        self._sender.close()
        self._quit_idle()

    def _quit_idle(self) -> None:
        """QUIT every idle connection (the end of a batch)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            try:
                conn.quit()
            except (smtplib.SMTPException, OSError):
                _close_quietly(conn)

    def _context(self) -> ssl.SSLContext:
        return self._ssl_context or ssl.create_default_context()

    def _open(self) -> smtplib.SMTP:
        """A ready connection: greeted, TLS when configured, logged in when a user is set."""
        where = f"{self.host}:{self.port}"
        try:
            if self.implicit_tls:
                conn: smtplib.SMTP = smtplib.SMTP_SSL(
                    self.host, self.port, timeout=self.timeout, context=self._context()
                )
            else:
                conn = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        except socket.gaierror as exc:
            raise FatalChannelError(f"SMTP host {self.host} cannot be resolved: {exc}") from exc
        except smtplib.SMTPConnectError as exc:
            error = refusal("greeting", exc.smtp_code, exc.smtp_error)
            if isinstance(error, PermanentError):
                raise FatalChannelError(f"the SMTP relay {where} refuses us: {error}") from exc
            raise error from exc
        except ssl.SSLError as exc:
            raise FatalChannelError(f"TLS with the SMTP relay {where} failed: {exc}") from exc
        except OSError as exc:  # refused, unreachable, timeout: nothing was sent
            raise TransientError(f"cannot connect to the SMTP relay {where}: {exc}") from exc
        try:
            conn.ehlo_or_helo_if_needed()
            if self.starttls:
                if not conn.has_extn("starttls"):
                    raise FatalChannelError(
                        f"the SMTP relay {where} does not offer STARTTLS (set SMTP_STARTTLS=false only "
                        "for a relay on a trusted network)"
                    )
                conn.starttls(context=self._context())
                conn.ehlo()
            if self.user:
                conn.login(self.user, self._password or "")
            return conn
        except FatalChannelError:
            _close_quietly(conn)
            raise
        except smtplib.SMTPNotSupportedError as exc:
            _close_quietly(conn)
            raise FatalChannelError(f"the SMTP relay {where} does not support AUTH: {exc}") from exc
        except smtplib.SMTPResponseException as exc:  # authentication refused, or another reply
            _close_quietly(conn)
            if 400 <= exc.smtp_code < 500:
                raise TransientError(
                    f"SMTP relay {where}: {exc.smtp_code} {_reply_text(exc.smtp_error)}"
                ) from exc
            what = "authentication refused" if exc.smtp_code in (530, 534, 535) else "refused"
            raise FatalChannelError(
                f"SMTP relay {where}: {what}: {exc.smtp_code} {_reply_text(exc.smtp_error)}"
            ) from exc
        except ssl.SSLError as exc:
            _close_quietly(conn)
            raise FatalChannelError(f"TLS with the SMTP relay {where} failed: {exc}") from exc
        except (smtplib.SMTPException, OSError) as exc:
            _close_quietly(conn)
            raise TransientError(f"SMTP relay {where} dropped the connection while opening: {exc}") from exc


def _usable(error: ChannelError) -> ChannelError:
    """Mark a refusal after which the session can go on (after RSET) for the next message."""
    error.session_usable = True  # type: ignore[attr-defined]
    return error


def from_settings(settings: Settings, channel: str, **seams: Any) -> SmtpChannel:
    """The channel the factory builds for ``DISPATCH_EMAIL_BACKEND=smtp`` (Airflow: ``smtp_default``);
    ``seams`` go to the constructor as they are (``sleep``, ``clock``, ``policy``)."""
    if channel != ChannelName.EMAIL:
        raise DispatchError(f"SMTP can only serve the email channel, not {channel}")
    if not settings.smtp_host:
        raise DispatchError("SMTP: no relay host (set SMTP_HOST or the smtp_default connection)")
    return SmtpChannel(
        settings.smtp_host,
        settings.smtp_port,
        user=settings.smtp_user,
        password=reveal(settings.smtp_password),
        starttls=settings.smtp_starttls,
        timeout=settings.smtp_timeout,
        max_connections=settings.smtp_connections,
        default_sender=settings.mail_from,
        **seams,
    )
