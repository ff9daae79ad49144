"""What a provider's HTTP answer (or its absence) means for one message (SPEC B1, B3).

The HTTP backends share one reading of status codes, so that an action ends the same way
whichever provider refused it:

* 2xx — accepted (the caller builds the :class:`SendResult`);
* 429, 408, 409, 425 and 5xx — nothing was accepted: :class:`TransientError`, with the
  provider's ``Retry-After`` when it gave one;
* 401, 403 (credentials), 404, 405 (wrong base URL or account) and 3xx (a redirect means
  the URL is wrong; requests are never redirected, which could repeat a POST) — a
  configuration error that would refuse every message alike: :class:`FatalChannelError`,
  so that a bad key stops the batch instead of turning a day's invoices into manual tasks;
* any other 4xx — this message is refused: :class:`PermanentError` with the provider's text.

Transport failures are told apart by *whether the request can have reached the provider*:
a name that does not resolve is a configuration error; a refused or timed-out connection
sent nothing; a read timeout or a connection cut after the request was written may have
been accepted. Each backend decides what the last case means for it (Twilio: delivery
unknown; the print API: a safe retry with the same idempotency key).
"""

from __future__ import annotations

import datetime as dt
import socket
import threading
from collections.abc import Callable, Iterator
from email.utils import parsedate_to_datetime

import httpx

from dispatch.channels.base import ChannelError, FatalChannelError, PermanentError, TransientError

#: Statuses after which the request provably changed nothing and may be repeated.
RETRYABLE_4XX = frozenset({408, 409, 425, 429})
#: Statuses that mean the credentials or the configured URL are wrong for every message.
CONFIGURATION_4XX = frozenset({401, 403, 404, 405})


def retry_after_seconds(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP date); None if absent
    or unreadable (the caller then backs off on its own)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - (now or dt.datetime.now(dt.UTC))).total_seconds())


def error_for_status(status: int, message: str, retry_after: float | None = None) -> ChannelError:
    """The typed error for a non-2xx answer (see the module docstring for the table)."""
    if status in RETRYABLE_4XX or status >= 500:
        return TransientError(message, retry_after=retry_after)
    if status in CONFIGURATION_4XX or 300 <= status < 400:
        return FatalChannelError(message)
    if 400 <= status < 500:
        return PermanentError(message)
    return TransientError(message)  # 1xx or a status outside HTTP: nothing usable came back


def exception_chain(exc: BaseException, limit: int = 12) -> Iterator[BaseException]:
    """``exc`` and what caused it: ``__cause__``, ``__context__``, urllib3's ``reason`` and
    exceptions carried in ``args`` (requests wraps urllib3 wraps the socket error)."""
    seen: set[int] = set()
    todo = [exc]
    while todo and len(seen) < limit:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        linked.extend(a for a in getattr(current, "args", ()) if isinstance(a, BaseException))
        todo.extend(e for e in linked if isinstance(e, BaseException))


def is_name_resolution_failure(exc: BaseException) -> bool:
    """Whether the host name could not be resolved: a configuration error, not an outage to
    retry message by message."""
    return any(
        isinstance(e, socket.gaierror) or type(e).__name__ == "NameResolutionError"
        for e in exception_chain(exc)
    )


def is_refused_before_sending(exc: BaseException) -> bool:
    """Whether the connection was never established (refused, unreachable): nothing was sent."""
    return any(
        isinstance(e, ConnectionRefusedError)
        or type(e).__name__ in ("NewConnectionError", "ConnectTimeoutError")
        for e in exception_chain(exc)
    )


class ClientPerThread:
    """One kept-alive ``httpx.Client`` per sending thread, each holding one connection.

    Why not one shared client with a pool of N connections: httpcore's pool re-examines every
    connection it holds on each request and each answer (idle? expired? readable, with a
    ``poll`` per idle connection), under one lock. At the 50 to 130 requests in flight that
    hide a provider's latency, that bookkeeping cost more CPU than the request itself, and the
    threads queued on its lock. A thread sends one request at a time, so a client of its own
    with one connection does the same work with a pool of one: the connections are as many as
    the threads that send (at most ``DISPATCH_SEND_CONCURRENCY``), each reused, as before.

    ``make()`` builds a client; it should share one SSL context (building one per client
    loads the CA bundle each time). :meth:`close` closes every client made.
    """

    def __init__(self, make: Callable[[], httpx.Client]) -> None:
        self._make = make
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self._lock = threading.Lock()

    def get(self) -> httpx.Client:
        """This thread's client (made on first use)."""
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None or client.is_closed:
            client = self._make()
            with self._lock:
                self._clients.append(client)
            self._local.client = client
        return client

    def close(self) -> None:
        """Close every client (their connections); a later :meth:`get` makes a new one."""
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()
