"""Who a person's operation is recorded as (the ``actor`` of ``action_events``).

The CLI passes ``--by USER``; without it the actor is ``DISPATCH_ACTOR``, else the operating
system's user, so the audit log always says who ignored, marked sent or sent an action by
hand. The web pages pass their logged-in user the same way.
"""

from __future__ import annotations

import getpass
import os

from dispatch.errors import DispatchError
from dispatch.rules.control_chars import has_controls

MAX_ACTOR = 64  # action_events.actor is String(64)


class BadActorError(DispatchError):
    """The actor given is empty, too long or contains control characters."""


def check_actor(value: str) -> str:
    """``value`` stripped, or a one-line refusal naming it."""
    actor = value.strip()
    if not actor or len(actor) > MAX_ACTOR or has_controls(actor):
        raise BadActorError(f"actor {value!r}: expected a user name of 1 to {MAX_ACTOR} printable characters")
    return actor


def default_actor() -> str:
    """``DISPATCH_ACTOR``, else the operating system's user name, else ``unknown``."""
    configured = os.environ.get("DISPATCH_ACTOR", "").strip()
    if configured:
        return check_actor(configured)
    try:
        return check_actor(getpass.getuser())
    except (OSError, KeyError, DispatchError):  # no user name (containers without passwd)
        return "unknown"


def resolve_actor(value: str | None) -> str:
    """The actor of an operation: the one given, else :func:`default_actor`."""
    return default_actor() if value is None else check_actor(value)
