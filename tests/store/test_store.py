"""Every `Store` method and rule, on SQLite and on PostgreSQL (the `store` fixture).

The contract is the docstrings of tidings.service.store.base.Store; each test names
the rule it checks. The last part races several writers (several nodes on one
PostgreSQL, several connections on one SQLite file) where a rule could break.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import pytest

from tidings.service.store import (
    MessageQuota,
    Receipt,
    Store,
    StoredMessage,
    StoreUnavailable,
    SubscriptionGone,
    SubscriptionRecord,
    TooManyMessages,
    open_store,
)

NOW = 1_700_000_000.0


def message(
    uaid: str = "ua1",
    channel_id: str = "ch1",
    *,
    ttl: int = 60,
    created_at: float = NOW,
    topic: str | None = None,
    receipt_id: str | None = None,
    body: bytes = b"\x00body\xff",
    **extra: Any,
) -> StoredMessage:
    return StoredMessage(
        message_id=secrets.token_hex(16),
        uaid=uaid,
        channel_id=channel_id,
        body=body,
        ttl=ttl,
        created_at=created_at,
        expires_at=created_at + ttl,
        topic=topic,
        receipt_id=receipt_id,
        **extra,
    )


async def subscribe(store: Store, uaid: str = "ua1", channel_id: str = "ch1") -> None:
    await store.add_user_agent(uaid, NOW)
    await store.add_subscription(SubscriptionRecord(uaid, channel_id, None, NOW))
    for receipt_id in ("r1", "r2"):  # the receipt subscriptions the tests name
        await store.add_receipt_subscription(receipt_id, NOW)


async def put(store: Store, msg: StoredMessage, limit: int = 100, **quota: int) -> list[str]:
    """Store `msg` with `limit` messages allowed per user agent (and per subscription)."""
    values = {"per_subscription": limit, "per_user_agent": limit, **quota}
    return await store.store_message(msg, quota=MessageQuota(**values))


def ids(messages: list[StoredMessage]) -> list[str]:
    return [m.message_id for m in messages]


# Life cycle and metadata ---------------------------------------------------------------


async def test_ping_answers_when_open(store: Store) -> None:
    await store.ping()


async def test_reopening_keeps_data_and_migrations_are_idempotent(store_url: str) -> None:
    first = open_store(store_url)
    await first.open()
    await first.set_meta("k", "v")
    await subscribe(first)
    await first.close()
    second = open_store(store_url)
    await second.open()
    try:
        assert await second.get_meta("k") == "v"
        assert await second.has_user_agent("ua1")
    finally:
        await second.close()


async def test_nodes_opening_together_migrate_once(store_url: str) -> None:
    stores = [open_store(store_url) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        await subscribe(stores[0])
        for other in stores[1:]:
            assert await other.get_subscription("ua1", "ch1") is not None
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_a_closed_store_is_unavailable(store_url: str) -> None:
    store = open_store(store_url)
    await store.open()
    await store.close()
    with pytest.raises((StoreUnavailable, RuntimeError)):
        await store.ping()


async def test_meta_is_written_and_overwritten(store: Store) -> None:
    assert await store.get_meta("missing") is None
    await store.set_meta("key", "one")
    assert await store.get_meta("key") == "one"
    await store.set_meta("key", "two")
    assert await store.get_meta("key") == "two"


# User agents and subscriptions -----------------------------------------------------------


async def test_user_agents_are_added_once(store: Store) -> None:
    assert not await store.has_user_agent("ua1")
    await store.add_user_agent("ua1", NOW)
    await store.add_user_agent("ua1", NOW + 5)  # idempotent
    assert await store.has_user_agent("ua1")
    assert not await store.has_user_agent("ua2")


async def test_add_subscription_returns_the_existing_one(store: Store) -> None:
    first = await store.add_subscription(SubscriptionRecord("ua1", "ch1", b"key-a", NOW))
    assert first == SubscriptionRecord("ua1", "ch1", b"key-a", NOW)
    again = await store.add_subscription(SubscriptionRecord("ua1", "ch1", b"key-b", NOW + 9))
    assert again == first  # the original key and time win
    assert await store.get_subscription("ua1", "ch1") == first
    assert await store.get_subscription("ua1", "other") is None
    assert await store.get_subscription("ua2", "ch1") is None


async def test_subscription_without_key(store: Store) -> None:
    await store.add_subscription(SubscriptionRecord("ua1", "ch1", None, NOW))
    record = await store.get_subscription("ua1", "ch1")
    assert record is not None and record.vapid_hash is None


async def test_list_and_count_subscriptions(store: Store) -> None:
    assert await store.list_subscriptions("ua1") == []
    assert await store.count_subscriptions("ua1") == 0
    for i, channel in enumerate(["c", "a", "b"]):
        await store.add_subscription(SubscriptionRecord("ua1", channel, None, NOW + i))
    await store.add_subscription(SubscriptionRecord("ua2", "z", None, NOW))
    listed = await store.list_subscriptions("ua1")
    assert [r.channel_id for r in listed] == ["c", "a", "b"]  # by creation time
    assert await store.count_subscriptions("ua1") == 3
    assert await store.count_subscriptions("ua2") == 1


async def test_delete_subscription_takes_its_messages(store: Store) -> None:
    await subscribe(store, channel_id="ch1")
    await subscribe(store, channel_id="ch2")
    await put(store, message(channel_id="ch1"))
    kept = message(channel_id="ch2")
    await put(store, kept)
    assert await store.delete_subscription("ua1", "ch1") is True
    assert await store.delete_subscription("ua1", "ch1") is False
    assert await store.get_subscription("ua1", "ch1") is None
    assert ids(await store.pending_messages("ua1", NOW, 10)) == [kept.message_id]
    with pytest.raises(SubscriptionGone):
        await put(store, message(channel_id="ch1"))


async def test_delete_user_agent_forgets_everything(store: Store) -> None:
    await subscribe(store, "ua1", "ch1")
    await subscribe(store, "ua1", "ch2")
    await subscribe(store, "ua2", "ch1")
    await put(store, message("ua1", "ch1"))
    other = message("ua2", "ch1")
    await put(store, other)
    assert await store.delete_user_agent("ua1") == 2
    assert not await store.has_user_agent("ua1")
    assert await store.list_subscriptions("ua1") == []
    assert await store.pending_messages("ua1", NOW, 10) == []
    assert ids(await store.pending_messages("ua2", NOW, 10)) == [other.message_id]
    assert await store.delete_user_agent("ua1") == 0


# Messages ------------------------------------------------------------------------------


async def test_a_message_round_trips_every_field(store: Store) -> None:
    await subscribe(store)
    sent = message(
        topic="news",
        receipt_id="r1",
        urgency="high",
        headers={"encoding": "aesgcm", "encryption": "salt=abc", "crypto_key": "dh=xyz"},
        body=bytes(range(256)) * 16,
    )
    assert await put(store, sent) == []
    (got,) = await store.pending_messages("ua1", NOW, 10)
    assert got == sent


async def test_store_message_needs_the_subscription(store: Store) -> None:
    with pytest.raises(SubscriptionGone):
        await put(store, message())
    await subscribe(store)
    with pytest.raises(SubscriptionGone):
        await put(store, message(channel_id="unknown"))
    assert await store.count_messages() == 0


async def test_pending_is_oldest_first_unexpired_limited_and_per_user_agent(store: Store) -> None:
    await subscribe(store, "ua1")
    await subscribe(store, "ua2")
    sent = [message(ttl=100 + i) for i in range(5)]
    for m in sent:
        await put(store, m)
    short = message(ttl=5)
    await put(store, short)
    await put(store, message("ua2"))
    assert ids(await store.pending_messages("ua1", NOW, 100)) == ids([*sent, short])
    assert ids(await store.pending_messages("ua1", NOW, 2)) == ids(sent[:2])
    # At NOW + 5 the short message has expired: never handed out, even before a sweep.
    assert ids(await store.pending_messages("ua1", NOW + 5, 100)) == ids(sent)
    assert await store.pending_messages("nobody", NOW, 100) == []


async def test_topic_replaces_the_stored_message_of_the_same_subscription(store: Store) -> None:
    await subscribe(store, channel_id="ch1")
    await subscribe(store, channel_id="ch2")
    first = message(topic="score")
    other_topic = message(topic="weather")
    other_channel = message(channel_id="ch2", topic="score")
    untagged = message()
    for m in (first, other_topic, other_channel, untagged):
        await put(store, m)
    second = message(topic="score")
    assert await put(store, second) == [first.message_id]
    pending = ids(await store.pending_messages("ua1", NOW, 100))
    assert first.message_id not in pending
    assert set(pending) == {
        other_topic.message_id,
        other_channel.message_id,
        untagged.message_id,
        second.message_id,
    }
    # Messages without a topic never replace each other.
    assert await put(store, message()) == []


async def test_the_per_user_agent_limit(store: Store) -> None:
    await subscribe(store, channel_id="ch1")
    await subscribe(store, channel_id="ch2")
    await put(store, message(channel_id="ch1"), limit=2)
    await put(store, message(channel_id="ch2", topic="t"), limit=2)
    with pytest.raises(TooManyMessages):
        await put(store, message(channel_id="ch1"), limit=2)
    # Replacing by topic frees the slot it takes.
    await put(store, message(channel_id="ch2", topic="t"), limit=2)
    assert await store.count_messages() == 2
    # Another user agent has its own limit.
    await subscribe(store, "ua2", "ch1")
    await put(store, message("ua2", "ch1"), limit=2)


async def test_a_refused_message_leaves_the_store_unchanged(store: Store) -> None:
    await subscribe(store)
    kept = message(topic="t")
    await put(store, kept, limit=5)
    await put(store, message(), limit=5)
    # Over the limit (1 stored + 1 replaced... limit 1): the topic deletion is rolled back.
    with pytest.raises(TooManyMessages):
        await put(store, message(topic="t"), limit=1)
    assert kept.message_id in ids(await store.pending_messages("ua1", NOW, 10))


async def test_expired_messages_do_not_count_against_the_limit(store: Store) -> None:
    await subscribe(store)
    await put(store, message(ttl=10), limit=1)
    later = message(created_at=NOW + 10)
    await put(store, later, limit=1)  # the first one has expired by then
    assert ids(await store.pending_messages("ua1", NOW + 10, 10)) == [later.message_id]


async def test_delete_message_returns_it_once(store: Store) -> None:
    await subscribe(store)
    sent = message()
    await put(store, sent)
    assert await store.delete_message("other-ua", sent.message_id) is None
    assert await store.delete_message("ua1", sent.message_id) == sent
    assert await store.delete_message("ua1", sent.message_id) is None
    assert await store.pending_messages("ua1", NOW, 10) == []


async def test_delete_messages_answers_each_key_in_order(store: Store) -> None:
    await subscribe(store)
    await store.add_receipt_subscription("r1", NOW)
    plain, wanted = message(), message(receipt_id="r1")
    kept = message()
    for sent in (plain, wanted, kept):
        await put(store, sent)
    await store.mark_delivered("ua1", wanted.message_id)
    keys = [
        ("ua1", plain.message_id),
        ("ua1", "unknown"),
        ("other-ua", kept.message_id),  # not that user agent's: untouched
        ("ua1", wanted.message_id),
        ("ua1", plain.message_id),  # a repeated ack finds nothing the second time
    ]
    assert await store.delete_messages(keys) == [plain, None, None, wanted, None]
    assert ids(await store.pending_messages("ua1", NOW, 10)) == [kept.message_id]
    (receipt,) = await store.pending_receipts("r1", 10)
    assert (receipt.message_id, receipt.status) == (wanted.message_id, 204)
    assert await store.delete_messages([]) == []


async def test_delete_messages_more_than_one_statement_takes(store: Store) -> None:
    """300 acknowledgements (SQLite deletes 256 per statement): each answered in order,
    each signed one ending acknowledged over WebSocket; another user agent's key and a
    repeated one delete nothing."""
    await subscribe(store)
    sent = [message(vapid_hash=b"k" * 16) for _ in range(300)]
    for one in sent:
        await put(store, one, limit=1000)
    keys = [("ua1", one.message_id) for one in reversed(sent)]
    keys = [("other-ua", sent[0].message_id), *keys, keys[0]]
    assert await store.delete_messages(keys) == [None, *reversed(sent), None]
    assert await store.pending_messages("ua1", NOW, 10) == []
    for one in (sent[0], sent[299]):
        status = await store.get_message_status("ua1", one.message_id)
        assert status is not None
        assert (status.state, status.delivered_via) == ("acknowledged", "websocket")


async def test_count_messages(store: Store) -> None:
    assert await store.count_messages() == 0
    await subscribe(store, "ua1")
    await subscribe(store, "ua2")
    for uaid in ("ua1", "ua1", "ua2"):
        await put(store, message(uaid))
    assert await store.count_messages() == 3


# Receipts ------------------------------------------------------------------------------


async def test_receipt_subscriptions(store: Store) -> None:
    assert not await store.has_receipt_subscription("r1")
    await store.add_receipt_subscription("r1", NOW)
    await store.add_receipt_subscription("r1", NOW)  # idempotent
    assert await store.has_receipt_subscription("r1")
    assert await store.pending_receipts("r1", 10) == []


async def test_using_a_receipt_subscription_marks_it_used(store: Store) -> None:
    assert not await store.use_receipt_subscription("r1", NOW)
    await store.add_receipt_subscription("r1", NOW - 100)
    assert await store.use_receipt_subscription("r1", NOW)
    # Used at NOW: a sweep of those unused since NOW - 50 keeps it.
    assert await store.delete_stale_receipt_subscriptions(NOW - 50) == 0
    assert await store.has_receipt_subscription("r1")


async def test_only_unused_receipt_subscriptions_nothing_needs_are_swept(store: Store) -> None:
    await subscribe(store)  # also makes r1 and r2, at NOW
    old = NOW - 1000
    for receipt_id in ("unused", "named", "holding", "recent"):
        await store.add_receipt_subscription(receipt_id, NOW if receipt_id == "recent" else old)
    await put(store, message(receipt_id="named"))  # a stored message may still need it
    holding = message(receipt_id="holding")
    await put(store, holding)
    await store.mark_delivered("ua1", holding.message_id)
    await store.delete_message("ua1", holding.message_id)  # its receipt waits there
    assert len(await store.pending_receipts("holding", 10)) == 1
    assert await store.delete_stale_receipt_subscriptions(NOW - 10) == 1
    for receipt_id in ("named", "holding", "recent", "r1", "r2"):
        assert await store.has_receipt_subscription(receipt_id), receipt_id
    assert not await store.has_receipt_subscription("unused")


async def test_ack_of_a_delivered_message_queues_a_204_receipt(store: Store) -> None:
    await subscribe(store)
    await store.add_receipt_subscription("r1", NOW)
    sent = message(receipt_id="r1")
    await put(store, sent)
    await store.mark_delivered("ua1", sent.message_id)
    before = time.time()
    assert await store.delete_message("ua1", sent.message_id) == sent
    (receipt,) = await store.pending_receipts("r1", 10)
    assert (receipt.receipt_id, receipt.uaid, receipt.channel_id) == ("r1", "ua1", "ch1")
    assert (receipt.message_id, receipt.status) == (sent.message_id, 204)
    assert receipt.created_at >= before - 1
    await store.delete_receipt(receipt.seq)
    assert await store.pending_receipts("r1", 10) == []


async def test_no_receipt_when_undelivered_or_not_asked(store: Store) -> None:
    await subscribe(store)
    cancelled = message(receipt_id="r1")  # deleted before delivery: cancelled, no receipt
    plain = message()  # delivered but no receipt wanted
    await put(store, cancelled)
    await put(store, plain)
    await store.mark_delivered("ua1", plain.message_id)
    await store.delete_message("ua1", cancelled.message_id)
    await store.delete_message("ua1", plain.message_id)
    assert await store.pending_receipts("r1", 10) == []


async def test_mark_delivered_of_an_unknown_message_is_harmless(store: Store) -> None:
    await store.mark_delivered("ua1", "no-such-message")


async def test_delete_expired_removes_them_and_queues_410_receipts(store: Store) -> None:
    await subscribe(store)
    short_receipt = message(ttl=10, receipt_id="r1")
    short_plain = message(ttl=10)
    long_receipt = message(ttl=100, receipt_id="r1")
    for m in (short_receipt, short_plain, long_receipt):
        await put(store, m)
    assert await store.delete_expired(NOW + 9) == 0
    assert await store.delete_expired(NOW + 10) == 2
    assert await store.delete_expired(NOW + 10) == 0
    assert ids(await store.pending_messages("ua1", NOW, 10)) == [long_receipt.message_id]
    (receipt,) = await store.pending_receipts("r1", 10)
    assert (receipt.message_id, receipt.status) == (short_receipt.message_id, 410)


async def test_add_receipt_queues_one_for_an_existing_receipt_subscription(store: Store) -> None:
    """A TTL-0 push never stored gets its 410 this way; an unknown receipt subscription
    (deleted meanwhile) gets nothing."""
    await subscribe(store)
    await store.add_receipt(Receipt(0, "r1", "ua1", "ch1", "m-ttl0", 410, NOW))
    await store.add_receipt(Receipt(0, "gone", "ua1", "ch1", "m-other", 410, NOW))
    (receipt,) = await store.pending_receipts("r1", 10)
    assert (receipt.uaid, receipt.channel_id, receipt.message_id) == ("ua1", "ch1", "m-ttl0")
    assert (receipt.status, receipt.created_at) == (410, NOW)
    assert await store.pending_receipts("gone", 10) == []


async def test_add_receipts_queues_each_in_order_only_for_existing_receipt_subscriptions(
    store: Store,
) -> None:
    """`add_receipts` is `add_receipt` of each in one transaction: order kept, each
    receipt once, none for a receipt subscription that does not exist."""
    await subscribe(store)
    names = ("r1", "gone", "r2")
    batch = [Receipt(0, names[n % 3], "ua1", "ch1", f"m{n}", 410, NOW + n) for n in range(30)]
    await store.add_receipts(batch)
    await store.add_receipts([])
    for receipt_id in ("r1", "r2"):
        queued = await store.pending_receipts(receipt_id, 100)
        wanted = [r for r in batch if r.receipt_id == receipt_id]
        assert [(r.message_id, r.status, r.created_at) for r in queued] == [
            (r.message_id, r.status, r.created_at) for r in wanted
        ]
        assert all((r.uaid, r.channel_id) == ("ua1", "ch1") for r in queued)
    assert await store.pending_receipts("gone", 100) == []


async def test_pending_receipts_are_oldest_first_limited_and_per_subscription(
    store: Store,
) -> None:
    await subscribe(store)
    sent = [message(receipt_id="r1") for _ in range(4)] + [message(receipt_id="r2")]
    for m in sent:
        await put(store, m)
        await store.mark_delivered("ua1", m.message_id)
        await store.delete_message("ua1", m.message_id)
    r1 = await store.pending_receipts("r1", 10)
    assert [r.message_id for r in r1] == ids(sent[:4])
    assert [r.message_id for r in await store.pending_receipts("r1", 2)] == ids(sent[:2])
    assert [r.message_id for r in await store.pending_receipts("r2", 10)] == [sent[4].message_id]
    await store.delete_receipt(r1[0].seq)
    assert [r.message_id for r in await store.pending_receipts("r1", 10)] == ids(sent[1:4])


# Many writers at once (several nodes, or several connections on one file) ------------------


async def test_racing_pushes_with_one_topic_leave_exactly_one(stores: Any) -> None:
    nodes = [await stores() for _ in range(3)]
    await subscribe(nodes[0])
    sent = [message(topic="t") for _ in range(30)]
    results = await asyncio.gather(
        *(put(nodes[i % 3], m) for i, m in enumerate(sent)), return_exceptions=True
    )
    assert not [r for r in results if isinstance(r, BaseException)], results
    pending = await nodes[0].pending_messages("ua1", NOW, 100)
    assert len(pending) == 1
    replaced = [mid for r in results if isinstance(r, list) for mid in r]
    assert sorted(replaced + ids(pending)) == sorted(ids(sent))  # each replaced once


async def test_racing_pushes_respect_the_limit_exactly(stores: Any) -> None:
    nodes = [await stores() for _ in range(3)]
    await subscribe(nodes[0])
    results = await asyncio.gather(
        *(put(nodes[i % 3], message(), limit=10) for i in range(40)), return_exceptions=True
    )
    stored = [r for r in results if r == []]
    refused = [r for r in results if isinstance(r, TooManyMessages)]
    assert (len(stored), len(refused)) == (10, 30), results
    assert await nodes[1].count_messages() == 10


async def test_racing_acks_queue_one_receipt(stores: Any) -> None:
    nodes = [await stores() for _ in range(3)]
    await subscribe(nodes[0])
    sent = message(receipt_id="r1")
    await put(nodes[0], sent)
    await nodes[1].mark_delivered("ua1", sent.message_id)
    results = await asyncio.gather(*(n.delete_message("ua1", sent.message_id) for n in nodes * 3))
    assert [r for r in results if r is not None] == [sent]
    assert len(await nodes[0].pending_receipts("r1", 10)) == 1


async def test_racing_sweeps_queue_one_receipt_per_message(stores: Any) -> None:
    nodes = [await stores() for _ in range(3)]
    await subscribe(nodes[0])
    for _ in range(20):
        await put(nodes[0], message(ttl=1, receipt_id="r1"))
    removed = await asyncio.gather(*(n.delete_expired(NOW + 1) for n in nodes))
    assert sum(removed) == 20
    assert len(await nodes[0].pending_receipts("r1", 100)) == 20


async def test_racing_registrations_agree_on_the_key(stores: Any) -> None:
    nodes = [await stores() for _ in range(3)]
    records = await asyncio.gather(
        *(
            n.add_subscription(SubscriptionRecord("ua1", "ch1", bytes([i]) * 4, NOW + i))
            for i, n in enumerate(nodes * 2)
        )
    )
    assert len(set(records)) == 1


async def test_a_push_racing_an_unregister_leaves_no_orphan(stores: Any) -> None:
    nodes = [await stores() for _ in range(2)]
    for round_ in range(10):
        channel = f"ch{round_}"
        await subscribe(nodes[0], "ua1", channel)
        results = await asyncio.gather(
            put(nodes[0], message(channel_id=channel)),
            nodes[1].delete_subscription("ua1", channel),
            return_exceptions=True,
        )
        assert not isinstance(results[0], BaseException) or isinstance(results[0], SubscriptionGone)
    assert await nodes[0].count_messages() == 0


async def test_a_deleted_receipt_subscription_gets_no_more_receipts(store: Store) -> None:
    await subscribe(store)
    queued, later = message(ttl=10, receipt_id="r1"), message(ttl=10, receipt_id="r1")
    await put(store, queued)
    await put(store, later)
    await store.mark_delivered("ua1", queued.message_id)
    await store.delete_message("ua1", queued.message_id)
    assert len(await store.pending_receipts("r1", 10)) == 1
    assert await store.delete_receipt_subscription("r1")
    assert not await store.delete_receipt_subscription("r1")
    assert not await store.has_receipt_subscription("r1")
    assert await store.pending_receipts("r1", 10) == []
    assert await store.delete_expired(NOW + 10) == 1
    assert await store.pending_receipts("r1", 10) == []
