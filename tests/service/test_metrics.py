"""ServiceMetrics and its per-second history, without sockets (a fake clock)."""

from __future__ import annotations

import asyncio
import time

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
    connections = [3]
    history = StatsHistory(lambda: connections[0], seconds=10, clock=clock)
    history.push(201)
    history.push(201)
    history.push(404)
    history.push(503)
    history.push(101)  # not a class the history keeps
    history.delivery(0.002)
    history.ack()
    clock.now += 1
    connections[0] = 4
    history.stored = 7
    clock.now += 3  # three idle seconds
    seconds = history.seconds()
    assert [s.t for s in seconds] == [1_000_000, 1_000_001, 1_000_002, 1_000_003]
    first = seconds[0]
    assert first.pushes == [2, 1, 1] and first.deliveries == 1 and first.acks == 1
    assert first.connections == 4  # sampled when the second was closed
    assert all(s.pushes == [0, 0, 0] and s.stored == 7 for s in seconds[1:])
    # A long idle spell keeps only the window, without looping over every second.
    clock.now += 10**7
    assert len(history.seconds()) == 10
    assert history.seconds(3)[-1].t == int(clock.now) - 1
    # The wall clock stepping back does not break anything.
    clock.now -= 100
    history.push(201)
    assert history.current.pushes == [1, 0, 0]


def test_window_latency_merges_seconds() -> None:
    clock = Clock()
    history = StatsHistory(lambda: 0, clock=clock)
    history.delivery(0.001)
    clock.now += 1
    history.delivery(0.1)
    clock.now += 100
    history.delivery(10.0)
    last_minute = history.window_latency(60)
    assert last_minute["count"] == 1
    everything = history.window_latency(HISTORY_SECONDS)
    assert everything["count"] == 3
    assert everything["p50"] is not None and 0.08 < float(everything["p50"]) < 0.12


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
