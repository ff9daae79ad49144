"""Retries and concurrency shared by the HTTP/SMTP backends (SPEC B1, B3).

* Only :class:`TransientError` is retried — a request that provably did not get through
  (429, 5xx, failure to connect). ``Retry-After`` is honoured up to a bound; otherwise the
  delay grows exponentially with jitter.
* :class:`DeliveryUnknownError` is never retried here: without an idempotency key a
  repeated request could deliver twice. A backend WITH an idempotency key (the print API)
  turns its own timeouts into transient errors, since its retries are safe.
* Messages go out concurrently over the backend's kept-alive connections. Hiding a
  provider's latency takes about rate x latency requests in flight (1,500 messages/s at
  50 ms: 75), so the number in flight adapts (:class:`InFlightWindow`): it grows while the
  provider answers, halves when it pushes back (429 or 5xx), and every new request waits
  out a ``Retry-After``; it never exceeds ``max_in_flight`` (``DISPATCH_SEND_CONCURRENCY``,
  the bound per worker, under the Airflow pool that bounds workers per provider).
* A :class:`FatalChannelError` stops the batch, and the results of the messages already
  handed over travel with it.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TypeVar

from dispatch.channels.base import (
    ChannelError,
    FatalChannelError,
    OutgoingMessage,
    SendResult,
    TransientError,
)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a transient failure within one run."""

    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 30.0
    #: a Retry-After longer than this is not waited for: the action is retried on a later run
    max_retry_after: float = 60.0

    def delay(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``; None: give up for this run."""
        if retry_after is not None:
            return retry_after if retry_after <= self.max_retry_after else None
        backoff = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return backoff * (0.5 + random.random() / 2)


def call_with_retry(
    fn: Callable[[], T], policy: RetryPolicy, sleep: Callable[[float], None] = time.sleep
) -> T:
    """``fn()``, retried on :class:`TransientError` as ``policy`` says; other errors propagate."""
    attempt = 1
    while True:
        try:
            return fn()
        except TransientError as exc:
            delay = policy.delay(attempt, exc.retry_after)
            if attempt >= policy.attempts or delay is None:
                raise
            sleep(delay)
            attempt += 1


#: Requests in flight when a batch starts, before the window has learnt anything.
WINDOW_START = 16
#: Requests queued beyond what the round trip needs (Little's law), as a share of the
#: window (with a floor of ALPHA, BETA requests): below GROW_BELOW it grows, above
#: SHRINK_ABOVE it shrinks to what the round trip needs plus that margin.
ALPHA, BETA = 2, 6
GROW_BELOW, SHRINK_ABOVE = 0.2, 0.5


class InFlightWindow:
    """How many requests may be in flight now, adapted to what the provider answers.

    Hiding a round trip of ``rtt`` seconds at ``rate`` messages per second takes ``rate x
    rtt`` requests in flight; more only queue (in the provider, the network or this
    process's CPU) and slow every answer down. So, per window's worth of answers, the
    requests queued are estimated as ``limit x (1 - fastest_rtt / mean_rtt)`` (TCP Vegas):

    * fewer than a fifth of the window queued: grow — doubling until the first sign of
      queueing (slow start), then by an eighth;
    * more than half of it: shrink to what the round trip needs (``limit x fastest / mean``)
      plus a fifth;
    * a push-back (a :class:`TransientError`: 429, 5xx, a refused connection) halves it;
      the request pushed back waits out its ``Retry-After`` (:func:`call_with_retry`).

    Never below 1 nor above ``bound`` (``DISPATCH_SEND_CONCURRENCY``). Thread-safe; waiting
    threads are woken one per free slot, not all at once.
    """

    def __init__(self, bound: int, start: int = WINDOW_START) -> None:
        self.bound = max(1, bound)
        self.limit = min(self.bound, max(1, start))
        self.in_flight = 0
        self.slow_start = True
        self._fastest = float("inf")
        self._answered = 0
        self._rtt_sum = 0.0
        self._stale = 0  # answers still to come from requests started under an older window
        self._cond = threading.Condition()

    def acquire(self) -> None:
        """Wait for a free slot."""
        with self._cond:
            while self.in_flight >= self.limit:
                self._cond.wait()
            self.in_flight += 1

    def release(self, rtt: float | None = None, *, pushed_back: bool = False) -> None:
        """A request finished after ``rtt`` seconds: answered, or pushed back by the provider."""
        with self._cond:
            self.in_flight -= 1
            if pushed_back:
                self.limit = max(1, self.limit // 2)
                self.slow_start = False
                self._answered, self._rtt_sum = 0, 0.0
            elif self._stale > 0:
                self._stale -= 1
                if rtt is not None:
                    self._fastest = min(self._fastest, rtt)
            elif rtt is not None:
                self._fastest = min(self._fastest, rtt)
                self._answered += 1
                self._rtt_sum += rtt
                if self._answered >= self.limit:
                    self._adapt(self._rtt_sum / self._answered)
            free = self.limit - self.in_flight
            if free > 0:
                self._cond.notify(free)

    def _adapt(self, mean_rtt: float) -> None:
        needed = self.limit * (self._fastest / mean_rtt) if mean_rtt > 0 else float(self.limit)
        queued = self.limit - needed
        if queued < max(ALPHA, GROW_BELOW * self.limit):
            grown = self.limit * 2 if self.slow_start else self.limit + max(1, self.limit // 8)
            self.limit = min(self.bound, grown)
        elif queued > max(BETA, SHRINK_ABOVE * self.limit):
            self.slow_start = False
            margin = max(ALPHA, GROW_BELOW * needed)
            self.limit = max(1, min(self.bound, math.ceil(needed + margin)))
            self._stale = self.in_flight  # their round trips still reflect the larger window
        self._answered, self._rtt_sum = 0, 0.0


def send_concurrently(
    messages: Sequence[OutgoingMessage],
    send_one: Callable[[OutgoingMessage], SendResult],
    *,
    max_in_flight: int,
    policy: RetryPolicy,
    sleep: Callable[[float], None] = time.sleep,
) -> list[SendResult | ChannelError]:
    """Send every message (each with retries); one result or error per message, in order.

    ``send_one`` raises the typed errors of ``dispatch.channels.base``. On a
    :class:`FatalChannelError` the messages not yet started are not sent, and the error is
    re-raised with ``results`` filled for the messages that finished.
    """
    results: list[SendResult | ChannelError | None] = [None] * len(messages)
    stop = threading.Event()
    window = InFlightWindow(max_in_flight)

    def gated(message: OutgoingMessage) -> SendResult:
        window.acquire()
        started = time.monotonic()
        try:
            result = send_one(message)
        except TransientError:
            window.release(pushed_back=True)
            raise
        except BaseException:
            window.release()
            raise
        window.release(time.monotonic() - started)
        return result

    def one(i: int) -> None:
        if stop.is_set():
            return
        try:
            results[i] = call_with_retry(lambda: gated(messages[i]), policy, sleep)
        except FatalChannelError:
            stop.set()
            raise
        except ChannelError as exc:
            results[i] = exc

    if max_in_flight <= 1 or len(messages) <= 1:
        for i in range(len(messages)):
            try:
                one(i)
            except FatalChannelError as exc:
                raise FatalChannelError(str(exc), results=list(results)) from exc
        return results  # type: ignore[return-value]

    workers = min(max_in_flight, len(messages))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dispatch-send") as pool:
        futures = [pool.submit(one, i) for i in range(len(messages))]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        fatal = next((f.exception() for f in done if isinstance(f.exception(), FatalChannelError)), None)
        if fatal is not None:
            stop.set()
            wait(futures)  # let requests already in flight finish and record their answers
            raise FatalChannelError(str(fatal), results=list(results)) from fatal
        for f in futures:
            f.result()
    return results  # type: ignore[return-value]
