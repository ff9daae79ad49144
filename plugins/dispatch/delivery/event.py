"""The one shape of a provider's delivery event, and the states they share.

Each provider names its events its own way (SendGrid ``bounce``, Twilio ``undelivered``, the
print API ``letter.returned_to_sender``); ``event`` keeps that name, ``state`` says what it
means for the invoice, the same for every provider, so the views and pages read one column.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from dispatch.storage.schema import DELIVERY_STATES
from dispatch.vocabulary import DeliveryProvider, DeliveryState

STATES = DELIVERY_STATES
#: a later state outranks an earlier one as "the latest state", whatever the order of arrival
STATE_RANK = {state: rank for rank, state in enumerate(STATES)}
#: the states that send the action back to its owner's to-do list (manual ``bounced``)
BOUNCED_STATES = (DeliveryState.BOUNCED,)


@dataclass(frozen=True)
class DeliveryEvent:
    """One provider event, as stored in ``delivery_events``.

    ``provider_event_id`` is the provider's own id of the event (unique per provider), so a
    retried delivery of the same event is recognised; ``provider_message_id`` is the id the
    provider gave the message when it was sent (``invoice_actions.provider_message_id``).
    """

    provider: DeliveryProvider
    provider_event_id: str
    provider_message_id: str | None
    event: str
    state: DeliveryState
    recipient: str | None
    occurred_at: dt.datetime | None
    reason: str | None
    payload: dict[str, Any]

    def row(self, received_at: dt.datetime) -> dict[str, Any]:
        """The ``delivery_events`` row (not yet matched to an action)."""
        return {
            "provider": self.provider,
            "provider_event_id": self.provider_event_id,
            "provider_message_id": self.provider_message_id,
            "action_id": None,
            "event": self.event,
            "state": self.state,
            "recipient": self.recipient,
            "reason": self.reason,
            "occurred_at": self.occurred_at,
            "received_at": received_at,
            "payload": self.payload,
        }


class SignatureError(Exception):
    """The request does not carry a valid signature of the provider: refused (403), nothing stored."""


class PayloadError(Exception):
    """The signed body is not what the provider documents: refused (400), nothing stored."""


def clip(value: object, limit: int = 1000) -> str | None:
    """A provider's text as stored (reasons can be long SMTP transcripts): bounded, None when empty."""
    if value is None:
        return None
    text = str(value).strip()
    return text[:limit] or None
