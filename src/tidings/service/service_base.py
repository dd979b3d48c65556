"""What every part of the push service holds, and the calls they all use.

`ServiceBase` declares the state `PushService.__init__` sets up (store, hub, tokens,
limits...), turns tokens into references (404 when one does not open) and references
into URLs, and charges the rate limits. The parts of the service (`acceptance`,
`acknowledgements`, `message_status`, `subscriptions`, `maintenance`) build on it;
`tidings.service.core.PushService` puts them together.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace

from tidings import tracing
from tidings.service.cluster import ClusterBus
from tidings.service.config import ServiceConfig
from tidings.service.errors import Errno, ServiceError
from tidings.service.hub import Hub
from tidings.service.limits import (
    Limit,
    MemoryRateLimiter,
    RateLimiter,
    client_address,
    retry_after,
)
from tidings.service.live_acks import LiveAcks
from tidings.service.logs import escape
from tidings.service.megaphone import BroadcastKeeper
from tidings.service.metrics import ServiceMetrics
from tidings.service.store import MessageQuota, Receipt, Store, StoreUnavailable
from tidings.service.store_retry import WarningTally
from tidings.service.tokens import EndpointRef, MessageRef, TokenError, TokenSealer
from tidings.service.vapid_check import VapidChecker

__all__ = [
    "GONE_CACHE_CONTROL",
    "MESSAGE_PATH",
    "PUSH_PATH",
    "RECEIPT_PATH",
    "RETRY_AFTER_UNAVAILABLE",
    "SET_PATH",
    "SUBSCRIBE_PATH",
    "SUBSCRIPTION_PATH",
    "ServiceBase",
    "not_ready",
    "store_unavailable",
]

log = logging.getLogger("tidings.service")
# An outage fails every request at once: one line per interval, not one per request.
STORE_UNAVAILABLE = WarningTally(log)

PUSH_PATH = "/push/"
MESSAGE_PATH = "/m/"
SUBSCRIBE_PATH = "/subscribe"
SUBSCRIPTION_PATH = "/s/"
SET_PATH = "/set/"
RECEIPT_PATH = "/r/"
RETRY_AFTER_UNAVAILABLE = "5"
GONE_CACHE_CONTROL = "max-age=86400"  # a 410 stays true: senders and caches may remember it


def store_unavailable(exc: Exception) -> ServiceError:
    """The 503 (with Retry-After) for a request the store cannot serve now."""
    STORE_UNAVAILABLE.warning("store unavailable: %s", exc)
    return ServiceError(
        503,
        Errno.UNAVAILABLE,
        "the service cannot reach its store right now; retry later",
        headers={"retry-after": RETRY_AFTER_UNAVAILABLE},
    )


def not_ready() -> ServiceError:
    """The 503 of a node whose store could not be reached since it started."""
    return ServiceError(
        503,
        Errno.UNAVAILABLE,
        "the service is starting and cannot reach its store yet; retry later",
        headers={"retry-after": RETRY_AFTER_UNAVAILABLE},
    )


class ServiceBase:
    """The state of one node's push service (set by `PushService.__init__`)."""

    config: ServiceConfig
    store: Store
    cluster: ClusterBus
    node_id: str
    trace_book: tracing.TraceBook
    hub: Hub
    metrics: ServiceMetrics
    vapid: VapidChecker
    limits: RateLimiter
    broadcasts: BroadcastKeeper
    _sealer: TokenSealer | None
    _sweeper: asyncio.Task[None] | None
    _acks: list[tuple[str, str]]  # acknowledged, not yet deleted
    _ack_writer: asyncio.Task[None] | None
    # For statuses, not yet written: message id -> (uaid, via, at, TTL 0).
    _deliveries: dict[str, tuple[str, str, float, bool]]
    _delivery_writer: asyncio.Task[None] | None  # after the delay
    _delivery_flusher: asyncio.Task[None] | None  # at once (HTTP/2)
    # Sent messages wanting a receipt whose delivery is not recorded yet (the write
    # under way or failed), by id -> uaid: their acknowledgement records it first,
    # since a receipt is queued only for a message recorded as delivered.
    _unmarked: OrderedDict[str, str]
    # TTL-0 messages sent live that want a receipt, by id: never stored, their receipt
    # (204 on the acknowledgement, 410 past LIVE_ACK_WAIT) is kept here until then.
    _live_receipts: OrderedDict[str, Receipt]
    live_acks: LiveAcks  # pushes written before they were stored, awaiting their ack
    _redeliveries: dict[str, float]  # user agents whose redelivery is retried -> since
    _redelivery_tasks: set[asyncio.Task[None]]
    draining: bool
    ready: bool  # False while a store unreachable at start is tried again
    started_at: float
    quota: MessageQuota

    @property
    def sealer(self) -> TokenSealer:
        if self._sealer is None:
            raise RuntimeError("the service is not started")
        return self._sealer

    def endpoint_url(self, ref: EndpointRef) -> str:
        """The push resource URL (what the browser calls the subscription's endpoint)."""
        return self.config.origin + PUSH_PATH + self.sealer.seal_endpoint(ref)

    def message_path(self, ref: MessageRef) -> str:
        """The path of a push message resource (the same for the same message)."""
        return MESSAGE_PATH + self.sealer.seal_message(ref)

    def message_url(self, ref: MessageRef) -> str:
        """The push message resource URL (Location of an accepted push)."""
        return self.config.origin + self.message_path(ref)

    def push_url(self, uaid: str, channel_id: str, vapid_hash: bytes | None) -> str:
        """The push resource of an existing subscription."""
        return self.endpoint_url(EndpointRef(uaid, channel_id, vapid_hash))

    def open_endpoint(self, token: str) -> EndpointRef:
        """The subscription an endpoint token names, or 404 (no store access)."""
        try:
            return self.sealer.open_endpoint(token)
        except TokenError:
            raise ServiceError(404, Errno.INVALID_TOKEN, "no such push resource") from None

    def open_subscription(self, token: str) -> tuple[str, str]:
        """(uaid, channel id) of a subscription URL token, or 404."""
        try:
            return self.sealer.open_subscription(token)
        except TokenError:
            raise ServiceError(404, Errno.INVALID_TOKEN, "no such subscription") from None

    def open_set(self, token: str) -> str:
        """The uaid of a subscription set URL token, or 404."""
        try:
            return self.sealer.open_set(token)
        except TokenError:
            raise ServiceError(404, Errno.INVALID_TOKEN, "no such subscription set") from None

    def open_receipt(self, token: str) -> str:
        """The receipt subscription id of a receipt URL token, or 404."""
        try:
            return self.sealer.open_receipt(token)
        except TokenError:
            raise ServiceError(404, Errno.INVALID_TOKEN, "no such receipt subscription") from None

    async def _send_live_receipt(self, receipt: Receipt, status: int) -> None:
        """Queue the receipt of a TTL-0 message sent live (never stored) and tell its
        monitors; if the store is down it is lost (logged)."""
        try:
            await self.store.add_receipt(replace(receipt, status=status, created_at=time.time()))
        except StoreUnavailable as exc:
            log.warning("receipt of TTL-0 message %s lost: %s", escape(receipt.message_id), exc)
            return
        self.receipt_queued(receipt.receipt_id)

    async def give_up_live_receipt(self, receipt: Receipt) -> None:
        """Its 410 (RFC 8030 section 6.3), unless another node took its acknowledgement."""
        await self.give_up_live_receipt_batch([receipt])

    async def give_up_live_receipt_batch(self, receipts: Sequence[Receipt]) -> None:
        """`give_up_live_receipt` of each: the cluster asked once per LIVE_FORGET_BATCH,
        the 410s written in one store call (one each made 10,000 at a node's stop), then
        the monitors of each receipt subscription told once."""
        ours = await self.cluster.forget_live_receipts([r.message_id for r in receipts])
        now = time.time()
        gone = [
            replace(receipt, status=410, created_at=now)
            for receipt, mine in zip(receipts, ours, strict=True)
            if mine
        ]
        if not gone:
            return
        try:
            await self.store.add_receipts(gone)
        except StoreUnavailable as exc:
            log.warning("receipts of %d TTL-0 messages lost: %s", len(gone), exc)
            return
        for receipt_id in dict.fromkeys(r.receipt_id for r in gone):
            self.receipt_queued(receipt_id)

    def delete_acknowledged(self, uaid: str, message_id: str) -> None:
        """Queue the delete of an acknowledged message (`Acknowledgements`)."""
        raise NotImplementedError

    def receipt_queued(self, receipt_id: str) -> None:
        """Wake the monitors of `receipt_id`, here and on the other nodes."""
        self.hub.notify_receipt(receipt_id)
        self.cluster.announce_receipt(receipt_id)

    async def check_rate(self, limit: Limit, key: str) -> None:
        """Take a token for `key` under `limit`, or refuse with 429 and Retry-After."""
        limits = self.limits
        # The in-memory limiter answers at once: no coroutine for it, twice a push.
        if isinstance(limits, MemoryRateLimiter):
            wait = limits.take(limit, key)
        else:
            wait = await limits.acquire(limit, key)
        if wait > 0:
            raise _rate_limited(limit, wait)

    def charge_now(self, client: str, buckets: tuple[tuple[Limit, str], ...]) -> bool:
        """`check_address_rate(Limit.PUSH_ADDRESS, client)`, then `check_rate` of each
        bucket in order, without a coroutine: False (nothing charged) when the limiter
        is not the in-memory one, which the caller then awaits instead."""
        limits = self.limits
        if not isinstance(limits, MemoryRateLimiter):
            return False
        address = client_address(client)
        if not limits.exempt(address):
            wait = limits.take(Limit.PUSH_ADDRESS, address)
            if wait > 0:
                raise _rate_limited(Limit.PUSH_ADDRESS, wait)
        for limit, key in buckets:
            wait = limits.take(limit, key)
            if wait > 0:
                raise _rate_limited(limit, wait)
        return True

    async def check_address_rate(self, limit: Limit, client: str) -> None:
        """`check_rate` keyed by the client's address, unless the address is exempt."""
        address = client_address(client)
        if not self.limits.exempt(address):
            await self.check_rate(limit, address)


def _rate_limited(limit: Limit, wait: float) -> ServiceError:
    """429 with Retry-After: `limit` is spent for `wait` more seconds."""
    return ServiceError(
        429,
        Errno.RATE_LIMITED,
        f"too many {limit.description}; retry in {retry_after(wait)} s",
        headers={"retry-after": retry_after(wait)},
    )
