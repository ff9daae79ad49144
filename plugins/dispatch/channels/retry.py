"""Retries and concurrency shared by the HTTP/SMTP backends (SPEC B1, B3).

* Only :class:`TransientError` is retried — a request that provably did not get through
  (429, 5xx, failure to connect). ``Retry-After`` is honoured up to a bound; otherwise the
  delay grows exponentially with jitter.
* :class:`DeliveryUnknownError` is never retried here: without an idempotency key a
  repeated request could deliver twice. A backend WITH an idempotency key (the print API)
  turns its own timeouts into transient errors, since its retries are safe.
* Messages go out concurrently over the backend's kept-alive connections
  (:class:`ConcurrentSender`): a pool of requests in flight, refilled as each completes.
  Hiding a provider's latency takes about rate x latency requests in flight (1,500
  messages/s at 50 ms: 75), so the number in flight adapts (:class:`InFlightWindow`): it
  grows while the provider answers, halves when it pushes back (429 or 5xx), and every new
  request waits out a ``Retry-After``; it never exceeds ``max_in_flight``
  (``DISPATCH_SEND_CONCURRENCY``, the bound per worker, under the Airflow pool that bounds
  workers per provider).
* A :class:`FatalChannelError` stops the batch, and the results of the messages already
  handed over travel with it.
"""

from __future__ import annotations

import math
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from dispatch.channels.base import (
    Answer,
    ChannelError,
    FatalChannelError,
    Handover,
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
        return exponential_backoff(attempt, self.base_delay, self.max_delay) * (0.5 + random.random() / 2)


def exponential_backoff(attempt: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """The one back-off of the project, in seconds, after failed try ``attempt`` (from 1):
    ``base · 2^(attempt-1)``, at least the provider's ``Retry-After``, at most ``cap``.

    Requests retried within a run (:class:`RetryPolicy`, with jitter) and Airflow's retries
    of a task (:class:`dispatch.runtime.airflow_tasks.DispatchRetryPolicy`) both use it.
    """
    seconds = base * 2 ** max(attempt - 1, 0)
    if retry_after:
        seconds = max(seconds, float(retry_after))
    return min(seconds, cap)


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
        #: what the window did, for benchmarks: its largest limit, and every answer's round trip
        self.peak = self.limit
        self.answers = 0
        self.rtt_total = 0.0

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
            if rtt is not None:
                self.answers += 1
                self.rtt_total += rtt
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
            self.peak = max(self.peak, self.limit)
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


#: A sliding channel marks the next messages as handed over once the requests in flight
#: have fallen a quarter of the window below it: one transaction per quarter window, and
#: never more actions uncertain (marked, their outcome not recorded) than the window.
REFILL_SHARE = 4


class ConcurrentSender:
    """The requests of one channel: a bounded pool of worker threads, refilled as each
    request completes (a sliding window, never a barrier waiting for a window's slowest
    request), under an :class:`InFlightWindow` that adapts to the provider's answers.

    One per channel instance, so what the window has learnt (and the worker threads) carry
    over from one batch to the next; :meth:`close` stops the threads.
    """

    def __init__(
        self,
        send_one: Callable[[OutgoingMessage], SendResult],
        *,
        max_in_flight: int,
        policy: RetryPolicy,
        sleep: Callable[[float], None] = time.sleep,
        refuse: Callable[[OutgoingMessage], ChannelError | None] | None = None,
    ) -> None:
        """``refuse(message)``: an error for a message that must not be requested at all now
        (no request, no retry), else None."""
        self.send_one = send_one
        self.policy = policy
        self.sleep = sleep
        self.refuse = refuse
        self.window = InFlightWindow(max_in_flight)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def send_many(self, messages: Sequence[OutgoingMessage]) -> list[SendResult | ChannelError]:
        """Every message (each with retries); one result or error per message, in order.

        On a :class:`FatalChannelError` the messages not yet started are not sent, and the
        error is re-raised with ``results`` filled for the messages that finished.
        """
        positions: dict[int, list[int]] = {}
        for i, m in enumerate(messages):
            positions.setdefault(id(m), []).append(i)
        results: list[SendResult | ChannelError | None] = [None] * len(messages)
        try:
            for m, r in self.stream(Handover(messages)):
                results[positions[id(m)].pop(0)] = r
        except FatalChannelError as exc:
            raise FatalChannelError(str(exc), results=results) from exc
        return results  # type: ignore[return-value]

    def stream(self, handover: Handover) -> Iterator[Answer]:
        """Pull messages from ``handover`` as requests complete; yield each answer as it comes.

        The pull happens in the calling thread (it writes the hand-over marks), only when the
        requests in flight plus what it takes stay within the window. On a
        :class:`FatalChannelError` nothing more starts, the requests in flight finish and
        their answers are yielded, then the error is raised (without ``results``: every
        answer has been yielded).
        """
        stop = threading.Event()
        running: dict[Future[SendResult | ChannelError | None], OutgoingMessage] = {}
        # Finished requests come back through a queue, one put per completion: waiting with
        # concurrent.futures.wait(FIRST_COMPLETED) instead installs and removes a waiter on
        # every running future at each completion, O(in flight) per answer.
        finished: queue.SimpleQueue[Future[SendResult | ChannelError | None]] = queue.SimpleQueue()
        queued: deque[OutgoingMessage] = deque()
        exhausted = False
        fatal: FatalChannelError | None = None
        failure: BaseException | None = None
        pool = self._executor()
        while True:
            while fatal is None and failure is None and not exhausted:
                limit = self.window.limit
                if not queued:
                    step = max(1, limit // REFILL_SHARE)
                    if running and len(running) + step > limit:
                        break
                    taken = handover.next(step)
                    if taken is None:
                        exhausted = True
                        break
                    queued.extend(taken)
                    continue
                if len(running) >= limit:
                    break
                message = queued.popleft()
                future = pool.submit(self._one, message, stop)
                running[future] = message
                future.add_done_callback(finished.put)
            if not running:
                break
            done = [finished.get()]
            while not finished.empty():  # every other answer already in: one refill for all
                done.append(finished.get_nowait())
            for future in done:
                message = running.pop(future)
                error = future.exception()
                if isinstance(error, FatalChannelError):
                    fatal = fatal or error
                    stop.set()
                elif error is not None:
                    failure = failure or error
                    stop.set()
                elif (result := future.result()) is not None:
                    yield message, result
        if failure is not None:
            raise failure
        if fatal is not None:
            raise FatalChannelError(str(fatal)) from fatal

    def _one(self, message: OutgoingMessage, stop: threading.Event) -> SendResult | ChannelError | None:
        """One message with its retries; None when the batch stopped before it started."""
        if stop.is_set():
            return None
        if self.refuse is not None and (refused := self.refuse(message)) is not None:
            return refused
        try:
            return call_with_retry(lambda: self._gated(message), self.policy, self.sleep)
        except FatalChannelError:
            raise
        except ChannelError as exc:
            return exc

    def _gated(self, message: OutgoingMessage) -> SendResult:
        self.window.acquire()
        started = time.monotonic()
        try:
            result = self.send_one(message)
        except TransientError:
            self.window.release(pushed_back=True)
            raise
        except BaseException:
            self.window.release()
            raise
        self.window.release(time.monotonic() - started)
        return result

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self.window.bound, thread_name_prefix="dispatch-send"
                )
            return self._pool

    def close(self) -> None:
        """Stop the worker threads (requests in flight finish first)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
