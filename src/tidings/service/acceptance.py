"""Accepting a push: the application server's POST to a push resource.

`accept_push` opens the endpoint token, checks the VAPID token before charging any
rate limit, checks the request (`push_request.check_push`), finds or makes the receipt
subscription it asks for, stores the message (unless TTL 0), and hands it to the hub
or, through the cluster bus, to the node holding the user agent's connection.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import replace
from typing import Any

from tidings import tracing
from tidings.service.errors import Errno, ServiceError
from tidings.service.limits import Limit
from tidings.service.push_request import check_push
from tidings.service.records import record
from tidings.service.service_base import (
    GONE_CACHE_CONTROL,
    RECEIPT_PATH,
    ServiceBase,
    store_unavailable,
)
from tidings.service.store import (
    MessageStatus,
    Receipt,
    StoredMessage,
    StoreFull,
    StoreUnavailable,
    SubscriptionGone,
    TooManyMessages,
)
from tidings.service.store.base import ACKNOWLEDGED, EXPIRED
from tidings.service.store_retry import WarningTally
from tidings.service.tokens import EndpointRef, MessageRef, TokenError, new_message_id
from tidings.webpush.links import REL_RECEIPT, link_target

__all__ = ["RETRY_AFTER_STORE_FULL", "PushAcceptance", "PushAccepted", "quota_refused"]

log = logging.getLogger("tidings.service")
STORE_FULL = WarningTally(log)  # a full store refuses every push: one line per interval

RETRY_AFTER_STORE_FULL = "300"  # seconds; the sweep frees room as messages expire


@record
class PushAccepted:
    """The answer to an accepted push: 201 (or 202 with a receipt subscription)."""

    status: int
    location: str
    ttl: int
    message_id: str
    delivered_live: bool
    receipt_url: str | None = None
    trace_id: str | None = None  # the push's trace, when tracing is on (for the access log)


def quota_refused(exc: TooManyMessages | StoreFull) -> ServiceError:
    """The answer to a push refused by a storage quota (docs/security.md).

    A full subscription or user agent is the sender's (or its user agent's) backlog:
    429 with Retry-After (RFC 6585 section 4, RFC 8030 section 8.4). A full store is
    the service's condition, not the request's: 507 Insufficient Storage (RFC 4918
    section 11.5), temporary, with Retry-After. No stored message is ever evicted.
    """
    if isinstance(exc, StoreFull):
        STORE_FULL.warning("push refused: %s", exc)
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


class PushAcceptance(ServiceBase):
    """The push service's answer to a push (see `PushService`)."""

    def accept_push(
        self,
        token: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        client: str = "-",
        request_id: str | None = None,
    ) -> Coroutine[Any, Any, PushAccepted]:
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
        if not tracing.enabled():  # the coroutine itself: no frame of its own around it
            return self._accept_push(token, headers, body, client, request_id, None)
        return self._accept_traced_push(
            headers,
            lambda parent: self._accept_push(token, headers, body, client, request_id, parent),
        )

    async def _accept_traced_push(
        self,
        headers: Mapping[str, str],
        accept: Callable[[str | None], Coroutine[Any, Any, PushAccepted]],
    ) -> PushAccepted:
        """`accept(traceparent)` as the server span of the sender's trace."""
        with tracing.span(
            "push accept",
            kind="server",
            parent=tracing.extract(headers),
            attributes={"tidings.node": self.node_id},
        ) as current:
            try:
                accepted = await accept(tracing.traceparent_of(current))
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
        # The address first; unsigned, a bucket of the subscription of its own, so that
        # unsigned pushes stay limited (RFC 8030 section 8.4) without ever emptying the
        # bucket of the subscription's signed sender; signed, the key's too (keys cost
        # nothing to make: a fresh key per push must not pass the address's share).
        buckets = (
            ((Limit.PUSH_SUBSCRIPTION, ref.uaid + ref.channel_id + "~"),)
            if verified is None
            else (
                (Limit.PUSH_VAPID_KEY, verified.public_key.hex()),
                (Limit.PUSH_SUBSCRIPTION, ref.uaid + ref.channel_id),
            )
        )
        if not self.charge_now(client, buckets):  # a remote limiter: awaited in turn
            await self.check_address_rate(Limit.PUSH_ADDRESS, client)
            for limit, key in buckets:
                await self.check_rate(limit, key)
        facts = check_push(headers, body, max_body=self.config.max_body)
        receipt_id, new_receipt = await self._receipt_subscription(headers)
        ttl = min(facts.ttl, self.config.max_ttl)
        now = time.time()
        # Every field, in order and by position: keywords cost a dict a push.
        message = StoredMessage(
            new_message_id(),  # message_id, carrying its token's random nonce
            ref.uaid,
            ref.channel_id,
            body,
            ttl,
            now,  # created_at
            now + ttl,  # expires_at
            str(facts.urgency),
            facts.topic,
            facts.delivery_headers,  # headers
            receipt_id,
            request_id,
            traceparent,
            None if signed is None else signed[1],  # vapid_hash
            signed is not None,  # has_status
        )
        location = self.message_url(MessageRef(ref.uaid, ref.channel_id, message.message_id))
        traced = traceparent is not None
        late_ack: int | None = None
        try:
            # Spans only when traced: a nullcontext was three calls more a push.
            if traced:
                with tracing.span("push store"):
                    await self._store_push(ref, message, signed)
            elif ttl and (
                receipt_id is None
                and facts.topic is None
                and self.config.live_ack_wait
                and self.live_acks.has_room()
                and self.hub.quick_agent(ref.uaid) is not None
            ):
                if await self._acknowledged_unstored(message, signed):
                    return PushAccepted(201, location, ttl, message.message_id, True)
                try:
                    await self.store.store_message(message, quota=self.quota)
                finally:
                    late_ack = self.live_acks.settle(message.message_id)
            elif ttl and (
                self.cluster.offers_live  # False on a single node: stored at once
                and receipt_id is None
                and facts.topic is None
                and self.config.live_ack_wait
                and not self.hub.is_connected(ref.uaid)
                and self.cluster.may_hold(ref.uaid)
            ):
                # Perhaps held by another node: offered there first (live_offers.py).
                if await self._acknowledged_elsewhere(message, signed):
                    return PushAccepted(201, location, ttl, message.message_id, True)
                await self.store.store_message(message, quota=self.quota)
            elif ttl:  # the common case, without `_store_push`'s frame
                await self.store.store_message(message, quota=self.quota)
            else:
                await self._store_push(ref, message, signed)
        except SubscriptionGone:
            raise await self._gone(ref) from None
        except (TooManyMessages, StoreFull) as exc:
            raise quota_refused(exc) from None
        except StoreUnavailable as exc:
            raise store_unavailable(exc) from None
        if new_receipt and receipt_id is not None:
            # Only now that the push is accepted: a refused push leaves no row behind.
            await self._add_receipt_subscription(receipt_id, message)
        # Here, or through the bus to the node holding the user agent's connection, before
        # the answer: a DELETE the sender sends after it (to any node) then withdraws a
        # message already on its way, never one still queued here.
        if traced:
            with tracing.span("push route"):
                delivered = self.hub.offer(message) or await self.cluster.route(message)
        else:
            delivered = self.hub.offer(message) or await self.cluster.route(message)
        if late_ack is not None:  # written first, acknowledged while being stored
            self.delete_acknowledged(message.uaid, message.message_id)
        if receipt_id is None:
            return PushAccepted(201, location, ttl, message.message_id, delivered)
        if ttl == 0 and not delivered:
            await self._gave_up(message, receipt_id)
        receipt_url = self.config.origin + RECEIPT_PATH + self.sealer.seal_receipt(receipt_id)
        return PushAccepted(202, location, ttl, message.message_id, delivered, receipt_url)

    async def _acknowledged_unstored(
        self, message: StoredMessage, signed: tuple[object, bytes] | None
    ) -> bool:
        """Write the push to its user agent's quick connection before storing it; True
        when acknowledged in time (`live_acks.ack_wait`; never stored then, a signed push's
        final status written). False: it is to be stored now, and `live_acks.settle`d
        after. Raises what storing it would (SubscriptionGone, a quota's refusal,
        StoreUnavailable), before anything is written."""
        # Refusals come before anything is written to the user agent: a subscription
        # gone, a quota or the store's ceiling reached (a push stored meanwhile may
        # still fill a quota first: the sender is refused one it retries, a duplicate).
        if not await self.store.check_message(message, quota=self.quota):
            return False  # this store cannot tell without storing: stored first
        agent = self.hub.quick_agent(message.uaid)  # again: the read may have suspended
        if agent is None or not self.live_acks.has_room():
            return False
        wait = agent.quick_ack_wait()
        self.live_acks.expect(message.uaid, message.message_id)
        try:
            written_at = time.time()
            agent.offer(message)
            code = await self.live_acks.wait(message.message_id, wait)
        except BaseException:
            self.live_acks.settle(message.message_id)
            raise
        if code is None:
            agent.ack_overdue()
            return False
        self.live_acks.settle(message.message_id)
        self.metrics.acknowledged_unstored()
        if signed is not None:  # only then a call more: unsigned pushes pay nothing
            await self._record_acknowledged(message, signed[1], written_at)
        return True

    async def _acknowledged_elsewhere(
        self, message: StoredMessage, signed: tuple[object, bytes] | None
    ) -> bool:
        """`_acknowledged_unstored` for a user agent not connected here: offered through
        the cluster bus to the node holding it, which writes it to its quick connection
        and answers with the ack (live_offers.py). False: it is to be stored now (and
        routed after, as any push; the holder does not write it twice)."""
        if not await self.store.check_message(message, quota=self.quota):
            return False
        if self.hub.is_connected(message.uaid):
            return False  # connected here meanwhile: stored and offered here
        written_at = time.time()
        if await self.cluster.offer_live(message, self.config.live_ack_wait) is None:
            return False
        self.metrics.acknowledged_unstored()
        if signed is not None:
            await self._record_acknowledged(message, signed[1], written_at)
        return True

    async def _record_acknowledged(
        self, message: StoredMessage, vapid_hash: bytes, written_at: float
    ) -> None:
        """A signed push acknowledged before it was stored: its final status, written and
        awaited before the 201, so that a GET of its status right after reads it."""
        status = MessageStatus(  # by position: keywords cost a dict a push
            message.message_id,
            vapid_hash,
            ACKNOWLEDGED,
            message.ttl,
            message.created_at,
            message.expires_at,
            "websocket",  # delivered_via
            written_at,  # delivered_at
            time.time(),  # final_at
        )
        try:
            await self.store.add_message_status(status)
        except StoreUnavailable as exc:  # the message is delivered; a status is best effort
            log.warning("status of %s not recorded: %s", message.message_id, exc)

    async def _gone(self, ref: EndpointRef) -> ServiceError:
        """The answer to a push to a subscription that no longer exists.

        Expired (its user agent forgotten after `user_agent_expiry`, or its set removed,
        RFC 8030 section 7.3.1): 404, as section 7.3 requires. Unsubscribed while its user
        agent lives on: 410, Mozilla's answer, which section 7.3 leaves open.
        """
        try:
            expired = not await self.store.has_user_agent(ref.uaid)
        except StoreUnavailable:
            expired = False  # gone either way; the 410 says so as well
        if expired:
            return ServiceError(404, Errno.SUBSCRIPTION_GONE, "the subscription has expired")
        return ServiceError(
            410,
            Errno.SUBSCRIPTION_GONE,
            "the subscription has been removed",
            headers={"cache-control": GONE_CACHE_CONTROL},
        )

    async def _store_push(
        self, ref: EndpointRef, message: StoredMessage, signed: tuple[object, bytes] | None
    ) -> None:
        """Store the message, or for TTL 0 only check its subscription still exists (a
        signed TTL-0 push's status says dropped until a connection takes it)."""
        if message.ttl == 0:
            # Delivered only to a user agent connected right now; never stored.
            if await self.store.get_subscription(ref.uaid, ref.channel_id) is None:
                raise SubscriptionGone(ref.channel_id)
            if message.topic is not None:
                # It replaces a stored one of its Topic all the same (RFC 8030 section
                # 5.4), delivered now or dropped.
                await self._replace_topic(message)
            if signed is not None:
                now = message.created_at
                await self.store.add_message_status(
                    MessageStatus(message.message_id, signed[1], EXPIRED, 0, now, now, final_at=now)
                )
        else:
            await self.store.store_message(message, quota=self.quota)

    async def _replace_topic(self, message: StoredMessage) -> None:
        """Delete the stored messages of a `TTL: 0` push's Topic (no receipt: replaced),
        and withdraw a copy of them held unsent by a connection, here or on the node
        holding the user agent, as after a DELETE and before the new one is offered (a
        connection does not note a TTL-0 message's Topic: `Withdrawals.note`)."""
        assert message.topic is not None
        replaced = await self.store.replace_topic(
            message.uaid, message.channel_id, message.topic, message.created_at
        )
        for message_id in replaced:
            self.hub.withdraw(message.uaid, message_id)
            if not await self.cluster.withdraw(message.uaid, message_id):
                log.warning("replaced message %s not withdrawn: the bus is down", message_id)

    async def _receipt_subscription(self, headers: Mapping[str, str]) -> tuple[str | None, bool]:
        """The receipt subscription a push asks for (RFC 8030 section 5.1), if any, and
        whether it is a new one (created once the push is accepted).

        `Prefer: respond-async` asks for a receipt; a `Link` with rel
        urn:ietf:params:push:receipt names an existing receipt subscription to reuse
        (an invalid one is a 400, with or without the preference); without it a new
        one is made. A Link alone asks for nothing: the push is a plain 201.
        """
        wanted = "respond-async" in headers.get("prefer", "").lower()
        link = headers.get("link")  # most pushes have none: no parsing then
        named = None if link is None else link_target(link, REL_RECEIPT)
        if named is None:
            return (secrets.token_hex(16), True) if wanted else (None, False)
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
        return (receipt_id if wanted else None), False

    async def _gave_up(self, message: StoredMessage, receipt_id: str) -> None:
        """A TTL-0 push no connection took is dropped now, never stored: the service gave
        up on it, so the receipt asked for is a 410 at once (RFC 8030 section 6.3), as
        the expiry sweep gives a stored message whose TTL ran out."""
        ids = (receipt_id, message.uaid, message.channel_id, message.message_id)
        try:
            await self.store.add_receipt(Receipt(0, *ids, 410, time.time()))
        except StoreUnavailable as exc:
            raise store_unavailable(exc) from None  # nothing was delivered: a retry is safe
        self.receipt_queued(receipt_id)

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
