"""The two memories of live offers that a sender's pushes make grow are bounded: the user
agents no node held (`RedisBus`, MAX_NOT_HELD) and the offers acknowledged in time whose
answer might be lost (`LiveOfferTaker`, RECENT_OFFER_ACKS). Neither needs Redis."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any, cast

import pytest

from tidings.service import live_offers
from tidings.service.cluster import redis_bus
from tidings.service.cluster.redis_bus import RedisBus
from tidings.service.cluster.wire import LiveOffer
from tidings.service.live_acks import LiveAcks
from tidings.service.live_offers import LiveOfferTaker
from tidings.service.store import StoredMessage


async def test_the_user_agents_held_by_no_node_are_remembered_up_to_a_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(redis_bus, "MAX_NOT_HELD", 3)
    bus = RedisBus("redis://127.0.0.1:1/0?prefix=unreachable:", node_id="a")
    for n in range(5):
        bus._note_not_held(f"ua{n}")
    assert list(bus._not_held) == ["ua2", "ua3", "ua4"]  # the oldest forgotten first
    assert bus.may_hold("ua0") and not bus.may_hold("ua4")
    await bus.stop()


class QuickAgent:
    def __init__(self) -> None:
        self.offered: list[str] = []

    def quick_ack_wait(self) -> float:
        return 5.0

    def offer(self, message: StoredMessage) -> None:
        self.offered.append(message.message_id)

    def ack_overdue(self) -> None:
        raise AssertionError("every offer here is acknowledged in time")


def offer_of(n: int) -> LiveOffer:
    now = time.time()
    message = StoredMessage(f"m{n}", "ua", "ch", b"x", 60, now, now + 60)
    return LiveOffer(message, "b", 5.0)


async def test_offers_acknowledged_in_time_are_remembered_up_to_a_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(live_offers, "RECENT_OFFER_ACKS", 3)
    agent = QuickAgent()
    acks = LiveAcks()
    deleted: list[str] = []
    service = SimpleNamespace(
        hub=SimpleNamespace(quick_agent=lambda uaid: agent, agents=lambda uaid: [agent]),
        draining=False,
        live_acks=acks,
        delete_acknowledged=lambda uaid, message_id: deleted.append(message_id),
    )
    taker = LiveOfferTaker(cast(Any, service))
    answers: list[tuple[bool, int | None]] = []
    for n in range(5):
        taker.take(offer_of(n), lambda offered, code: answers.append((offered, code)))
        assert acks.acknowledged("ua", f"m{n}", 100)
    assert answers == [(True, 100)] * 5 and agent.offered == [f"m{n}" for n in range(5)]
    assert len(taker) == 0 and len(acks) == 0
    # Routed after a lost answer: the three remembered are deletes, the two forgotten
    # are offered again (at least once).
    assert [taker.routed(offer_of(n).message) for n in range(5)] == [False, False] + [True] * 3
    assert deleted == ["m2", "m3", "m4"]
