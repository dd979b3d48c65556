"""After a delivery: statuses noted, acknowledgements written, receipts sent, traces.

A WebSocket `ack` (`acknowledge_soon`) or an RFC 8030 DELETE (`delete_message_resource`)
deletes the message and notifies its receipt subscription; deliveries are recorded in
message statuses lazily, the ones of one moment in one store call.
"""

from __future__ import annotations

import asyncio
import logging
import time

from tidings import tracing
from tidings.service.errors import Errno, ServiceError
from tidings.service.logs import escape
from tidings.service.service_base import ServiceBase, store_unavailable
from tidings.service.store import Receipt, StoredMessage, StoreUnavailable
from tidings.service.tokens import MessageRef, TokenError

__all__ = [
    "DELIVERY_WRITE_DELAY",
    "MAX_ACKS_PER_WRITE",
    "MAX_DELIVERIES_PER_WRITE",
    "MAX_PENDING_ACKS",
    "MAX_PENDING_DELIVERIES",
    "Acknowledgements",
]

log = logging.getLogger("tidings.service")

MAX_ACKS_PER_WRITE = 256  # acknowledgements deleted in one store call at most
MAX_PENDING_ACKS = 100_000  # acknowledgements waiting for their delete; more are dropped
MAX_DELIVERIES_PER_WRITE = 256  # deliveries recorded in message statuses per store call
# WebSocket deliveries are written this many seconds late: an acknowledgement arriving
# meanwhile records the delivery in its own statement, and the separate write is saved.
DELIVERY_WRITE_DELAY = 1.0
# Deliveries waiting to be written: statuses past it are not noted; receipts past it
# are not sent until the oldest are recorded (`room_for_unmarked`).
MAX_PENDING_DELIVERIES = 10_000
MAX_LIVE_RECEIPTS = 10_000  # awaited at once at most; past it the oldest is given up


class Acknowledgements(ServiceBase):
    """What the push service does once a message reached its user agent."""

    async def delete_message_resource(self, token: str) -> bool:
        """DELETE of a push message resource (RFC 8030 sections 5.3 and 6.2).

        From the user agent it acknowledges a delivered message (a receipt follows if
        one was asked for); from the application server it cancels an undelivered one.
        Either way the message is gone; a second DELETE is a 404. False when the node
        holding the user agent could not be told (the cluster bus is down): a copy it
        holds unsent may still be delivered, so the answer is not a plain 204.
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
        if deleted is None and await self._acknowledge_live(ref):
            self.metrics.acknowledged(100)
            return True
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
        told = await self.cluster.withdraw(ref.uaid, ref.message_id)  # before the 204
        self.metrics.acknowledged(100)  # an RFC 8030 acknowledgement (or a cancellation)
        if self.trace_book:
            self._trace_ack(deleted.message_id, 100)
        if deleted.receipt_id is not None:
            self.receipt_queued(deleted.receipt_id)
        return told

    async def _acknowledge_live(self, ref: MessageRef) -> bool:
        """A DELETE of a TTL-0 message sent live (never stored) wanting a receipt: sent
        from this node, or from another one that shared it over the cluster bus. True
        when its 204 receipt is sent now."""
        live = self._live_receipts.get(ref.message_id)
        if live is not None and live.channel_id == ref.channel_id and live.uaid == ref.uaid:
            del self._live_receipts[ref.message_id]
            if not await self.cluster.forget_live_receipt(ref.message_id):
                return False  # acknowledged on another node already
            await self._send_live_receipt(live, 204)
            return True
        receipt_id = await self.cluster.take_live_receipt(ref.message_id)
        if receipt_id is None:
            return False
        ids = (receipt_id, ref.uaid, ref.channel_id, ref.message_id)
        await self._send_live_receipt(Receipt(0, *ids, 0, time.time()), 204)
        return True

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
        if self.live_acks.acknowledged(uaid, message_id, code):
            # Written before it was stored: its push answers it (acceptance.py).
            self._deliveries.pop(message_id, None)
            return
        self.delete_acknowledged(uaid, message_id)

    def delete_acknowledged(self, uaid: str, message_id: str) -> None:
        """Queue the delete of an acknowledged message (written with others)."""
        if len(self._acks) >= MAX_PENDING_ACKS:
            # The store is this far behind (slow, not failing): the message stays stored
            # and is delivered again (at least once), the list does not grow.
            log.warning("acknowledgement of %s dropped: the store is behind", escape(message_id))
            return
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
                        live = self._live_receipts.pop(message_id, None)
                        if live is not None and await self.cluster.forget_live_receipt(
                            message_id
                        ):  # a TTL-0 message sent live: acknowledged
                            await self._send_live_receipt(live, 204)
                        log.debug("ack for unknown or TTL-0 message %s", escape(message_id))
                    elif message.receipt_id is not None:
                        self.receipt_queued(message.receipt_id)
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

    async def room_for_unmarked(self) -> bool:
        """Whether one more unrecorded delivery can be remembered. At the bound the
        oldest are recorded first (the store may be back); if it cannot take them, a
        message wanting a receipt must not be sent now: forgetting an unrecorded
        delivery would lose the receipt of its acknowledgement. Does not suspend while
        there is room, so a caller that sends right after it keeps that room."""
        if len(self._unmarked) < MAX_PENDING_DELIVERIES:
            return True
        oldest = list(self._unmarked.items())[:MAX_DELIVERIES_PER_WRITE]
        try:
            await self._mark_unmarked([(uaid, message_id) for message_id, uaid in oldest])
        except StoreUnavailable as exc:
            log.warning("%d deliveries not recorded yet: %s", len(self._unmarked), exc)
        return len(self._unmarked) < MAX_PENDING_DELIVERIES

    async def mark_delivered(self, message: StoredMessage) -> bool:
        """Remember that a message wanting a receipt reached its user agent; False (and
        nothing remembered) when it cannot be, the store down and `room_for_unmarked`
        full: the caller does not send it, it stays stored."""
        if message.ttl == 0 and message.receipt_id is not None:
            self._await_live_ack(message)  # never stored: nothing to record there
            await self.cluster.share_live_receipt(message.message_id, message.receipt_id)
            return True
        if message.message_id not in self._unmarked and not await self.room_for_unmarked():
            return False
        # Until written, an acknowledgement (which may overtake this write) writes it.
        self._unmarked[message.message_id] = message.uaid
        try:
            await self.store.mark_delivered(message.uaid, message.message_id)
        except StoreUnavailable as exc:
            log.warning("cannot mark %s delivered: %s", message.message_id, exc)
            return True
        self._unmarked.pop(message.message_id, None)
        return True

    def _await_live_ack(self, message: StoredMessage) -> None:
        """Keep the receipt of a TTL-0 message just sent live until it is acknowledged."""
        assert message.receipt_id is not None
        ids = (message.receipt_id, message.uaid, message.channel_id, message.message_id)
        self._live_receipts[message.message_id] = Receipt(0, *ids, 0, time.time())
        if len(self._live_receipts) > MAX_LIVE_RECEIPTS:
            _, oldest = self._live_receipts.popitem(last=False)
            task = asyncio.ensure_future(self.give_up_live_receipt(oldest))
            self._redelivery_tasks.add(task)  # held until done, like the redeliveries
            task.add_done_callback(self._redelivery_tasks.discard)

    async def _mark_unmarked(self, keys: list[tuple[str, str]]) -> None:
        """Before acknowledgements of `keys` (uaid, message id) are written: record the
        deliveries among them that could not be recorded when they were sent (raises
        StoreUnavailable; the acknowledgement then fails and the message stays)."""
        for uaid, message_id in keys:
            if message_id in self._unmarked:
                await self.store.mark_delivered(uaid, message_id)
                self._unmarked.pop(message_id, None)
