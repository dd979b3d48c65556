"""Storage quotas, the atomic subscription cap and user agent expiry, on both engines.

Quotas (issue 16): stored messages per subscription, a larger ceiling per user agent,
bytes per user agent and a ceiling for the whole store, all decided in the insert's
transaction; a refused message changes nothing and no stored message is evicted.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from store.test_store import NOW, message, put, subscribe
from tidings.service.store import (
    Store,
    StoreFull,
    SubscriptionRecord,
    TooManyMessages,
    TooManySubscriptions,
)
from tidings.service.store.base import SEEN_RESOLUTION

DAY = 86400.0


async def pending(store: Store, uaid: str = "ua1") -> int:
    return len(await store.pending_messages(uaid, NOW, 10_000))


# Stored-message quotas ------------------------------------------------------------------


async def test_a_full_subscription_leaves_room_for_the_other_sites(store: Store) -> None:
    await subscribe(store, "ua1", "site-a")
    await subscribe(store, "ua1", "site-b")
    quota = {"per_subscription": 2, "per_user_agent": 10}
    for _ in range(2):
        await put(store, message("ua1", "site-a"), **quota)
    with pytest.raises(TooManyMessages) as refused:
        await put(store, message("ua1", "site-a"), **quota)
    assert (refused.value.scope, refused.value.limit) == ("subscription", 2)
    await put(store, message("ua1", "site-b"), **quota)  # the browser's other site
    assert await pending(store) == 3


async def test_the_user_agent_ceiling_counts_every_subscription(store: Store) -> None:
    await subscribe(store, "ua1", "site-a")
    await subscribe(store, "ua1", "site-b")
    quota = {"per_subscription": 5, "per_user_agent": 3}
    await put(store, message("ua1", "site-a"), **quota)
    await put(store, message("ua1", "site-a"), **quota)
    await put(store, message("ua1", "site-b"), **quota)
    with pytest.raises(TooManyMessages) as refused:
        await put(store, message("ua1", "site-b"), **quota)
    assert (refused.value.scope, refused.value.limit) == ("user_agent", 3)
    assert await pending(store) == 3


async def test_the_user_agent_byte_quota(store: Store) -> None:
    await subscribe(store, "ua1", "site-a")
    await subscribe(store, "ua1", "site-b")
    quota = {"bytes_per_user_agent": 100}
    await put(store, message("ua1", "site-a", body=b"a" * 60), **quota)
    for channel in ("site-a", "site-b"):
        with pytest.raises(TooManyMessages) as refused:
            await put(store, message("ua1", channel, body=b"b" * 41), **quota)
        assert (refused.value.scope, refused.value.limit) == ("bytes", 100)
    await put(store, message("ua1", "site-b", body=b"c" * 40), **quota)  # exactly 100
    # Expired messages take no room.
    await put(store, message("ua1", "site-b", body=b"d" * 100, created_at=NOW + 61), **quota)


async def test_the_store_ceiling_refuses_and_evicts_nothing(store: Store) -> None:
    for uaid in ("ua1", "ua2"):
        await subscribe(store, uaid)
    first = [message("ua1"), message("ua2"), message("ua1")]
    for msg in first:
        await put(store, msg, stored_messages=3)
    with pytest.raises(StoreFull):
        await put(store, message("ua2"), stored_messages=3)
    with pytest.raises(StoreFull):  # a topic replacement of nothing adds one too
        await put(store, message("ua2", topic="t"), stored_messages=3)
    assert await store.count_messages() == 3
    assert await pending(store, "ua1") + await pending(store, "ua2") == 3
    await store.delete_message("ua1", first[0].message_id)  # collected: room again
    await put(store, message("ua2"), stored_messages=3)
    assert await store.count_messages() == 3


async def test_the_message_count_follows_every_way_messages_go(store: Store) -> None:
    await subscribe(store, "ua1", "ch1")
    await subscribe(store, "ua1", "ch2")
    await subscribe(store, "ua2", "ch1")
    await subscribe(store, "ua3", "ch1")
    kept = message("ua1", "ch1")
    acked = message("ua1", "ch1")
    for msg in (kept, acked, message("ua1", "ch2"), message("ua2"), message("ua3")):
        await put(store, msg)
    await put(store, message("ua1", "ch1", topic="t"))
    await put(store, message("ua1", "ch1", topic="t"))  # replaces: still one
    await put(store, message("ua1", "ch1", ttl=1))
    assert await store.count_messages() == 7
    await store.delete_messages([("ua1", acked.message_id), ("ua1", "unknown")])
    assert await store.count_messages() == 6
    await store.delete_expired(NOW + 2)
    assert await store.count_messages() == 5
    await store.delete_subscription("ua1", "ch2")
    assert await store.count_messages() == 4
    await store.delete_user_agent("ua2")
    assert await store.count_messages() == 3
    await store.delete_stale_user_agents(NOW + 1, 10)  # every user agent was seen at NOW
    assert await store.count_messages() == 0


async def test_racing_pushes_respect_the_subscription_quota(stores: Any) -> None:
    nodes = [await stores() for _ in range(4)]
    await subscribe(nodes[0])
    results = await asyncio.gather(
        *(put(nodes[i % 4], message(), per_subscription=7) for i in range(40)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, TooManyMessages) for r in results) == 33
    assert await pending(nodes[0]) == 7


async def test_racing_pushes_hold_the_store_ceiling(stores: Any) -> None:
    nodes = [await stores() for _ in range(4)]
    for i in range(40):
        await subscribe(nodes[0], f"ua{i}")
    results = await asyncio.gather(
        *(put(nodes[i % 4], message(f"ua{i}"), stored_messages=10) for i in range(40)),
        return_exceptions=True,
    )
    assert all(r == [] or isinstance(r, StoreFull) for r in results), results
    stored = await nodes[0].count_messages()
    assert stored == sum(r == [] for r in results)
    assert stored == 10  # SQLite: one writer at a time; PostgreSQL: turns near the ceiling


# The subscription cap ---------------------------------------------------------------------


async def test_the_subscription_cap_is_atomic_under_racing_registers(stores: Any) -> None:
    nodes = [await stores() for _ in range(4)]
    await nodes[0].add_user_agent("ua1", NOW)
    results = await asyncio.gather(
        *(
            nodes[i % 4].add_subscription(
                SubscriptionRecord("ua1", f"ch{i}", None, NOW), max_per_user_agent=25
            )
            for i in range(100)
        ),
        return_exceptions=True,
    )
    assert sum(isinstance(r, TooManySubscriptions) for r in results) == 75
    assert all(isinstance(r, (SubscriptionRecord, TooManySubscriptions)) for r in results)
    assert await nodes[0].count_subscriptions("ua1") == 25


async def test_an_existing_subscription_is_returned_at_the_cap(store: Store) -> None:
    await subscribe(store, "ua1", "ch1")
    again = await store.add_subscription(
        SubscriptionRecord("ua1", "ch1", b"other", NOW + 5), max_per_user_agent=1
    )
    assert (again.vapid_hash, again.created_at) == (None, NOW)
    with pytest.raises(TooManySubscriptions):
        await store.add_subscription(
            SubscriptionRecord("ua1", "ch2", None, NOW), max_per_user_agent=1
        )
    assert await store.count_subscriptions("ua1") == 1


# User agent expiry ------------------------------------------------------------------------


async def test_user_agents_not_seen_are_forgotten_with_everything_they_had(store: Store) -> None:
    await subscribe(store, "old", "ch1")
    await subscribe(store, "old", "ch2")
    await put(store, message("old", "ch1", ttl=100 * 86400))
    await store.add_user_agent("recent", NOW + 2 * DAY)
    await store.add_subscription(SubscriptionRecord("recent", "ch1", None, NOW))
    removed = await store.delete_stale_user_agents(NOW + DAY, 100)
    assert removed == 1
    assert not await store.has_user_agent("old")
    assert await store.list_subscriptions("old") == []
    assert await pending(store, "old") == 0
    assert await store.has_user_agent("recent")
    assert await store.count_subscriptions("recent") == 1


async def test_stale_user_agents_go_in_batches(store: Store) -> None:
    for i in range(5):
        await store.add_user_agent(f"ua{i}", NOW + i)
    assert await store.delete_stale_user_agents(NOW + 10, 2) == 2
    assert not await store.has_user_agent("ua0")  # the longest unseen first
    assert await store.delete_stale_user_agents(NOW + 10, 2) == 2
    assert await store.delete_stale_user_agents(NOW + 10, 2) == 1
    assert await store.delete_stale_user_agents(NOW + 10, 2) == 0


async def test_touching_marks_a_user_agent_seen_at_most_once_per_resolution(
    store: Store,
) -> None:
    assert not await store.touch_user_agent("nobody", NOW)
    await store.add_user_agent("ua1", NOW)
    # Within the resolution nothing is written: still last seen at NOW.
    assert await store.touch_user_agent("ua1", NOW + SEEN_RESOLUTION / 2)
    assert await store.delete_stale_user_agents(NOW + 1, 10) == 1
    await store.add_user_agent("ua1", NOW)
    assert await store.touch_user_agent("ua1", NOW + 2 * SEEN_RESOLUTION)
    assert await store.delete_stale_user_agents(NOW + SEEN_RESOLUTION, 10) == 0
    await store.add_user_agent("ua2", NOW)
    await store.touch_user_agents(["ua1", "ua2", "nobody"], NOW + 10 * SEEN_RESOLUTION)
    assert await store.delete_stale_user_agents(NOW + 5 * SEEN_RESOLUTION, 10) == 0
    assert await store.has_user_agent("ua2")


# Upgrading --------------------------------------------------------------------------------


async def _old_schema_with_data(store_url: str, engine: str) -> None:
    """The schema before quotas (SQLite 2, PostgreSQL 1) with two stored messages."""
    rows = [
        "INSERT INTO user_agents (uaid, created_at) VALUES ('ua1', 1.0)",
        "INSERT INTO subscriptions (uaid, channel_id, created_at) VALUES ('ua1', 'ch1', 1.0)",
    ] + [
        "INSERT INTO messages (message_id, uaid, channel_id, urgency, ttl, created_at,"
        f" expires_at, headers, body) VALUES ('m{i}', 'ua1', 'ch1', 'normal', 60, 1.0,"
        " 61.0, '{}', 'x')"
        for i in range(2)
    ]
    if engine == "sqlite":
        import sqlite3

        from tidings.service.store.sqlite import _MIGRATIONS, _statements

        db = sqlite3.connect(store_url.removeprefix("sqlite:///"), isolation_level=None)
        for version in (1, 2):
            for statement in _statements(_MIGRATIONS[version]):
                db.execute(statement)
        db.execute("PRAGMA user_version=2")
        for row in rows:
            db.execute(row)
        db.close()
        return
    import asyncpg

    from tidings.service.store.postgres import _MIGRATIONS as PG_MIGRATIONS

    conn = await asyncpg.connect(store_url)
    try:
        await conn.execute(PG_MIGRATIONS[1])
        await conn.execute("CREATE TABLE tidings_schema (version integer NOT NULL)")
        await conn.execute("INSERT INTO tidings_schema (version) VALUES (1)")
        for row in rows:
            await conn.execute(row)
    finally:
        await conn.close()


async def test_upgrading_counts_stored_messages_and_sees_known_user_agents_now(
    store_url: str, engine: str, stores: Any
) -> None:
    await _old_schema_with_data(store_url, engine)
    store = await stores()
    assert await store.count_messages() == 2
    assert await store.delete_stale_user_agents(time.time() - DAY, 10) == 0  # seen "now"
    assert await store.has_user_agent("ua1")
    with pytest.raises(StoreFull):
        await put(store, message("ua1", "ch1", created_at=2.0), stored_messages=2)
