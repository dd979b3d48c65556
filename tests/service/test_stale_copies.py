"""Copies held past FRESH_FOR are checked against the store before they are written
(hub.StaleCopies; found by the fault campaign, docs/reliability.md finding 5)."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from support.channels import PushingChannel
from tidings.service.hub import FRESH_FOR, StaleCopies
from tidings.service.monitor import PushMonitor
from tidings.service.store import StoredMessage
from tidings.webpush import Urgency

UAID = "u" * 32


def message(message_id: str, created_at: float) -> StoredMessage:
    return StoredMessage(message_id, UAID, "c", b"", 600, created_at, created_at + 600)


class Store:
    """The user agent's stored messages, and how often they were read."""

    def __init__(self, *stored: StoredMessage) -> None:
        self.stored = list(stored)
        self.reads = 0

    async def pending(self, uaid: str = UAID) -> list[StoredMessage]:
        self.reads += 1
        return list(self.stored)


async def test_fresh_copies_cost_no_read_and_one_read_serves_the_stale_ones() -> None:
    now = time.time()
    kept, deleted = message("kept", now - 60), message("deleted", now - 60)
    store = Store(kept)
    stale = StaleCopies()
    assert await stale.stands(deleted, now, store.pending)  # known to stand just now
    assert store.reads == 0
    assert await stale.stands(kept, now - 2 * FRESH_FOR, store.pending)
    assert not await stale.stands(deleted, now - 2 * FRESH_FOR, store.pending)
    assert store.reads == 1
    newer = message("newer", time.time() + 0.001)  # created after that read: read again
    store.stored.append(newer)
    assert await stale.stands(newer, now - 2 * FRESH_FOR, store.pending)
    assert store.reads == 2


async def test_a_monitor_does_not_push_a_stale_copy_deleted_meanwhile() -> None:
    now = time.time()
    kept, deleted = message("kept", now - 60), message("deleted", now - 60)
    store = Store(kept)

    async def no_subscription(uaid: str, channel_id: str) -> None:
        return None

    service: Any = SimpleNamespace(
        store=SimpleNamespace(get_subscription=no_subscription),
        pending=store.pending,
        message_path=lambda ref: "/m/" + ref.message_id,
        metrics=SimpleNamespace(delivered=lambda message: None),
        note_delivered=lambda message, via: None,
    )
    channel = PushingChannel()
    monitor = PushMonitor(service, channel, UAID, None, Urgency.VERY_LOW)  # type: ignore[arg-type]
    held_since = now - 2 * FRESH_FOR  # read (or accepted) that long ago, then held
    assert not await monitor._push(deleted, held_since)
    assert await monitor._push(kept, held_since)
    assert await monitor._push(message("fresh", now), now)  # no read for a fresh one
    assert channel.pushed == ["/m/kept", "/m/fresh"]
    assert store.reads == 1


async def test_a_slow_reader_costs_at_most_one_read_per_freshness_window(monkeypatch: Any) -> None:
    """A connection that reads slowly on purpose holds every copy past FRESH_FOR: on a
    fake clock, 2,000 stale copies over 20 windows cost at most one read per window."""
    clock = SimpleNamespace(now=1_000_000.0)
    monkeypatch.setattr("tidings.service.hub.time", SimpleNamespace(time=lambda: clock.now))
    windows, per_window = 20, 100
    step = FRESH_FOR / per_window
    # Accepted one per step, each written 2 * FRESH_FOR after it was accepted.
    copies = [
        message(f"m{i}", clock.now - 2 * FRESH_FOR + i * step) for i in range(windows * per_window)
    ]
    store, stale = Store(*copies), StaleCopies()
    for copy in copies:
        assert await stale.stands(copy, copy.created_at, store.pending)
        clock.now += step
    assert store.reads <= windows + 1
