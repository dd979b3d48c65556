"""The push service's behaviour, independent of how requests arrive.

One message's path: `accept_push` opens the endpoint token, checks the request and its
VAPID token, stores the message (unless TTL 0), and hands it to the hub, which gives it
to the user agent's connection if it is on this node. The connection delivers it; the
user agent's acknowledgement reaches `acknowledge`, which deletes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, replace

from tidings import __version__, tracing
from tidings.service.cluster import ClusterBus, open_bus
from tidings.service.config import ServiceConfig
from tidings.service.errors import Errno, ServiceError
from tidings.service.hub import Hub
from tidings.service.keyfile import load_sealer
from tidings.service.limits import Limit, RateLimiter, client_address, open_limiter, retry_after
from tidings.service.logs import escape
from tidings.service.megaphone import BroadcastKeeper
from tidings.service.metrics import ServiceMetrics
from tidings.service.push_request import check_push
from tidings.service.store import (
    MessageQuota,
    MessageStatus,
    Store,
    StoredMessage,
    StoreFull,
    StoreUnavailable,
    SubscriptionGone,
    SubscriptionRecord,
    TooManyMessages,
    TooManySubscriptions,
    open_store,
)
from tidings.service.store.base import DELIVERED, EXPIRED, FINAL_STATES, STORED
from tidings.service.tokens import (
    EndpointRef,
    MessageRef,
    TokenError,
    TokenSealer,
    new_message_id,
    vapid_key_hash,
)
from tidings.service.vapid_check import VapidChecker
from tidings.webpush.links import REL_RECEIPT, link_target

log = logging.getLogger("tidings.service")

PUSH_PATH = "/push/"
MESSAGE_PATH = "/m/"
SUBSCRIBE_PATH = "/subscribe"
SUBSCRIPTION_PATH = "/s/"
SET_PATH = "/set/"
RECEIPT_PATH = "/r/"
RETRY_AFTER_UNAVAILABLE = "5"
GONE_CACHE_CONTROL = "max-age=86400"  # a 410 stays true: senders and caches may remember it


@dataclass(frozen=True, slots=True)
class PushAccepted:
    """The answer to an accepted push: 201 (or 202 with a receipt subscription)."""

    status: int
    location: str
    ttl: int
    message_id: str
    delivered_live: bool
    receipt_url: str | None = None
    trace_id: str | None = None  # the push's trace, when tracing is on (for the access log)


@dataclass(frozen=True, slots=True)
class NewSubscription:
    """The answer to an RFC 8030 subscribe: the three URLs of section 4."""

    subscription_url: str  # Location: what the user agent monitors and deletes
    push_url: str  # rel urn:ietf:params:push: what application servers post to
    set_url: str  # rel urn:ietf:params:push:set: monitor every subscription of the set


class RegistrationError(Exception):
    """A `register` the service refuses; `status` goes into the reply."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def new_uaid() -> str:
    """A fresh user agent id: 128 random bits, 32 hex digits."""
    return secrets.token_hex(16)


def store_unavailable(exc: Exception) -> ServiceError:
    """The 503 (with Retry-After) for a request the store cannot serve now."""
    log.warning("store unavailable: %s", exc)
    return ServiceError(
        503,
        Errno.UNAVAILABLE,
        "the service cannot reach its store right now; retry later",
        headers={"retry-after": RETRY_AFTER_UNAVAILABLE},
    )


MAX_ACKS_PER_WRITE = 256  # acknowledgements deleted in one store call at most
RECEIPT_SWEEP_INTERVAL = 3600.0  # seconds between two sweeps of receipt subscriptions
RECEIPT_SUBSCRIPTION_GRACE = 86400.0  # past the longest TTL, before an unused one goes
STATUS_SWEEP_BATCH = 1000  # message statuses forgotten per store call by the sweep
MAX_DELIVERIES_PER_WRITE = 256  # deliveries recorded in message statuses per store call
# WebSocket deliveries are written this many seconds late: an acknowledgement arriving
# meanwhile records the delivery in its own statement, and the separate write is saved.
DELIVERY_WRITE_DELAY = 1.0
MAX_PENDING_DELIVERIES = 10_000  # deliveries waiting to be written; more are not noted
USER_AGENT_SWEEP_BATCH = 1000  # user agents forgotten per store call by the expiry sweep
RETRY_AFTER_STORE_FULL = "300"  # seconds; the sweep frees room as messages expire


def quota_refused(exc: TooManyMessages | StoreFull) -> ServiceError:
    """The answer to a push refused by a storage quota (docs/security.md).

    A full subscription or user agent is the sender's (or its user agent's) backlog:
    429 with Retry-After (RFC 6585 section 4, RFC 8030 section 8.4). A full store is
    the service's condition, not the request's: 507 Insufficient Storage (RFC 4918
    section 11.5), temporary, with Retry-After. No stored message is ever evicted.
    """
    if isinstance(exc, StoreFull):
        log.warning("push refused: %s", exc)
        status, errno, retry = 507, Errno.STORE_FULL, RETRY_AFTER_STORE_FULL
        why = "the push service has no room for more messages now"
    elif exc.scope == "bytes":
        status, errno, retry = 429, Errno.TOO_MANY_BYTES, "60"
        why = f"the user agent's undelivered messages already take {exc.limit} bytes"
    else:
        status, errno, retry = 429, Errno.TOO_MANY_MESSAGES, "60"
        holder = "subscription" if exc.scope == "subscription" else "user agent"
        why = f"the {holder} already has {exc.limit} undelivered messages"
    return ServiceError(status, errno, why + "; retry later", headers={"retry-after": retry})


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


def status_document(status: MessageStatus, now: float) -> dict[str, object]:
    """The JSON answer to a message status GET: times are epoch seconds (UTC, to the
    millisecond), null for the steps not reached. A stored or delivered message past
    its expiry (not yet swept, or removed with its subscription) reads as expired."""
    state = status.state
    final_at = status.final_at
    if state in (STORED, DELIVERED) and status.ttl and status.expires_at <= now:
        state, final_at = EXPIRED, status.expires_at
    final: dict[str, float | None] = dict.fromkeys(FINAL_STATES)
    if state in FINAL_STATES:
        final[state] = final_at
    document: dict[str, object] = {
        "message": status.message_id,
        "state": state,
        "delivered_via": status.delivered_via,
        "ttl": status.ttl,
        "created_at": status.created_at,
        "stored_at": status.created_at if status.ttl else None,
        "delivered_at": status.delivered_at,
        "acknowledged_at": final["acknowledged"],
        "expired_at": final["expired"],
        "deleted_at": final["deleted"],
        "replaced_at": final["replaced"],
        "expires_at": status.expires_at,
    }
    return {
        name: round(value, 3) if isinstance(value, float) else value
        for name, value in document.items()
    }


class PushService:
    """The push service of one node: store, tokens, connected user agents."""

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
        # Sent messages wanting a receipt whose delivery is not recorded yet (the write
        # under way or failed), by id -> uaid: their acknowledgement records it first,
        # since a receipt is queued only for a message recorded as delivered.
        self._unmarked: OrderedDict[str, str] = OrderedDict()
        self.draining = False
        self.started_at = time.time()
        self.quota = MessageQuota(
            per_subscription=config.max_messages_per_subscription,
            per_user_agent=config.max_messages_per_user_agent,
            bytes_per_user_agent=config.max_bytes_per_user_agent,
            stored_messages=config.max_stored_messages,
        )

    # Life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, load (or create) the token keys, start the expiry sweeper."""
        await self.store.open()
        self._sealer = await load_sealer(
            self.config.secrets_path, self.store, create=not self.config.shared_store
        )
        await self.cluster.start(self.redeliver)
        await self.broadcasts.start()
        self._sweeper = asyncio.create_task(self._sweep_expired(), name="tidings-expiry")

    async def drain(self) -> None:
        """Stop taking connections and close WebSockets with 'going away' (1001)."""
        self.draining = True
        await self.hub.close_all(1001, "service shutting down")

    async def stop(self) -> None:
        """Stop background work and close the store."""
        if self._ack_writer is not None:
            with contextlib.suppress(Exception):
                await self._ack_writer  # acknowledged messages are deleted before closing
        for writer in (self._delivery_writer, self._delivery_flusher):
            if writer is not None:
                writer.cancel()  # what it holds is written now
                with contextlib.suppress(BaseException):
                    await writer
        await self._flush_deliveries()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.broadcasts.stop()
        await self.cluster.stop()
        await self.limits.close()
        await self.store.close()

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

    @property
    def sealer(self) -> TokenSealer:
        if self._sealer is None:
            raise RuntimeError("the service is not started")
        return self._sealer

    async def health(self) -> dict[str, object]:
        """A small status document for /health."""
        try:
            await self.store.ping()
            store_ok = True
        except StoreUnavailable:
            store_ok = False
        cluster = self.cluster.status()
        if not store_ok or self.draining:
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
            "cluster": cluster,
            "node": self.config.node_id,
            "uptime": round(time.time() - self.started_at, 1),
        }

    # URLs -----------------------------------------------------------------------------

    def endpoint_url(self, ref: EndpointRef) -> str:
        """The push resource URL (what the browser calls the subscription's endpoint)."""
        return self.config.origin + PUSH_PATH + self.sealer.seal_endpoint(ref)

    def message_path(self, ref: MessageRef) -> str:
        """The path of a push message resource (the same for the same message)."""
        return MESSAGE_PATH + self.sealer.seal_message(ref)

    def message_url(self, ref: MessageRef) -> str:
        """The push message resource URL (Location of an accepted push)."""
        return self.config.origin + self.message_path(ref)

    # Rate limits ------------------------------------------------------------------------

    async def check_rate(self, limit: Limit, key: str) -> None:
        """Take a token for `key` under `limit`, or refuse with 429 and Retry-After."""
        wait = await self.limits.acquire(limit, key)
        if wait > 0:
            raise ServiceError(
                429,
                Errno.RATE_LIMITED,
                f"too many {limit.description}; retry in {retry_after(wait)} s",
                headers={"retry-after": retry_after(wait)},
            )

    async def check_address_rate(self, limit: Limit, client: str) -> None:
        """`check_rate` keyed by the client's address, unless the address is exempt."""
        address = client_address(client)
        if not self.limits.exempt(address):
            await self.check_rate(limit, address)

    # The application server side --------------------------------------------------------

    def open_endpoint(self, token: str) -> EndpointRef:
        """The subscription an endpoint token names, or 404 (no store access)."""
        try:
            return self.sealer.open_endpoint(token)
        except TokenError:
            raise ServiceError(404, Errno.INVALID_TOKEN, "no such push resource") from None

    async def accept_push(
        self,
        token: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        client: str = "-",
        request_id: str | None = None,
    ) -> PushAccepted:
        """Check, store and forward one push; raise ServiceError to refuse it.

        With tracing on, the push is a server span continuing the sender's trace
        (`traceparent`), with the store and the routing as its children.

        `client` is the sender's address (`host:port`). The VAPID token is verified
        before any rate limit is charged, so that nobody can spend a signed sender's
        buckets: a signed push counts against its address, its key and the subscription;
        a request refused before that point (a token that does not open, a VAPID
        failure) against the client address only; an unsigned push against the address
        and the subscription's separate bucket for unsigned pushes.
        """
        if not tracing.enabled():
            return await self._accept_push(token, headers, body, client, request_id, None)
        with tracing.span(
            "push accept",
            kind="server",
            parent=tracing.extract(headers),
            attributes={"tidings.node": self.node_id},
        ) as current:
            try:
                accepted = await self._accept_push(
                    token, headers, body, client, request_id, tracing.traceparent_of(current)
                )
            except ServiceError as error:
                if current is not None:
                    current.set_attribute("http.response.status_code", error.status)
                raise
            if current is not None:
                current.set_attribute("http.response.status_code", accepted.status)
                current.set_attribute("tidings.delivered_live", accepted.delivered_live)
            return replace(accepted, trace_id=tracing.trace_id_of(current))

    async def _accept_push(
        self,
        token: str,
        headers: Mapping[str, str],
        body: bytes,
        client: str,
        request_id: str | None,
        traceparent: str | None,
    ) -> PushAccepted:
        try:
            ref = self.open_endpoint(token)
            # Authorization comes before the other checks: a sender without the right
            # key learns nothing more about the subscription than that it is restricted.
            signed = self.vapid.check_signed(headers, ref.vapid_hash)
        except ServiceError:
            await self.check_address_rate(Limit.PUSH_ADDRESS, client)
            raise
        verified = None if signed is None else signed[0]
        if verified is None:
            # Unsigned: the address, and a bucket of the subscription of its own, so that
            # unsigned pushes stay limited (RFC 8030 section 8.4) without ever emptying
            # the bucket of the subscription's signed sender.
            await self.check_address_rate(Limit.PUSH_ADDRESS, client)
            await self.check_rate(Limit.PUSH_SUBSCRIPTION, ref.uaid + ref.channel_id + "~")
        else:
            # The address too: keys cost nothing to make, so a fresh key per push must
            # not take a client past its address's share.
            await self.check_address_rate(Limit.PUSH_ADDRESS, client)
            await self.check_rate(Limit.PUSH_VAPID_KEY, verified.public_key.hex())
            await self.check_rate(Limit.PUSH_SUBSCRIPTION, ref.uaid + ref.channel_id)
        facts = check_push(headers, body, max_body=self.config.max_body)
        receipt_id, new_receipt = await self._receipt_subscription(headers)
        ttl = min(facts.ttl, self.config.max_ttl)
        now = time.time()
        message = StoredMessage(
            message_id=new_message_id(),  # carries its token's random nonce
            uaid=ref.uaid,
            channel_id=ref.channel_id,
            body=body,
            ttl=ttl,
            created_at=now,
            expires_at=now + ttl,
            urgency=str(facts.urgency),
            topic=facts.topic,
            headers=facts.delivery_headers,
            receipt_id=receipt_id,
            request_id=request_id,
            traceparent=traceparent,
            vapid_hash=None if signed is None else signed[1],
            has_status=signed is not None,
        )
        location = self.message_url(MessageRef(ref.uaid, ref.channel_id, message.message_id))
        traced = traceparent is not None
        try:
            with tracing.span("push store") if traced else nullcontext():
                await self._store_push(ref, message, signed)
        except SubscriptionGone:
            raise ServiceError(
                410,
                Errno.SUBSCRIPTION_GONE,
                "the subscription has been removed",
                headers={"cache-control": GONE_CACHE_CONTROL},
            ) from None
        except (TooManyMessages, StoreFull) as exc:
            raise quota_refused(exc) from None
        except StoreUnavailable as exc:
            raise store_unavailable(exc) from None
        if new_receipt and receipt_id is not None:
            # Only now that the push is accepted: a refused push leaves no row behind.
            await self._add_receipt_subscription(receipt_id, message)
        # Here, or through the bus to the node holding the user agent's connection.
        with tracing.span("push route") if traced else nullcontext():
            delivered = self.hub.offer(message) or await self.cluster.route(message)
        if receipt_id is None:
            return PushAccepted(201, location, ttl, message.message_id, delivered)
        receipt_url = self.config.origin + RECEIPT_PATH + self.sealer.seal_receipt(receipt_id)
        return PushAccepted(202, location, ttl, message.message_id, delivered, receipt_url)

    async def _store_push(
        self, ref: EndpointRef, message: StoredMessage, signed: tuple[object, bytes] | None
    ) -> None:
        """Store the message, or for TTL 0 only check its subscription still exists (a
        signed TTL-0 push's status says dropped until a connection takes it)."""
        if message.ttl == 0:
            # Delivered only to a user agent connected right now; never stored.
            if await self.store.get_subscription(ref.uaid, ref.channel_id) is None:
                raise SubscriptionGone(ref.channel_id)
            if signed is not None:
                now = message.created_at
                await self.store.add_message_status(
                    MessageStatus(message.message_id, signed[1], EXPIRED, 0, now, now, final_at=now)
                )
        else:
            await self.store.store_message(message, quota=self.quota)

    async def message_status(self, token: str, headers: Mapping[str, str]) -> dict[str, object]:
        """GET of a push message resource: its status, for the sender that signed it.

        Needs a VAPID token (the same checks as a push: audience, expiry, signature) of
        the key that signed the push: 401 without one, 403 with another key's; 404 for
        an unsigned push's or a forgotten status (docs/rfc8030.md, "Message status").
        """
        try:
            ref = self.sealer.open_message(token)
        except TokenError:
            raise ServiceError(404, Errno.INVALID_TOKEN, "no such push message") from None
        checked = self.vapid.check_signed(headers, None)
        if checked is None:
            raise ServiceError(
                401,
                Errno.VAPID_MISSING,
                "a message status is for the sender of a VAPID-signed push: sign the GET "
                "with the key that signed the push (Authorization: vapid t=..., k=...); "
                "unsigned pushes have no status",
                headers={"www-authenticate": "vapid"},
            )
        try:
            status = await self.store.get_message_status(ref.uaid, ref.message_id)
        except StoreUnavailable as exc:
            raise store_unavailable(exc) from None
        if status is None:
            raise ServiceError(
                404,
                Errno.NOT_FOUND,
                "no status for this push message: it was not VAPID-signed, or its status "
                "was forgotten (message_status_retention after it ended)",
            )
        if not hmac.compare_digest(status.vapid_hash, checked[1]):
            raise ServiceError(
                403,
                Errno.VAPID_KEY_MISMATCH,
                "only the key that signed the push may read its status",
            )
        return status_document(status, time.time())

    async def _receipt_subscription(self, headers: Mapping[str, str]) -> tuple[str | None, bool]:
        """The receipt subscription a push asks for (RFC 8030 section 5.1), if any, and
        whether it is a new one (created once the push is accepted).

        `Prefer: respond-async` asks for a receipt; a `Link` with rel
        urn:ietf:params:push:receipt names an existing receipt subscription to reuse
        (an invalid one is a 400); without it a new one is made.
        """
        named = link_target(headers.get("link", ""), REL_RECEIPT)
        wants = "respond-async" in headers.get("prefer", "").lower()
        if named is None:
            if not wants:
                return None, False
            return secrets.token_hex(16), True
        token = named.rsplit(RECEIPT_PATH, 1)[-1] if RECEIPT_PATH in named else ""
        try:
            receipt_id = self.sealer.open_receipt(token)
            # Each use keeps it alive: the sweep removes only unused ones.
            known = await self.store.use_receipt_subscription(receipt_id, time.time())
        except TokenError:
            known = False
        except StoreUnavailable as exc:
            raise store_unavailable(exc) from None
        if not known:
            raise ServiceError(
                400, Errno.BAD_RECEIPT, "the Link names no receipt subscription of this service"
            )
        return receipt_id, False

    async def _add_receipt_subscription(self, receipt_id: str, message: StoredMessage) -> None:
        """Create the receipt subscription of an accepted push; if the store fails, the
        push is withdrawn (its message deleted) and answered 503, so it is retried."""
        try:
            await self.store.add_receipt_subscription(receipt_id, time.time())
        except StoreUnavailable as exc:
            if message.ttl:
                with contextlib.suppress(StoreUnavailable):
                    await self.store.delete_message(message.uaid, message.message_id)
            raise store_unavailable(exc) from None

    async def delete_message_resource(self, token: str) -> None:
        """DELETE of a push message resource (RFC 8030 sections 5.3 and 6.2).

        From the user agent it acknowledges a delivered message (a receipt follows if
        one was asked for); from the application server it cancels an undelivered one.
        Either way the message is gone; a second DELETE is a 404.
        """
        try:
            ref = self.sealer.open_message(token)
        except TokenError:
            raise ServiceError(404, Errno.INVALID_TOKEN, "no such push message") from None
        pending = self._deliveries.pop(ref.message_id, None)
        try:
            await self._mark_unmarked([(ref.uaid, ref.message_id)])
            if pending is not None:  # delivered here, not yet written: an acknowledgement
                await self.store.mark_statuses_delivered(
                    [(ref.uaid, ref.message_id, *pending[1:3])]
                )
            deleted = await self.store.delete_message(ref.uaid, ref.message_id)
        except StoreUnavailable as exc:
            raise store_unavailable(exc) from None
        if (
            deleted is None
            or deleted.channel_id != ref.channel_id
            or (deleted.ttl and deleted.expires_at <= time.time())  # expired, not yet swept
        ):
            raise ServiceError(
                404, Errno.NOT_FOUND, "the push message was delivered, expired or never existed"
            )
        # A copy held unsent by a connection, here or on the node holding the user agent
        # (live messages held while stored ones are read), must not go out after the 204.
        self.hub.withdraw(ref.uaid, ref.message_id)
        await self.cluster.withdraw(ref.uaid, ref.message_id)
        self.metrics.acknowledged(100)  # an RFC 8030 acknowledgement (or a cancellation)
        if self.trace_book:
            self._trace_ack(deleted.message_id, 100)
        if deleted.receipt_id is not None:
            self.hub.notify_receipt(deleted.receipt_id)

    # RFC 8030 subscriptions ----------------------------------------------------------------

    async def subscribe(self, set_token: str | None, vapid_key: bytes | None) -> NewSubscription:
        """Create a subscription, in a new set or in the set `set_token` names."""
        if set_token is None:
            uaid = new_uaid()
        else:
            try:
                uaid = self.sealer.open_set(set_token)
            except TokenError:
                raise ServiceError(
                    400, Errno.BAD_SET, "the Link names no subscription set of this service"
                ) from None
            if not await self.store.has_user_agent(uaid):
                raise ServiceError(400, Errno.BAD_SET, "that subscription set no longer exists")
        channel_id = str(uuid.uuid4())
        try:
            push_url = await self.register(uaid, channel_id, vapid_key)
        except RegistrationError as exc:
            raise ServiceError(exc.status, Errno.TOO_MANY_SUBSCRIPTIONS, str(exc)) from None
        except StoreUnavailable as exc:
            raise store_unavailable(exc) from None
        origin = self.config.origin
        return NewSubscription(
            subscription_url=origin
            + SUBSCRIPTION_PATH
            + self.sealer.seal_subscription(uaid, channel_id),
            push_url=push_url,
            set_url=origin + SET_PATH + self.sealer.seal_set(uaid),
        )

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

    def push_url(self, uaid: str, channel_id: str, vapid_hash: bytes | None) -> str:
        """The push resource of an existing subscription."""
        return self.endpoint_url(EndpointRef(uaid, channel_id, vapid_hash))

    # The user agent side -----------------------------------------------------------------

    async def resolve_uaid(self, offered: str | None) -> str:
        """Keep a known user agent id; give anyone else a new one."""
        # A hello is what makes a user agent "seen" (user_agent_expiry).
        if offered is not None and await self.store.touch_user_agent(offered, time.time()):
            return offered
        return new_uaid()

    async def register(self, uaid: str, channel_id: str, key: bytes | None) -> str:
        """Create (or return) a subscription and its push endpoint URL."""
        vapid_hash = None if key is None else vapid_key_hash(key)
        await self.store.add_user_agent(uaid, time.time())
        try:
            # The store counts and inserts atomically: concurrent registers cannot
            # pass the cap.
            record = await self.store.add_subscription(
                SubscriptionRecord(uaid, channel_id, vapid_hash, time.time()),
                max_per_user_agent=self.config.max_subscriptions_per_user_agent,
            )
        except TooManySubscriptions:
            raise RegistrationError(429, "too many subscriptions for this user agent") from None
        if record.vapid_hash != vapid_hash:
            raise RegistrationError(409, "channelID is registered with another key")
        return self.endpoint_url(EndpointRef(uaid, channel_id, vapid_hash))

    async def unregister(self, uaid: str, channel_id: str) -> None:
        """Delete a subscription and its messages; later pushes get 410."""
        await self.store.delete_subscription(uaid, channel_id)

    async def pending(self, uaid: str) -> list[StoredMessage]:
        """What is stored for a user agent, oldest first."""
        return await self.store.pending_messages(
            uaid, time.time(), self.config.max_messages_per_user_agent
        )

    async def redeliver(self, uaid: str, since: float = 0.0) -> None:
        """Offer a connected user agent its stored messages (created at `since` or later)
        again: the cluster bus asks when live deliveries may have been missed."""
        if not self.hub.is_connected(uaid):
            return
        try:
            messages = await self.pending(uaid)
        except StoreUnavailable as exc:
            log.warning("cannot load stored messages for %s: %s", uaid[:8] + "...", exc)
            return
        for message in messages:
            if message.created_at >= since:
                self.hub.offer(message)

    def trace_delivery(self, message: StoredMessage, via: str) -> None:
        """Record a live delivery of a traced message (`message.traceparent` set) as a
        span of its trace; its acknowledgement will be a child of it."""
        with tracing.span(
            "push deliver",
            kind="producer",
            parent=tracing.parent_from(message.traceparent),
            attributes={"tidings.node": self.node_id, "tidings.via": via},
        ) as current:
            self.trace_book.remember(message.message_id, tracing.traceparent_of(current))

    def _trace_ack(self, message_id: str, code: int) -> None:
        delivered = self.trace_book.take(message_id)
        if delivered is not None:
            attributes = {"tidings.node": self.node_id, "tidings.ack_code": code}
            with tracing.span(
                "push ack", parent=tracing.parent_from(delivered), attributes=attributes
            ):
                pass

    def acknowledge_soon(self, uaid: str, message_id: str, code: int) -> None:
        """The user agent has the message (code 100) or cannot use it (101, 102).

        The deletes of the acknowledgements that arrive together are written in one
        store call (a receipt follows if one was asked for); nobody waits for them. If
        the store is down the message stays stored and is delivered again."""
        if self.trace_book:
            self._trace_ack(message_id, code)
        self.metrics.acknowledged(code)
        if code != 100:
            log.info("message %s acknowledged with code %d", escape(message_id), code)
        self._acks.append((uaid, message_id))
        pending = self._deliveries.get(message_id)
        if pending is not None and pending[1] == "websocket" and not pending[3]:
            del self._deliveries[message_id]  # the ack's statement records the delivery
        if self._ack_writer is None:
            self._ack_writer = asyncio.ensure_future(self._write_acks())

    async def _write_acks(self) -> None:
        try:
            while self._acks:
                keys, self._acks = self._acks[:MAX_ACKS_PER_WRITE], self._acks[MAX_ACKS_PER_WRITE:]
                try:
                    await self._mark_unmarked(keys)
                    deleted = await self.store.delete_messages(keys)
                except StoreUnavailable as exc:
                    # They stay stored and are delivered again: at least once.
                    log.warning("cannot delete %d acknowledged messages: %s", len(keys), exc)
                    continue
                except Exception:
                    log.exception("deleting %d acknowledged messages failed", len(keys))
                    continue
                for (_, message_id), message in zip(keys, deleted, strict=True):
                    if message is None:
                        log.debug("ack for unknown or TTL-0 message %s", escape(message_id))
                    elif message.receipt_id is not None:
                        self.hub.notify_receipt(message.receipt_id)
        finally:
            self._ack_writer = None

    def note_delivered(self, message: StoredMessage, via: str) -> None:
        """A connection of kind `via` ("websocket", "http2") carried `message`: its
        status says so. Recorded lazily, the deliveries of one moment in one store call
        (nobody waits); a message known to have no status costs nothing."""
        if message.has_status is False or len(self._deliveries) >= MAX_PENDING_DELIVERIES:
            return  # (over the bound: a WebSocket ack still records the delivery)
        self._deliveries[message.message_id] = (message.uaid, via, time.time(), message.ttl == 0)
        if via != "websocket":
            # Only a WebSocket ack records its delivery: an RFC 8030 DELETE must find
            # this one written to read as an acknowledgement.
            if self._delivery_flusher is None:
                self._delivery_flusher = asyncio.ensure_future(self._flush_soon())
        elif self._delivery_writer is None:
            self._delivery_writer = asyncio.ensure_future(self._write_deliveries())

    async def _write_deliveries(self) -> None:
        try:
            await asyncio.sleep(DELIVERY_WRITE_DELAY)
            await self._flush_deliveries()
        finally:
            self._delivery_writer = None

    async def _flush_soon(self) -> None:
        try:
            await self._flush_deliveries()
        finally:
            self._delivery_flusher = None

    async def _flush_deliveries(self) -> None:
        while self._deliveries:
            batch = [
                (uaid, message_id, via, at)
                for message_id, (uaid, via, at, _) in list(self._deliveries.items())[
                    :MAX_DELIVERIES_PER_WRITE
                ]
            ]
            for _, message_id, _, _ in batch:
                del self._deliveries[message_id]
            try:
                await self.store.mark_statuses_delivered(batch)
            except Exception as exc:  # a status is best effort; the message is not
                log.warning("cannot record %d deliveries: %s", len(batch), exc)

    async def mark_delivered(self, message: StoredMessage) -> None:
        """Remember that a message wanting a receipt reached its user agent."""
        # Until written, an acknowledgement (which may overtake this write) writes it.
        self._unmarked[message.message_id] = message.uaid
        if len(self._unmarked) > MAX_PENDING_DELIVERIES:
            self._unmarked.popitem(last=False)
        try:
            await self.store.mark_delivered(message.uaid, message.message_id)
        except StoreUnavailable as exc:
            log.warning("cannot mark %s delivered: %s", message.message_id, exc)
            return
        self._unmarked.pop(message.message_id, None)

    async def _mark_unmarked(self, keys: list[tuple[str, str]]) -> None:
        """Before acknowledgements of `keys` (uaid, message id) are written: record the
        deliveries among them that could not be recorded when they were sent (raises
        StoreUnavailable; the acknowledgement then fails and the message stays)."""
        for uaid, message_id in keys:
            if message_id in self._unmarked:
                await self.store.mark_delivered(uaid, message_id)
                self._unmarked.pop(message_id, None)
