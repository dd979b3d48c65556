"""RFC 8030 monitoring over HTTP/2: a user agent's GET of a subscription or set, and an
application server's GET of a receipt subscription. Nothing answers these requests
while they are open; every message (or receipt) arrives as a server push.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections import OrderedDict
from typing import ClassVar

from tidings.service.core import PushService
from tidings.service.http.messages import Response, ServerPushChannel
from tidings.service.hub import FRESH_FOR, StaleCopies, Withdrawals
from tidings.service.store import StoredMessage, StoreUnavailable
from tidings.service.store_retry import WarningTally, retry_read
from tidings.service.tokens import MessageRef
from tidings.webpush import Urgency
from tidings.webpush.links import REL_PUSH, link_value

log = logging.getLogger("tidings.monitor")
STORED_READ_FAILED = WarningTally(log)  # one line per interval in an outage

RECEIPT_BATCH = 100
MAX_HELD = 1024  # live messages held per monitor while its stored ones are read
# Ids of messages pushed on one monitor, remembered so each goes once: a long-lived
# monitor forgets the oldest past this (at worst a duplicate, dropped by the user agent).
MAX_SENT = 1024
RECEIPT_POLL = 2.0  # seconds between store reads of an open receipt subscription
# Store reads a second that all of a node's open receipt monitors make between them: idle
# streams cost a client nothing to hold, so the poll period grows with their number.
RECEIPT_POLLS_PER_SECOND = 50.0
RECEIPT_CONFIRM_TIMEOUT = 10.0  # seconds for the receiver to answer the PING after receipts


def http_date(timestamp: float) -> str:
    """An IMF-fixdate (RFC 9110 section 5.6.7)."""
    return email.utils.formatdate(timestamp, usegmt=True)


class PushMonitor:
    """One open GET of a push message subscription or a subscription set.

    `channel_id` is None for a set (every subscription of the user agent). Messages
    below `min_urgency` are held back (RFC 8030 section 5.3) and stay stored.
    """

    exclusive: ClassVar[bool] = False  # a user agent may monitor several at once

    def __init__(
        self,
        service: PushService,
        channel: ServerPushChannel,
        uaid: str,
        channel_id: str | None,
        min_urgency: Urgency,
    ) -> None:
        self.service = service
        self.channel = channel
        self.uaid: str | None = uaid
        self.channel_id = channel_id
        self.min_urgency = min_urgency
        self._sent: OrderedDict[str, None] = OrderedDict()
        self._held: list[StoredMessage] | None = []  # live messages held while flushing
        # Deleted or replaced since they reached this monitor: not to be pushed.
        self._withdrawn = Withdrawals()
        self._withdrawn.holding = True
        self._tasks: set[asyncio.Task[bool]] = set()
        self._stale = StaleCopies()

    # ConnectedAgent ----------------------------------------------------------------------

    def accepts(self, message: StoredMessage) -> bool:
        if self.channel.closed.is_set():
            return False
        if self.channel_id is not None and message.channel_id != self.channel_id:
            return False
        return Urgency(message.urgency).rank >= self.min_urgency.rank

    def offer(self, message: StoredMessage) -> None:
        self._withdrawn.note(message)  # a newer one with its Topic replaces a held one
        if self._held is not None:
            if len(self._held) >= MAX_HELD:
                # The stored messages cannot be read (a long store outage): this one stays
                # stored, and the client monitors again after the 503.
                self.channel.closed.set()
                return
            self._held.append(message)
            return
        task = asyncio.ensure_future(self._push(message, message.created_at))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def withdraw(self, message_id: str) -> None:
        forgot = self._withdrawn.withdraw(message_id)
        if self._held:
            self._held = [held for held in self._held if held.message_id != message_id]
        if forgot and (self._withdrawn.holding or self._tasks):
            # A copy of the forgotten one may still be waiting (the stored list, a push
            # under way): the monitor ends and the client monitors again.
            self.channel.closed.set()

    def quick_ack_wait(self) -> float:
        return 0.0  # acknowledged by a DELETE: every push is stored first

    def ack_overdue(self) -> None:
        pass

    async def close(self, code: int, reason: str) -> None:
        self.channel.closed.set()

    # Life of the request -----------------------------------------------------------------

    async def flush_stored(self) -> int:
        """Push what is stored for this monitor, oldest first; return how many."""
        uaid = self.uaid or ""
        read_at = time.time()
        try:
            stored = await self.service.pending(uaid)
        except StoreUnavailable as exc:
            STORED_READ_FAILED.warning("cannot load stored messages, retrying: %s", exc)
            # Still down after the retries: StoreUnavailable, a 503 the client retries.
            stored = await retry_read(lambda: self.service.pending(uaid), self.channel.closed)
        for message in stored:
            self._withdrawn.note(message)
        held, self._held = self._held or [], None
        count = 0
        known = [(message, read_at) for message in stored]
        for message, known_at in known + [(message, message.created_at) for message in held]:
            if self.accepts(message) and await self._push(message, known_at):
                count += 1
        self._withdrawn.holding = False
        return count

    async def _push(self, message: StoredMessage, known_at: float) -> bool:
        """Push `message`, known to stand at `known_at` (accepted, or read from the store)."""
        if message.message_id in self._sent or message in self._withdrawn:
            return False
        if message.ttl and message.expires_at <= time.time():
            return False
        self._sent[message.message_id] = None
        if len(self._sent) > MAX_SENT:
            self._sent.popitem(last=False)
        ref = MessageRef(message.uaid, message.channel_id, message.message_id)
        path = self.service.message_path(ref)
        headers = {
            "last-modified": http_date(message.created_at),
            "cache-control": "private",
        }
        if message.body:
            headers["content-type"] = "application/octet-stream"
            headers["content-encoding"] = message.headers.get("encoding", "aes128gcm")
            if "encryption" in message.headers:
                headers["encryption"] = message.headers["encryption"]
            if "crypto_key" in message.headers:
                headers["crypto-key"] = message.headers["crypto_key"]
        # RFC 8030 section 6.2: a pushed message names its push resource (a MUST for sets).
        subscription = await self.service.store.get_subscription(message.uaid, message.channel_id)
        if subscription is not None:
            push_url = self.service.push_url(
                message.uaid, message.channel_id, subscription.vapid_hash
            )
            headers["link"] = link_value(push_url, REL_PUSH)
        # Section 6.1: the synthetic request itself names the push resource (sets: MUST).
        promised = {"link": headers["link"]} if "link" in headers else {}
        if time.time() - known_at > FRESH_FOR and not await self._still_stands(message, known_at):
            self._sent.pop(message.message_id, None)
            return False
        if message.receipt_id is not None and not await self.service.room_for_unmarked():
            # Its delivery could not be remembered if its write failed (the store down for
            # long), and its receipt would be lost: it stays stored, the monitor ends.
            self._sent.pop(message.message_id, None)
            self.channel.closed.set()
            return False
        # No suspension from here to `mark_delivered`'s note: the room is still there.
        if message in self._withdrawn:  # deleted or replaced while the store answered
            self._sent.pop(message.message_id, None)
            return False
        pushed = self.channel.push(path, Response(200, headers, message.body), promised)
        if not pushed:
            self._sent.pop(message.message_id, None)
            return False
        self.service.metrics.delivered(message)
        self.service.note_delivered(message, "http2")
        if message.traceparent is not None:
            self.service.trace_delivery(message, "http2")
        if message.receipt_id is not None:  # only once it is on its way
            await self.service.mark_delivered(message)
        return True

    async def _still_stands(self, message: StoredMessage, known_at: float) -> bool:
        """Held past FRESH_FOR (a slow store, this node cut off from the bus): still stored?
        If the store cannot say, the monitor ends; the client monitors again."""
        try:
            return await self._stale.stands(
                message, known_at, lambda: self.service.pending(self.uaid or "")
            )
        except StoreUnavailable:
            self.channel.closed.set()
            return False

    async def settle(self) -> None:
        """Wait for pushes already under way (before answering `Prefer: wait=0`)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    @property
    def sent_any(self) -> bool:
        """True once this monitor pushed at least one message."""
        return bool(self._sent)

    def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()


class ReceiptMonitor:
    """An application server's open GET of a receipt subscription (section 6.3)."""

    def __init__(self, service: PushService, channel: ServerPushChannel, receipt_id: str):
        self.service = service
        self.channel = channel
        self.receipt_id = receipt_id
        self._wake = asyncio.Event()
        self._wake.set()  # deliver what is already waiting

    def receipts_ready(self) -> None:
        self._wake.set()

    def close(self) -> None:
        self.channel.closed.set()

    async def run(self) -> None:
        """Push receipts as they come until the stream closes."""
        closed = asyncio.ensure_future(self.channel.closed.wait())
        try:
            while not self.channel.closed.is_set():
                await self._deliver_waiting()
                woken = asyncio.ensure_future(self._wake.wait())
                # The poll catches receipts queued by another node of a cluster, which
                # cannot wake this one.
                monitors = self.service.hub.receipt_monitors()
                period = max(RECEIPT_POLL, monitors / RECEIPT_POLLS_PER_SECOND)
                await asyncio.wait(
                    {woken, closed}, timeout=period, return_when=asyncio.FIRST_COMPLETED
                )
                woken.cancel()
        finally:
            closed.cancel()

    async def _deliver_waiting(self) -> None:
        self._wake.clear()
        try:
            receipts = await self.service.store.pending_receipts(self.receipt_id, RECEIPT_BATCH)
        except StoreUnavailable as exc:
            log.warning("cannot load receipts: %s", exc)
            return
        pushed = []
        for receipt in receipts:
            ref = MessageRef(receipt.uaid, receipt.channel_id, receipt.message_id)
            response = Response(receipt.status, {})
            if not self.channel.push(self.service.message_path(ref), response, {}):
                break
            pushed.append(receipt.seq)
        # Forgotten only once the application server has read them: a receipt pushed to a
        # connection that dies first stays and goes to its next monitor (at least once).
        if not pushed or not await self.channel.received(RECEIPT_CONFIRM_TIMEOUT):
            return
        for seq in pushed:
            await self.service.store.delete_receipt(seq)
        if len(receipts) == RECEIPT_BATCH:
            self._wake.set()
