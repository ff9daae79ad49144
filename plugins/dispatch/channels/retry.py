"""Retries and concurrency shared by the HTTP/SMTP backends (SPEC B1, B3).

* Only :class:`TransientError` is retried — a request that provably did not get through
  (429, 5xx, failure to connect). ``Retry-After`` is honoured up to a bound; otherwise the
  delay grows exponentially with jitter.
* :class:`DeliveryUnknownError` is never retried here: without an idempotency key a
  repeated request could deliver twice. A backend WITH an idempotency key (the print API)
  turns its own timeouts into transient errors, since its retries are safe.
* Messages go out concurrently over the backend's kept-alive connections, at most
  ``max_in_flight`` at a time; a :class:`FatalChannelError` stops the batch, and the
  results of the messages already handed over travel with it.
"""

from __future__ import annotations

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

    def one(i: int) -> None:
        if stop.is_set():
            return
        try:
            results[i] = call_with_retry(lambda: send_one(messages[i]), policy, sleep)
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

    with ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="dispatch-send") as pool:
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
