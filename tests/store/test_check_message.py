"""`Store.check_message` (the insert's checks as a read, for pushes written before they
are stored: live_acks.py) agrees with `store_message` on both engines: the same push,
on the same data, is refused for the same reason by both, or passes both."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import pytest

from store.test_store import NOW, message, put, subscribe
from tidings.service.store import (
    MessageQuota,
    Store,
    StoredMessage,
    StoreFull,
    StoreUnavailable,
    SubscriptionGone,
    TooManyMessages,
)


async def outcome(call: Awaitable[Any]) -> str:
    try:
        result = await call
    except TooManyMessages as refused:
        return f"{refused.scope} {refused.limit}"
    except StoreFull:
        return "store full"
    except SubscriptionGone:
        return "gone"
    return "cannot tell" if result is False else "stored"  # False: check_message only


async def agree(store: Store, msg: StoredMessage, **quota: int) -> str:
    """What both say of `msg`: checked first (a read), then stored."""
    values = {"per_subscription": 100, "per_user_agent": 100, **quota}
    checked = await outcome(store.check_message(msg, quota=MessageQuota(**values)))
    stored = await outcome(store.store_message(msg, quota=MessageQuota(**values)))
    assert checked == stored, (checked, stored)
    return stored


async def test_an_existing_subscription_passes(store: Store) -> None:
    await subscribe(store, "ua1", "site-a")
    assert await store.check_message(message("ua1", "site-a"), quota=MessageQuota()) is True
    assert await agree(store, message("ua1", "site-a")) == "stored"
    assert len(await store.pending_messages("ua1", NOW, 10)) == 1  # the check wrote nothing


async def test_a_missing_subscription_is_gone(store: Store) -> None:
    await subscribe(store, "ua1", "site-a")
    assert await agree(store, message("ua1", "site-b")) == "gone"
    assert await agree(store, message("ua2", "site-a")) == "gone"
    await store.delete_subscription("ua1", "site-a")
    assert await agree(store, message("ua1", "site-a")) == "gone"


async def test_the_subscription_quota(store: Store) -> None:
    await subscribe(store, "ua1", "site-a")
    await subscribe(store, "ua1", "site-b")
    quota = {"per_subscription": 2, "per_user_agent": 10}
    assert await agree(store, message("ua1", "site-a"), **quota) == "stored"
    assert await agree(store, message("ua1", "site-a"), **quota) == "stored"
    assert await agree(store, message("ua1", "site-a"), **quota) == "subscription 2"
    assert await agree(store, message("ua1", "site-b"), **quota) == "stored"


async def test_the_user_agent_quota(store: Store) -> None:
    await subscribe(store, "ua1", "site-a")
    await subscribe(store, "ua1", "site-b")
    quota = {"per_subscription": 5, "per_user_agent": 3}
    for channel in ("site-a", "site-a", "site-b"):
        assert await agree(store, message("ua1", channel), **quota) == "stored"
    assert await agree(store, message("ua1", "site-b"), **quota) == "user_agent 3"
    assert await agree(store, message("ua1", "site-a"), **quota) == "user_agent 3"


async def test_the_byte_quota(store: Store) -> None:
    await subscribe(store, "ua1", "site-a")
    await subscribe(store, "ua1", "site-b")
    quota = {"bytes_per_user_agent": 100}
    assert await agree(store, message("ua1", "site-a", body=b"a" * 60), **quota) == "stored"
    assert await agree(store, message("ua1", "site-b", body=b"b" * 41), **quota) == "bytes 100"
    assert await agree(store, message("ua1", "site-b", body=b"c" * 40), **quota) == "stored"


async def test_the_store_ceiling(store: Store) -> None:
    for uaid in ("ua1", "ua2"):
        await subscribe(store, uaid)
    for uaid in ("ua1", "ua2", "ua1"):
        assert await agree(store, message(uaid), stored_messages=3) == "stored"
    assert await agree(store, message("ua2"), stored_messages=3) == "store full"
    assert await agree(store, message("ua2"), stored_messages=4) == "stored"


async def test_counters_that_say_full_are_checked_exactly(store: Store) -> None:
    """Expired messages, still counted until the sweep, leave room: the exact count
    decides, in both."""
    await subscribe(store, "ua1", "site-a")
    quota = {"per_subscription": 2, "per_user_agent": 2, "bytes_per_user_agent": 100}
    await put(store, message("ua1", "site-a", ttl=10, created_at=NOW - 60, body=b"x" * 60))
    await put(store, message("ua1", "site-a", ttl=10, created_at=NOW - 60))
    assert await agree(store, message("ua1", "site-a", body=b"y" * 60), **quota) == "stored"
    assert await agree(store, message("ua1", "site-a"), **quota) == "stored"
    assert await agree(store, message("ua1", "site-a"), **quota) == "subscription 2"


# SQLite's check counts a message its Topic would replace (stricter than its insert,
# which replaces first): PostgreSQL's mirrors tidings_push_one, which leaves it out.
@pytest.mark.parametrize("engine", ["postgresql"])
async def test_a_message_its_topic_replaces_leaves_room(store: Store) -> None:
    await subscribe(store, "ua1", "site-a")
    await subscribe(store, "ua1", "site-b")
    await put(store, message("ua1", "site-a", topic="t"))
    await put(store, message("ua1", "site-a"))
    for quota in ({"per_subscription": 2}, {"per_user_agent": 2}, {"stored_messages": 2}):
        assert await agree(store, message("ua1", "site-a", topic="t"), **quota) == "stored"
    # Of another subscription, or another topic: nothing is replaced.
    assert await agree(store, message("ua1", "site-b", topic="t"), per_user_agent=2) == (
        "user_agent 2"
    )
    assert await agree(store, message("ua1", "site-a", topic="u"), stored_messages=2) == (
        "store full"
    )


@pytest.mark.parametrize("engine", ["postgresql"])
async def test_concurrent_checks_are_one_read_on_postgresql(store: Store) -> None:
    """Each check as if alone, all in one statement; a value PostgreSQL cannot hold
    fails its own check only."""
    from tidings.service.store.postgres import PostgresStore

    assert isinstance(store, PostgresStore)
    await subscribe(store, "ua1", "site-a")
    await put(store, message("ua1", "site-a"))
    quota = MessageQuota(per_subscription=2)
    reads = store._checks.reads
    pushes = [message("ua1", "site-a"), message("ua1", "site-b"), message("ua2")]
    results = await asyncio.gather(
        *(outcome(store.check_message(m, quota=quota)) for m in pushes),
        outcome(store.check_message(message("ua1", "site-a"), quota=MessageQuota(1))),
    )
    assert results == ["stored", "gone", "gone", "subscription 1"]
    assert store._checks.reads - reads == 1
    bad = message("ua1", "site-a", topic="bad\x00topic")
    checked = await asyncio.gather(
        store.check_message(bad, quota=quota),
        store.check_message(message("ua1", "site-a"), quota=quota),
        return_exceptions=True,
    )
    assert isinstance(checked[0], Exception) and not isinstance(checked[0], StoreUnavailable)
    assert checked[1] is True


@pytest.mark.parametrize("engine", ["postgresql"])
async def test_without_group_commit_each_check_is_its_own_read(store_url: str) -> None:
    from tidings.service.store.postgres import PostgresStore, store_from_url

    store = store_from_url(store_url + "&group_commit=off")
    assert isinstance(store, PostgresStore)
    await store.open()
    try:
        await subscribe(store, "ua1", "site-a")
        assert await agree(store, message("ua1", "site-a"), per_subscription=1) == "stored"
        assert await agree(store, message("ua1", "site-a"), per_subscription=1) == (
            "subscription 1"
        )
        assert await agree(store, message("ua1", "site-b")) == "gone"
        assert store._checks.reads == 3
    finally:
        await store.close()


@pytest.mark.parametrize("engine", ["postgresql"])
async def test_past_its_queue_bound_a_push_is_stored_first(store: Store) -> None:
    """Checks this far behind refuse nobody: `check_message` cannot tell, so the push
    takes the store-first path (it was answered 503 at the bound)."""
    from tidings.service.store.postgres import PostgresStore

    assert isinstance(store, PostgresStore)
    await subscribe(store, "ua1", "site-a")
    store._checks.max_waiting = 0
    assert await outcome(store.check_message(message("ua1", "site-a"), quota=MessageQuota())) == (
        "cannot tell"
    )
    assert store._checks.reads == 0
