"""Receiving one verified request: store its events, match them, apply the consequences.

Everything happens in one transaction, so a request either leaves all its events stored
(and answers 2xx) or none (and the provider retries). A deadlock between two concurrent
requests on PostgreSQL (each moving the other's actions) is retried: the whole unit is
idempotent.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError

from dispatch.delivery.consequences import apply_consequences
from dispatch.delivery.event import DeliveryEvent
from dispatch.delivery.matching import Matched, match_messages, match_received_since
from dispatch.delivery.store import store_events
from dispatch.storage.session import Database

#: a request also matches the unmatched events received this long before it (the events
#: that came before their send's write, whose message has no later event to carry them)
SWEEP_BACK = dt.timedelta(hours=1)
#: PostgreSQL's deadlock_detected and serialization_failure: the transaction is retried
_RETRIED_STATES = ("40P01", "40001")
_ATTEMPTS = 5


@dataclass
class Received:
    """What one request did."""

    events: int = 0
    stored: int = 0
    matched: int = 0
    bounced: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "events": self.events,
            "stored": self.stored,
            "matched": self.matched,
            "bounced": self.bounced,
        }


class Sweeper:
    """Says when a request should also sweep the recent unmatched events: at most once per
    ``every`` seconds per process, so a burst of requests does not re-read them each time."""

    def __init__(self, every: float = 5.0) -> None:
        self.every = every
        self._last = float("-inf")
        self._lock = threading.Lock()

    def due(self) -> bool:
        with self._lock:
            now = time.monotonic()
            if now - self._last < self.every:
                return False
            self._last = now
            return True


def receive(
    db: Database, events: Sequence[DeliveryEvent], *, now: dt.datetime | None = None, sweep: bool = False
) -> Received:
    """Store ``events`` (one provider's, from one verified request) and act on those matched."""
    received_at = now or dt.datetime.now(dt.UTC)
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            return _receive_once(db, events, received_at, sweep)
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) not in _RETRIED_STATES or attempt == _ATTEMPTS:
                raise
            time.sleep(0.01 * attempt)
    raise AssertionError("unreachable")  # the loop returns or raises


def _receive_once(
    db: Database, events: Sequence[DeliveryEvent], received_at: dt.datetime, sweep: bool
) -> Received:
    summary = Received(events=len(events))
    with db.tx() as conn:
        summary.stored = store_events(conn, events, received_at)
        matched: list[Matched] = []
        for provider in sorted({e.provider for e in events}):
            ids = [e.provider_message_id for e in events if e.provider == provider and e.provider_message_id]
            matched += match_messages(conn, provider, ids)
        if sweep:
            matched += match_received_since(conn, received_at - SWEEP_BACK)
        summary.matched = len(matched)
        summary.bounced = apply_consequences(conn, matched, at=received_at)
    return summary
