"""The window of requests in flight: what it does with the provider's answers (pure rule)."""

from __future__ import annotations

import threading

from dispatch.channels.retry import InFlightWindow
from hypothesis import given
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
