"""Who is listening on this node: user agent connections and receipt monitors.

A user agent may be reached through a Firefox WebSocket (one per user agent id) or
through RFC 8030 HTTP/2 monitors (GET of a subscription or of a whole subscription
set, possibly filtered by urgency); an application server may monitor a receipt
subscription. The hub hands each live message to one connection that accepts it.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import ClassVar, Protocol

from tidings.service.store import StoredMessage

RECENT_WITHDRAWALS = 256  # withdrawn message ids (and Topics) remembered per connection
# Receipt monitors an expiry sweep wakes at once (each reads the store); past this many
# their polls, budgeted per node (monitor.RECEIPT_POLLS_PER_SECOND), find the receipts.
WAKE_ALL_RECEIPT_MONITORS = 100
# A held copy of a message is written at most this long after it was known to stand
# (accepted, or read from the store): past it, a DELETE answered since may not have
# reached this node (its link to the cluster bus stalled), so the store is asked again.
FRESH_FOR = 1.0


class StaleCopies:
    """Asks the store whether copies held past FRESH_FOR still stand, one read of the user
    agent's stored ids serving every such copy for FRESH_FOR (found by the fault
    campaign: a copy held through a Redis partition went out after its DELETE's 204)."""

    __slots__ = ("_ids", "_read_at")

    def __init__(self) -> None:
        self._read_at = -math.inf
        self._ids: frozenset[str] = frozenset()

    async def stands(
        self,
        message: StoredMessage,
        known_at: float,
        read: Callable[[], Awaitable[list[StoredMessage]]],
    ) -> bool:
        """True if `message`, known to stand at `known_at`, may be written now. The caller
        writes it with no suspension after this returns. Raises StoreUnavailable."""
        now = time.time()
        if now - known_at <= FRESH_FOR:
            return True
        if now - self._read_at > FRESH_FOR or message.created_at >= self._read_at:
            stored = await read()
            self._read_at, self._ids = now, frozenset(m.message_id for m in stored)
        return message.message_id in self._ids


class ConnectedAgent(Protocol):
    """A user agent connection able to take a message without blocking the caller."""

    uaid: str | None
    # True when a user agent has one such connection at a time, so that a newer one (here
    # or on another node) replaces it: a WebSocket. RFC 8030 monitors may be several.
    exclusive: ClassVar[bool]

    def accepts(self, message: StoredMessage) -> bool:
        """True when this connection wants this message (channel and urgency filters)."""

    def offer(self, message: StoredMessage) -> None:
        """Queue a message for delivery on this connection."""

    def withdraw(self, message_id: str) -> None:
        """The message was deleted by its sender: never send it, if not yet written."""

    def quick_ack_wait(self) -> float:
        """Seconds a message offered now may wait for its acknowledgement before it is
        stored (live_acks.ack_wait); 0 when it is not to be offered before it is stored
        (acknowledged slowly or not at all, or something queued ahead)."""

    def ack_overdue(self) -> None:
        """A message offered for a quick acknowledgement was not acknowledged in time."""

    async def close(self, code: int, reason: str) -> None:
        """Close the connection."""


class Withdrawals:
    """What a connection must no longer send although it may hold a copy (live messages
    held while stored ones are read, a stored list read before the change): messages
    deleted since, and those a newer push with their Topic replaced. Bounded.

    While `holding` (the stored messages are being read and sent) no Topic is forgotten:
    those noted then are the stored list's and the held live messages', both bounded by
    their own limits. Withdrawn ids come from senders' DELETEs, which nothing else bounds:
    `withdraw` says when it had to forget one, and a connection that may still hold a
    copy of it then closes instead of risking sending it after its 204."""

    # Every idle connection has one: slots, and no table until something is recorded.
    __slots__ = ("_ids", "_topics", "holding")

    def __init__(self) -> None:
        self._ids: OrderedDict[str, None] | None = None
        # (channel, Topic) -> (created_at, message id) of the newest stored one seen.
        self._topics: OrderedDict[tuple[str, str], tuple[float, str]] | None = None
        self.holding = False

    def __len__(self) -> int:
        """Entries remembered (withdrawn ids and Topics)."""
        return len(self._ids or ()) + len(self._topics or ())

    def withdraw(self, message_id: str) -> bool:
        """Remember a deleted message; True when an older withdrawal was forgotten."""
        if self._ids is None:
            self._ids = OrderedDict()
        self._ids[message_id] = None
        self._ids.move_to_end(message_id)
        if len(self._ids) > RECENT_WITHDRAWALS:
            self._ids.popitem(last=False)
            return True
        return False

    def note(self, message: StoredMessage) -> None:
        """A message reached this connection: a stored one with a Topic replaced any
        older one with its Topic (a TTL-0 one, never stored, is not noted: the stored
        ones it replaced are withdrawn by id, `PushAcceptance._replace_topic`)."""
        if message.topic is None or message.ttl == 0:
            return
        key = (message.channel_id, message.topic)
        if self._topics is None:
            self._topics = OrderedDict()
        newest = self._topics.get(key)
        if newest is None or newest[0] < message.created_at:
            self._topics[key] = (message.created_at, message.message_id)
            self._topics.move_to_end(key)
        # After the stored list, a forgotten Topic is safe: an older copy still waiting
        # is a queued send, and as many Topics as RECENT_WITHDRAWALS fill the send queue.
        while not self.holding and len(self._topics) > RECENT_WITHDRAWALS:
            self._topics.popitem(last=False)

    def __contains__(self, message: object) -> bool:
        if not isinstance(message, StoredMessage):
            return False
        if self._ids is not None and message.message_id in self._ids:
            return True
        if message.topic is None or self._topics is None:
            return False
        newest = self._topics.get((message.channel_id, message.topic))
        return newest is not None and newest[0] > message.created_at


class ReceiptListener(Protocol):
    """An application server's open receipt subscription."""

    def receipts_ready(self) -> None:
        """New receipts may be waiting in the store."""

    def close(self) -> None:
        """End the monitor (the service is shutting down)."""


class Hub:
    """The connections of this node, by user agent id and by receipt subscription."""

    def __init__(self) -> None:
        # A tuple per user agent (nearly always of one): 48 bytes, where a list took 88.
        self._agents: dict[str, tuple[ConnectedAgent, ...]] = {}
        self._receipts: dict[str, list[ReceiptListener]] = {}
        self._receipt_monitors = 0  # listeners in `_receipts`, all receipt ids together

    def __len__(self) -> int:
        """How many user agents have at least one connection here."""
        return len(self._agents)

    def attach(self, uaid: str, agent: ConnectedAgent) -> None:
        """Add a connection of `uaid`; the newest is offered messages first."""
        agents = self._agents.get(uaid, ())
        if agent not in agents:
            self._agents[uaid] = (*agents, agent)

    def agents(self, uaid: str) -> list[ConnectedAgent]:
        """The connections of a user agent, oldest first."""
        return list(self._agents.get(uaid, ()))

    def detach(self, uaid: str, agent: ConnectedAgent) -> None:
        """Forget a connection."""
        agents = self._agents.get(uaid)
        if agents is None:
            return
        remaining = tuple(other for other in agents if other is not agent)
        if remaining:
            self._agents[uaid] = remaining
        else:
            del self._agents[uaid]

    def connected_user_agents(self) -> list[str]:
        """The ids of the user agents connected to this node right now."""
        return list(self._agents)

    def each_agent(self) -> list[ConnectedAgent]:
        """Every user agent connection of this node (for broadcasts to all)."""
        return [agent for agents in self._agents.values() for agent in agents]

    def is_connected(self, uaid: str) -> bool:
        """True when the user agent has a connection on this node."""
        return uaid in self._agents

    def offer(self, message: StoredMessage) -> bool:
        """Hand a message to the newest connection that accepts it; True if one did."""
        for agent in reversed(self._agents.get(message.uaid, ())):
            if agent.accepts(message):
                agent.offer(message)
                return True
        return False

    def quick_agent(self, uaid: str) -> ConnectedAgent | None:
        """The one connection of `uaid` here, if it acknowledges quickly (live_acks.py)."""
        agents = self._agents.get(uaid)
        if agents is None or len(agents) != 1 or not agents[0].quick_ack_wait():
            return None
        return agents[0]

    def withdraw(self, uaid: str, message_id: str) -> None:
        """A message of `uaid` was deleted: no connection here may send it any more."""
        for agent in self._agents.get(uaid, ()):
            agent.withdraw(message_id)

    async def close_all(self, code: int, reason: str) -> None:
        """Close every user agent connection and receipt monitor (before shutdown)."""
        for agents in list(self._agents.values()):
            for agent in list(agents):
                await agent.close(code, reason)
        for listeners in list(self._receipts.values()):
            for listener in list(listeners):
                listener.close()

    # Receipts ------------------------------------------------------------------------

    def listen_receipts(self, receipt_id: str, listener: ReceiptListener) -> None:
        """An application server monitors a receipt subscription."""
        self._receipts.setdefault(receipt_id, []).append(listener)
        self._receipt_monitors += 1

    def unlisten_receipts(self, receipt_id: str, listener: ReceiptListener) -> None:
        """The monitor has gone."""
        listeners = self._receipts.get(receipt_id)
        if listeners and listener in listeners:
            listeners.remove(listener)
            self._receipt_monitors -= 1
            if not listeners:
                del self._receipts[receipt_id]

    def receipt_listeners(self, receipt_id: str) -> int:
        """How many monitors of a receipt subscription are open here."""
        return len(self._receipts.get(receipt_id, ()))

    def receipt_monitors(self) -> int:
        """How many monitors of receipt subscriptions are open here, in all."""
        return self._receipt_monitors

    def monitored_receipts(self) -> list[str]:
        """The receipt subscriptions monitored on this node now."""
        return list(self._receipts)

    def notify_receipt(self, receipt_id: str) -> None:
        """A receipt was queued for `receipt_id`."""
        for listener in list(self._receipts.get(receipt_id, ())):
            listener.receipts_ready()

    def notify_all_receipts(self) -> None:
        """Receipts may have been queued for anyone (after an expiry sweep)."""
        if self._receipt_monitors > WAKE_ALL_RECEIPT_MONITORS:
            return  # not a burst of reads: the budgeted polls find them
        for listeners in list(self._receipts.values()):
            for listener in list(listeners):
                listener.receipts_ready()
