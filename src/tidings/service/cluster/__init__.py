"""Reaching user agents connected to other nodes: the cluster bus.

A node hands a live message to its own `Hub` first. When the user agent is not
connected here, `ClusterBus.route` gives the message to the node that holds the
connection, if any. The message is already stored (unless its TTL is 0), so routing is
only about delivering it now: a lost route costs latency, never the message.

A push that can be answered by its ack instead of being stored (live_acks.py) is first
offered to the holding node (`ClusterBus.offer_live`; the holder's side is
`OfferTaker`, live_offers.py); anything but an ack in time and the push is stored and
routed as any other.

`SingleNodeBus` (the default) routes nowhere and costs nothing; `RedisBus`
(`--cluster redis://...`) records which node holds which user agent in Redis and
passes messages between nodes over Redis pub/sub.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from tidings.service.cluster.wire import LiveOffer
from tidings.service.hub import Hub
from tidings.service.store import StoredMessage

__all__ = [
    "LIVE_FORGET_BATCH",
    "ClusterBus",
    "OfferTaker",
    "Redeliver",
    "SingleNodeBus",
    "open_bus",
]

#: What the bus calls when stored messages of a connected user agent may have missed
#: their live delivery: `redeliver(uaid, since)` offers again those created at `since`
#: or later (after a claim, the few seconds around it; after Redis came back, all).
Redeliver = Callable[[str, float], Awaitable[None]]

#: Live receipts given up together (`forget_live_receipts`): one Redis round trip each
#: batch, where a node stopping with 10,000 of them made 10,000.
LIVE_FORGET_BATCH = 500


class OfferTaker(Protocol):
    """The service's side of live offers that other nodes make to this one."""

    def take(self, offer: LiveOffer, answer: Callable[[bool, int | None], None]) -> None:
        """Write the offer's push to its quick connection here, then `answer(offered,
        code)`: the ack's code in time, or None."""

    def routed(self, message: StoredMessage) -> bool:
        """A stored push routed here: True when it was offered here and is settled (not
        to be offered again)."""

    def close(self) -> None:
        """The service stops: offers held here are let go (their rows, if any, stay)."""


class ClusterBus(Protocol):
    """How one node reaches user agents connected to the others."""

    @property
    def hub(self) -> Hub:
        """This node's hub (it tells the bus which user agents connect here)."""

    async def start(self, redeliver: Redeliver) -> None:
        """Join the cluster; `redeliver(uaid)` re-offers stored messages to a local agent."""

    async def stop(self) -> None:
        """Leave the cluster: release this node's user agents."""

    async def route(self, message: StoredMessage) -> bool:
        """Send a message to the node holding its user agent; True if one took it."""

    #: True when `offer_live` may reach another node (False: no cluster).
    offers_live: bool

    #: Takes the live offers of other nodes (set by the service; None: none taken).
    offer_taker: OfferTaker | None

    def may_hold(self, uaid: str) -> bool:
        """False when no node held `uaid` a moment ago (an offer or a route found none):
        its push is then stored without an offer."""

    async def offer_live(self, message: StoredMessage, wait: float) -> int | None:
        """Offer a push not stored yet to the node holding its user agent, which writes it
        to a quick connection and waits up to `wait` seconds for the ack: the ack's
        code, or None (not offered, not acknowledged in time, no answer, the bus down,
        too many offers waiting): then it is to be stored and routed as usual."""

    async def withdraw(self, uaid: str, message_id: str) -> bool:
        """Tell the node holding `uaid`, if another, that its sender deleted the message
        (a copy its connection holds unsent is dropped; see Hub.withdraw). False when
        that could not be done (the bus is down): a copy held there may still go out."""

    async def share_live_receipt(self, message_id: str, receipt_id: str) -> None:
        """A TTL-0 message wanting a receipt is about to be sent live from this node:
        let an acknowledgement (DELETE) on any node find it (`take_live_receipt`)."""

    async def take_live_receipt(self, message_id: str) -> str | None:
        """The receipt subscription of a TTL-0 message shared by another node and not
        yet acknowledged or given up, claimed now (exactly one claim wins); else None."""

    async def forget_live_receipt(self, message_id: str) -> bool:
        """The node that shared it acknowledges or gives up on it: True unless another
        node claimed it first (then its receipt was sent there)."""

    async def forget_live_receipts(self, message_ids: Sequence[str]) -> list[bool]:
        """`forget_live_receipt` of each, in order, together: one Redis round trip per
        LIVE_FORGET_BATCH of them."""

    def announce_receipt(self, receipt_id: str) -> None:
        """A receipt for `receipt_id` was queued here: wake its monitors on the other
        nodes (does not wait; their polls find it if the notice is lost)."""

    def status(self) -> str:
        """ "single" (no cluster), "ok", or "degraded" (delivery falls back to the store)."""

    async def announce_broadcasts(self) -> None:
        """Tell every node that the broadcasts changed (each calls `on_broadcasts`)."""

    on_broadcasts: Callable[[], None] | None
    """Called when another node announced changed broadcasts (set by the service)."""


class SingleNodeBus:
    """No other nodes: every user agent is either connected here or not at all."""

    offers_live = False

    def __init__(self) -> None:
        self._hub = Hub()
        self.on_broadcasts: Callable[[], None] | None = None
        self.offer_taker: OfferTaker | None = None

    @property
    def hub(self) -> Hub:
        return self._hub

    async def start(self, redeliver: Redeliver) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def route(self, message: StoredMessage) -> bool:
        return False

    def may_hold(self, uaid: str) -> bool:
        return False  # no other node

    async def offer_live(self, message: StoredMessage, wait: float) -> int | None:
        return None

    async def withdraw(self, uaid: str, message_id: str) -> bool:
        return True  # no other node holds anything

    async def share_live_receipt(self, message_id: str, receipt_id: str) -> None:
        return None  # every acknowledgement comes to this node

    async def take_live_receipt(self, message_id: str) -> str | None:
        return None

    async def forget_live_receipt(self, message_id: str) -> bool:
        return True

    async def forget_live_receipts(self, message_ids: Sequence[str]) -> list[bool]:
        return [True] * len(message_ids)

    def announce_receipt(self, receipt_id: str) -> None:
        return None  # no other node has monitors

    def status(self) -> str:
        return "single"

    async def announce_broadcasts(self) -> None:
        return None  # no other node to tell


def open_bus(url: str | None, node_id: str | None = None) -> ClusterBus:
    """The bus for a `--cluster` URL: none for a single node, `redis://...` for Redis."""
    if not url:
        return SingleNodeBus()
    if url.startswith(("redis://", "rediss://", "unix://")):
        from tidings.service.cluster.redis_bus import RedisBus

        return RedisBus(url, node_id=node_id)
    raise ValueError(f"unsupported cluster URL {url!r}: use redis://host:6379/0")
