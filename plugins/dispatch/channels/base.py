"""The one small interface every delivery backend implements.

The dispatcher never knows which provider is behind a channel: it hands over fully
rendered :class:`OutgoingMessage` objects and gets back, per message, either a
:class:`SendResult` (the provider accepted it: "sent" in the sense of SPEC B3) or one of
the typed errors below, whose *kind* tells the dispatcher what to do with the action.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeAlias, runtime_checkable

from dispatch.vocabulary import ChannelName, ManualReason


@dataclass(frozen=True)
class Attachment:
    """A file sent with a message (the invoice PDF)."""

    filename: str
    content: bytes
    mime_type: str = "application/pdf"


@dataclass(frozen=True)
class OutgoingMessage:
    """A message ready to hand to a provider; everything is already rendered.

    ``recipients`` holds e-mail addresses (email), one E.164 number (sms) or one postal
    address block (letter). ``deliver_at`` is the instant the customer should receive it
    (UTC, aware); channels that can schedule pass it to the provider.
    """

    action_id: str
    invoice_id: str
    org_id: str
    channel: str  # 'email' | 'sms' | 'letter'
    recipients: tuple[str, ...]
    deliver_at: dt.datetime
    subject: str | None = None
    body_text: str = ""
    body_html: str | None = None
    sender: str | None = None  # From address (email) or sender name (letter)
    sender_name: str | None = None
    reply_to: str | None = None
    attachments: tuple[Attachment, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SendResult:
    """The provider accepted the message."""

    action_id: str
    provider: str
    provider_message_id: str
    deliver_at: dt.datetime
    #: what a person should know although it was accepted (an SMTP relay refused some recipients)
    note: str | None = None


class ChannelError(Exception):
    """Base of the typed errors a channel raises for one message or the whole batch."""

    reason: ManualReason = ManualReason.PROVIDER_ERROR


class PermanentError(ChannelError):
    """The provider refused this message (4xx): do not retry; manual ``provider_rejected``."""

    reason = ManualReason.PROVIDER_REJECTED


class TransientError(ChannelError):
    """Rate limit, 5xx, cannot connect: nothing was accepted; retry later (``provider_error``
    once attempts are exhausted). ``retry_after`` in seconds when the provider said so."""

    reason = ManualReason.PROVIDER_ERROR

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeliveryUnknownError(ChannelError):
    """The request went out but no answer came back: it may have been accepted. Never
    retried without an idempotency key; the action becomes manual ``delivery_unknown``."""

    reason = ManualReason.DELIVERY_UNKNOWN


class FatalChannelError(ChannelError):
    """Authentication or configuration error (401/403, unknown host): stop the batch and
    touch no action, so that a bad key never turns a day's invoices into manual tasks.

    ``results`` (when set by ``send_many``) holds, per message of the call, the outcome of
    the messages that were handed over before the stop, and ``None`` for the others: the
    dispatcher records the former and gives the latter back untouched. No action takes
    this error's ``reason`` (an action never becomes manual over a bad key or host).
    """

    def __init__(self, message: str, results: list[SendResult | ChannelError | None] | None = None) -> None:
        super().__init__(message)
        self.results = results


#: One message and what became of it.
Answer: TypeAlias = "tuple[OutgoingMessage, SendResult | ChannelError]"


class Handover:
    """Where a channel takes the next messages to send from.

    Before handing messages out, :meth:`next` may write down that they are about to go out
    (the dispatcher marks them and records the answers so far, in one transaction) and
    drop those that are no longer the caller's to send. This base hands out a fixed list.
    """

    def __init__(self, messages: Sequence[OutgoingMessage]) -> None:
        self._messages = messages
        self._taken = 0

    def next(self, most: int) -> Sequence[OutgoingMessage] | None:
        """Up to ``most`` more messages that may go out now; None when there are no more."""
        while self._taken < len(self._messages):
            window = self._messages[self._taken : self._taken + max(1, most)]
            self._taken += len(window)
            if allowed := self.allow(window):
                return allowed
        return None

    def allow(self, window: Sequence[OutgoingMessage]) -> Sequence[OutgoingMessage]:
        """The messages of ``window`` that may go out (all of them, here)."""
        return window


@runtime_checkable
class Channel(Protocol):
    """A delivery backend for one channel ('email', 'sms' or 'letter')."""

    #: provider name stored on the action ('outbox', 'sendgrid', 'smtp', 'twilio', 'printapi')
    provider: str
    #: the channel this backend serves
    channel: ChannelName

    def max_schedule_ahead(self) -> dt.timedelta | None:
        """How far ahead the provider can hold a message for a future ``deliver_at``.

        ``None`` means the backend cannot schedule at all (SMTP, letters): the dispatcher then
        hands it only actions whose scheduled local day has come.
        """

    def send_many(self, messages: Sequence[OutgoingMessage]) -> list[SendResult | ChannelError]:
        """Hand every message to the provider; one result or error per message, same order.

        Raises :class:`FatalChannelError` (instead of returning it) when the whole batch must
        stop. Implementations may send concurrently.
        """

    def was_handed_over(self, action_id: str) -> SendResult | bool | None:
        """For an action a dead run left ``sending``: the result if the provider is known to
        have the message, ``False`` if it is known not to, ``None`` if it cannot tell."""

    def close(self) -> None:
        """Let go of what the backend holds (connections, worker threads). Whoever builds a
        channel closes it (:func:`dispatch.channels.factory.open_channels`)."""


@runtime_checkable
class SlidingChannel(Channel, Protocol):
    """A channel that keeps messages going out while the dispatcher records: it pulls the
    next messages from a :class:`Handover` as earlier ones complete, instead of being
    handed one window at a time and waiting for the window's slowest message."""

    def send_stream(self, handover: Handover) -> Iterator[Answer]:
        """Send what ``handover`` hands out; yield every answer as it comes. Raises
        :class:`FatalChannelError` (after yielding the answers of what had started) when
        the batch must stop."""


def send_through(channel: Channel, handover: Handover, window: int) -> Iterator[Answer]:
    """Every answer of ``channel`` for what ``handover`` hands out: pulled as the channel
    goes (a :class:`SlidingChannel`), else one :meth:`Channel.send_many` per ``window``
    messages. Either way a :class:`FatalChannelError` comes after the answers of the
    messages handed over before the stop."""
    if isinstance(channel, SlidingChannel):
        yield from channel.send_stream(handover)
        return
    while (messages := handover.next(window)) is not None:
        try:
            results = channel.send_many(messages)
        except FatalChannelError as exc:
            yield from ((m, r) for m, r in zip(messages, exc.results or [], strict=False) if r is not None)
            raise
        yield from zip(messages, results, strict=True)
