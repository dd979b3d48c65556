"""The push service's behaviour, independent of how requests arrive.

One message's path: `accept_push` opens the endpoint token, checks the request and its
VAPID token, stores the message (unless TTL 0), and hands it to the hub, which gives it
to the user agent's connection if it is on this node. The connection delivers it; the
user agent's acknowledgement reaches `acknowledge`, which deletes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import OrderedDict

from tidings import __version__, tracing
from tidings.service.acceptance import (
    RETRY_AFTER_STORE_FULL,
    PushAcceptance,
    PushAccepted,
    quota_refused,
)
from tidings.service.acknowledgements import (
    DELIVERY_WRITE_DELAY,
    MAX_ACKS_PER_WRITE,
    MAX_DELIVERIES_PER_WRITE,
    MAX_PENDING_DELIVERIES,
    Acknowledgements,
)
from tidings.service.cluster import ClusterBus, open_bus
from tidings.service.config import ServiceConfig
from tidings.service.hub import Hub
from tidings.service.keyfile import load_sealer
from tidings.service.limits import RateLimiter, open_limiter
from tidings.service.live_acks import LiveAcks
from tidings.service.live_offers import LiveOfferTaker
from tidings.service.maintenance import (
    RECEIPT_SUBSCRIPTION_GRACE,
    RECEIPT_SWEEP_INTERVAL,
    STATUS_SWEEP_BATCH,
    USER_AGENT_SWEEP_BATCH,
    Maintenance,
    in_batches,
)
from tidings.service.megaphone import BroadcastKeeper
from tidings.service.message_status import MessageStatusReader, status_document
from tidings.service.metrics import ServiceMetrics
from tidings.service.service_base import (
    GONE_CACHE_CONTROL,
    MESSAGE_PATH,
    PUSH_PATH,
    RECEIPT_PATH,
    RETRY_AFTER_UNAVAILABLE,
    SET_PATH,
    SUBSCRIBE_PATH,
    SUBSCRIPTION_PATH,
    not_ready,
    store_unavailable,
)
from tidings.service.store import MessageQuota, Receipt, Store, StoreUnavailable, open_store
from tidings.service.subscriptions import (
    NewSubscription,
    RegistrationError,
    SubscriptionManagement,
    new_uaid,
)
from tidings.service.tokens import TokenSealer
from tidings.service.vapid_check import VapidChecker

# The names below lived in this module before it was split; they stay importable here.
__all__ = [
    "DELIVERY_WRITE_DELAY",
    "GONE_CACHE_CONTROL",
    "MAX_ACKS_PER_WRITE",
    "MAX_DELIVERIES_PER_WRITE",
    "MAX_PENDING_DELIVERIES",
    "MESSAGE_PATH",
    "PUSH_PATH",
    "RECEIPT_PATH",
    "RECEIPT_SUBSCRIPTION_GRACE",
    "RECEIPT_SWEEP_INTERVAL",
    "RETRY_AFTER_STORE_FULL",
    "RETRY_AFTER_UNAVAILABLE",
    "SET_PATH",
    "STATUS_SWEEP_BATCH",
    "SUBSCRIBE_PATH",
    "SUBSCRIPTION_PATH",
    "USER_AGENT_SWEEP_BATCH",
    "NewSubscription",
    "PushAccepted",
    "PushService",
    "RegistrationError",
    "in_batches",
    "new_uaid",
    "not_ready",
    "quota_refused",
    "status_document",
    "store_unavailable",
]

log = logging.getLogger("tidings.service")

STORE_OPEN_FIRST_DELAY = 0.5  # seconds before retrying a store down at start; doubling
STORE_OPEN_MAX_DELAY = 30.0
# /health asks the store at most this often (seconds); requests in between share the answer.
HEALTH_PING_EVERY = 1.0


class PushService(
    PushAcceptance, MessageStatusReader, Acknowledgements, SubscriptionManagement, Maintenance
):
    """The push service of one node: store, tokens, connected user agents.

    Its parts, one module each: accepting a push (`acceptance`), a message's status
    (`message_status`), what follows a delivery (`acknowledgements`), subscriptions and
    user agents (`subscriptions`), the sweeps (`maintenance`), on the shared state and
    calls of `service_base.ServiceBase`.
    """

    def __init__(self, config: ServiceConfig, store: Store | None = None) -> None:
        self.config = config
        self.store: Store = store or open_store(
            config.store_url, synchronous=config.sqlite_synchronous
        )
        # The bus reaches user agents connected to other nodes (--cluster); on a single
        # node it does nothing and its hub is a plain Hub.
        self.cluster: ClusterBus = open_bus(config.cluster, config.node_id)
        # This node's name in traces (the cluster bus makes one up when not configured).
        self.node_id = str(getattr(self.cluster, "node_id", None) or config.node_id or "local")
        # Delivered traced messages until acknowledged (empty unless tracing is on).
        self.trace_book = tracing.TraceBook()
        self.hub: Hub = self.cluster.hub
        self.metrics = ServiceMetrics(self.hub)  # Prometheus metrics and /api/stats
        self.metrics.instrument_store(self.store)  # times every store call
        self.vapid = VapidChecker(config.origin)
        self.limits: RateLimiter = open_limiter(
            config.rate_settings,
            exempt=config.rate_limit_exempt,
            cluster=config.cluster,
            max_buckets=config.rate_limit_buckets,
        )
        self.broadcasts = BroadcastKeeper(config, self.store, self.cluster)  # megaphone.py
        self._sealer: TokenSealer | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._acks: list[tuple[str, str]] = []  # acknowledged, not yet deleted
        self._ack_writer: asyncio.Task[None] | None = None
        # For statuses, not yet written: message id -> (uaid, via, at, TTL 0).
        self._deliveries: dict[str, tuple[str, str, float, bool]] = {}
        self._delivery_writer: asyncio.Task[None] | None = None  # after the delay
        self._delivery_flusher: asyncio.Task[None] | None = None  # at once (HTTP/2)
        self._unmarked: OrderedDict[str, str] = OrderedDict()  # see ServiceBase
        self._live_receipts: OrderedDict[str, Receipt] = OrderedDict()  # see ServiceBase
        self.live_acks = LiveAcks()  # live_acks.py
        # Other nodes' live offers (live_offers.py), known to the bus only: one attribute
        # more here measured 0.3 % more instructions a push on a single node.
        self.cluster.offer_taker = LiveOfferTaker(self)
        self.draining = False
        self.ready = False  # the store opened and the keys loaded: requests are served
        self._opening: asyncio.Task[None] | None = None  # retrying a store down at start
        self.start_failed = asyncio.Event()  # set when that retry met a fatal error
        self.start_error: BaseException | None = None
        self.started_at = time.time()
        self._redeliveries: dict[str, float] = {}  # subscriptions.py
        self._redelivery_tasks: set[asyncio.Task[None]] = set()
        self._store_ping: asyncio.Future[bool] | None = None  # /health's, shared
        self._store_pinged_at = -math.inf
        self.quota = MessageQuota(
            per_subscription=config.max_messages_per_subscription,
            per_user_agent=config.max_messages_per_user_agent,
            bytes_per_user_agent=config.max_bytes_per_user_agent,
            stored_messages=config.max_stored_messages,
        )

    async def start(self) -> None:
        """Open the store, load (or create) the token keys, start the expiry sweeper.

        A shared store (PostgreSQL) that cannot be reached does not stop the start: the
        node serves 503 (and /health not ready) while it tries again with backoff, as a
        running node rides out the same outage. A SQLite file that will not open does."""
        try:
            await self._start_on_store()
        except StoreUnavailable as exc:
            if not self.config.shared_store:
                raise
            log.warning("store unavailable at start; answering 503 until it is back: %s", exc)
            await self.store.close()  # a pool half opened (migration failed) is let go
            self._opening = asyncio.create_task(
                self._start_when_store_is_back(), name="tidings-store-open"
            )

    async def _start_on_store(self) -> None:
        await self.store.open()
        self._sealer = await load_sealer(
            self.config.secrets_path, self.store, create=not self.config.shared_store
        )
        await self.cluster.start(self.redeliver)
        await self.broadcasts.start()
        self._sweeper = asyncio.create_task(self._sweep_expired(), name="tidings-expiry")
        self.ready = True

    async def _start_when_store_is_back(self) -> None:
        delay = STORE_OPEN_FIRST_DELAY
        attempt = 1
        while True:
            # Jittered, so nodes started together against a down store do not retry in step.
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            attempt += 1
            try:
                await self._start_on_store()
            except StoreUnavailable as exc:
                delay = min(STORE_OPEN_MAX_DELAY, delay * 2)
                log.warning(
                    "store still unavailable (attempt %d; next in about %.1f s): %s",
                    attempt,
                    delay,
                    exc,
                )
                await self.store.close()
                continue
            except Exception as exc:  # a wrong key file, found once the store answered
                log.error("start-up failed once the store was reachable: %s", exc)
                self.start_error = exc
                self.start_failed.set()
                return
            log.info("store reachable after %d attempts: ready", attempt)
            return

    async def drain(self) -> None:
        """Stop taking connections and close WebSockets with 'going away' (1001)."""
        self.draining = True
        await self.hub.close_all(1001, "service shutting down")

    async def stop(self) -> None:
        """Stop background work and close the store."""
        if self._opening is not None:
            self._opening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._opening
        if self._ack_writer is not None:
            with contextlib.suppress(Exception):
                await self._ack_writer  # acknowledged messages are deleted before closing
        # TTL-0 messages sent live still waiting for their acknowledgement are known to
        # this node only: it gives up on them now (410 receipts) rather than forget them.
        await self.give_up_live_receipts(math.inf)
        for writer in (self._delivery_writer, self._delivery_flusher):
            if writer is not None:
                writer.cancel()  # what it holds is written now
                with contextlib.suppress(BaseException):
                    await writer
        await self._flush_deliveries()
        for task in list(self._redelivery_tasks):
            task.cancel()  # their messages stay stored for the next connection
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        self.metrics.close()  # the per-second history's timer
        await self.broadcasts.stop()
        if self.cluster.offer_taker is not None:
            self.cluster.offer_taker.close()  # offers held here: their rows come again
        await self.cluster.stop()
        await self.limits.close()
        await self.store.close()

    async def _store_answers(self) -> bool:
        """Whether the store answered a ping, asked at most once per HEALTH_PING_EVERY
        seconds whatever the rate of /health: a flood of them took a store connection
        each (on PostgreSQL, the pool the pushes wait for)."""
        now = time.monotonic()
        ping = self._store_ping
        if ping is None or (ping.done() and now - self._store_pinged_at >= HEALTH_PING_EVERY):
            self._store_pinged_at = now
            ping = self._store_ping = asyncio.ensure_future(self._ping_store())
        # Shielded: a client that goes away must not cancel the ping others wait for.
        return await asyncio.shield(ping)

    async def _ping_store(self) -> bool:
        try:
            await self.store.ping()
        except StoreUnavailable:
            return False
        return True

    async def health(self) -> dict[str, object]:
        """A small status document for /health."""
        store_ok = await self._store_answers()
        cluster = self.cluster.status()
        if not self.ready:
            status = "starting"  # the store was unreachable at start: retrying
        elif not store_ok or self.draining:
            status = "unavailable"
        elif cluster == "degraded":  # the bus listener is down: live delivery across nodes is off
            status = "degraded"
        else:
            status = "ok"
        return {
            "status": status,
            "version": __version__,
            "store": "ok" if store_ok else "unavailable",
            "connections": len(self.hub),
            "draining": self.draining,
            "ready": self.ready,
            "cluster": cluster,
            "node": self.config.node_id,
            "uptime": round(time.time() - self.started_at, 1),
        }
