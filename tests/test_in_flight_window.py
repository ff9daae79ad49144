"""The window of requests in flight: what it does with the provider's answers (pure rule), and
the sliding sender that keeps it full."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable

from dispatch.channels.base import Handover, OutgoingMessage, SendResult
from dispatch.channels.retry import ConcurrentSender, InFlightWindow, RetryPolicy
from hypothesis import given, settings
from hypothesis import strategies as st


def answer(window: InFlightWindow, rtts: list[float]) -> None:
    for _ in rtts:
        window.acquire()
    for rtt in rtts:
        window.release(rtt)


def test_a_flat_round_trip_grows_the_window_until_its_bound() -> None:
    window = InFlightWindow(bound=100, start=4)
    for _ in range(10):
        answer(window, [0.050] * window.limit)
    assert window.limit == 100


def test_round_trips_that_climb_shrink_it_to_what_the_round_trip_needs() -> None:
    window = InFlightWindow(bound=128, start=64)
    answer(window, [0.050] + [0.200] * 63)  # a quarter of the window would do: the rest queues
    assert 16 <= window.limit <= 24
    assert not window.slow_start


def test_a_push_back_halves_it_and_growth_is_slow_after() -> None:
    window = InFlightWindow(bound=128, start=32)
    window.acquire()
    window.release(pushed_back=True)
    assert window.limit == 16
    answer(window, [0.050] * 16)
    assert window.limit == 18  # by an eighth, no longer doubling


@given(
    bound=st.integers(1, 64),
    start=st.integers(1, 64),
    steps=st.lists(st.one_of(st.none(), st.floats(0.0001, 2.0)), max_size=200),
)
def test_the_window_stays_between_one_and_its_bound(bound: int, start: int, steps: list) -> None:
    window = InFlightWindow(bound=bound, start=start)
    for rtt in steps:
        window.acquire()
        assert window.in_flight <= window.limit
        window.release(rtt, pushed_back=rtt is None)
        assert 1 <= window.limit <= bound
    assert window.in_flight == 0


def test_never_more_requests_in_flight_than_the_window_across_threads() -> None:
    window = InFlightWindow(bound=8, start=3)
    peak = 0
    lock = threading.Lock()

    def worker() -> None:
        nonlocal peak
        for _ in range(50):
            window.acquire()
            with lock:
                peak = max(peak, window.in_flight)
                assert window.in_flight <= window.bound
            window.release(0.001)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 1 <= peak <= 8
    assert window.in_flight == 0


# --- the sliding sender: a pool refilled as each request completes ---------------------------


def _messages(n: int) -> list[OutgoingMessage]:
    at = dt.datetime(2026, 12, 2, 5, tzinfo=dt.UTC)
    return [
        OutgoingMessage(
            action_id=f"a{i}",
            invoice_id=f"i{i}",
            org_id="acme",
            channel="email",
            recipients=("ap@client.example",),
            deliver_at=at,
        )
        for i in range(n)
    ]


def _provider(slow: set[str], seconds: float) -> Callable[[OutgoingMessage], SendResult]:
    """A stand-in for the remote provider: answers after ``seconds`` for the ``slow`` ones."""

    def send_one(m: OutgoingMessage) -> SendResult:
        time.sleep(seconds if m.action_id in slow else 0.005)
        return SendResult(m.action_id, "remote", f"id-{m.action_id}", m.deliver_at)

    return send_one


def test_a_slow_request_does_not_hold_back_the_ones_after_it() -> None:
    sender = ConcurrentSender(_provider({"a0"}, 0.5), max_in_flight=4, policy=RetryPolicy())
    try:
        order = [m.action_id for m, _ in sender.stream(Handover(_messages(16)))]
    finally:
        sender.close()
    # windows of 4 with a barrier would wait for a0 before starting a4; the pool goes on
    assert sorted(order) == sorted(f"a{i}" for i in range(16))
    assert order[-1] == "a0"


class CountingHandover(Handover):
    """Counts the messages handed out and not yet answered at every pull: what a crash then
    would leave uncertain (marked as being handed over, outcome not recorded)."""

    def __init__(self, messages: list[OutgoingMessage]) -> None:
        super().__init__(messages)
        self.taken = self.answered = 0
        self.uncertain: list[int] = []

    def allow(self, window):  # type: ignore[no-untyped-def]
        self.taken += len(window)
        self.uncertain.append(self.taken - self.answered)
        return window


@given(bound=st.integers(1, 12), n=st.integers(1, 40))
@settings(max_examples=20, deadline=None)
def test_never_more_messages_handed_out_unanswered_than_the_window(bound: int, n: int) -> None:
    sender = ConcurrentSender(_provider(set(), 0.0), max_in_flight=bound, policy=RetryPolicy())
    handover = CountingHandover(_messages(n))
    try:
        for _ in sender.stream(handover):
            handover.answered += 1
    finally:
        sender.close()
    assert handover.answered == n
    assert max(handover.uncertain) <= bound
