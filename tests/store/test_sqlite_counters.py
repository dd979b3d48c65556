"""SQLite's usage counters (schema 6): what each user agent and subscription has stored.

The quota check of a push reads these counters instead of counting the user agent's
stored messages; these tests compare them with a recount after every way a message
comes or goes, check that the quotas still refuse exactly at their limits (the
counters hold expired messages until the sweep; the quotas do not count them), that
the check's work does not grow with the backlog, and that an upgrade from schema 5
counts what was already stored.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tidings.service.store import MessageQuota, TooManyMessages
from tidings.service.store.base import StoredMessage
from tidings.service.store.sqlite import SQLiteStore
from tidings.service.store.sqlite_schema import _MIGRATIONS, _statements

from .test_sqlite_group_commit import _queued_together
from .test_store import NOW, message, put, subscribe

Counts = tuple[dict[str, tuple[int, int]], dict[tuple[str, str], int]]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "tidings.db")
    await opened.open()
    yield opened
    await opened.close()


def counters(path: Path) -> Counts:
    """The counters as kept: per user agent (messages, bytes), per subscription."""
    with sqlite3.connect(path) as db:
        per_user_agent = {
            row[0]: (row[1], row[2])
            for row in db.execute("SELECT uaid, stored, stored_bytes FROM user_agent_usage")
        }
        per_subscription = {
            (row[0], row[1]): row[2]
            for row in db.execute("SELECT uaid, channel_id, stored FROM subscriptions")
            if row[2]
        }
    return per_user_agent, per_subscription


def recount(path: Path) -> Counts:
    """The same, counted from the stored messages (expired ones included)."""
    with sqlite3.connect(path) as db:
        per_user_agent = {
            row[0]: (row[1], row[2])
            for row in db.execute(
                "SELECT uaid, count(*), sum(length(body)) FROM messages GROUP BY uaid"
            )
        }
        per_subscription = {
            (row[0], row[1]): row[2]
            for row in db.execute(
                "SELECT uaid, channel_id, count(*) FROM messages GROUP BY uaid, channel_id"
            )
        }
    return per_user_agent, per_subscription


def assert_counted(store: SQLiteStore, expected_user_agents: int) -> None:
    kept = counters(store.path)
    assert kept == recount(store.path)
    assert len(kept[0]) == expected_user_agents  # no row left for a user agent without messages


async def test_counters_follow_every_way_a_message_comes_or_goes(store: SQLiteStore) -> None:
    for uaid, channel in [("ua1", "a"), ("ua1", "b"), ("ua2", "a"), ("ua3", "a")]:
        await subscribe(store, uaid, channel)
    acked, deleted = message("ua1", "a", body=b"x" * 10), message("ua1", "b", body=b"y" * 7)
    for msg in (acked, deleted, message("ua1", "a"), message("ua2", "a", body=b"z" * 3)):
        await put(store, msg)
    await put(store, message("ua1", "b", topic="t", body=b"old"))
    await put(store, message("ua2", "a", ttl=10))  # expires first
    await put(store, message("ua3", "a"))
    assert counters(store.path)[0]["ua1"] == (4, 10 + 7 + len(b"\x00body\xff") + 3)
    assert_counted(store, 3)

    await put(store, message("ua1", "b", topic="t", body=b"newer"))  # replaces "old"
    assert_counted(store, 3)
    await store.delete_messages([("ua1", acked.message_id)])  # acknowledged
    assert_counted(store, 3)
    assert await store.delete_message("ua1", deleted.message_id) is not None  # DELETE
    assert await store.delete_message("ua1", deleted.message_id) is None  # twice: no change
    assert_counted(store, 3)
    assert await store.delete_expired(NOW + 30) == 1  # the sweep
    assert_counted(store, 3)
    assert await store.delete_subscription("ua1", "b")  # unsubscribed, "newer" with it
    assert counters(store.path)[0]["ua1"] == (1, len(b"\x00body\xff"))
    assert_counted(store, 3)
    await store.delete_user_agent("ua2")
    assert_counted(store, 2)
    assert await store.delete_stale_user_agents(NOW + 1, 10) == 2  # ua1 and ua3 unseen
    assert counters(store.path) == ({}, {})
    assert_counted(store, 0)


async def test_a_refused_push_leaves_the_counters_as_they_were(store: SQLiteStore) -> None:
    await subscribe(store)
    await put(store, message(topic="t"))
    await put(store, message())
    before = counters(store.path)
    # Refused at the limit of 1 after its topic's message was deleted: the deletion is
    # rolled back, and the counters with it; the other push of the group stays.
    refused, results = await _queued_together(store, (message(topic="t"), 1), (message(), 100))
    assert isinstance(refused, TooManyMessages) and results == []
    assert counters(store.path)[0]["ua1"][0] == before[0]["ua1"][0] + 1
    assert_counted(store, 1)


async def test_the_quotas_refuse_exactly_at_their_limits_after_deletes(store: SQLiteStore) -> None:
    await subscribe(store, "ua1", "a")
    await subscribe(store, "ua1", "b")
    stored = [message("ua1", "a") for _ in range(2)] + [message("ua1", "b")]
    for msg in stored:
        await put(store, msg, per_subscription=2, per_user_agent=3)
    with pytest.raises(TooManyMessages) as refused:
        await put(store, message("ua1", "b"), per_subscription=2, per_user_agent=3)
    assert refused.value.scope == "user_agent"
    await store.delete_messages([("ua1", stored[2].message_id)])
    await put(store, message("ua1", "b"), per_subscription=2, per_user_agent=3)  # room for one
    with pytest.raises(TooManyMessages):
        await put(store, message("ua1", "b"), per_subscription=2, per_user_agent=3)
    with pytest.raises(TooManyMessages) as refused:
        await put(store, message("ua1", "a"), per_subscription=2, per_user_agent=4)
    assert refused.value.scope == "subscription"
    await store.delete_message("ua1", stored[0].message_id)
    await put(store, message("ua1", "a"), per_subscription=2, per_user_agent=4)
    with pytest.raises(TooManyMessages):
        await put(store, message("ua1", "a"), per_subscription=2, per_user_agent=4)
    assert counters(store.path)[0]["ua1"][0] == 3
    assert_counted(store, 1)


async def test_expired_messages_take_no_room_before_or_after_the_sweep(
    store: SQLiteStore,
) -> None:
    await subscribe(store)
    body = b"b" * 40
    quota = {"per_user_agent": 2, "bytes_per_user_agent": 100}
    await put(store, message(ttl=10, body=body), **quota)
    await put(store, message(ttl=100, body=body), **quota)
    later = NOW + 20  # the first has expired; the counters still hold it until the sweep
    with pytest.raises(TooManyMessages):  # 100 bytes in two: one unexpired, one new
        await put(store, message(created_at=later, body=b"c" * 61), **quota)
    await put(store, message(created_at=later, body=b"c" * 60), **quota)  # exactly 100
    with pytest.raises(TooManyMessages) as refused:
        await put(store, message(created_at=later, body=b""), **quota)
    assert refused.value.scope == "user_agent"
    assert counters(store.path)[0]["ua1"] == (3, 140)  # the expired one is still counted
    assert await store.delete_expired(later) == 1
    assert counters(store.path)[0]["ua1"] == (2, 100)
    with pytest.raises(TooManyMessages):
        await put(store, message(created_at=later, body=b""), **quota)
    assert_counted(store, 1)


def _steps_of_one_push(path: Path, backlog: int) -> int:
    """Virtual-machine steps SQLite runs for one push to a user agent with `backlog`."""
    db = sqlite3.connect(path, isolation_level=None)
    quota = MessageQuota(per_subscription=1000, per_user_agent=1000)
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    try:
        db.execute("BEGIN")
        uaid = f"backlog-{backlog}"
        db.execute("INSERT INTO subscriptions (uaid, channel_id, created_at) VALUES (?, 'a', 0)",
                   (uaid,))  # fmt: skip
        for _ in range(backlog):
            SQLiteStore._store_message_in(db, message(uaid, "a"), quota)
        db.set_progress_handler(count, 1)
        SQLiteStore._store_message_in(db, message(uaid, "a"), quota)
        db.set_progress_handler(None, 1)
        db.execute("ROLLBACK")
    finally:
        db.close()
    return steps


async def test_a_push_checks_its_quotas_without_reading_the_backlog(store: SQLiteStore) -> None:
    # Work, not time: SQLite's steps for one push are the same whatever the backlog
    # (before the counters, each stored message of the user agent cost a few more).
    small, large = (_steps_of_one_push(store.path, backlog) for backlog in (1, 900))
    assert large <= small + 50, (small, large)


async def _store_at_schema_5(path: Path, rows: list[StoredMessage]) -> None:
    """A file as the previous release left it, with these messages stored."""
    db = sqlite3.connect(path, isolation_level=None)
    for version in range(1, 6):
        for statement in _statements(_MIGRATIONS[version]):
            db.execute(statement)
    db.execute("PRAGMA user_version=5")
    for uaid, channel in {(m.uaid, m.channel_id) for m in rows}:
        db.execute("INSERT INTO subscriptions (uaid, channel_id, created_at) VALUES (?, ?, ?)",
                   (uaid, channel, NOW))  # fmt: skip
    for m in rows:
        db.execute(
            "INSERT INTO messages (message_id, uaid, channel_id, urgency, ttl, created_at,"
            " expires_at, headers, body) VALUES (?, ?, ?, 'normal', ?, ?, ?, '{}', ?)",
            (m.message_id, m.uaid, m.channel_id, m.ttl, m.created_at, m.expires_at, m.body),
        )
    db.close()


async def test_upgrading_from_schema_5_counts_what_is_stored(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    rows = [message("ua1", "a", body=b"1" * 5) for _ in range(2)]
    rows += [message("ua1", "b", body=b"2" * 9, ttl=5), message("ua2", "a", body=b"3")]
    await _store_at_schema_5(path, rows)
    store = SQLiteStore(path)
    await store.open()
    try:
        assert counters(path) == (
            {"ua1": (3, 19), "ua2": (1, 1)},
            {("ua1", "a"): 2, ("ua1", "b"): 1, ("ua2", "a"): 1},
        )
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == 6
        with pytest.raises(TooManyMessages):  # the counted backlog is at the quota
            await put(store, message("ua1", "b"), per_user_agent=3)
        await put(store, message("ua1", "b", created_at=NOW + 10), per_user_agent=3)
        await store.delete_messages([("ua1", m.message_id) for m in rows[:2]])
        assert_counted(store, 2)
    finally:
        await store.close()
