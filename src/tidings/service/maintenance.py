"""The sweeps that keep the store bounded: expired messages, old statuses, stale receipt
subscriptions and user agents, each in bounded batches."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable

from tidings.service.cluster import LIVE_FORGET_BATCH
from tidings.service.service_base import ServiceBase
from tidings.service.store import StoreUnavailable

__all__ = [
    "RECEIPT_SUBSCRIPTION_GRACE",
    "RECEIPT_SWEEP_INTERVAL",
    "STATUS_SWEEP_BATCH",
    "USER_AGENT_SWEEP_BATCH",
    "Maintenance",
    "in_batches",
]

log = logging.getLogger("tidings.service")

# A TTL-0 message sent live that wants a receipt is never stored: its acknowledgement is
# awaited this long (seconds), then the service gives up on it (a 410 receipt).
LIVE_ACK_WAIT = 60.0

RECEIPT_SWEEP_INTERVAL = 3600.0  # seconds between two sweeps of receipt subscriptions
RECEIPT_SUBSCRIPTION_GRACE = 86400.0  # past the longest TTL, before an unused one goes
STATUS_SWEEP_BATCH = 1000  # message statuses forgotten per store call by the sweep
USER_AGENT_SWEEP_BATCH = 1000  # user agents forgotten per store call by the expiry sweep


async def in_batches(what: str, delete: Callable[[], Awaitable[int]], size: int) -> int:
    """Call `delete` (which removes at most `size` rows) until it removes fewer; the
    total. One bounded transaction at a time, so a backlog never becomes a huge one; a
    store that fails ends the sweep (logged; the next one goes on)."""
    removed = 0
    try:
        while True:
            batch = await delete()
            removed += batch
            if batch < size:
                return removed
    except StoreUnavailable as exc:
        log.warning("%s sweep failed: %s", what, exc)
        return removed


class Maintenance(ServiceBase):
    """The push service's background sweeps (started by `PushService.start`)."""

    async def _sweep_expired(self) -> None:
        last_receipt_sweep = time.monotonic()
        while True:
            await asyncio.sleep(self.config.expiry_sweep_interval)
            try:
                removed = await self.store.delete_expired(time.time())
            except StoreUnavailable as exc:
                log.warning("expiry sweep failed: %s", exc)
                continue
            if removed:
                log.info("removed %d expired messages", removed)
                self.hub.notify_all_receipts()  # some may have left a 410 receipt
            await self.sweep_statuses(time.time())
            await self.give_up_live_receipts(time.time())
            if time.monotonic() - last_receipt_sweep >= RECEIPT_SWEEP_INTERVAL:
                last_receipt_sweep = time.monotonic()
                await self._sweep_receipt_subscriptions()
                await self.sweep_user_agents(time.time())

    async def sweep_user_agents(self, now: float) -> int:
        """Forget user agents not seen for `user_agent_expiry`, with their subscriptions
        and messages (as autopush does after 60 days); return how many.

        Those connected to this node right now count as seen (a connection may outlive
        the expiry); each node marks its own before the sweep.
        """
        seen_before = now - self.config.user_agent_expiry
        try:
            await self.store.touch_user_agents(self.hub.connected_user_agents(), now)
        except StoreUnavailable as exc:
            log.warning("user agent sweep failed: %s", exc)
            return 0
        removed = await in_batches(
            "user agent",
            lambda: self.store.delete_stale_user_agents(seen_before, USER_AGENT_SWEEP_BATCH),
            USER_AGENT_SWEEP_BATCH,
        )
        if removed:
            log.info("forgot %d user agents not seen since %.0f", removed, seen_before)
        return removed

    async def give_up_live_receipts(self, now: float) -> None:
        """A 410 receipt for each TTL-0 message sent live and not acknowledged within
        LIVE_ACK_WAIT (RFC 8030 section 6.3: the service gave up on it), oldest first,
        LIVE_FORGET_BATCH at a time (one Redis round trip each on a cluster)."""
        table = self._live_receipts
        given_up_before = now - LIVE_ACK_WAIT
        while True:
            due = list(
                itertools.islice(
                    itertools.takewhile(
                        lambda receipt: receipt.created_at <= given_up_before, table.values()
                    ),
                    LIVE_FORGET_BATCH,
                )
            )
            if not due:
                return
            for receipt in due:
                del table[receipt.message_id]
            await self.give_up_live_receipt_batch(due)

    async def sweep_statuses(self, now: float) -> int:
        """Forget message statuses `message_status_retention` after their end (final
        state, or expiry), in batches; return how many."""
        ended_before = now - self.config.message_status_retention
        removed = await in_batches(
            "message status",
            lambda: self.store.delete_old_statuses(ended_before, STATUS_SWEEP_BATCH),
            STATUS_SWEEP_BATCH,
        )
        if removed:
            log.info("forgot %d message statuses", removed)
        return removed

    async def _sweep_receipt_subscriptions(self) -> None:
        """Receipt subscriptions unused for longer than any message can live (and a
        day), with no message naming them and no receipt waiting, are deleted: an
        application server asking for a new one on every push must not grow the
        store without bound. One named again after that gets a 400."""
        now = time.time()
        unused_since = now - self.config.max_ttl - RECEIPT_SUBSCRIPTION_GRACE
        try:
            for receipt_id in self.hub.monitored_receipts():  # a monitor is a use
                await self.store.use_receipt_subscription(receipt_id, now)
            removed = await self.store.delete_stale_receipt_subscriptions(unused_since)
        except StoreUnavailable as exc:
            log.warning("receipt subscription sweep failed: %s", exc)
            return
        if removed:
            log.info("removed %d unused receipt subscriptions", removed)
