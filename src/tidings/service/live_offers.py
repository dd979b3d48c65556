"""Live offers from other nodes: pushes written to a quick connection here before the
node that accepted them stores them (live_acks.py across the cluster bus).

A node that accepts a push for a user agent connected to another node offers it to that
node first (`ClusterBus.offer_live`, a `LiveOffer` on the bus) and waits for the answer.
Here, the holder, `LiveOfferTaker.take` writes it to the user agent's one quick
connection (the conditions of the local fast path: `Hub.quick_agent`, room in
`LiveAcks`), waits for the ack as for a local push, and answers: acknowledged with its
code (the accepting node answers 201 and never stores it), or not in time, or not
offered at all (the accepting node then stores it, and routes it here once committed,
as any stored push).

Offered and not acknowledged in time, the push is being stored by the other node: it is
held here (`_taken`) until its route arrives, which comes only after that commit. An
ack that comes meanwhile is kept by `LiveAcks` and deleted once the route is here, so
no engine can run the delete before the insert; the route itself is not written to the
connection again when that connection is the one that has it (no duplicate). A route
that never comes (the other node died, the bus lost it) is waited for HOLD_FOR; a kept
ack is then deleted anyway (a row committed later comes again: at least once).

An acknowledgement answers a push only from a connection of the push's own user agent
for an id sent on that connection: `LiveAcks.acknowledged` checks the user agent, and
the connection passes on acks only of what it sent (ws_session.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from tidings.service.cluster.wire import LiveOffer
from tidings.service.hub import ConnectedAgent
from tidings.service.store import StoredMessage

if TYPE_CHECKING:
    from tidings.service.service_base import ServiceBase

__all__ = ["HOLD_FOR", "RECENT_OFFER_ACKS", "LiveOfferTaker"]

log = logging.getLogger("tidings.service")

# Seconds a push offered here and not acknowledged in time waits for its route (sent
# once the other node committed it) before its ack, if one came, is deleted anyway.
HOLD_FOR = 10.0
# Pushes acknowledged here in time, remembered by id: should their answer be lost, the
# other node stores them and routes them here, and the route is then a delete, not a
# second copy for the user agent.
RECENT_OFFER_ACKS = 1024

Answer = Callable[[bool, int | None], None]


class LiveOfferTaker:
    """The holder's side of live offers (see the module's text); one per service."""

    def __init__(self, service: ServiceBase) -> None:
        self._service = service
        # Offered here, not answered by their route yet: message id -> the connection
        # written to, and the expiry of the hold once the wait is over.
        self._taken: dict[str, tuple[ConnectedAgent, asyncio.TimerHandle | None]] = {}
        self._recent: OrderedDict[str, str] = OrderedDict()  # acknowledged: id -> uaid

    def __len__(self) -> int:
        """Offers written here and not yet settled (bounded by `LiveAcks`' room)."""
        return len(self._taken)

    def take(self, offer: LiveOffer, answer: Answer) -> None:
        """Write the offered push to its user agent's quick connection here and call
        `answer(offered, code)` once acknowledged or once its wait is over; at once with
        (False, None) when it cannot be offered here."""
        service = self._service
        message = offer.message
        message_id = message.message_id
        agent = service.hub.quick_agent(message.uaid)
        if (
            agent is None
            or service.draining
            or not service.live_acks.has_room()
            or message_id in self._taken
            or message_id in service.live_acks
        ):
            answer(False, None)
            return
        wait = min(agent.quick_ack_wait(), offer.wait)
        self._taken[message_id] = (agent, None)

        def answered(code: int | None) -> None:
            self._answered(agent, message, code, answer)

        service.live_acks.expect_answer(message.uaid, message_id, wait, answered)
        try:
            agent.offer(message)
        except BaseException:
            del self._taken[message_id]
            service.live_acks.settle(message_id)  # answered "not acknowledged"
            raise

    def _answered(
        self, agent: ConnectedAgent, message: StoredMessage, code: int | None, answer: Answer
    ) -> None:
        """The wait for an offered push's ack is over: answer, and hold the push if it
        was not acknowledged (it is being stored by the node that offered it)."""
        message_id = message.message_id
        if message_id not in self._taken:
            # Settled meanwhile: its route came during the wait (`routed`), or the
            # service stops (`close`). The connection acks it later, if at all.
            answer(True, None)
            return
        if code is not None:
            del self._taken[message_id]
            self._service.live_acks.settle(message_id)
            self._recent[message_id] = message.uaid
            if len(self._recent) > RECENT_OFFER_ACKS:
                self._recent.popitem(last=False)
            answer(True, code)
            return
        answer(True, None)
        agent.ack_overdue()
        expiry = asyncio.get_running_loop().call_later(
            HOLD_FOR, self._expired, message.uaid, message_id
        )
        self._taken[message_id] = (agent, expiry)

    def _expired(self, uaid: str, message_id: str) -> None:
        """No route came for a held offer: a kept ack's delete goes now."""
        self._taken.pop(message_id, None)
        if self._service.live_acks.settle(message_id) is not None:
            log.info("live offer %s: no route came; deleting on its ack", message_id)
            self._service.delete_acknowledged(uaid, message_id)

    def routed(self, message: StoredMessage) -> bool:
        """A stored push routed here by the node that accepted it: True when it was
        offered here and is settled now (its ack's delete queued, or its connection
        has it already), so that it is not offered again; False: offer it as usual."""
        message_id = message.message_id
        taken = self._taken.pop(message_id, None)
        if taken is not None:
            agent, expiry = taken
            if expiry is not None:
                expiry.cancel()
            if self._service.live_acks.settle(message_id) is not None:
                self._service.delete_acknowledged(message.uaid, message_id)
                return True
            # Not acknowledged yet: that connection acks it later (a delete then, now
            # that it is stored). A newer connection did not see it: offer it there.
            return agent in self._service.hub.agents(message.uaid)
        if self._recent and self._recent.get(message_id) == message.uaid:
            del self._recent[message_id]  # acknowledged in time, the answer lost
            self._service.delete_acknowledged(message.uaid, message_id)
            return True
        return False

    def close(self) -> None:
        """The service stops: held offers are let go (their rows, if any, stay stored)."""
        taken, self._taken = self._taken, {}
        for message_id, (_, expiry) in taken.items():
            if expiry is not None:
                expiry.cancel()
            self._service.live_acks.settle(message_id)
