"""PostgreSQL's message counters (schema 6) and the set-based batch of pushes.

The quota checks read per-user-agent and per-subscription counters kept by the count
triggers; these tests compare them with a recount after every way a message comes or
goes, check an upgrade from schema 5 counts what was stored, and check the batch's
refusals: quotas reached in the middle of one batch, a gone subscription beside good
pushes, two pushes of one topic in one batch, expired messages that the counters still
hold but the quotas do not count.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tidings.service.store import SubscriptionGone, TooManyMessages, open_store
from tidings.service.store.migrate import migrate_sqlite_to_postgres
from tidings.service.store.postgres import _MIGRATIONS, SCHEMA_VERSION, PostgresStore
from tidings.service.store.postgres_schema import _DELETE_MESSAGES, _SELECT_PENDING

from . import test_postgres_group_commit as group_commit
from .test_store import NOW, message, put, subscribe

# Its fixtures: the store on PostgreSQL only.
engine, pg, commits = group_commit.engine, group_commit.pg, group_commit.commits


async def counters(store_url: str) -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
    """The counters as kept: per user agent (messages, bytes), per subscription."""
    conn = await asyncpg.connect(store_url)
    try:
        per_user_agent = {
            row["uaid"]: (row["stored"], row["stored_bytes"])
            for row in await conn.fetch("SELECT * FROM user_agent_usage WHERE stored <> 0")
        }
        per_subscription = {
            f"{row['uaid']}/{row['channel_id']}": row["stored"]
            for row in await conn.fetch("SELECT * FROM subscriptions WHERE stored <> 0")
        }
    finally:
        await conn.close()
    return per_user_agent, per_subscription


async def recount(store_url: str) -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
    """The same, counted from the stored messages (expired ones included)."""
    conn = await asyncpg.connect(store_url)
    try:
        per_user_agent = {
            row[0]: (row[1], row[2])
            for row in await conn.fetch(
                "SELECT uaid, count(*), sum(octet_length(body)) FROM messages GROUP BY 1"
            )
        }
        per_subscription = {
            f"{row[0]}/{row[1]}": row[2]
            for row in await conn.fetch(
                "SELECT uaid, channel_id, count(*) FROM messages GROUP BY 1, 2"
            )
        }
    finally:
        await conn.close()
    return per_user_agent, per_subscription


async def assert_counted(store_url: str) -> None:
    assert await counters(store_url) == await recount(store_url)


async def test_the_counters_follow_every_way_messages_come_and_go(
    pg: PostgresStore, store_url: str
) -> None:
    for uaid, channel in (("ua1", "ch1"), ("ua1", "ch2"), ("ua2", "ch1"), ("ua3", "ch1")):
        await subscribe(pg, uaid, channel)
    acked, cancelled, short = message("ua1", "ch1"), message("ua1", "ch2"), message(ttl=1)
    batch = [acked, cancelled, short, message("ua2", body=b"x" * 300), message("ua3")]
    await asyncio.gather(*(put(pg, m) for m in batch))  # one batch
    await assert_counted(store_url)
    assert (await counters(store_url))[0]["ua1"] == (3, 3 * len(acked.body))

    await put(pg, message("ua1", "ch1", topic="t", body=b"y" * 50))
    replacing = [message("ua1", "ch1", topic="t"), message("ua2", topic="t"), message("ua2")]
    await asyncio.gather(*(put(pg, m) for m in replacing))  # replaces in a batch
    await put(pg, message("ua1", "ch1", topic="t"))  # and alone
    await assert_counted(store_url)

    await asyncio.gather(
        pg.delete_messages([("ua1", acked.message_id), ("ua1", "unknown")]),
        pg.delete_message("ua1", cancelled.message_id),
        put(pg, message("ua3")),
    )
    await assert_counted(store_url)
    await pg.delete_expired(NOW + 2)
    await assert_counted(store_url)
    await pg.delete_subscription("ua1", "ch1")
    await assert_counted(store_url)
    await pg.delete_user_agent("ua2")
    await assert_counted(store_url)
    await pg.delete_stale_user_agents(NOW + 1, 10)
    assert await counters(store_url) == ({}, {}) == await recount(store_url)
    conn = await asyncpg.connect(store_url)
    try:  # a forgotten user agent leaves no row behind
        assert await conn.fetchval("SELECT count(*) FROM user_agent_usage") == 0
    finally:
        await conn.close()


async def test_quotas_reached_in_the_middle_of_one_batch(pg: PostgresStore, store_url: str) -> None:
    await subscribe(pg, "ua1", "ch1")
    await subscribe(pg, "ua1", "ch2")
    await subscribe(pg, "ua2", "ch1")
    await put(pg, message("ua1", "ch1"))
    before = commits(pg).batches
    # ua1 has room for 2 more (per user agent 3), ch1 for 1 more (per subscription 2);
    # ua2 has room for 100 bytes of bodies.
    quota = {"per_subscription": 2, "per_user_agent": 3, "bytes_per_user_agent": 100}
    pushes = [
        message("ua1", "ch1"),
        message("ua1", "ch1"),  # the subscription is full
        message("ua1", "ch2"),
        message("ua1", "ch2"),  # the user agent is full
        message("ua2", body=b"a" * 60),
        message("ua2", body=b"b" * 60),  # over the bytes
        message("ua2", body=b"c" * 40),  # exactly fits
    ]
    results = await asyncio.gather(*(put(pg, m, **quota) for m in pushes), return_exceptions=True)
    assert commits(pg).batches - before == 1
    scopes = [r.scope if isinstance(r, TooManyMessages) else r for r in results]
    assert scopes == [[], "subscription", [], "user_agent", [], "bytes", []]
    stored = {m.message_id for m in await pg.pending_messages("ua1", NOW, 10)}
    assert stored >= {pushes[0].message_id, pushes[2].message_id}
    assert len(stored) == 3
    assert len(await pg.pending_messages("ua2", NOW, 10)) == 2
    await assert_counted(store_url)


async def test_a_gone_subscription_is_refused_beside_good_pushes(
    pg: PostgresStore, store_url: str
) -> None:
    await subscribe(pg, "ua1", "ch1")
    before = commits(pg).batches
    good, gone, other = message(), message("ua1", "nope"), message()
    results = await asyncio.gather(
        put(pg, good), put(pg, gone), put(pg, other), return_exceptions=True
    )
    assert commits(pg).batches - before == 1
    assert results[0] == [] and results[2] == []
    assert isinstance(results[1], SubscriptionGone)
    assert {m.message_id for m in await pg.pending_messages("ua1", NOW, 10)} == {
        good.message_id,
        other.message_id,
    }
    await assert_counted(store_url)


async def test_two_pushes_of_one_topic_in_one_batch_leave_the_last(
    pg: PostgresStore, store_url: str
) -> None:
    await subscribe(pg)
    old = message(topic="t")
    await put(pg, old)
    first, second = message(topic="t"), message(topic="t")
    results = await asyncio.gather(put(pg, first), put(pg, second))
    assert results == [[old.message_id], [first.message_id]]
    assert [m.message_id for m in await pg.pending_messages("ua1", NOW, 10)] == [second.message_id]
    await assert_counted(store_url)


async def test_expired_messages_still_counted_take_no_room(
    pg: PostgresStore, store_url: str
) -> None:
    """The counters hold expired messages until the sweep; the quota does not count them."""
    await subscribe(pg)
    for _ in range(2):
        await put(pg, message(ttl=1, body=b"z" * 80))
    later = NOW + 5  # both expired, not swept
    quota = {"per_subscription": 2, "per_user_agent": 2, "bytes_per_user_agent": 100}
    fits = [message(created_at=later, body=b"a" * 50), message(created_at=later, body=b"b" * 50)]
    over = message(created_at=later)
    assert await asyncio.gather(*(put(pg, m, **quota) for m in fits)) == [[], []]
    with pytest.raises(TooManyMessages):
        await put(pg, over, **quota)
    assert len(await pg.pending_messages("ua1", later, 10)) == 2
    assert (await counters(store_url))[0]["ua1"] == (4, 260)


async def schema_up_to(store_url: str, last: int) -> asyncpg.Connection:
    """A connection to the database made as a node of schema `last` left it."""
    conn = await asyncpg.connect(store_url)
    await conn.execute("CREATE TABLE tidings_schema (version integer NOT NULL)")
    for version in range(1, last + 1):
        await conn.execute(_MIGRATIONS[version])
        await conn.execute("INSERT INTO tidings_schema (version) VALUES ($1)", version)
    return conn


async def test_upgrading_from_schema_5_counts_what_is_stored(
    store_url: str, stores: Callable[[], Any]
) -> None:
    conn = await schema_up_to(store_url, 5)
    try:
        await conn.execute(
            "INSERT INTO subscriptions (uaid, channel_id, created_at) VALUES"
            " ('ua1', 'ch1', 1.0), ('ua1', 'ch2', 1.0), ('ua2', 'ch1', 1.0)"
        )
        for i, (uaid, channel, size) in enumerate(
            [("ua1", "ch1", 10), ("ua1", "ch1", 20), ("ua1", "ch2", 30), ("ua2", "ch1", 40)]
        ):
            await conn.execute(
                "INSERT INTO messages (message_id, uaid, channel_id, urgency, ttl, created_at,"
                " expires_at, headers, body) VALUES ($1, $2, $3, 'normal', 60, $4, $5, '{}', $6)",
                f"m{i}",
                uaid,
                channel,
                NOW,
                NOW + 60,
                b"x" * size,
            )
    finally:
        await conn.close()
    store = await stores()
    assert await counters(store_url) == (
        {"ua1": (3, 60), "ua2": (1, 40)},
        {"ua1/ch1": 2, "ua1/ch2": 1, "ua2/ch1": 1},
    )
    # The upgraded store's quotas and counters go on from there.
    with pytest.raises(TooManyMessages):
        await put(store, message("ua1", "ch2"), per_user_agent=3)
    await put(store, message("ua2", "ch1"), per_user_agent=3)
    await store.delete_messages([("ua1", "m0")])
    await subscribe(store, "ua3")  # a subscription row has one more column now
    await put(store, message("ua3"))
    await assert_counted(store_url)


async def test_a_copy_from_sqlite_is_counted_by_postgresql_not_copied(
    store_url: str, tmp_path: Path
) -> None:
    """`tidings migrate`: the counters come from the copied messages, not from the SQLite
    store's counters of the same names (copied, they would count twice)."""
    sqlite = open_store(f"sqlite:///{tmp_path / 'tidings.db'}")
    await sqlite.open()
    try:
        await subscribe(sqlite)
        for size in (10, 20):
            await put(sqlite, message(body=b"x" * size))
    finally:
        await sqlite.close()
    db = sqlite3.connect(tmp_path / "tidings.db")
    try:  # the SQLite store's own counters, as PostgreSQL names them
        assert db.execute("SELECT stored, stored_bytes FROM user_agent_usage").fetchall() == [
            (2, 30)
        ]
        assert db.execute("SELECT stored FROM subscriptions").fetchall() == [(2,)]
    finally:
        db.close()
    await migrate_sqlite_to_postgres(tmp_path / "tidings.db", store_url, now=NOW)
    assert await counters(store_url) == ({"ua1": (2, 30)}, {"ua1/ch1": 2})
    await assert_counted(store_url)


async def test_a_released_connection_costs_no_reset_round_trip(
    pg: PostgresStore, store_url: str
) -> None:
    """The store sets no session state, so the pool sends no reset query when a
    connection comes back (it was a second round trip after every batch)."""
    await subscribe(pg)
    await put(pg, message())
    await pg.ping()
    conn = await asyncpg.connect(store_url)
    try:
        last_queries = await conn.fetch(
            "SELECT query FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
    finally:
        await conn.close()
    assert last_queries  # the store's pooled connections
    assert not [row for row in last_queries if "RESET ALL" in row["query"]]


async def test_pushes_to_other_user_agents_do_not_wait_on_an_open_push(
    pg: PostgresStore, store_url: str
) -> None:
    """The store's count moves in the writing connection's stripe: a push held open on
    one connection (as another node's batch waiting for its commit) does not hold up a
    push to another user agent, even one whose stripe was the same by user agent."""
    await subscribe(pg, "ua1")
    await put(pg, message("ua1"))
    held = await asyncpg.connect(store_url)
    try:
        # A user agent of ua1's old stripe (schema 5 chose the stripe by user agent).
        other = await held.fetchval(
            "SELECT u FROM (SELECT 'ua' || i AS u FROM generate_series(2, 1000) i) c"
            " WHERE hashtext(u) & 15 = hashtext('ua1') & 15 LIMIT 1"
        )
        await subscribe(pg, other)
        pids = {
            row[0] & 63
            for row in await held.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid()"
            )
        }
        while await held.fetchval("SELECT pg_backend_pid() & 63") in pids:
            await held.close()  # another connection: not in a stripe of the store's pool
            held = await asyncpg.connect(store_url)
        async with held.transaction():
            await held.execute(
                "SELECT tidings_store_message('held', 'ua1', 'ch1', '\\x00', 60, $1, $2,"
                " 'normal', NULL, '{}', NULL, 100, 100, 1000000, 1000000, NULL)",
                NOW,
                NOW + 60,
            )
            assert await asyncio.wait_for(put(pg, message(other)), 5) == []
        await assert_counted(store_url)
        assert await pg.count_messages() == 3
    finally:
        await held.close()


async def nested_plans(store_url: str, statements: list[tuple[str, list[Any]]]) -> list[str]:
    """The plans of every statement `statements` run, nested ones included (auto_explain,
    reported to this client), with PostgreSQL's cached generic plans forced."""
    conn = await asyncpg.connect(store_url)
    plans: list[str] = []
    conn.add_log_listener(lambda _conn, message: plans.append(str(message)))
    try:
        await conn.execute("LOAD 'auto_explain'")
        await conn.execute(
            "SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements = on;"
            " SET client_min_messages = log; SET plan_cache_mode = force_generic_plan"
        )
        for query, arguments in statements:
            await conn.fetch(query, *arguments)
    finally:
        await conn.close()
    return plans


async def test_the_exact_counts_never_read_the_expiry_index(
    pg: PostgresStore, store_url: str
) -> None:
    """Near a quota a push counts its user agent's messages exactly, and a user agent
    fetches its own: a cached generic plan must not read every unexpired message of the
    store through the expiry index to do either."""
    await subscribe(pg)
    conn = await asyncpg.connect(store_url)
    try:
        await conn.execute(
            "INSERT INTO messages (message_id, uaid, channel_id, urgency, ttl, created_at,"
            " expires_at, headers, body)"
            " SELECT 'm' || i, 'ua1', 'ch1', 'normal', 60, $1::float8, $1::float8 + i, '{}', ''"
            " FROM generate_series(1, 3000) i",
            NOW,
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    push = (  # at the user agent's quota: the counters send it to the exact count
        "SELECT * FROM tidings_push_one('new', 'ua1', 'ch1', '', 60, $1::float8, $1 + 60, 'normal',"
        " NULL, '{}', NULL, 5000, 2000, 1000000, 1000000, NULL)"
    )
    plans = await nested_plans(
        store_url, [(push, [NOW + 10])] * 2 + [(_SELECT_PENDING, ["ua1", NOW + 10, 100])] * 2
    )
    counts = [plan for plan in plans if "count(*)" in plan and "p_uaid" in plan]
    fetches = [plan for plan in plans if "ORDER BY seq" in plan]
    assert counts and fetches, plans
    assert not [plan for plan in counts + fetches if "messages_by_expiry" in plan], plans


async def test_the_count_trigger_finds_its_counters_by_key(
    pg: PostgresStore, store_url: str
) -> None:
    """The count trigger updates each counter through its primary key. Joined with the
    transition table, the generic plan a session cached from its first large statement
    (the expiry sweep, a big batch) read the whole `subscriptions` table by a sequential
    scan for every later push or acknowledgement: the planner cannot know a transition
    table holds a few rows."""
    for n in range(50):
        await subscribe(pg, uaid=f"ua{n}")
        await put(pg, message(uaid=f"ua{n}"))
        await put(pg, message(uaid=f"ua{n}"))
    pending = await pg.pending_messages("ua1", NOW, 10) + await pg.pending_messages("ua2", NOW, 10)
    acks = [([m.uaid], [m.message_id], NOW, [True]) for m in pending]
    # Each session's first statement is a large one: the plans cached from it serve the
    # small ones after it.
    swept = ("DELETE FROM messages WHERE uaid = ANY($1)", [[f"ua{n}" for n in range(3, 50)]])
    backlog = (
        "INSERT INTO messages (message_id, uaid, channel_id, urgency, ttl, created_at,"
        " expires_at, headers, body) SELECT 'b' || i, 'ua' || (i % 40 + 3), 'ch1', 'normal',"
        " 60, $1::float8, $1::float8 + 60, '{}', '' FROM generate_series(1, 300) i",
        [NOW],
    )
    push = (
        "SELECT * FROM tidings_push_one('new', 'ua4', 'ch1', '', 60, $1::float8, $1 + 60,"
        " 'normal', NULL, '{}', NULL, 5000, 2000, 1000000, 1000000, NULL)",
        [NOW],
    )
    plans = await nested_plans(store_url, [swept] + [(_DELETE_MESSAGES, list(a)) for a in acks])
    plans += await nested_plans(store_url, [backlog, push])
    assert [plan for plan in plans if "old_rows" in plan], plans
    assert [plan for plan in plans if "new_rows" in plan], plans
    scans = [plan for plan in plans if "Seq Scan on subscriptions" in plan]
    scans += [plan for plan in plans if "Seq Scan on user_agent_usage" in plan]
    assert not scans, scans
    assert await counters(store_url) == await recount(store_url)


async def test_tidings_migrate_upgrades_a_schema_6_database(store_url: str, tmp_path: Path) -> None:
    """`tidings migrate` into a database of schema 6: the schemas since replace the push functions,
    and what schema 6 stored is still counted and refused at its quota."""
    await (await schema_up_to(store_url, 6)).close()
    sqlite = open_store(f"sqlite:///{tmp_path / 'tidings.db'}")
    await sqlite.open()
    try:
        await subscribe(sqlite)
        await put(sqlite, message(body=b"x" * 10))
    finally:
        await sqlite.close()
    await migrate_sqlite_to_postgres(tmp_path / "tidings.db", store_url, now=NOW)
    conn = await asyncpg.connect(store_url)
    try:
        assert await conn.fetchval("SELECT max(version) FROM tidings_schema") == SCHEMA_VERSION
        definition = await conn.fetchval("SELECT pg_get_functiondef('tidings_push_one'::regproc)")
        assert "m.expires_at + 0 > p_created_at" in definition
        refused = await conn.fetchval(
            "SELECT code FROM tidings_push_one('m2', 'ua1', 'ch1', '', 60, $1::float8,"
            " $1 + 60, 'normal', NULL, '{}', NULL, 100, 1, 1000, 1000, NULL)",
            NOW,
        )
        assert refused == "TD004"
    finally:
        await conn.close()
    assert await counters(store_url) == ({"ua1": (1, 10)}, {"ua1/ch1": 1})


async def waiting_on_a_lock(conn: asyncpg.Connection) -> None:
    """Returns once a backend of this database waits on a lock (bounded)."""
    for _ in range(1000):
        if await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'"
        ):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("nothing waits on a lock")


async def test_a_push_racing_its_unsubscribe_is_refused(pg: PostgresStore, store_url: str) -> None:
    """An unsubscribe not yet committed holds the push back; once it is, the push finds no
    subscription: no message is left without one."""
    await subscribe(pg)
    conn = await asyncpg.connect(store_url)
    watcher = await asyncpg.connect(store_url)
    try:
        async with conn.transaction():
            await conn.execute("DELETE FROM subscriptions WHERE uaid = 'ua1'")
            push = asyncio.ensure_future(put(pg, message()))
            await waiting_on_a_lock(watcher)
        with pytest.raises(SubscriptionGone):
            await push
        assert await watcher.fetchval("SELECT count(*) FROM messages") == 0
    finally:
        await conn.close()
        await watcher.close()


async def test_an_unsubscribe_racing_a_push_takes_its_message(
    pg: PostgresStore, store_url: str
) -> None:
    """A push not yet committed holds the unsubscribe back; once it is, the message goes
    with its subscription (no foreign key cascades it: schema 8's trigger does)."""
    await subscribe(pg)
    conn = await asyncpg.connect(store_url)
    watcher = await asyncpg.connect(store_url)
    try:
        assert not await conn.fetchval(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'messages'::regclass"
            " AND contype = 'f'"
        )  # no check per inserted message
        async with conn.transaction():
            await conn.fetch(
                "SELECT * FROM tidings_push_one('m1', 'ua1', 'ch1', '', 60, $1::float8, $1 + 60,"
                " 'normal', NULL, '{}', NULL, 100, 100, 10000, 10000, NULL)",
                NOW,
            )
            unsubscribe = asyncio.ensure_future(pg.delete_subscription("ua1", "ch1"))
            await waiting_on_a_lock(watcher)
        assert await unsubscribe
        assert await watcher.fetchval("SELECT count(*) FROM messages") == 0
        await assert_counted(store_url)
    finally:
        await conn.close()
        await watcher.close()
