"""A local SMTP relay (aiosmtpd) that records what it receives and fails on demand.

Why: over SMTP, "sent" means the relay answered 250 to DATA. A 5xx on RCPT is a permanent
refusal, a 4xx a temporary one, and a connection lost after DATA leaves it unknown whether the
relay took the message (SPEC B1 ``delivery_unknown``). This relay produces each case, in order.

Use::

    with FakeSMTP() as relay:                    # 127.0.0.1, a free port
        relay.inject(stage="rcpt", code=550)     # the next RCPT TO is refused
        smtplib.SMTP(relay.host, relay.port)...
        relay.messages[0].mail_from, relay.messages[0].rcpt_tos, relay.messages[0].message["Subject"]
"""

from __future__ import annotations

import email
import email.policy
import socket
import threading
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any, Self

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session

_DEFAULT_REPLIES = {
    421: "4.3.2 Service not available, closing transmission channel",
    450: "4.2.1 Mailbox temporarily unavailable",
    451: "4.3.0 Temporary failure, please try again later",
    452: "4.3.1 Insufficient system storage",
    550: "5.1.1 Recipient address rejected: User unknown",
    552: "5.3.4 Message size exceeds fixed limit",
    554: "5.7.1 Transaction failed",
}
STAGES = ("mail", "rcpt", "data")


@dataclass(frozen=True)
class ReceivedMail:
    """A message the relay received after DATA; ``answered`` is False when it dropped the line first."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    received_at: datetime
    answered: bool = True

    @property
    def message(self) -> EmailMessage:
        """The parsed RFC 5322 message."""
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class SmtpFault:
    """What the relay does at ``stage`` for the next ``times`` matching commands.

    ``code`` answers that reply code (550, 451…); ``disconnect`` (DATA only) records the message as
    received and then drops the connection without answering. ``address`` restricts a MAIL/RCPT
    fault to that address.
    """

    stage: str
    code: int | None = None
    message: str | None = None
    disconnect: bool = False
    times: int = 1
    address: str | None = None

    def reply(self) -> str:
        code = self.code or 554
        return f"{code} {self.message or _DEFAULT_REPLIES.get(code, 'Error')}"


def _free_port(host: str) -> int:
    """A port free right now (aiosmtpd's Controller cannot listen on port 0 and say which it got)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class FakeSMTP:
    """An SMTP relay on 127.0.0.1 recording ``messages``, with an optional AUTH LOGIN/PLAIN account."""

    def __init__(self, *, user: str | None = None, password: str | None = None, host: str = "127.0.0.1"):
        self.host = host
        self.port = 0
        self.user = user
        self.password = password
        self._lock = threading.Lock()
        self._messages: list[ReceivedMail] = []
        self._faults: deque[SmtpFault] = deque()
        self.auth_attempts: list[tuple[str, bool]] = []  # (login, succeeded)
        self._controller: Controller | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> Self:
        if self._controller is not None:
            return self
        self.port = _free_port(self.host)
        options: dict[str, Any] = {}
        if self.user is not None:
            # No TLS in the fake: AUTH is offered in clear, which the relay must otherwise refuse.
            options = {"auth_required": True, "auth_require_tls": False, "authenticator": self._authenticate}
        self._controller = Controller(_Recorder(self), hostname=self.host, port=self.port, **options)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """The project's settings (CONTRACT §1) that point the SMTP channel at this relay."""
        settings = {"SMTP_HOST": self.host, "SMTP_PORT": str(self.port), "SMTP_STARTTLS": "false"}
        if self.user is not None:
            settings |= {"SMTP_USER": self.user, "SMTP_PASSWORD": self.password or ""}
        return settings

    # -- for tests --------------------------------------------------------------------------
    @property
    def messages(self) -> list[ReceivedMail]:
        with self._lock:
            return list(self._messages)

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()
            self._faults.clear()
            self.auth_attempts.clear()

    def inject(
        self,
        *,
        stage: str,
        code: int | None = None,
        message: str | None = None,
        disconnect: bool = False,
        times: int = 1,
        address: str | None = None,
    ) -> SmtpFault:
        """Queue a fault for the next ``times`` commands of ``stage`` ("mail", "rcpt" or "data")."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}")
        if disconnect and stage != "data":
            raise ValueError("disconnect applies to the DATA stage")
        if code is None and not disconnect:
            raise ValueError("a fault needs code= or disconnect=True")
        fault = SmtpFault(stage, code, message, disconnect, times, address)
        with self._lock:
            self._faults.append(fault)
        return fault

    # -- used by the handler ----------------------------------------------------------------
    def _take_fault(self, stage: str, address: str | None = None) -> SmtpFault | None:
        with self._lock:
            for fault in self._faults:
                if fault.stage != stage:
                    continue
                if fault.address is not None and (address or "").lower() != fault.address.lower():
                    continue
                fault.times -= 1
                if fault.times == 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _record(self, envelope: Envelope, answered: bool) -> None:
        data = envelope.original_content or b""
        mail = ReceivedMail(
            str(envelope.mail_from), tuple(envelope.rcpt_tos), data, datetime.now(UTC), answered
        )
        with self._lock:
            self._messages.append(mail)

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", "replace")
        ok = login == self.user and auth_data.password.decode("utf-8", "replace") == (self.password or "")
        with self._lock:
            self.auth_attempts.append((login, ok))
        return AuthResult(success=ok, handled=False)


class _Recorder:
    """aiosmtpd handler: applies queued faults, records messages."""

    def __init__(self, fake: FakeSMTP) -> None:
        self.fake = fake

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> Any:
        fault = self.fake._take_fault("mail", address)
        if fault is not None:
            return fault.reply()
        return MISSING  # aiosmtpd's default: take the sender, answer 250

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> Any:
        fault = self.fake._take_fault("rcpt", address)
        if fault is not None:
            return fault.reply()
        return MISSING  # aiosmtpd's default: add the recipient, answer 250

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        fault = self.fake._take_fault("data")
        if fault is not None and fault.disconnect:
            self.fake._record(envelope, answered=False)  # the relay has it; the client never hears so
            if server.transport is not None:
                server.transport.abort()
            return "250 2.0.0 Ok (never delivered: the connection is gone)"
        if fault is not None:
            return fault.reply()
        self.fake._record(envelope, answered=True)
        return "250 2.0.0 Ok: queued"
