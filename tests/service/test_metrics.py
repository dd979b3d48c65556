"""ServiceMetrics and its per-second history, without sockets (a fake clock)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from tidings.service.metrics import (
    HISTORY_SECONDS,
    ServiceMetrics,
    StatsHistory,
    sketch_bin,
    sketch_percentiles,
    sketch_value,
)
from tidings.service.store import StoredMessage


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def message(created_at: float) -> StoredMessage:
    return StoredMessage("m1", "ua", "ch", b"", 60, created_at, created_at + 60)


def test_sketch_is_within_its_resolution() -> None:
    for seconds in (0.0002, 0.001, 0.0123, 0.5, 3.0, 4000.0):
        estimate = sketch_value(sketch_bin(seconds))
        assert abs(estimate - seconds) / seconds < 0.13, seconds
    assert sketch_bin(0) == 0 and sketch_bin(-1) == 0
    assert sketch_bin(10**9) == 99  # clamped, not an IndexError


def test_sketch_percentiles() -> None:
    assert sketch_percentiles({}) == [None, None, None]
    sketch: dict[int, int] = {}
    for ms in range(1, 101):  # 1..100 ms, uniform
        index = sketch_bin(ms / 1000)
        sketch[index] = sketch.get(index, 0) + 1
    p50, p90, p99 = sketch_percentiles(sketch)
    assert p50 is not None and p90 is not None and p99 is not None
    assert 0.044 < p50 < 0.057 and 0.079 < p90 < 0.102 and 0.088 < p99 < 0.113


def test_history_closes_seconds_lazily_and_fills_gaps() -> None:
    clock = Clock()
    connected = ["a", "b", "c"]
    metrics = ServiceMetrics(connected, clock=clock)
    # No event loop, so no timer: seconds are closed when read or at the next event.
    history = metrics.history = StatsHistory(
        metrics.running_totals,
        lambda: len(connected),
        seconds=10,
        clock=clock,
    )
    metrics.push_answered(201)
    metrics.push_answered(201)
    metrics.push_answered(404)
    metrics.push_answered(503)
    metrics.push_answered(101)  # not a class the history keeps
    metrics.delivered(message(clock.now - 0.002))
    metrics.acknowledged(100)
    clock.now += 1
    connected.append("d")
    history.stored = 7
    clock.now += 3  # three idle seconds
    seconds = history.seconds()
    assert [s.t for s in seconds] == [1_000_000, 1_000_001, 1_000_002, 1_000_003]
    first = seconds[0]
    assert first.pushes == [2, 1, 1] and first.deliveries == 1 and first.acks == 1
    assert first.latency == {sketch_bin(0.002): 1}
    assert first.connections == 4  # sampled when the second was closed
    assert all(s.pushes == [0, 0, 0] and s.stored == 7 for s in seconds[1:])
    # A long idle spell keeps only the window, without looping over every second.
    clock.now += 10**7
    assert len(history.seconds()) == 10
    assert history.seconds(3)[-1].t == int(clock.now) - 1
    # The wall clock stepping back does not break anything.
    clock.now -= 100
    metrics.push_answered(201)
    assert history.current.pushes == [1, 0, 0]
    assert history.current.t == int(clock.now)


def test_window_latency_merges_seconds() -> None:
    clock = Clock()
    metrics = ServiceMetrics([], clock=clock)
    history = metrics.history
    metrics.delivered(message(clock.now - 0.001))
    clock.now += 1
    metrics.delivered(message(clock.now - 0.1))
    clock.now += 100
    metrics.delivered(message(clock.now - 10.0))
    last_minute = history.window_latency(60)
    assert last_minute["count"] == 1
    everything = history.window_latency(HISTORY_SECONDS)
    assert everything["count"] == 3
    assert everything["p50"] is not None and 0.08 < float(everything["p50"]) < 0.12


class Timers:
    """Timers started by the history, fired by hand."""

    def __init__(self) -> None:
        self.started: list[tuple[float, Callable[[], None]]] = []
        self.cancelled = 0

    def __call__(self, delay: float, callback: Callable[[], None]) -> Timers:
        self.started.append((delay, callback))
        return self

    def cancel(self) -> None:
        self.cancelled += 1

    def fire(self) -> None:
        _, callback = self.started.pop()
        callback()


def test_history_is_sampled_once_a_second_and_sleeps_when_idle() -> None:
    """The hooks only add to running totals; a timer at each wall-clock second closes
    the second just ended with what was counted since the one before, and stops after
    a second without events (the next event starts it again)."""
    clock = Clock(1_000_000.25)
    timers = Timers()
    connected = ["a"]
    metrics = ServiceMetrics(connected, clock=clock)
    history = metrics.history = StatsHistory(
        metrics.running_totals,
        lambda: len(connected),
        clock=clock,
        timer=timers,
    )
    assert timers.started == []  # nothing runs before the first event
    metrics.push_answered(201)
    assert [delay for delay, _ in timers.started] == [pytest.approx(0.75)]
    metrics.push_answered(201)
    metrics.delivered(message(clock.now - 0.01))
    assert len(timers.started) == 1  # one timer, however many events
    clock.now = 1_000_001.001
    metrics.push_answered(500)  # after the boundary, before the timer's turn: in the first
    timers.fire()
    (first,) = history.closed
    assert first.t == 1_000_000 and first.pushes == [2, 0, 1] and first.deliveries == 1
    assert first.latency == {sketch_bin(0.01): 1}
    assert [delay for delay, _ in timers.started] == [pytest.approx(0.999)]
    metrics.acknowledged(100)
    connected.append("b")
    clock.now = 1_000_002.0
    timers.fire()
    second = history.closed[-1]
    assert (second.t, second.pushes, second.acks, second.connections) == (
        1_000_001,
        [0, 0, 0],
        1,
        2,
    )
    assert len(timers.started) == 1 and not history.asleep
    clock.now = 1_000_003.0
    timers.fire()  # a second without events: the timer stops
    assert timers.started == [] and history.asleep
    assert history.closed[-1].t == 1_000_002 and history.closed[-1].acks == 0
    clock.now = 1_000_006.5
    metrics.push_answered(201)  # wakes it: the idle seconds are closed, empty
    assert [s.t for s in history.closed][-4:] == [1_000_002, 1_000_003, 1_000_004, 1_000_005]
    assert all(s.pushes == [0, 0, 0] for s in list(history.closed)[-4:])
    assert history.current.pushes == [1, 0, 0]
    assert len(timers.started) == 1
    metrics.close()  # the service stops: its timer with it
    assert timers.cancelled == 1 and history.asleep
    # Prometheus sees the same totals, whatever the history's seconds.
    text = metrics.render().decode()
    assert 'tidings_pushes_total{status="201"} 3.0' in text
    assert 'tidings_pushes_total{status="500"} 1.0' in text


async def test_history_timer_runs_on_the_event_loop() -> None:
    clock = Clock()
    metrics = ServiceMetrics([], clock=clock)
    metrics.push_answered(201)  # a timer on the running loop, a second away at most
    assert not metrics.history.asleep
    metrics.close()
    assert metrics.history.asleep


def test_hooks_feed_prometheus_and_the_snapshot() -> None:
    clock = Clock()
    connected: list[str] = ["a", "b"]
    metrics = ServiceMetrics(connected, clock=clock)
    metrics.push_answered(201)
    metrics.push_answered(201)
    metrics.push_answered(429)
    metrics.push_answered(410)
    metrics.delivered(message(clock.now - 0.25))
    metrics.acknowledged(100)
    metrics.acknowledged(101)
    metrics.register_refused(429)
    metrics.register_refused(409)
    text = metrics.render().decode()
    assert 'tidings_pushes_total{status="201"} 2.0' in text
    assert 'tidings_pushes_total{status="429"} 1.0' in text
    assert 'tidings_rate_limited_total{kind="push"} 1.0' in text
    assert 'tidings_rate_limited_total{kind="register"} 1.0' in text
    assert 'tidings_acks_total{code="101"} 1.0' in text
    assert "tidings_connected_user_agents 2.0" in text
    assert 'tidings_delivery_latency_seconds_bucket{le="0.25"} 1.0' in text
    assert 'tidings_delivery_latency_seconds_bucket{le="0.1"} 0.0' in text
    clock.now += 1
    snapshot = metrics.snapshot()
    totals = snapshot["totals"]
    assert totals["pushes"] == {"201": 2, "410": 1, "429": 1}
    assert totals["pushes_accepted"] == 2 and totals["rate_limited"] == 1
    assert totals["deliveries"] == 1 and totals["acks"] == {"100": 1, "101": 1}
    assert totals["connections"] == 2
    history = snapshot["history"]
    assert history["pushes_2xx"] == [2] and history["pushes_4xx"] == [2]
    assert history["connections"] == [2]
    assert history["p50"][0] == pytest.approx(0.25, rel=0.13)


def test_two_services_do_not_share_figures() -> None:
    one, two = ServiceMetrics([]), ServiceMetrics([])
    one.push_answered(201)
    assert 'tidings_pushes_total{status="201"}' not in two.render().decode()


class FakeStore:
    """Only what the metrics touch; counts how often the store is asked."""

    def __init__(self) -> None:
        self.counted = 0
        self.gate: asyncio.Event | None = None

    async def count_messages(self) -> int:
        self.counted += 1
        if self.gate is not None:
            await self.gate.wait()
        return 42

    async def count_all_subscriptions(self) -> int:
        return 7

    async def store_message(self, value: int) -> int:
        await asyncio.sleep(0)
        return value * 2

    def not_a_coroutine(self) -> str:
        return "left alone"


async def test_store_counts_are_throttled_and_shared() -> None:
    metrics = ServiceMetrics([])
    store = FakeStore()
    store.gate = asyncio.Event()
    waiting = [asyncio.create_task(metrics.refresh_counts(store)) for _ in range(3)]
    await asyncio.sleep(0.01)
    store.gate.set()
    await asyncio.gather(*waiting)
    assert store.counted == 1
    await metrics.refresh_counts(store)  # within the interval: no query
    assert store.counted == 1
    assert metrics.history.stored == 42 and metrics.subscription_count == 7
    assert "tidings_stored_messages 42.0" in metrics.render().decode()
    assert "tidings_subscriptions 7.0" in metrics.render().decode()


async def test_instrumented_store_keeps_its_type_and_times_calls() -> None:
    metrics = ServiceMetrics([])
    store = FakeStore()
    assert metrics.instrument_store(store) is store
    assert isinstance(store, FakeStore)
    assert await store.store_message(21) == 42
    assert store.not_a_coroutine() == "left alone"
    text = metrics.render().decode()
    assert 'tidings_store_latency_seconds_count{operation="store_message"} 1.0' in text
    # Series appear on first use, not one per method up front.
    assert 'operation="count_messages"' not in text


def test_hooks_are_cheap() -> None:
    """A push hook must not slow pushes down: well under 20 µs even on a slow machine."""
    metrics = ServiceMetrics([])
    delivered = message(time.time())
    rounds = 20_000
    started = time.perf_counter()
    for _ in range(rounds):
        metrics.push_answered(201)
        metrics.delivered(delivered)
        metrics.acknowledged(100)
    per_push = (time.perf_counter() - started) / rounds
    assert per_push < 20e-6, f"{per_push * 1e6:.1f} µs for the three hooks of one push"
