"""Twilio's message status callbacks: form posts signed with the account's auth token.

Twilio signs the full URL it called followed by every POST parameter, sorted by name, name
then value, with HMAC-SHA1 under the auth token (``X-Twilio-Signature``, base64). The check is
the ``twilio`` package's own :class:`~twilio.request_validator.RequestValidator`. The URL is
the one Twilio was given (``TWILIO_STATUS_CALLBACK``, sent with each message) or, when that
is not set, the URL the request arrived at.

Twilio's scheme carries no timestamp, so a replayed callback cannot be told from a retried
one: both are the same event (``MessageSid`` + ``MessageStatus``), stored once and acted on
once. A callback carries no event time either; ``received_at`` stands in for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import parse_qsl

from twilio.request_validator import SIGNATURE_HEADER, RequestValidator

from dispatch.delivery.event import DeliveryEvent, PayloadError, SignatureError, clip
from dispatch.vocabulary import DeliveryProvider, DeliveryState

PROVIDER = DeliveryProvider.TWILIO
#: Twilio's MessageStatus -> state; any other status is ``other``
STATES: dict[str, DeliveryState] = {
    "accepted": DeliveryState.ACCEPTED,
    "scheduled": DeliveryState.ACCEPTED,
    "queued": DeliveryState.ACCEPTED,
    "sending": DeliveryState.ACCEPTED,
    "sent": DeliveryState.IN_TRANSIT,  # handed to the carrier
    "delivered": DeliveryState.DELIVERED,
    "read": DeliveryState.OPENED,  # WhatsApp read receipts
    "undelivered": DeliveryState.BOUNCED,  # the carrier could not deliver it
    "failed": DeliveryState.BOUNCED,  # Twilio could not send it
}


class StatusParams(dict[str, list[str]]):
    """The callback's POST parameters with every value of each name, as
    :meth:`RequestValidator.get_values` reads them (``getlist``)."""

    def getlist(self, name: str) -> list[str]:
        return self[name]

    def first(self, name: str) -> str:
        values = self.get(name) or [""]
        return values[0].strip()


def read_form(body: bytes) -> StatusParams:
    """The ``application/x-www-form-urlencoded`` body, blank values kept (they are signed too)."""
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise PayloadError("twilio: the body is not UTF-8 form data") from None
    params = StatusParams()
    for name, value in pairs:
        params.setdefault(name, []).append(value)
    return params


def verify(auth_token: str, urls: Iterable[str], params: StatusParams, signature: str | None) -> None:
    """Raise :class:`SignatureError` unless one of ``urls`` and ``params`` carry Twilio's signature."""
    if not signature:
        raise SignatureError(f"twilio: no {SIGNATURE_HEADER} header")
    validator = RequestValidator(auth_token)
    if not any(validator.validate(url, params, signature) for url in dict.fromkeys(urls) if url):
        raise SignatureError("twilio: the signature does not match the URL and parameters")


def parse(params: StatusParams) -> list[DeliveryEvent]:
    """The one status event of a callback."""
    sid = params.first("MessageSid") or params.first("SmsSid")
    status = (params.first("MessageStatus") or params.first("SmsStatus")).lower()
    if not sid or not status:
        raise PayloadError("twilio: a status callback needs MessageSid and MessageStatus")
    code, message = params.first("ErrorCode"), params.first("ErrorMessage")
    reason = " ".join(p for p in (f"error {code}" if code else "", message) if p)
    return [
        DeliveryEvent(
            provider=PROVIDER,
            provider_event_id=f"{sid}:{status}"[:255],
            provider_message_id=sid,
            event=status[:32],
            state=STATES.get(status, DeliveryState.OTHER),
            recipient=clip(params.first("To"), 320),
            occurred_at=None,
            reason=clip(reason),
            payload={name: values[0] if len(values) == 1 else values for name, values in params.items()},
        )
    ]
