"""SMS through Twilio's Messages API, with the official ``twilio`` SDK.

* **Sent** means Twilio answered 201 with the message SID, stored as the provider message id.
* **From** is the Messaging Service (``TWILIO_MESSAGING_SERVICE_SID``) when one is configured,
  else the number ``TWILIO_FROM_NUMBER``. Only a Messaging Service can *schedule*: Twilio holds
  a message with ``ScheduleType=fixed`` and ``SendAt`` between 15 minutes and 35 days ahead.
  A delivery time less than 15 minutes ahead is sent at once (at most that much early);
  without a Messaging Service the channel cannot schedule, so the dispatcher only hands it
  messages whose local day has come, and they go at the hand-over.
* **Length** is checked before anything is sent: GSM-7 or UCS-2 segments
  (:mod:`dispatch.channels.formats.sms_text`), refused above ``TWILIO_MAX_SEGMENTS`` (manual
  ``provider_rejected``, "message too long").
* **Failures** (SPEC B3): 429 waits as ``Retry-After`` says, 5xx and refused connections are
  retried (:func:`dispatch.channels.retry.call_with_retry`); a 4xx refuses this message with
  Twilio's code and text; 401/403/404, an unknown host and the few 400 codes that name the
  account's sender rather than the message stop the batch. Twilio has **no idempotency
  key**: a request that went out without an answer (read timeout, connection cut after the
  request was written) may have created the message, so it is never repeated — the action
  becomes manual ``delivery_unknown`` — and :meth:`TwilioChannel.was_handed_over` cannot tell.

``TwilioRestException`` carries no response headers, so ``Retry-After`` is read by a
``requests`` response hook that keeps each thread's last headers (messages go out
concurrently, so a shared "last response" would mix them up).
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from dispatch.channels.base import (
    ChannelError,
    DeliveryUnknownError,
    FatalChannelError,
    OutgoingMessage,
    PermanentError,
    SendResult,
    TransientError,
)
from dispatch.channels.formats.sms_text import measure_sms, normalize_sms
from dispatch.channels.provider_http import (
    error_for_status,
    is_name_resolution_failure,
    is_refused_before_sending,
    retry_after_seconds,
)
from dispatch.channels.retry import ConcurrentSender, RetryPolicy
from dispatch.config.settings import Settings, reveal
from dispatch.errors import DispatchError
from dispatch.vocabulary import ChannelName

PROVIDER = "twilio"
#: Twilio's scheduling window for ``SendAt`` (inclusive bounds, measured on Twilio's clock).
SCHEDULE_MIN = dt.timedelta(minutes=15)
SCHEDULE_MAX = dt.timedelta(days=35)
#: Kept clear of both bounds: the request takes time and the clocks are not the same one.
CLOCK_MARGIN = dt.timedelta(minutes=2)
#: Twilio's hard limit on a message body, whatever the segment setting.
MAX_BODY_CHARS = 1600
#: 400 answers that describe the account's sender, not the message: every message of the
#: batch would get the same, so they stop the batch like a bad key (21212 invalid From,
#: 21606 From not SMS-capable for this account, 21659 From is not a Twilio number).
CONFIGURATION_ERROR_CODES = frozenset({20003, 21212, 21606, 21659})

_E164 = re.compile(r"\+[1-9]\d{1,14}")


def real_clock() -> dt.datetime:
    """Twilio's scheduling window is measured on the real clock: the default ``clock``."""
    return dt.datetime.now(dt.UTC)


class HeaderKeepingHttpClient(TwilioHttpClient):
    """The SDK's HTTP client, keeping each thread's last response headers (for ``Retry-After``)
    and a connection pool as large as the number of requests in flight."""

    def __init__(self, *, timeout: float, pool_size: int) -> None:
        self._local = threading.local()
        super().__init__(timeout=timeout, request_hooks={"response": [self._keep_headers]})
        assert self.session is not None  # pool_connections=True (the default) gives a session
        # max_retries stays 0: urllib3 must never repeat a POST on its own (SPEC B1).
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max(1, pool_size))
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)

    def _keep_headers(self, response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        self._local.headers = response.headers
        return response

    def forget_headers(self) -> None:
        self._local.headers = None

    def last_headers(self) -> Mapping[str, str]:
        return getattr(self._local, "headers", None) or {}


class TwilioChannel:
    """Implements :class:`dispatch.channels.base.Channel` for SMS through Twilio."""

    provider = PROVIDER
    channel = ChannelName.SMS

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        messaging_service_sid: str | None = None,
        from_number: str | None = None,
        status_callback: str | None = None,
        api_base: str | None = None,
        timeout: float = 10.0,
        max_in_flight: int = 8,
        max_segments: int = 10,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], dt.datetime] = real_clock,
    ) -> None:
        self.messaging_service_sid = messaging_service_sid or None
        self.from_number = from_number or None
        self.status_callback = status_callback or None
        self.max_in_flight = max(1, max_in_flight)
        self.max_segments = max_segments
        self.policy = policy or RetryPolicy()
        self.sleep = sleep
        #: Twilio measures the scheduling window on its own (real) clock; tests pass theirs.
        self.clock = clock
        self.http = HeaderKeepingHttpClient(timeout=timeout, pool_size=self.max_in_flight)
        self._sender = ConcurrentSender(
            self._send_one, max_in_flight=self.max_in_flight, policy=self.policy, sleep=self.sleep
        )
        self.client = Client(account_sid, auth_token, http_client=self.http)
        if api_base:
            self.client.api.base_url = api_base.rstrip("/")  # the SDK builds Messages URLs from it

    # --- Channel protocol -------------------------------------------------------------

    def max_schedule_ahead(self) -> dt.timedelta | None:
        """Only a Messaging Service schedules; the margin keeps ``SendAt`` inside the window."""
        return SCHEDULE_MAX - CLOCK_MARGIN if self.messaging_service_sid else None

    def send_many(self, messages: Sequence[OutgoingMessage]) -> list[SendResult | ChannelError]:
        """One Messages API request per SMS, ``max_in_flight`` at a time, each with retries."""
        misrouted = [m.action_id for m in messages if m.channel != self.channel]
        if misrouted:
            raise FatalChannelError(
                f"Twilio was given messages of another channel: {', '.join(misrouted[:5])}"
            )
        if messages and not (self.messaging_service_sid or self.from_number):
            raise FatalChannelError("Twilio needs TWILIO_MESSAGING_SERVICE_SID or TWILIO_FROM_NUMBER")
        return self._sender.send_many(messages)

    def close(self) -> None:
        """Stop the worker threads, then close the HTTP connections."""
        self._sender.close()
        if self.http.session is not None:
            self.http.session.close()

    def was_handed_over(self, action_id: str) -> SendResult | bool | None:
        """Twilio keeps nothing of ours on a message (no idempotency key, no metadata) that
        would find it again: it cannot tell, so the action goes to a person."""
        return None

    # --- one message ------------------------------------------------------------------

    def _send_one(self, message: OutgoingMessage) -> SendResult:
        params = self._params(message)
        deliver_at = message.deliver_at.astimezone(dt.UTC)
        now = self.clock().astimezone(dt.UTC)
        ahead = deliver_at - now
        scheduled = False
        if ahead >= SCHEDULE_MIN + CLOCK_MARGIN and self.messaging_service_sid:
            if ahead > SCHEDULE_MAX - CLOCK_MARGIN:
                # The dispatcher holds such messages (max_schedule_ahead); reaching here means
                # the run's as-of instant is far from the real clock. Nothing was sent.
                # Retry-After = until it fits, so no time is spent retrying within this run.
                raise TransientError(
                    f"delivery time {deliver_at:%Y-%m-%dT%H:%M:%SZ} is beyond Twilio's 35-day scheduling "
                    "window; a later run sends it",
                    retry_after=(ahead - SCHEDULE_MAX + CLOCK_MARGIN).total_seconds(),
                )
            # The SDK formats SendAt with strftime(...Z) without converting: it must be UTC.
            params.update(schedule_type="fixed", send_at=deliver_at.replace(microsecond=0))
            scheduled = True
        self.http.forget_headers()
        try:
            created = self.client.messages.create(**params)
        except TwilioRestException as exc:
            raise self._refusal(exc) from exc
        except requests.exceptions.RequestException as exc:
            raise _transport_error(exc) from exc
        return SendResult(
            action_id=message.action_id,
            provider=self.provider,
            provider_message_id=str(created.sid),
            # what the customer gets: the scheduled time, or now when it went out early
            deliver_at=deliver_at if scheduled else min(deliver_at, now),
        )

    def _params(self, message: OutgoingMessage) -> dict[str, Any]:
        """The Messages API parameters; :class:`PermanentError` for an SMS that cannot go."""
        if message.channel != self.channel:
            raise PermanentError(f"not an SMS: channel {message.channel!r}")
        if len(message.recipients) != 1 or not _E164.fullmatch(message.recipients[0]):
            raise PermanentError(f"an SMS needs exactly one E.164 number, got {list(message.recipients)!r}")
        body = normalize_sms(message.body_text).strip()
        if not body:
            raise PermanentError("the SMS body is empty")
        length = measure_sms(body)
        if length.segments > self.max_segments or len(body) > MAX_BODY_CHARS:
            raise PermanentError(
                f"message too long: {len(body)} characters = {length.segments} {length.encoding} segments "
                f"(at most {self.max_segments} allowed)"
            )
        params: dict[str, Any] = {"to": message.recipients[0], "body": body}
        if self.messaging_service_sid:
            params["messaging_service_sid"] = self.messaging_service_sid
        else:
            params["from_"] = self.from_number
        if self.status_callback:
            params["status_callback"] = self.status_callback
        return params

    def _refusal(self, exc: TwilioRestException) -> ChannelError:
        text = f"Twilio {exc.status}" + (f" error {exc.code}" if exc.code else "") + f": {exc.msg}"
        if exc.code in CONFIGURATION_ERROR_CODES:
            return FatalChannelError(text)
        retry_after = retry_after_seconds(self.http.last_headers().get("Retry-After"))
        return error_for_status(int(exc.status), text, retry_after)


def _transport_error(exc: requests.exceptions.RequestException) -> ChannelError:
    """No answer from Twilio: did the request leave? (see the module docstring)."""
    if isinstance(
        exc,
        requests.exceptions.InvalidURL
        | requests.exceptions.InvalidSchema
        | requests.exceptions.MissingSchema,
    ):
        return FatalChannelError(f"Twilio API URL is not usable: {exc}")
    if is_name_resolution_failure(exc):
        return FatalChannelError(f"Twilio API host cannot be resolved: {exc}")
    if isinstance(exc, requests.exceptions.SSLError):
        return FatalChannelError(f"TLS with the Twilio API failed: {exc}")
    if isinstance(exc, requests.exceptions.ConnectTimeout) or is_refused_before_sending(exc):
        return TransientError(f"cannot connect to Twilio: {exc}")
    return DeliveryUnknownError(
        f"Twilio got the request but no answer came back ({type(exc).__name__}); it may have sent the SMS, "
        "so it is not sent again"
    )


def from_settings(settings: Settings, channel: str, **seams: Any) -> TwilioChannel:
    """The channel of ``DISPATCH_SMS_BACKEND=twilio`` (CONTRACT §1); ``seams`` are passed to
    the constructor as they are (``policy``, ``sleep``, ``clock``: what tests inject)."""
    if channel != ChannelName.SMS:
        raise DispatchError(f"the twilio backend serves SMS, not {channel}")
    missing = [
        name
        for name, value in (
            ("TWILIO_ACCOUNT_SID", settings.twilio_account_sid),
            ("TWILIO_AUTH_TOKEN", settings.twilio_auth_token),
        )
        if not value
    ]
    if not (settings.twilio_messaging_service_sid or settings.twilio_from_number):
        missing.append("TWILIO_MESSAGING_SERVICE_SID or TWILIO_FROM_NUMBER")
    if missing:
        raise DispatchError(f"DISPATCH_SMS_BACKEND=twilio needs {', '.join(missing)}")
    return TwilioChannel(
        account_sid=str(settings.twilio_account_sid),
        auth_token=reveal(settings.twilio_auth_token) or "",
        messaging_service_sid=settings.twilio_messaging_service_sid,
        from_number=settings.twilio_from_number,
        status_callback=settings.twilio_status_callback,
        api_base=settings.twilio_api_base,
        timeout=settings.http_timeout,
        max_in_flight=settings.send_concurrency,
        max_segments=settings.twilio_max_segments,
        **seams,
    )
