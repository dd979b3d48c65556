"""The dashboard's per-second history: sampled from running totals once a second.

`ServiceMetrics` (metrics.py) keeps running totals on the hot paths (pushes by status,
deliveries, acknowledgements, delivery latencies in a logarithmic sketch); a
`StatsHistory` turns them into the figures of each of the last `HISTORY_SECONDS`
seconds, with the connections and stored messages of the moment each was closed, and
delivery latency percentiles per second and over a window.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

#: Seconds of per-second history kept for the dashboard.
HISTORY_SECONDS = 600

# The per-second latency sketch: logarithmic bins, ten per decade from 0.1 ms, so a
# percentile read from it is within about 12 % of the exact one.
SKETCH_FLOOR = 1e-4
SKETCH_BINS_PER_DECADE = 10
SKETCH_BINS = 100  # 0.1 ms .. 10^6 s


def sketch_bin(seconds: float) -> int:
    """The latency sketch bin of a duration."""
    if seconds <= SKETCH_FLOOR:
        return 0
    index = int(math.log10(seconds / SKETCH_FLOOR) * SKETCH_BINS_PER_DECADE)
    return min(index, SKETCH_BINS - 1)


def sketch_value(index: int) -> float:
    """The duration a bin stands for (its geometric middle)."""
    return SKETCH_FLOOR * 10 ** ((index + 0.5) / SKETCH_BINS_PER_DECADE)


def sketch_percentiles(
    sketch: dict[int, int], quantiles: tuple[float, ...] = (0.5, 0.9, 0.99)
) -> list[float | None]:
    """The given quantiles of a latency sketch (None for an empty one)."""
    total = sum(sketch.values())
    if total == 0:
        return [None for _ in quantiles]
    ordered = sorted(sketch.items())
    results: list[float | None] = []
    for q in quantiles:
        rank = max(1, math.ceil(q * total))
        seen = 0
        for index, count in ordered:
            seen += count
            if seen >= rank:
                results.append(round(sketch_value(index), 6))
                break
    return results


@dataclass(slots=True)
class Second:
    """The figures of one second of wall-clock time."""

    t: int
    pushes: list[int] = field(default_factory=lambda: [0, 0, 0])  # 2xx, 4xx, 5xx
    deliveries: int = 0
    acks: int = 0
    connections: int = 0
    stored: int | None = None
    latency: dict[int, int] = field(default_factory=dict)


#: A status class (2, 4, 5 for 2xx, 4xx, 5xx) to its index in `Second.pushes`.
STATUS_CLASS_INDEX = {2: 0, 4: 1, 5: 2}


@dataclass(slots=True)
class Totals:
    """The running totals the history samples: pushes by status class (2xx, 4xx, 5xx),
    deliveries, acknowledgements and the delivery latency sketch (count per bin)."""

    pushes: list[int]
    deliveries: int
    acks: int
    sketch: list[int]


class Timer(Protocol):
    def cancel(self) -> None: ...


#: Starts a timer: `(delay, callback)` to a handle, or None when it cannot (no running
#: event loop: the history is then closed only when it is read, or the next event comes).
TimerStart = Callable[[float, Callable[[], None]], Timer | None]


def loop_timer(delay: float, callback: Callable[[], None]) -> Timer | None:
    """`callback` after `delay` seconds on the running event loop, if there is one."""
    loop = asyncio.events._get_running_loop()
    return None if loop is None else loop.call_later(delay, callback)


class StatsHistory:
    """Per-second figures for the last `seconds` seconds, sampled from running totals.

    The hot paths only add to the totals (`ServiceMetrics`' hooks); a second's figures
    are the difference between two readings of them, taken by a timer at the first loop
    turn after each wall-clock second begins (so an event of the loop turn that
    straddles the boundary counts in the second before). The timer stops after a
    second without events, so nothing runs while the service is idle; the next event
    (`wake`) closes the seconds missed since, as empty ones, and starts it again.
    Reading the history closes the current second first when the clock has left it.
    """

    def __init__(
        self,
        read: Callable[[], Totals],
        connections: Callable[[], int],
        *,
        seconds: int = HISTORY_SECONDS,
        clock: Callable[[], float] = time.time,
        timer: TimerStart = loop_timer,
    ) -> None:
        self._read = read
        self._connections = connections
        self._clock = clock
        self._timer = timer
        self._handle: Timer | None = None
        self.closed: deque[Second] = deque(maxlen=seconds)
        self.t = int(clock())  # the current second
        self._base = read()  # the totals when it began
        self.stored: int | None = None  # the last count read from the store
        #: True while no timer closes the seconds: the hooks call `wake` first.
        self.asleep = True

    @property
    def current(self) -> Second:
        """The current second's figures so far."""
        return self._since(self._base, self._read(), self.t)

    def wake(self) -> None:
        """An event is about to be counted: close the seconds the clock has left (their
        events came before), and start the timer that closes the next ones."""
        self._catch_up()
        handle = self._timer(self._until_next(), self._tick)
        if handle is not None:
            self._handle = handle
            self.asleep = False

    def close(self) -> None:
        """Stop the timer (the service stops); the history is read lazily after."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.asleep = True

    def _until_next(self) -> float:
        return max(0.0, self.t + 1 - self._clock())

    def _tick(self) -> None:
        self._handle = None
        closed = self._catch_up()
        if closed is not None and self._is_empty(closed):
            self.asleep = True  # idle: the next event wakes the history
            return
        self._handle = self._timer(self._until_next(), self._tick)
        self.asleep = self._handle is None

    @staticmethod
    def _is_empty(second: Second) -> bool:
        return not (second.deliveries or second.acks or any(second.pushes))

    def _catch_up(self) -> Second | None:
        """Close the current second if the clock has left it; the one closed, if any."""
        second = int(self._clock())
        if second == self.t:
            return None
        reading = self._read()
        if second < self.t:  # the wall clock went back: start a new second
            self.t, self._base = second, reading
            return None
        connections = self._connections()
        done = self._since(self._base, reading, self.t)
        done.connections = connections
        done.stored = self.stored
        self.closed.append(done)
        maxlen = self.closed.maxlen or 0
        for t in range(max(done.t + 1, second - maxlen), second):
            self.closed.append(Second(t, connections=connections, stored=self.stored))
        self.t, self._base = second, reading
        return done

    @staticmethod
    def _since(base: Totals, now: Totals, t: int) -> Second:
        """The figures counted between two readings, as second `t`'s."""
        latency = {
            index: count - before
            for index, (before, count) in enumerate(zip(base.sketch, now.sketch, strict=True))
            if count != before
        }
        return Second(
            t,
            pushes=[now.pushes[i] - base.pushes[i] for i in range(3)],
            deliveries=now.deliveries - base.deliveries,
            acks=now.acks - base.acks,
            latency=latency,
        )

    # Reading --------------------------------------------------------------------------

    def seconds(self, last: int = HISTORY_SECONDS) -> list[Second]:
        """The closed seconds, oldest first, at most `last` of them."""
        self._catch_up()
        if last >= len(self.closed):
            return list(self.closed)
        return list(self.closed)[-last:] if last > 0 else []

    def window_latency(self, last: int) -> dict[str, float | int | None]:
        """Delivery latency percentiles over the last `last` seconds (current included)."""
        merged: dict[int, int] = {}
        for second in [*self.seconds(last), self.current]:
            for index, count in second.latency.items():
                merged[index] = merged.get(index, 0) + count
        p50, p90, p99 = sketch_percentiles(merged)
        return {"count": sum(merged.values()), "p50": p50, "p90": p90, "p99": p99}
