"""E-mail through SendGrid's v3 Mail Send API (CONTRACT §1 ``DISPATCH_EMAIL_BACKEND=sendgrid``).

One message per invoice: every recipient in one personalization's ``to``, the invoice PDF
attached, ``custom_args`` carrying the action, invoice and organization ids (so SendGrid's
activity and bounce data lead back to the action), the category ``invoice``, and ``send_at``
when the delivery time is still ahead (SendGrid holds a message up to 72 hours).

The body is built with the ``sendgrid`` SDK's Mail helpers, but the request goes out through
``httpx`` (one kept-alive client per sending thread, ``provider_http.ClientPerThread``) rather
than the SDK's transport, for two reasons:

* the SDK (python_http_client) opens a new urllib connection for every request; httpx
  keeps connections alive, which saves a TCP + TLS handshake per message against the
  real API (see ``dispatch.devtools.bench_email`` for the measured difference on a local server);
* httpx tells *where* a request failed — before anything was sent (``ConnectError``), while
  sending (``WriteError``) or after sending, waiting for the answer (``ReadTimeout``,
  ``RemoteProtocolError``) — and exactly-once depends on that difference (SPEC B1, B3).

How each answer maps onto the typed errors of ``dispatch.channels.base``:

=========================================  =================================================
2xx                                        sent; ``X-Message-Id`` is the provider message id
429, 408, 409, 425, 5xx; cannot connect    :class:`TransientError` (``Retry-After`` honoured)
401, 403; 404/405 (wrong API host), 3xx;   :class:`FatalChannelError` — stop the batch, touch
host name does not resolve                 no action
other 4xx (400, 413, …)                    :class:`PermanentError` with SendGrid's messages
sent, then no answer (timeout, reset)      :class:`DeliveryUnknownError` — never retried,
                                           SendGrid has no idempotency key
=========================================  =================================================

Status codes are read as every HTTP backend reads them (``dispatch.channels.provider_http``).
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import httpx
from sendgrid.helpers.mail import (
    Attachment,
    Category,
    Content,
    CustomArg,
    Disposition,
    FileContent,
    FileName,
    FileType,
    From,
    Mail,
    Personalization,
    ReplyTo,
    Subject,
    To,
)

from dispatch.channels.base import (
    Answer,
    ChannelError,
    DeliveryUnknownError,
    FatalChannelError,
    Handover,
    OutgoingMessage,
    PermanentError,
    SendResult,
    TransientError,
)
from dispatch.channels.formats.mime import email_safe
from dispatch.channels.provider_http import (
    ClientPerThread,
    error_for_status,
    is_name_resolution_failure,
    retry_after_seconds,
)
from dispatch.channels.retry import ConcurrentSender, InFlightWindow, RetryPolicy
from dispatch.config.settings import Settings, reveal
from dispatch.errors import DispatchError
from dispatch.vocabulary import ChannelName

log = logging.getLogger(__name__)

PROVIDER = "sendgrid"
#: SendGrid refuses a ``send_at`` more than 72 hours ahead; the due rule holds later ones.
MAX_SCHEDULE_AHEAD = dt.timedelta(hours=72)
CATEGORY = "invoice"
MAIL_SEND_PATH = "/v3/mail/send"
ACTIVITY_PATH = "/v3/messages"
#: SENDGRID_ACTIVITY_LOOKUP: "off" never asks; "found" settles a message SendGrid lists as
#: sent and leaves the others to a person; "full" also sends again one SendGrid does not list
ACTIVITY_LOOKUPS = ("off", "found", "full")
DEFAULT_TIMEOUT = 30.0
DEFAULT_IN_FLIGHT = 128  # the bound (DISPATCH_SEND_CONCURRENCY); the window adapts below it
#: Connecting is quick or hopeless; waiting for an answer may legitimately take longer.
CONNECT_TIMEOUT = 10.0
_MAX_REASON = 500


def real_clock() -> dt.datetime:
    """SendGrid compares ``send_at`` with its own (real) clock: the default of every clock here."""
    return dt.datetime.now(dt.UTC)


# --- errors -------------------------------------------------------------------------------


def transport_error(exc: Exception, host: str) -> ChannelError:
    """The typed error for a request that got no HTTP answer, by where it failed.

    A name that does not resolve is a configuration error (a typo in the host): retrying
    every message would only turn a day's invoices into ``provider_error`` tasks. It stops
    the batch, which is harmless for a passing DNS outage too — the claims are given back
    and the next try sends them.
    """
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        if is_name_resolution_failure(exc):
            return FatalChannelError(f"SendGrid host {host} cannot be resolved: {exc}")
        return TransientError(f"cannot connect to SendGrid at {host}: {exc or type(exc).__name__}")
    if isinstance(exc, httpx.WriteError | httpx.WriteTimeout):
        # The body did not get through whole (it carries a Content-Length), so SendGrid
        # cannot have accepted it: a retry is safe.
        return TransientError(f"sending to SendGrid failed before the request was complete: {exc}")
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError | httpx.ProxyError):
        return FatalChannelError(f"cannot talk to SendGrid at {host}: {exc}")
    if isinstance(exc, httpx.TimeoutException):
        return DeliveryUnknownError(f"SendGrid did not answer in time after receiving the request: {exc}")
    return DeliveryUnknownError(
        f"the connection to SendGrid failed after the request was sent ({type(exc).__name__}: {exc})"
    )


def provider_reason(response: httpx.Response) -> str:
    """SendGrid's own error messages (``{"errors": [{"message", "field"}]}``), one line."""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    messages: list[str] = []
    if isinstance(payload, Mapping):
        for item in payload.get("errors") or []:
            if isinstance(item, Mapping) and item.get("message"):
                field = item.get("field")
                messages.append(f"{field}: {item['message']}" if field else str(item["message"]))
    text = "; ".join(messages) or response.text.strip() or response.reason_phrase
    text = " ".join(text.split())
    return f"SendGrid {response.status_code}: {text}"[:_MAX_REASON]


def status_error(response: httpx.Response, now: dt.datetime) -> ChannelError:
    """The typed error for a non-2xx answer, read as every HTTP backend reads it
    (:func:`dispatch.channels.provider_http.error_for_status`)."""
    reason = provider_reason(response)
    if response.status_code in (404, 405):
        # Mail Send always exists: a 404 means SENDGRID_API_HOST points at the wrong place.
        reason += " (is SENDGRID_API_HOST right?)"
    wait = retry_after_seconds(response.headers.get("Retry-After"), now)
    return error_for_status(response.status_code, reason, wait)


# --- the API ----------------------------------------------------------------------------------


class SendGridApi:
    """SendGrid's v3 API over kept-alive ``httpx`` connections, one per sending thread (mail and
    suppressions); thread-safe.

    Every failure comes out as a typed :class:`ChannelError`; the API key only ever travels in
    the ``Authorization`` header, never in a message or a ``repr``.
    """

    def __init__(
        self,
        api_key: str,
        host: str = "https://api.sendgrid.com",
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_connections: int = DEFAULT_IN_FLIGHT,
        clock: Callable[[], dt.datetime] = real_clock,
        keep_alive: bool = True,
    ) -> None:
        """``keep_alive=False`` opens a connection per request (only to measure what it costs)."""
        if not api_key:
            raise DispatchError(
                "SendGrid: no API key (set SENDGRID_API_KEY or the sendgrid_default connection)"
            )
        host = host.strip().rstrip("/")
        if not host.startswith(("http://", "https://")):
            raise DispatchError(f"SENDGRID_API_HOST={host!r}: expected an http:// or https:// URL")
        self.host = host
        self._clock = clock
        self.max_connections = max(1, max_connections)
        headers = {"Authorization": f"Bearer {api_key}", "User-Agent": "invoice-dispatch"}
        client_timeout = httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT))
        # One connection per sending thread (ClientPerThread says why); the threads are at most
        # max_connections, the bound of requests in flight.
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1 if keep_alive else 0)
        ssl_context = httpx.create_ssl_context()
        self._clients = ClientPerThread(
            lambda: httpx.Client(
                base_url=host, headers=headers, timeout=client_timeout, limits=limits, verify=ssl_context
            )
        )

    def __repr__(self) -> str:
        return f"SendGridApi(host={self.host!r})"

    def now(self) -> dt.datetime:
        return self._clock()

    def request(
        self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None
    ) -> httpx.Response:
        """One request; a 2xx response, or the typed error of what went wrong."""
        try:
            response = self._clients.get().request(method, path, json=json, params=params)
        except httpx.HTTPError as exc:
            raise transport_error(exc, self.host) from exc
        except Exception as exc:  # whatever it was, the request may have gone out
            raise DeliveryUnknownError(f"SendGrid request failed unexpectedly: {exc!r}") from exc
        if response.is_success:
            return response
        raise status_error(response, self.now())

    def close(self) -> None:
        self._clients.close()


# --- the message ------------------------------------------------------------------------------


def unique_recipients(recipients: Sequence[str]) -> list[str]:
    """Addresses in order without case-insensitive duplicates (SendGrid refuses duplicates)."""
    seen: set[str] = set()
    out: list[str] = []
    for address in recipients:
        address = address.strip()
        key = address.lower()
        if address and key not in seen:
            seen.add(key)
            out.append(address)
    return out


def send_at_for(deliver_at: dt.datetime, now: dt.datetime) -> int | None:
    """``send_at`` (unix seconds) for a delivery still ahead; None to deliver at once."""
    if deliver_at.tzinfo is None:
        raise PermanentError("deliver_at must be timezone-aware")
    if deliver_at <= now:
        return None
    return int(deliver_at.timestamp())


def _beyond_window(message: OutgoingMessage, now: dt.datetime) -> TransientError | None:
    """A delivery more than 72 hours ahead of SendGrid's clock cannot be handed over now:
    without ``send_at`` it would arrive early. The due rule never asks for one, unless the run
    is as of an instant ahead of the real clock; then it waits for a later run (no retry in
    this one, no request)."""
    if message.deliver_at.tzinfo is None or message.deliver_at - now <= MAX_SCHEDULE_AHEAD:
        return None
    return TransientError(
        f"delivery at {message.deliver_at.isoformat()} is more than 72 h ahead of SendGrid's clock "
        f"({now.isoformat()}); held for a later run"
    )


def build_mail_body(
    message: OutgoingMessage, *, default_sender: str | None, send_at: int | None, category: str = CATEGORY
) -> dict[str, Any]:
    """The Mail Send request body, built with the SDK's helpers.

    Raises :class:`PermanentError` for a message that can never be sent as it is (no sender,
    no recipient, another channel).
    """
    if message.channel != ChannelName.EMAIL:
        raise PermanentError(f"SendGrid sends e-mail, not {message.channel}")
    try:  # the gate of every e-mail: no control character, no line break in a header field
        message = email_safe(message)
    except ValueError as exc:
        raise PermanentError(str(exc)) from exc
    sender = message.sender or default_sender
    if not sender:
        raise PermanentError("no sender address: the organization sets none and DISPATCH_MAIL_FROM is unset")
    recipients = unique_recipients(message.recipients)
    if not recipients:
        raise PermanentError("no recipient")

    mail = Mail()
    mail.from_email = From(sender, message.sender_name or None)
    if message.reply_to:
        mail.reply_to = ReplyTo(message.reply_to)
    mail.subject = Subject(message.subject or "")
    personalization = Personalization()
    for address in recipients:
        personalization.add_to(To(address))
    # In the personalization, not at the top level: that is where SendGrid's document puts them.
    for key, value in (
        ("action_id", message.action_id),
        ("invoice_id", message.invoice_id),
        ("org_id", message.org_id),
    ):
        personalization.add_custom_arg(CustomArg(key, str(value)))
    if send_at is not None:
        personalization.send_at = send_at
    mail.add_personalization(personalization)
    # text/plain first, then text/html: SendGrid's order rule.
    if message.body_text:
        mail.add_content(Content("text/plain", message.body_text))
    if message.body_html:
        mail.add_content(Content("text/html", message.body_html))
    for attachment in message.attachments:
        mail.add_attachment(
            Attachment(
                FileContent(base64.b64encode(attachment.content).decode("ascii")),
                FileName(attachment.filename),
                FileType(attachment.mime_type),
                Disposition("attachment"),
            )
        )
    mail.category = Category(category)
    body: dict[str, Any] = mail.get()
    return body


# --- settling a message a dead run left in flight -------------------------------------------


def look_up_action(api: SendGridApi, action_id: str) -> SendResult | bool | None:
    """Whether SendGrid has a message for ``action_id``, through the Email Activity API
    (``GET /v3/messages`` filtered on the ``action_id`` custom arg every message carries).

    A listed message is SendGrid's word that it accepted it: sent, with its message id. No
    listed message is ``False`` — but SendGrid lists a message only once it processed it
    (seconds to minutes), so the channel trusts that answer only when told to ("full").
    The API needs the Email Activity add-on: any failure to ask (403, 404, a timeout) is
    ``None``, "cannot tell".
    """
    query = f"unique_args['action_id']=\"{action_id}\""
    try:
        response = api.request("GET", ACTIVITY_PATH, params={"query": query, "limit": 10})
        messages = response.json().get("messages") or []
    except (ChannelError, ValueError, AttributeError) as exc:
        log.warning("SendGrid activity look-up for %s failed: %s", action_id, exc)
        return None
    if not messages:
        return False
    msg_id = str(messages[0].get("msg_id") or "")
    return SendResult(
        action_id=action_id,
        provider=PROVIDER,
        provider_message_id=msg_id.split(".", 1)[0],  # the X-Message-Id is msg_id's first part
        deliver_at=api.now(),
        note="found through SendGrid's Email Activity API after the run that sent it died",
    )


# --- the channel ------------------------------------------------------------------------------


class SendGridChannel:
    """The e-mail channel through SendGrid; implements :class:`dispatch.channels.base.Channel`."""

    provider = PROVIDER
    channel = ChannelName.EMAIL

    def __init__(
        self,
        api: SendGridApi,
        *,
        default_sender: str | None = None,
        max_in_flight: int = DEFAULT_IN_FLIGHT,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        activity_lookup: str = "off",
    ) -> None:
        if activity_lookup not in ACTIVITY_LOOKUPS:
            raise DispatchError(
                f"SENDGRID_ACTIVITY_LOOKUP={activity_lookup!r}: expected one of {', '.join(ACTIVITY_LOOKUPS)}"
            )
        self.activity_lookup = activity_lookup
        self.api = api
        self.default_sender = default_sender
        self.max_in_flight = max(1, max_in_flight)
        self.policy = policy or RetryPolicy()
        self._sender = ConcurrentSender(
            self.send_one,
            max_in_flight=self.max_in_flight,
            policy=self.policy,
            sleep=sleep,
            refuse=self._held,
        )

    def __repr__(self) -> str:
        return f"SendGridChannel(host={self.api.host!r}, max_in_flight={self.max_in_flight})"

    def max_schedule_ahead(self) -> dt.timedelta | None:
        return MAX_SCHEDULE_AHEAD

    @property
    def window(self) -> InFlightWindow:
        """The requests in flight allowed now, as adapted so far (what benchmarks report)."""
        return self._sender.window

    def send_many(self, messages: Sequence[OutgoingMessage]) -> list[SendResult | ChannelError]:
        """Every message, up to ``max_in_flight`` at a time over kept-alive connections, each
        retried on transient failures as the policy says; raises :class:`FatalChannelError`
        (with the results of the messages already answered) when the batch must stop."""
        return self._sender.send_many(messages)

    def send_stream(self, handover: Handover) -> Iterator[Answer]:
        """The same, pulling messages from ``handover`` as requests complete
        (:class:`dispatch.channels.base.SlidingChannel`)."""
        return self._sender.stream(handover)

    def _held(self, message: OutgoingMessage) -> ChannelError | None:
        return _beyond_window(message, self.api.now())

    def send_one(self, message: OutgoingMessage) -> SendResult:
        """Hand one message to SendGrid (one request, no retry); raises the typed errors."""
        try:
            body = build_mail_body(
                message,
                default_sender=self.default_sender,
                send_at=send_at_for(message.deliver_at, self.api.now()),
            )
        except ChannelError:
            raise
        except Exception as exc:  # a value the SDK's helpers refuse: this message only
            raise PermanentError(f"the e-mail could not be built: {exc}") from exc
        response = self.api.request("POST", MAIL_SEND_PATH, json=body)
        message_id = response.headers.get("X-Message-Id", "")
        if not message_id:
            # Accepted all the same (a 2xx is SendGrid's word): never send it again.
            log.warning("SendGrid accepted action %s without an X-Message-Id", message.action_id)
        return SendResult(
            action_id=message.action_id,
            provider=self.provider,
            provider_message_id=message_id,
            deliver_at=message.deliver_at.astimezone(dt.UTC),
        )

    def was_handed_over(self, action_id: str) -> SendResult | bool | None:
        """For an action a dead run left in flight: ask the Email Activity API (when enabled)
        for a message carrying its ``action_id`` custom arg (:func:`look_up_action`)."""
        if self.activity_lookup == "off":
            return None
        found = look_up_action(self.api, action_id)
        if found is False and self.activity_lookup != "full":
            return None
        return found

    def close(self) -> None:
        """Stop the worker threads, then close the HTTP connections."""
        self._sender.close()
        self.api.close()


def from_settings(
    settings: Settings,
    channel: str,
    *,
    clock: Callable[[], dt.datetime] = real_clock,
    sleep: Callable[[float], None] = time.sleep,
) -> SendGridChannel:
    """The channel the factory builds for ``DISPATCH_EMAIL_BACKEND=sendgrid``; ``clock`` and
    ``sleep`` go to the constructors (the one seam tests use)."""
    if channel != ChannelName.EMAIL:
        raise DispatchError(f"SendGrid can only serve the email channel, not {channel}")
    in_flight = settings.send_concurrency
    api = SendGridApi(
        reveal(settings.sendgrid_api_key) or "",
        settings.sendgrid_api_host,
        timeout=settings.http_timeout,
        max_connections=in_flight,
        clock=clock,
    )
    return SendGridChannel(
        api,
        default_sender=settings.mail_from,
        max_in_flight=in_flight,
        sleep=sleep,
        activity_lookup=settings.sendgrid_activity_lookup,
    )
