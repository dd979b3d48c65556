"""What the service counts: Prometheus metrics and a short per-second history.

`ServiceMetrics` belongs to one `PushService` (its own Prometheus registry, so several
services in one process never mix their figures). The service calls a handful of
cheap hooks on its hot paths (a push answered, a notification sent, an ack); each is a
few integer additions to running totals, exposed to Prometheus at scrape time
(`exposition.py`).

`/metrics` renders the registry; `/api/stats` (the dashboard) reads `snapshot()`:
totals, and for each of the last ten minutes' seconds the pushes by status class,
deliveries, connections, stored messages and delivery latency percentiles. Those are
sampled from the running totals once a second by a timer (`StatsHistory`), not per
event; the timer stops after an idle second, so nothing runs while the service is idle.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Sized
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.process_collector import ProcessCollector

from tidings.service.exposition import LabelledCounter, LatencyHistogram, PlainCollector
from tidings.service.http.admission import ConnectionAdmission
from tidings.service.stats_history import (
    HISTORY_SECONDS,
    SKETCH_BINS,
    SKETCH_BINS_PER_DECADE,
    SKETCH_FLOOR,
    STATUS_CLASS_INDEX,
    StatsHistory,
    Totals,
    sketch_bin,
    sketch_percentiles,
    sketch_value,
)
from tidings.service.store import StoredMessage, StoreUnavailable

__all__ = [
    "HISTORY_SECONDS",
    "METRICS_CONTENT_TYPE",
    "ServiceMetrics",
    "StatsHistory",
    "sketch_bin",
    "sketch_percentiles",
    "sketch_value",
]

log = logging.getLogger("tidings.metrics")

#: The classic text exposition format, which every Prometheus version reads.
METRICS_CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

#: Firefox's ack codes (100 delivered, 101 decryption failed, 102 other error); any
#: other integer a client sends is counted as OTHER_ACK_CODE (a label per code would
#: let a client add series without end).
ACK_CODES = frozenset({100, 101, 102})
OTHER_ACK_CODE = 0

#: `stored_messages` and `subscriptions` are counted in the store at most this often.
STORE_COUNT_INTERVAL = 5.0

#: Delivery latency buckets (seconds): sub-millisecond live delivery up to messages
#: that waited a day for their user agent to come back.
DELIVERY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0, 21600.0, 86400.0,
)  # fmt: skip
STORE_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip

T = TypeVar("T")


class ServiceMetrics:
    """The metrics of one push service: hooks, the registry, the history."""

    def __init__(self, connections: Sized, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.connections_source = connections
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        # The push path's counts are plain numbers, read at scrape time (exposition.py).
        self.pushes: LabelledCounter[int] = LabelledCounter()
        self.acks: LabelledCounter[int] = LabelledCounter()
        self.delivery_total = 0
        self.acknowledged_unstored_total = 0
        self.delivery_latency = LatencyHistogram(DELIVERY_BUCKETS)
        self.store_latency: dict[str, LatencyHistogram] = {}
        started = time.time()
        registry.register(
            PlainCollector(
                counters=[
                    (
                        "tidings_pushes",
                        "Push requests (POST to a push resource) answered, by HTTP status",
                        "status",
                        self.pushes,
                    ),
                    (
                        "tidings_acks",
                        "Acknowledgements from user agents, by code (100 delivered, 101 "
                        "decryption failed, 102 other error, 0 any other code)",
                        "code",
                        self.acks,
                    ),
                ],
                totals=[
                    (
                        "tidings_deliveries",
                        "Notifications sent to connected user agents",
                        lambda: self.delivery_total,
                        started,
                    ),
                    (
                        "tidings_pushes_acknowledged_unstored",
                        "Pushes acknowledged by their user agent within live_ack_wait, "
                        "answered without being stored",
                        lambda: self.acknowledged_unstored_total,
                        started,
                    ),
                ],
                histograms=[
                    (
                        "tidings_delivery_latency_seconds",
                        "From accepting a push to sending it to the user agent (includes "
                        "time the message waited for an offline user agent)",
                        "",
                        lambda: {"": self.delivery_latency},
                    ),
                    (
                        "tidings_store_latency_seconds",
                        "Duration of store calls, by operation",
                        "operation",
                        lambda: self.store_latency,
                    ),
                ],
            )
        )
        self.rate_limited = Counter(
            "tidings_rate_limited",
            "Requests refused with 429 Too Many Requests, by kind (push, register)",
            ["kind"],
            registry=registry,
        )
        self.stored_messages = Gauge(
            "tidings_stored_messages",
            f"Messages stored and not yet acknowledged or expired (counted at most every "
            f"{STORE_COUNT_INTERVAL:g} s)",
            registry=registry,
        )
        self.subscriptions = Gauge(
            "tidings_subscriptions",
            f"Subscriptions in the store (counted at most every {STORE_COUNT_INTERVAL:g} s)",
            registry=registry,
        )
        self.connected = Gauge(
            "tidings_connected_user_agents",
            "User agents holding a WebSocket connection to this node",
            registry=registry,
        )
        self.connected.set_function(lambda: float(len(connections)))
        ProcessCollector(registry=registry)
        # By status and by code, for the snapshot: the counters' own dicts.
        self.push_totals = self.pushes.counts
        self.ack_totals = self.acks.counts
        # Delivery latencies by sketch bin, for the history (which samples it per second).
        self.delivery_sketch = [0] * SKETCH_BINS
        self.history = StatsHistory(self.running_totals, lambda: len(connections), clock=clock)
        self._limited_push = self.rate_limited.labels("push")
        self._limited_register = self.rate_limited.labels("register")
        self.subscription_count: int | None = None
        self._counted_at = -math.inf
        self._counting: asyncio.Task[None] | None = None

    def watch_connections(self, admission: ConnectionAdmission) -> None:
        """The server's open client connections and those its caps refused."""
        open_connections = Gauge(
            "tidings_open_connections",
            "Client connections open in this process (all protocols), as max_connections "
            "counts them",
            registry=self.registry,
        )
        open_connections.set_function(lambda: float(admission.total))
        handshakes = Gauge(
            "tidings_tls_handshakes",
            "TLS handshakes in progress in this process (counted in tidings_open_connections)",
            registry=self.registry,
        )
        handshakes.set_function(lambda: float(admission.handshakes))
        started = time.time()
        self.registry.register(
            PlainCollector(
                totals=[
                    (
                        "tidings_connections_refused_address",
                        "New connections refused: their address held max_connections_per_address",
                        lambda: admission.refused_address,
                        started,
                    ),
                    (
                        "tidings_connections_refused_node",
                        "New connections closed at once: this process held max_connections",
                        lambda: admission.refused_node,
                        started,
                    ),
                    (
                        "tidings_connections_refused_handshake",
                        "New TLS connections closed at once: their address held "
                        "max_tls_handshakes_per_address handshakes in progress",
                        lambda: admission.refused_handshake,
                        started,
                    ),
                ]
            )
        )

    # Hooks on the hot paths -----------------------------------------------------------
    # Each adds to running totals only; the per-second history samples them (wakes it
    # first when it sleeps, after an idle second).

    def push_answered(self, status: int) -> None:
        """A push request got `status` (counted by the routes for push paths)."""
        if self.history.asleep:
            self.history.wake()
        self.pushes.add(status)
        if status == 429:
            self._limited_push.inc()

    def delivered(self, message: StoredMessage) -> None:
        """A notification frame for `message` went to its user agent."""
        if self.history.asleep:
            self.history.wake()
        latency = self._clock() - message.created_at
        if latency < 0.0:
            latency = 0.0
        self.delivery_total += 1
        histogram = self.delivery_latency  # its `observe`, without the call
        histogram.counts[bisect_left(histogram.bounds, latency)] += 1
        histogram.total += latency
        # `sketch_bin`, without the call.
        if latency <= SKETCH_FLOOR:
            self.delivery_sketch[0] += 1
        else:
            index = int(math.log10(latency / SKETCH_FLOOR) * SKETCH_BINS_PER_DECADE)
            self.delivery_sketch[index if index < SKETCH_BINS else SKETCH_BINS - 1] += 1

    def acknowledged(self, code: int) -> None:
        """A user agent acknowledged a message with `code`."""
        if self.history.asleep:
            self.history.wake()
        # The code is the client's integer: other codes share one label, or each new
        # one would be a series kept forever.
        self.acks.add(code if code in ACK_CODES else OTHER_ACK_CODE)

    def acknowledged_unstored(self) -> None:
        """A push was acknowledged before it had to be stored (live_acks.py)."""
        self.acknowledged_unstored_total += 1

    def running_totals(self) -> Totals:
        """The running totals, as the history samples them."""
        classes = [0, 0, 0]
        for status, count in self.push_totals.items():
            index = STATUS_CLASS_INDEX.get(status // 100)
            if index is not None:
                classes[index] += count
        return Totals(
            classes,
            self.delivery_total,
            sum(self.ack_totals.values()),
            list(self.delivery_sketch),
        )

    def close(self) -> None:
        """The service stops: no timer of the history is left behind."""
        self.history.close()

    def register_refused(self, status: int) -> None:
        """A `register` was refused with `status` (only 429 is counted)."""
        if status == 429:
            self._limited_register.inc()

    # The store ------------------------------------------------------------------------

    def instrument_store(self, store: T) -> T:
        """Time every public coroutine method of `store` (wrapped on the instance).

        The object keeps its type and its other attributes; a store whose instances
        cannot take attributes (slots) is left untimed.
        """
        for name in dir(type(store)):
            if name.startswith("_"):
                continue
            method = getattr(store, name, None)
            if method is None or not inspect.iscoroutinefunction(method):
                continue
            histogram = LatencyHistogram(STORE_BUCKETS)
            timed = _timed(method, functools.partial(self._first_store_call, name, histogram))
            try:
                setattr(store, name, timed)
            except AttributeError:
                log.debug("store %s cannot be timed", type(store).__name__)
                return store
        return store

    def _first_store_call(self, operation: str, histogram: LatencyHistogram) -> LatencyHistogram:
        """Show `operation`'s series from its first call on, not one per method up front."""
        self.store_latency[operation] = histogram
        return histogram

    async def refresh_counts(self, store: Any) -> None:
        """Count stored messages (and subscriptions, when the store can) if stale.

        At most once every STORE_COUNT_INTERVAL seconds, and never twice at once.
        """
        now = time.monotonic()
        if now - self._counted_at < STORE_COUNT_INTERVAL:
            return
        if self._counting is not None and not self._counting.done():
            await asyncio.shield(self._counting)
            return
        self._counted_at = now
        self._counting = asyncio.ensure_future(self._count(store))
        await asyncio.shield(self._counting)

    async def _count(self, store: Any) -> None:
        try:
            stored = int(await store.count_messages())
            subscriptions: int | None = int(await store.count_all_subscriptions())
        except StoreUnavailable as exc:
            log.warning("cannot count stored messages: %s", exc)
            return
        self.stored_messages.set(stored)
        self.history.stored = stored
        if subscriptions is not None:
            self.subscription_count = subscriptions
            self.subscriptions.set(subscriptions)

    # Reading --------------------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    def snapshot(self, seconds: int = HISTORY_SECONDS) -> dict[str, Any]:
        """Totals, latency over the last minute and ten minutes, per-second history."""
        history = self.history.seconds(seconds)
        columns: dict[str, list[Any]] = {
            "t": [],
            "pushes_2xx": [],
            "pushes_4xx": [],
            "pushes_5xx": [],
            "deliveries": [],
            "acks": [],
            "connections": [],
            "stored": [],
            "p50": [],
            "p90": [],
            "p99": [],
        }
        for second in history:
            columns["t"].append(second.t)
            columns["pushes_2xx"].append(second.pushes[0])
            columns["pushes_4xx"].append(second.pushes[1])
            columns["pushes_5xx"].append(second.pushes[2])
            columns["deliveries"].append(second.deliveries)
            columns["acks"].append(second.acks)
            columns["connections"].append(second.connections)
            columns["stored"].append(second.stored)
            p50, p90, p99 = sketch_percentiles(second.latency)
            columns["p50"].append(p50)
            columns["p90"].append(p90)
            columns["p99"].append(p99)
        return {
            "time": round(self._clock(), 3),
            "totals": {
                "pushes": {str(k): v for k, v in sorted(self.push_totals.items())},
                "pushes_accepted": sum(v for k, v in self.push_totals.items() if k < 300),
                "deliveries": self.delivery_total,
                "acks": {str(k): v for k, v in sorted(self.ack_totals.items())},
                "rate_limited": self.push_totals.get(429, 0),
                "connections": len(self.connections_source),
                "stored": self.history.stored,
                "subscriptions": self.subscription_count,
            },
            "latency": {
                "last_minute": self.history.window_latency(60),
                "last_10_minutes": self.history.window_latency(HISTORY_SECONDS),
            },
            "history": {"interval": 1, **columns},
        }


def _timed(
    method: Callable[..., Awaitable[T]], first_use: Callable[[], LatencyHistogram]
) -> Callable[..., Awaitable[T]]:
    """`method`, observing its duration in the histogram `first_use` returns."""
    clock = time.perf_counter
    histogram: LatencyHistogram | None = None

    @functools.wraps(method)
    async def timed(*args: Any, **kwargs: Any) -> T:
        nonlocal histogram
        started = clock()
        try:
            return await method(*args, **kwargs)
        finally:
            elapsed = clock() - started
            if histogram is None:
                histogram = first_use()
            # The histogram's `observe`, without the call (two store calls a push).
            histogram.counts[bisect_left(histogram.bounds, elapsed)] += 1
            histogram.total += elapsed

    return timed
