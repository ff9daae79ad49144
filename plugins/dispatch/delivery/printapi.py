"""The print-and-mail API's letter tracking events, signed the way Lob signs its webhooks.

The print API's published document has no webhook section, so the receiver follows Lob's
documented scheme: ``Lob-Signature`` is the hex HMAC-SHA256, under the webhook's secret
(``PRINTAPI_WEBHOOK_SECRET``), of ``"<Lob-Signature-Timestamp>.<raw body>"``; the timestamp
must be recent (:data:`dispatch.delivery.clock.TOLERANCE`), so a captured request cannot be
replayed later. The comparison is constant-time (:func:`hmac.compare_digest`).

A body is one Lob event object: ``id`` (``evt_…``, unique), ``event_type.id``
(``letter.delivered``, ``letter.returned_to_sender``, ``letter.certified.delivered`` …),
``date_created``, ``reference_id`` and ``body`` (the letter, whose ``id`` is the ``ltr_…`` the
send stored).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from typing import Any

from dispatch.delivery.clock import check_timestamp
from dispatch.delivery.event import DeliveryEvent, PayloadError, SignatureError, clip
from dispatch.vocabulary import DeliveryProvider, DeliveryState

PROVIDER = DeliveryProvider.PRINTAPI
SIGNATURE_HEADER = "Lob-Signature"
TIMESTAMP_HEADER = "Lob-Signature-Timestamp"

#: the letter event (``event_type.id`` without ``letter.`` and ``certified.``) -> state
STATES: dict[str, DeliveryState] = {
    "created": DeliveryState.ACCEPTED,
    "rendered_pdf": DeliveryState.ACCEPTED,
    "rendered_thumbnails": DeliveryState.ACCEPTED,
    "mailed": DeliveryState.IN_TRANSIT,
    "in_transit": DeliveryState.IN_TRANSIT,
    "in_local_area": DeliveryState.IN_TRANSIT,
    "processed_for_delivery": DeliveryState.IN_TRANSIT,
    "re-routed": DeliveryState.IN_TRANSIT,
    "international_exit": DeliveryState.IN_TRANSIT,
    "pickup_available": DeliveryState.IN_TRANSIT,
    "delivered": DeliveryState.DELIVERED,
    "returned_to_sender": DeliveryState.BOUNCED,
}


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``Lob-Signature`` of ``body`` signed at ``timestamp``."""
    message = timestamp.encode("utf-8") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str | None, timestamp: str | None, now: dt.datetime) -> None:
    """Raise :class:`SignatureError` unless ``body`` carries the recent signature of ``secret``."""
    if not signature or not timestamp:
        raise SignatureError(f"printapi: no {SIGNATURE_HEADER} / {TIMESTAMP_HEADER} header")
    if not hmac.compare_digest(sign(secret, timestamp, body), signature.strip().lower()):
        raise SignatureError("printapi: the signature does not match the body")
    check_timestamp(timestamp, now, provider=PROVIDER)


def parse(body: bytes) -> list[DeliveryEvent]:
    """The one letter event of a request; other resources' events are refused."""
    try:
        item = json.loads(body)
    except ValueError as exc:
        raise PayloadError(f"printapi: the body is not JSON ({exc})") from None
    if not isinstance(item, dict):
        raise PayloadError("printapi: expected a JSON event object")
    event_type = item.get("event_type")
    type_id = str(event_type.get("id") if isinstance(event_type, dict) else event_type or "").strip()
    resource = item.get("body")
    letter: dict[str, Any] = resource if isinstance(resource, dict) else {}
    if not item.get("id") or not type_id.startswith("letter."):
        raise PayloadError("printapi: expected a letter event with 'id' and 'event_type.id' letter.…")
    name = type_id.removeprefix("letter.").removeprefix("certified.")
    return [
        DeliveryEvent(
            provider=PROVIDER,
            provider_event_id=str(item["id"])[:255],
            provider_message_id=str(letter.get("id") or item.get("reference_id") or "") or None,
            event=type_id[:32],
            state=STATES.get(name, DeliveryState.OTHER),
            recipient=_recipient(letter.get("to")),
            occurred_at=_instant(item.get("date_created")),
            reason=_reason(name, letter),
            payload=item,
        )
    ]


def _recipient(to: Any) -> str | None:
    if isinstance(to, dict):
        parts = [to.get("name") or to.get("company"), to.get("address_line1"), to.get("address_city")]
        return clip(", ".join(str(p) for p in parts if p), 320)
    return clip(to, 320)


def _reason(name: str, letter: dict[str, Any]) -> str | None:
    """A returned letter's latest tracking event, in the provider's words."""
    if name != "returned_to_sender":
        return None
    events = [e for e in letter.get("tracking_events") or [] if isinstance(e, dict)]
    latest = events[-1] if events else {}
    found = latest.get("details")
    details: dict[str, Any] = found if isinstance(found, dict) else {}
    text = details.get("description") or latest.get("name") or "Returned to Sender"
    where = latest.get("location")
    return clip(f"{text} ({where})" if where else text)


def _instant(value: Any) -> dt.datetime | None:
    try:
        parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.astimezone(dt.UTC) if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
