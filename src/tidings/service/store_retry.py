"""Store reads a connection cannot do without, tried again after a short outage.

A user agent's stored messages are read once, when it connects; a read lost to a
passing outage (SQLite "database is locked", a PostgreSQL pool timeout in a
reconnection storm) would leave them undelivered until its next connection, hours
later. So that read is tried again with exponential backoff and jitter, and only
then does the caller give up (close 1013 or answer 503: the client comes back).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tidings.service.store import StoreUnavailable

T = TypeVar("T")
Clock = Callable[[], float] | None

RETRY_FIRST_DELAY = 0.1  # seconds before the first retry; each next one doubles
RETRY_MAX_DELAY = 3.2
RETRIES = 6  # 0.1 + 0.2 + ... + 3.2: at most about 6.3 s of waiting


def retry_delays() -> list[float]:
    """The waits before each retry, each drawn from [half, all] of its doubling step so
    thousands of connections cut off together do not retry in step."""
    steps = [min(RETRY_MAX_DELAY, RETRY_FIRST_DELAY * 2**n) for n in range(RETRIES)]
    return [step * random.uniform(0.5, 1.0) for step in steps]


async def retry_read(read: Callable[[], Awaitable[T]], closed: asyncio.Event | None = None) -> T:
    """`read()` again after a failed first try; raises the last StoreUnavailable once the
    retries run out, or at once when `closed` is set (nobody is left to read for)."""
    last: StoreUnavailable | None = None
    for delay in retry_delays():
        if closed is None:
            await asyncio.sleep(delay)
        else:
            try:
                await asyncio.wait_for(closed.wait(), delay)
            except TimeoutError:
                pass
            else:
                raise last or StoreUnavailable("the connection closed while the store was down")
        try:
            return await read()
        except StoreUnavailable as exc:
            last = exc
    raise last or StoreUnavailable("no retries")


class WarningTally:
    """One warning line per interval for a failure that strikes many connections at once.

    A store outage under a reconnection storm made tens of thousands of identical
    "cannot load stored messages" lines in a second; the first of an interval is logged,
    the others are counted and their number is told with the next one logged."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0, clock: Clock = None) -> None:
        self._log, self._interval = logger, interval
        self._clock = clock or time.monotonic
        self._next = float("-inf")  # when the next line may be written
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        now = self._clock()
        if now < self._next:
            self._suppressed += 1
            return
        if self._suppressed:
            message += " (and %d more like it not logged)"
            args = (*args, self._suppressed)
        self._log.warning(message, *args)
        self._suppressed = 0
        self._next = now + self._interval
