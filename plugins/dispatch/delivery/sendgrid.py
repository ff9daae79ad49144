"""SendGrid's Event Webhook: ECDSA-signed batches of e-mail events.

SendGrid signs ``<timestamp><raw body>`` with its ECDSA P-256 key and sends the base64
signature and the timestamp in ``X-Twilio-Email-Event-Webhook-Signature`` and
``…-Timestamp``; the public key is shown in the Mail Settings when signing is switched on
(``SENDGRID_WEBHOOK_PUBLIC_KEY``). The check is the ``sendgrid`` package's own
:class:`~sendgrid.helpers.eventwebhook.EventWebhook`; the timestamp must be recent
(:data:`dispatch.delivery.clock.TOLERANCE`), so a captured request cannot be replayed later.

A body is a JSON array of events. Each carries ``sg_event_id`` (unique per event),
``sg_message_id``, ``email``, ``event``, ``timestamp`` and, for failures,
``reason``/``response``. ``sg_message_id`` is the X-Message-Id the send stored followed by
SendGrid's routing suffix (``.filterdrecv-…``, ``.recvd-…``, older ``.filter0001…``): the id is
what comes before that suffix (:func:`message_id`), which SendGrid's own Email Activity
look-up also matches as a prefix.
"""

from __future__ import annotations

import binascii
import datetime as dt
import hashlib
import json
import re
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from sendgrid.helpers.eventwebhook import EventWebhook
from sendgrid.helpers.eventwebhook.eventwebhook_header import EventWebhookHeader

from dispatch.delivery.clock import check_timestamp
from dispatch.delivery.event import DeliveryEvent, PayloadError, SignatureError, clip
from dispatch.vocabulary import DeliveryProvider, DeliveryState

PROVIDER = DeliveryProvider.SENDGRID
SIGNATURE_HEADER = EventWebhookHeader.SIGNATURE
TIMESTAMP_HEADER = EventWebhookHeader.TIMESTAMP

#: SendGrid's event -> state (docs: "Event Webhook reference"); any other event is ``other``
STATES: dict[str, DeliveryState] = {
    "processed": DeliveryState.ACCEPTED,
    "deferred": DeliveryState.DEFERRED,
    "delivered": DeliveryState.DELIVERED,
    "open": DeliveryState.OPENED,
    "click": DeliveryState.CLICKED,
    "bounce": DeliveryState.BOUNCED,  # bounced or blocked by the receiving server (``type``)
    "dropped": DeliveryState.BOUNCED,  # SendGrid did not send it: a suppressed or invalid address
    "spamreport": DeliveryState.COMPLAINED,
    "unsubscribe": DeliveryState.UNSUBSCRIBED,
    "group_unsubscribe": DeliveryState.UNSUBSCRIBED,
}


def load_public_key(text: str) -> EllipticCurvePublicKey:
    """The verification key as SendGrid shows it (base64 DER), or as a whole PEM block."""
    body = "".join(line for line in text.strip().splitlines() if not line.startswith("-----"))
    try:
        key = EventWebhook().convert_public_key_to_ecdsa(body)
    except ValueError as exc:
        raise ValueError(f"SENDGRID_WEBHOOK_PUBLIC_KEY is not an ECDSA public key: {exc}") from None
    if not isinstance(key, EllipticCurvePublicKey):
        raise ValueError("SENDGRID_WEBHOOK_PUBLIC_KEY is not an ECDSA public key")
    return key


def verify(
    key: EllipticCurvePublicKey, body: bytes, signature: str | None, timestamp: str | None, now: dt.datetime
) -> None:
    """Raise :class:`SignatureError` unless ``body`` carries SendGrid's recent signature."""
    if not signature or not timestamp:
        raise SignatureError(f"sendgrid: no {SIGNATURE_HEADER} / {TIMESTAMP_HEADER} header")
    try:
        payload = body.decode("utf-8")
        valid = EventWebhook().verify_signature(payload, signature, timestamp, key)
    except (UnicodeDecodeError, binascii.Error, ValueError):
        valid = False
    if not valid:
        raise SignatureError("sendgrid: the signature does not match the body")
    check_timestamp(timestamp, now, provider=PROVIDER)


def parse(body: bytes) -> list[DeliveryEvent]:
    """The events of one signed batch; a batch that is not a list of events is refused."""
    try:
        items = json.loads(body)
    except ValueError as exc:
        raise PayloadError(f"sendgrid: the body is not JSON ({exc})") from None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise PayloadError("sendgrid: expected a JSON array of event objects")
    return [_event(item) for item in items]


def _event(item: dict[str, Any]) -> DeliveryEvent:
    name = str(item.get("event") or "").strip().lower()
    if not name:
        raise PayloadError("sendgrid: an event without its 'event' name")
    message_id = sg_message_id(str(item.get("sg_message_id") or ""))
    return DeliveryEvent(
        provider=PROVIDER,
        provider_event_id=str(item.get("sg_event_id") or "") or _content_id(item),
        provider_message_id=message_id,
        event=name[:32],
        state=STATES.get(name, DeliveryState.OTHER),
        recipient=clip(item.get("email"), 320),
        occurred_at=_instant(item.get("timestamp")),
        reason=clip(item.get("reason") or item.get("response")),
        payload=item,
    )


_ROUTING_SUFFIX = re.compile(r"\.(?:filter|recvd)")


def sg_message_id(value: str) -> str | None:
    """The X-Message-Id in an event's ``sg_message_id``: before SendGrid's routing suffix,
    else before the first dot."""
    value = value.strip()
    found = _ROUTING_SUFFIX.search(value)
    return (value[: found.start()] if found else value.split(".", 1)[0]) or None


def _content_id(item: dict[str, Any]) -> str:
    """An event without ``sg_event_id`` (older accounts): its content identifies it, so a
    retried batch still stores it once."""
    canonical = json.dumps(item, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _instant(value: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromtimestamp(int(value), dt.UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None
