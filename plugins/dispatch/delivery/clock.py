"""The replay window of timestamped signatures (SendGrid, the print API)."""

from __future__ import annotations

import datetime as dt

from dispatch.delivery.event import SignatureError

#: a signed request whose timestamp is further than this from our clock is refused: a replay
#: (or a clock so wrong that nothing it signs can be trusted)
TOLERANCE = dt.timedelta(minutes=5)


def check_timestamp(raw: str, now: dt.datetime, *, provider: str) -> None:
    """Refuse a missing, unreadable, stale or future signing timestamp (Unix seconds; the print
    API's milliseconds are read as such)."""
    try:
        value = float(raw.strip())
    except (AttributeError, ValueError):
        raise SignatureError(f"{provider}: the signature timestamp is missing or not a number") from None
    if value > 1e11:  # milliseconds since the epoch
        value /= 1000.0
    try:
        signed = dt.datetime.fromtimestamp(value, dt.UTC)
    except (OverflowError, OSError, ValueError):
        raise SignatureError(f"{provider}: the signature timestamp is out of range") from None
    if abs(now - signed) > TOLERANCE:
        raise SignatureError(
            f"{provider}: signed at {signed:%Y-%m-%dT%H:%M:%SZ}, more than "
            f"{int(TOLERANCE.total_seconds())} s from now (a replay?)"
        )
