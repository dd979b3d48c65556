"""One user agent's WebSocket connection: Firefox's push protocol against the service.

The I/O adapter feeds text frames to `on_text` and gives the session a `TextChannel` to
answer on; this class holds the connection's state (its uaid, what was sent and not
yet acknowledged) and the rules: hello first and once, deliver what is stored after
hello, in order, then live messages; ack deletes.

Over 500 lines: the delivery rules (order, withdrawals, held and stale copies, acks)
share the connection's state and are read together; the frame codec is ws_protocol.py.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from typing import Any, ClassVar

from tidings.service import ws_protocol as wp
from tidings.service.broadcasts import changes_for, client_broadcasts
from tidings.service.core import PushService, RegistrationError
from tidings.service.errors import ServiceError
from tidings.service.http.app import TextChannel as TextChannel  # what it answers on
from tidings.service.hub import FRESH_FOR, StaleCopies, Withdrawals
from tidings.service.limits import Limit
from tidings.service.live_acks import ack_wait
from tidings.service.logs import escape, redact_uaid
from tidings.service.store import StoredMessage, StoreUnavailable
from tidings.service.store_retry import WarningTally, retry_read
from tidings.webpush import InvalidKeyError, load_p256_public_key
from tidings.webpush.b64 import b64url_decode

log = logging.getLogger("tidings.websocket")
# A store outage fails these reads for every connection at once: one line per interval.
STORED_READ_FAILED = WarningTally(log)
STORED_READ_GAVE_UP = WarningTally(log)

# Messages queued for a client that does not read; past this the connection is closed
# (its messages stay stored and are delivered on the next connection).
MAX_QUEUED_SENDS = 256
MAX_UNACKED = 1024  # ids of sent, unacknowledged messages remembered per connection
RECENT_ACKS = 256  # acknowledged message ids remembered per connection
MAX_HELD = 1024  # live messages held per connection while its stored ones are read


def decode_application_server_key(key: str) -> bytes:
    """The raw 65-byte P-256 key of a `register` (base64url, padded or not, or base64)."""
    raw = b64url_decode(key.strip().replace("+", "-").replace("/", "_"))
    load_p256_public_key(raw)
    return raw


class WebSocketSession:
    """The protocol state of one connected user agent."""

    exclusive: ClassVar[bool] = True  # a newer hello of its uaid, anywhere, replaces it

    # Hundreds of thousands are held idle on a node: slots, and the containers below
    # exist only while they hold something (issue 21: kB per idle connection).
    __slots__ = (
        "_acked", "_forgotten", "_held", "_queued", "_send_lock", "_senders", "_stale",
        "_tasks", "_unacked", "_withdrawn", "ack_round_trip", "channel", "closed",
        "followed", "peer", "service", "uaid",
    )  # fmt: skip

    def __init__(self, service: PushService, channel: TextChannel, peer: str = "") -> None:
        self.service = service
        self.channel = channel
        self.peer = peer
        self.uaid: str | None = None
        # Sent, not yet acknowledged (oldest first), to send each message once. A client
        # that never acks (TTL 0 messages are never stored, so nothing else ends them)
        # makes it forget the oldest past MAX_UNACKED: at worst a duplicate, which user
        # agents drop by message id. The value is when it was written (monotonic).
        self._unacked: OrderedDict[str, float] | None = None
        # How many were forgotten so, unacknowledged: as many acks of ids not remembered
        # are taken (a backlog larger than MAX_UNACKED is acknowledged after it is sent).
        self._forgotten = 0
        # Recently acknowledged ids: a redelivery racing the ack's delete is not sent again.
        self._acked: OrderedDict[str, None] | None = None
        self._held: list[StoredMessage] | None = None  # live messages held while flushing
        # Deleted or replaced since they reached this connection: not to be written.
        self._withdrawn = Withdrawals()
        # Frames are written one at a time, in order; the lock exists while a send is
        # in progress or waiting (`_senders` of them), not on an idle connection.
        self._send_lock: asyncio.Lock | None = None
        self._senders = 0
        self._queued = 0
        self._stale: StaleCopies | None = None  # made for the first copy held too long
        self._tasks: set[asyncio.Task[None]] | None = None
        self.followed: set[str] | None = None  # broadcast ids this client follows (bounded)
        self.closed = False
        # How long its last acknowledgement took (from the frame's write): within the
        # service's live_ack_wait, pushes are written before they are stored, their ack
        # answering them (live_acks.py).
        self.ack_round_trip = math.inf

    # Frames in ------------------------------------------------------------------------

    @property
    def greeted(self) -> bool:
        """Whether the client has said hello (WebSocketHandler)."""
        return self.uaid is not None

    async def on_text(self, text: str) -> None:
        """Handle one frame; FrameError means the adapter must close the connection."""
        try:
            await self._on_frame(text)
        except StoreUnavailable as exc:
            # The store is down or closing (shutdown): the client retries later.
            log.warning("store unavailable for %s: %s", escape(self.peer), exc)
            raise wp.FrameError(
                wp.CLOSE_TRY_AGAIN_LATER, "service unavailable, try again later"
            ) from None

    async def _on_frame(self, text: str) -> None:
        message = wp.parse_client_frame(text)
        if isinstance(message, wp.Hello):
            await self._hello(message)
            return
        if self.uaid is None:
            raise wp.FrameError(wp.CLOSE_POLICY_VIOLATION, "the first message must be hello")
        if isinstance(message, wp.Ping):
            await self._send(wp.PING_REPLY)
        elif isinstance(message, wp.Register):
            await self._register(self.uaid, message)
        elif isinstance(message, wp.Unregister):
            await self._unregister(self.uaid, message)
        elif isinstance(message, wp.Ack):
            self._on_ack(self.uaid, message)
        elif isinstance(message, wp.Nack):
            # A line per nack of a message sent here; made-up ones would flood the log.
            sent = self._unacked is not None and message.version in self._unacked
            log.log(
                logging.INFO if sent else logging.DEBUG,
                "nack from %s for %s (code %s)",
                redact_uaid(self.uaid),
                escape(message.version),
                message.code,
            )
        elif isinstance(message, wp.BroadcastSubscribe):
            answer = self._answer_broadcasts(message.broadcasts)
            if answer:  # autopush answers only when there is something to say
                await self._send(wp.broadcast_reply(answer))

    def broadcasts_changed(self, changed: dict[str, str]) -> None:
        """An operator changed broadcasts: tell this client of those it follows."""
        if not self.followed:
            return
        news = changes_for(changed, self.followed)
        if not news or self.closed or self.uaid is None:
            return
        frame = wp.broadcast_reply(news)
        # One change goes to every follower at once: without a task where the socket
        # can take the frame now (the common case), so a node of many browsers does
        # not hold a task per connection.
        send_now = getattr(self.channel, "send_text_nowait", None)
        if send_now is None or self._queued or self._senders:
            self._spawn(self._send(frame))
            return
        try:
            send_now(frame)
        except Exception as exc:  # the peer went away
            log.debug("send to %s failed: %s", redact_uaid(self.uaid), exc)
            self.closed = True

    def handle_now(self, text: str) -> bool:
        """Handle an `ack` frame at once, without waiting for a task: it is the frame
        a user agent sends most, and needs no answer. False for any other frame (or
        one that does not parse), which then takes the queued path of `on_text`."""
        if self.uaid is None or "ack" not in text:
            return False
        try:
            message = wp.parse_client_frame(text)
        except wp.FrameError:
            return False
        if not isinstance(message, wp.Ack):
            return False
        self._on_ack(self.uaid, message)
        return True

    def _on_ack(self, uaid: str, message: wp.Ack) -> None:
        for update in message.updates:
            unacked = self._unacked
            sent_at = None if unacked is None else unacked.pop(update.version, None)
            if sent_at is not None:
                self.ack_round_trip = time.monotonic() - sent_at
            elif self._forgotten and not (self._acked and update.version in self._acked):
                self._forgotten -= 1  # one of those sent here and no longer remembered
            else:
                # Not sent on this connection (or acknowledged already), as autopush:
                # made-up ids would fill the node's queue of deletes, which every user
                # agent's acks share, and cost the store a write each for nothing.
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("ack of %s, not sent on this connection", escape(update.version))
                continue
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "acknowledged with code %d",
                    update.code,
                    extra={"message_id": update.version},
                )
            if self._acked is None:
                self._acked = OrderedDict()
            self._acked[update.version] = None
            if len(self._acked) > RECENT_ACKS:
                self._acked.popitem(last=False)
            self.service.acknowledge_soon(uaid, update.version, update.code)

    async def _hello(self, hello: wp.Hello) -> None:
        if self.uaid is not None:
            raise wp.FrameError(wp.CLOSE_POLICY_VIOLATION, "hello was already received")
        if self.service.draining:
            raise wp.FrameError(wp.CLOSE_TRY_AGAIN_LATER, "service shutting down")
        uaid = await self.service.resolve_uaid(hello.uaid)
        self.uaid = uaid
        self._held = []  # live messages wait until the stored ones have been sent
        self._withdrawn.holding = True
        for previous in self.service.hub.agents(uaid):
            if isinstance(previous, WebSocketSession):
                await previous.close(wp.CLOSE_REPLACED, "another connection took over this uaid")
        self.service.hub.attach(uaid, self)
        await self.service.broadcasts.settled()  # a Megaphone read in flight: its news
        broadcasts = self._answer_broadcasts(hello.broadcasts)
        await self._send(wp.hello_reply(uaid, broadcasts))
        log.info(
            "hello from %s: uaid %s%s",
            escape(self.peer),
            redact_uaid(uaid),
            "" if uaid == hello.uaid else " (new)",
        )
        await self._flush_stored(uaid)

    def _answer_broadcasts(self, asked: dict[str, Any]) -> dict[str, Any]:
        """The answer to the broadcasts a hello or broadcast_subscribe names; those
        known are followed from now on."""
        followed = self.followed if self.followed is not None else set()
        answer = self.service.broadcasts.current.answer(client_broadcasts(asked), followed)
        self.followed = followed or None
        return answer

    async def _flush_stored(self, uaid: str) -> None:
        read_at = time.time()
        try:
            stored = await self.service.pending(uaid)
        except StoreUnavailable as exc:
            STORED_READ_FAILED.warning(
                "cannot load stored messages for %s: %s", redact_uaid(uaid), exc
            )
            # Retried in a task of this session (cancelled when it ends), not here: the
            # frames after hello are still read meanwhile. Live messages wait in `_held`.
            self._spawn(self._flush_retried(uaid))
            return
        await self._deliver_stored(stored, read_at)

    async def _flush_retried(self, uaid: str) -> None:
        read_at = time.time()
        try:
            stored = await retry_read(lambda: self.service.pending(uaid))
        except StoreUnavailable as exc:
            STORED_READ_GAVE_UP.warning(
                "store still unavailable for %s: %s", redact_uaid(uaid), exc
            )
            await self.close(wp.CLOSE_TRY_AGAIN_LATER, "service unavailable, try again later")
            return
        await self._deliver_stored(stored, read_at)

    async def _deliver_stored(self, stored: list[StoredMessage], read_at: float) -> None:
        """Send the stored messages read at `read_at`, then the live ones held meanwhile."""
        for message in stored:
            self._withdrawn.note(message)
        for message in stored:
            await self._deliver(message, read_at)
        # Live messages that arrived meanwhile keep waiting in `_held` (offer appends
        # there) until every one before them is out: delivery stays in order.
        while self._held:
            held, self._held = self._held, []
            for message in held:
                await self._deliver(message, message.created_at)
        self._held = None
        self._withdrawn.holding = False

    async def _register(self, uaid: str, register: wp.Register) -> None:
        if register.error is not None:
            await self._send(wp.register_reply(register.channel_id, None, 400))
            return
        key: bytes | None = None
        if register.key is not None:
            try:
                key = decode_application_server_key(register.key)
            except (ValueError, InvalidKeyError):
                await self._send(wp.register_reply(register.channel_id, None, 400))
                return
        try:
            await self.service.check_address_rate(Limit.SUBSCRIBE_ADDRESS, self.peer)
        except ServiceError as exc:
            await self._send(wp.register_reply(register.channel_id, None, exc.status))
            return
        try:
            endpoint = await self.service.register(uaid, register.channel_id, key)
        except RegistrationError as exc:
            self.service.metrics.register_refused(exc.status)
            await self._send(wp.register_reply(register.channel_id, None, exc.status))
            return
        except StoreUnavailable:
            await self._send(wp.register_reply(register.channel_id, None, 503))
            return
        await self._send(wp.register_reply(register.channel_id, endpoint))

    async def _unregister(self, uaid: str, unregister: wp.Unregister) -> None:
        if unregister.error is not None:
            await self._send(wp.unregister_reply(unregister.channel_id, 400))
            return
        try:
            # A store write, found or not: counted as an RFC 8030 DELETE is.
            await self.service.check_address_rate(Limit.PUSH_ADDRESS, self.peer)
        except ServiceError as exc:
            await self._send(wp.unregister_reply(unregister.channel_id, exc.status))
            return
        try:
            await self.service.unregister(uaid, unregister.channel_id)
        except StoreUnavailable:
            await self._send(wp.unregister_reply(unregister.channel_id, 503))
            return
        await self._send(wp.unregister_reply(unregister.channel_id))

    # Frames out -----------------------------------------------------------------------

    def accepts(self, message: StoredMessage) -> bool:
        """A WebSocket user agent takes every message of its subscriptions."""
        return not self.closed

    def offer(self, message: StoredMessage) -> None:
        """A live message for this user agent (called by the hub, never blocks)."""
        if self.closed:
            return
        self._withdrawn.note(message)  # a newer one with its Topic replaces a held one
        if self._held is not None:
            if len(self._held) >= MAX_HELD:
                # The stored messages cannot be read (a long store outage): the client
                # reconnects later and gets what is stored then, in order.
                self._spawn(self.close(wp.CLOSE_TRY_AGAIN_LATER, "too many messages waiting"))
                return
            self._held.append(message)
            return
        if self._deliver_now(message):
            return
        if self._queued >= MAX_QUEUED_SENDS:
            self._spawn(self.close(wp.CLOSE_TRY_AGAIN_LATER, "client is not reading"))
            return
        self._queued += 1
        self._spawn(self._deliver_queued(message))

    def quick_ack_wait(self) -> float:
        """Its last ack was quick and a message offered now is written at once: how
        long to wait for that message's ack (live_acks.ack_wait), else 0."""
        if self.closed or self._held is not None or self._queued or self._senders:
            return 0.0
        return ack_wait(self.ack_round_trip, self.service.config.live_ack_wait)

    def ack_overdue(self) -> None:
        """A push written for a quick ack was not acknowledged in time: the next ones
        are stored first, until an acknowledgement is quick again."""
        self.ack_round_trip = math.inf

    def withdraw(self, message_id: str) -> None:
        """Its sender deleted the message: a copy held here is not sent (one already
        written to the socket is on its way)."""
        forgot = self._withdrawn.withdraw(message_id)
        if self._held:
            self._held = [held for held in self._held if held.message_id != message_id]
        if forgot and (self._held is not None or self._queued):
            # A copy of the forgotten one may still be waiting here (the stored list, a
            # queued send): the client comes back and reads what is stored then.
            self._spawn(self.close(wp.CLOSE_TRY_AGAIN_LATER, "too many messages withdrawn"))

    def _already_sent(self, message_id: str) -> bool:
        """Sent on this connection and not acknowledged, or acknowledged recently."""
        unacked, acked = self._unacked, self._acked
        return (unacked is not None and message_id in unacked) or (
            acked is not None and message_id in acked
        )

    def _deliver_now(self, message: StoredMessage) -> bool:
        """Deliver without a task when nothing is queued ahead (the common live case).

        Returns False when the message must take the queued path: frames already
        waiting (order), a send in progress, a receipt to record first, or a channel
        that cannot write without waiting.
        """
        send_now = getattr(self.channel, "send_text_nowait", None)
        if send_now is None or self._queued or self._senders or message.receipt_id is not None:
            return False
        frame = self._frame_for(message)
        if frame is None:
            return True
        try:
            send_now(frame)
        except Exception as exc:  # the peer went away; its messages stay stored
            log.debug("send to %s failed: %s", redact_uaid(self.uaid), exc)
            self.closed = True
            return True
        self.service.metrics.delivered(message)
        self.service.note_delivered(message, "websocket")
        return True

    def _frame_for(self, message: StoredMessage) -> str | None:
        """The notification frame, or None if it must not be sent (again, or late)."""
        if self._already_sent(message.message_id):
            return None  # already sent on this connection (stored and live at once)
        if message.ttl and message.expires_at <= time.time():
            return None  # a message is never delivered after its TTL
        if message in self._withdrawn:
            return None  # deleted by its sender, or replaced by a newer one of its Topic
        if self._unacked is None:
            self._unacked = OrderedDict()
        self._unacked[message.message_id] = time.monotonic()
        if len(self._unacked) > MAX_UNACKED:
            self._unacked.popitem(last=False)
            self._forgotten += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "delivering to %s",
                redact_uaid(message.uaid),
                extra={"request_id": message.request_id, "message_id": message.message_id},
            )
        if message.traceparent is not None:
            self.service.trace_delivery(message, "websocket")
        return wp.notification_frame(
            message.channel_id, message.message_id, message.body, message.headers
        )

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[call-overload]
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if self._tasks is not None:
            self._tasks.discard(task)
            if not self._tasks:
                self._tasks = None

    async def _deliver_queued(self, message: StoredMessage) -> None:
        try:
            await self._deliver(message, message.created_at)
        finally:
            self._queued -= 1

    async def _deliver(self, message: StoredMessage, known_at: float) -> None:
        """Send `message`, known to stand at `known_at` (accepted, or read from the store)."""
        if self.closed:
            return  # not sent: nothing may be recorded as delivered
        frame = self._frame_for(message)
        if frame is None:
            return
        if message.receipt_id is not None and not await self.service.mark_delivered(message):
            # Its delivery could be neither recorded nor remembered (the store down for
            # long): sent now, its receipt would be lost. It stays stored for later.
            if self._unacked is not None:
                self._unacked.pop(message.message_id, None)
            await self.close(wp.CLOSE_TRY_AGAIN_LATER, "service unavailable, try again later")
            return
        if not await self._send(frame, message, known_at):
            if self._unacked is not None:
                self._unacked.pop(message.message_id, None)
            return
        if not self.closed:  # the frame went out
            self.service.metrics.delivered(message)
            self.service.note_delivered(message, "websocket")

    async def _send(
        self, text: str, message: StoredMessage | None = None, known_at: float = math.inf
    ) -> bool:
        """Write a frame; False if `message` (the frame's, known to stand at `known_at`)
        was withdrawn while waiting, or is no longer stored once held past FRESH_FOR."""
        if self.closed:
            return False
        if self._send_lock is None:
            self._send_lock = asyncio.Lock()
        self._senders += 1
        try:
            async with self._send_lock:
                if message is not None and message in self._withdrawn:
                    return False
                if message is not None and time.time() - known_at > FRESH_FOR:
                    if not await self._still_stands(message, known_at):
                        return False
                    if message in self._withdrawn:
                        return False
                try:
                    await self.channel.send_text(text)
                except Exception as exc:  # the peer went away; its messages stay stored
                    log.debug("send to %s failed: %s", redact_uaid(self.uaid), exc)
                    self.closed = True
        finally:
            self._senders -= 1
            if not self._senders:
                self._send_lock = None  # nobody holds or waits for it
        return True

    async def _still_stands(self, message: StoredMessage, known_at: float) -> bool:
        """Held past FRESH_FOR (a slow store or client, this node cut off from the bus):
        still stored? If the store cannot say, the client comes back later (1013)."""
        if self._stale is None:
            self._stale = StaleCopies()
        try:
            return await self._stale.stands(
                message, known_at, lambda: self.service.pending(message.uaid)
            )
        except StoreUnavailable:
            self._spawn(
                self.close(wp.CLOSE_TRY_AGAIN_LATER, "service unavailable, try again later")
            )
            return False

    # End --------------------------------------------------------------------------------

    async def close(self, code: int, reason: str) -> None:
        """Close the connection (replaced, draining, or a client that does not read)."""
        if self.closed:
            return
        self.closed = True
        try:
            await self.channel.close(code, reason)
        except Exception as exc:
            log.debug("close of %s failed: %s", redact_uaid(self.uaid), exc)
        self.on_disconnect()

    def on_disconnect(self) -> None:
        """The connection is gone: leave the hub; nothing stored is lost."""
        self.closed = True
        if self.uaid is not None:
            self.service.hub.detach(self.uaid, self)
        for task in list(self._tasks or ()):
            if task is not asyncio.current_task():
                task.cancel()
