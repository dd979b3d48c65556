"""Message statuses (GET on a message resource), on SQLite and on PostgreSQL.

Each transition is written by the store call that makes it happen (insert, topic
replacement, acknowledgement, DELETE, expiry sweep, delivery batch), and the table is
emptied by `delete_old_statuses` once a status has ended.
"""

from __future__ import annotations

import secrets
from typing import Any

from store.test_store import NOW, message, subscribe
from tidings.service.store import MessageQuota, MessageStatus, Store, StoredMessage

QUOTA = MessageQuota()
KEY = secrets.token_bytes(16)


def signed(**fields: Any) -> StoredMessage:
    return message(vapid_hash=KEY, **fields)


async def test_a_signed_push_is_stored_with_its_status(store: Store) -> None:
    await subscribe(store)
    pushed = signed(ttl=60)
    await store.store_message(pushed, quota=QUOTA)
    status = await store.get_message_status("ua1", pushed.message_id)
    assert status == MessageStatus(
        pushed.message_id,
        KEY,
        "stored",
        60,
        NOW,
        NOW + 60,
    )
    assert status is not None and status.ends_at == NOW + 60


async def test_an_unsigned_push_has_no_status(store: Store) -> None:
    await subscribe(store)
    pushed = message()
    await store.store_message(pushed, quota=QUOTA)
    assert await store.get_message_status("ua1", pushed.message_id) is None


async def test_delivery_then_acknowledgement(store: Store) -> None:
    await subscribe(store)
    pushed = signed()
    await store.store_message(pushed, quota=QUOTA)
    mid = pushed.message_id
    await store.mark_statuses_delivered(
        [("ua1", mid, "websocket", NOW + 1), ("ua1", "0" * 32, "http2", NOW)]
    )
    await store.mark_statuses_delivered([("ua1", mid, "http2", NOW + 2)])  # the first one counts
    status = await store.get_message_status("ua1", mid)
    assert status is not None
    assert (status.state, status.delivered_via, status.delivered_at) == (
        "delivered",
        "websocket",
        NOW + 1,
    )
    assert await store.delete_messages([("ua1", mid)]) != [None]
    status = await store.get_message_status("ua1", mid)
    assert status is not None and status.state == "acknowledged"
    assert status.final_at is not None and status.final_at > NOW
    assert status.ends_at == status.final_at


async def test_an_ack_records_a_delivery_not_yet_written(store: Store) -> None:
    await subscribe(store)
    pushed = signed()
    await store.store_message(pushed, quota=QUOTA)
    await store.delete_messages([("ua1", pushed.message_id)])
    status = await store.get_message_status("ua1", pushed.message_id)
    assert status is not None and status.state == "acknowledged"
    assert (status.delivered_at, status.delivered_via) == (status.final_at, "websocket")


async def test_delete_is_a_cancellation_until_delivered(store: Store) -> None:
    await subscribe(store)
    cancelled, acknowledged = signed(), signed()
    for pushed in (cancelled, acknowledged):
        await store.store_message(pushed, quota=QUOTA)
    await store.mark_statuses_delivered([("ua1", acknowledged.message_id, "http2", NOW)])
    for pushed in (cancelled, acknowledged):
        assert await store.delete_message("ua1", pushed.message_id) is not None
    first = await store.get_message_status("ua1", cancelled.message_id)
    second = await store.get_message_status("ua1", acknowledged.message_id)
    assert first is not None and (first.state, first.delivered_at) == ("deleted", None)
    assert second is not None and (second.state, second.delivered_via) == ("acknowledged", "http2")


async def test_expiry_and_topic_replacement_end_a_status(store: Store) -> None:
    await subscribe(store)
    expiring = signed(ttl=10)
    first = signed(topic="news")
    second = signed(topic="news", created_at=NOW + 1)
    for pushed in (expiring, first, second):
        await store.store_message(pushed, quota=QUOTA)
    assert await store.delete_expired(NOW + 20) == 1
    gone = await store.get_message_status("ua1", expiring.message_id)
    assert gone is not None and (gone.state, gone.final_at) == ("expired", NOW + 20)
    replaced = await store.get_message_status("ua1", first.message_id)
    assert replaced is not None and (replaced.state, replaced.final_at) == ("replaced", NOW + 1)
    kept = await store.get_message_status("ua1", second.message_id)
    assert kept is not None and kept.state == "stored"


async def test_a_dropped_ttl0_push_becomes_delivered_when_a_connection_takes_it(
    store: Store,
) -> None:
    mid = secrets.token_hex(16)
    await store.add_message_status(MessageStatus(mid, KEY, "expired", 0, NOW, NOW, final_at=NOW))
    await store.mark_statuses_delivered([("ua0", mid, "websocket", NOW)])
    status = await store.get_message_status("ua1", mid)
    assert status is not None
    assert (status.state, status.delivered_via, status.ends_at) == ("delivered", "websocket", NOW)
    # A stored message that expired stays expired, delivered late or not.
    await subscribe(store)
    late = signed(ttl=5)
    await store.store_message(late, quota=QUOTA)
    await store.delete_expired(NOW + 10)
    await store.mark_statuses_delivered([("ua1", late.message_id, "websocket", NOW + 11)])
    status = await store.get_message_status("ua1", late.message_id)
    assert status is not None and status.state == "expired"


async def test_old_statuses_are_forgotten_in_batches(store: Store) -> None:
    ended = [secrets.token_hex(16) for _ in range(5)]
    for i, mid in enumerate(ended):
        await store.add_message_status(
            MessageStatus(mid, KEY, "acknowledged", 60, NOW, NOW + 60, final_at=NOW + i)
        )
    await subscribe(store)
    stored = signed(ttl=100)  # in its message's row while stored: not swept here
    await store.store_message(stored, quota=QUOTA)
    assert await store.delete_old_statuses(NOW + 5, 3) == 3
    assert await store.delete_old_statuses(NOW + 5, 3) == 2
    assert await store.delete_old_statuses(NOW + 5, 3) == 0
    assert [await store.get_message_status("ua1", mid) for mid in ended] == [None] * 5
    assert await store.get_message_status("ua1", stored.message_id) is not None
    assert await store.delete_old_statuses(NOW + 101, 3) == 0
    assert await store.delete_expired(NOW + 101) == 1  # now it ended
    assert await store.delete_old_statuses(NOW + 102, 3) == 1
    assert await store.get_message_status("ua1", stored.message_id) is None


async def test_a_status_lives_in_its_message_row_while_stored(store: Store) -> None:
    """Nothing but the message row is written with a push; a message removed with its
    subscription takes its status along (no row is left to sweep)."""
    await subscribe(store)
    pushed = signed()
    await store.store_message(pushed, quota=QUOTA)
    assert await store.delete_old_statuses(NOW + 10**9, 100) == 0  # no status row yet
    assert await store.get_message_status("ua2", pushed.message_id) is None  # its user agent's
    assert await store.delete_subscription("ua1", "ch1")
    assert await store.get_message_status("ua1", pushed.message_id) is None


async def test_replace_topic_deletes_the_topic_and_ends_signed_statuses(store: Store) -> None:
    """A TTL-0 push of a Topic is not stored, but it replaces the stored ones of its Topic
    (RFC 8030 section 5.4): `replace_topic` deletes them; signed ones end as replaced."""
    await subscribe(store)
    news, unsigned_news, other = signed(topic="news"), message(topic="news"), signed(topic="x")
    kept = signed()
    for pushed in (news, other, kept):
        await store.store_message(pushed, quota=QUOTA)
    await store.store_message(unsigned_news, quota=QUOTA)  # replaced `news` already
    assert await store.replace_topic("ua1", "ch1", "news", NOW + 5) == [unsigned_news.message_id]
    await store.store_message(news_again := signed(topic="news", created_at=NOW + 6), quota=QUOTA)
    assert await store.replace_topic("ua1", "ch1", "news", NOW + 7) == [news_again.message_id]
    assert await store.replace_topic("ua1", "ch1", "news", NOW + 8) == []
    status = await store.get_message_status("ua1", news_again.message_id)
    assert status is not None and (status.state, status.final_at) == ("replaced", NOW + 7)
    left = {m.message_id for m in await store.pending_messages("ua1", NOW, 100)}
    assert left == {other.message_id, kept.message_id}
