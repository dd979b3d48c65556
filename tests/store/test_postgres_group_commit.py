"""PostgreSQL's group commit (store/postgres_commit.py): concurrent pushes and deletions
share one transaction; a refused push fails only its waiter; a batch that PostgreSQL
rejects as a whole is run again operation by operation; a cancelled waiter; the bound."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from tidings.service.store import (
    MessageStatus,
    StoreFull,
    StoreUnavailable,
    SubscriptionGone,
    TooManyMessages,
    postgres_commit,
)
from tidings.service.store.postgres import PostgresStore
from tidings.service.store.postgres_commit import PostgresGroupCommit

from .test_store import NOW, message, put, subscribe


@pytest.fixture
def engine() -> str:
    return "postgresql"  # this module only: the conftest's fixtures on PostgreSQL


@pytest.fixture
async def pg(stores: Callable[[], Any]) -> PostgresStore:
    store = await stores()
    assert isinstance(store, PostgresStore)
    return store


def commits(store: PostgresStore) -> PostgresGroupCommit:
    assert store._commits is not None
    return store._commits


@pytest.fixture
async def user_agent_held(store_url: str) -> AsyncIterator[Callable[[str], Any]]:
    """Hold a user agent's advisory lock (as a push of another node would): a batch
    writing to it waits, so the test can queue calls behind it. Returns the release."""
    conn = await asyncpg.connect(store_url)
    transaction = conn.transaction()
    released = False

    async def hold(uaid: str) -> None:
        await transaction.start()
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", uaid)

    async def release() -> None:
        nonlocal released
        if not released:
            released = True
            await transaction.rollback()

    hold.release = release  # type: ignore[attr-defined]
    yield hold
    await release()
    await conn.close()


async def stored_ids(store: PostgresStore, uaid: str) -> set[str]:
    return {m.message_id for m in await store.pending_messages(uaid, NOW, 100)}


async def test_concurrent_pushes_share_one_commit(pg: PostgresStore) -> None:
    await subscribe(pg)
    before = commits(pg).batches
    sent = [message() for _ in range(20)]
    assert await asyncio.gather(*(put(pg, m) for m in sent)) == [[] for _ in sent]
    assert await stored_ids(pg, "ua1") == {m.message_id for m in sent}
    assert commits(pg).batches - before == 1


async def test_a_refused_push_fails_alone_and_its_replacement_is_undone(
    pg: PostgresStore,
) -> None:
    await subscribe(pg)
    await subscribe(pg, "ua2", "ch2")
    kept, other = message(topic="t"), message()
    await put(pg, kept)
    await put(pg, other)
    # In one batch: a topic replacement refused at the limit of 1 (its delete of `kept`
    # must be undone), a push to a gone subscription, and two good ones.
    replacing, gone, good1, good2 = (
        message(topic="t"),
        message("ua1", "nope"),
        message(),
        message("ua2", "ch2"),
    )
    results = await asyncio.gather(
        put(pg, replacing, 1),
        put(pg, gone),
        put(pg, good1, 100),
        put(pg, good2),
        return_exceptions=True,
    )
    assert isinstance(results[0], TooManyMessages)
    assert isinstance(results[1], SubscriptionGone)
    assert results[2:] == [[], []]
    assert await stored_ids(pg, "ua1") == {kept.message_id, other.message_id, good1.message_id}
    assert await stored_ids(pg, "ua2") == {good2.message_id}


async def test_a_batch_rejected_whole_is_run_again_one_by_one(pg: PostgresStore) -> None:
    """A text PostgreSQL cannot hold (NUL) fails the batch's statement: each push is then
    written alone, and only the bad one fails."""
    await subscribe(pg)
    good = [message() for _ in range(3)]
    bad = message(topic="bad\x00topic")
    pushes = [good[0], bad, *good[1:]]
    results = await asyncio.gather(*(put(pg, m) for m in pushes), return_exceptions=True)
    assert isinstance(results[1], Exception) and not isinstance(results[1], StoreUnavailable)
    assert [results[0], *results[2:]] == [[], [], []]
    assert await stored_ids(pg, "ua1") == {m.message_id for m in good}


async def test_deletions_and_pushes_in_one_batch_answer_each_caller(pg: PostgresStore) -> None:
    await subscribe(pg)
    first, second = message(), message()
    await put(pg, first)
    await put(pg, second)
    key1, key2 = ("ua1", first.message_id), ("ua1", second.message_id)
    before = commits(pg).batches
    new = message()
    acked, repeated, cancelled, pushed = await asyncio.gather(
        pg.delete_messages([key1, ("ua1", "unknown")]),
        pg.delete_messages([key1]),  # the same ack again: finds nothing
        pg.delete_message(*key2),
        put(pg, new),
    )
    assert [m and m.message_id for m in acked] == [first.message_id, None]
    assert repeated == [None]
    assert cancelled is not None and cancelled.message_id == second.message_id
    assert pushed == []
    assert commits(pg).batches - before == 1
    assert await stored_ids(pg, "ua1") == {new.message_id}


async def test_acknowledgements_wait_for_a_push_to_share_its_transaction(
    pg: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commits(pg), "ack_delay", 0.5)
    await subscribe(pg)
    first = message()
    await put(pg, first)
    before = commits(pg).batches
    acking = asyncio.ensure_future(pg.delete_messages([("ua1", first.message_id)]))
    await asyncio.sleep(0.1)
    assert not acking.done() and commits(pg).batches == before  # no transaction of its own
    new = message()
    assert await put(pg, new) == []  # the push takes the acknowledgement with it
    assert [m and m.message_id for m in await acking] == [first.message_id]
    assert commits(pg).batches - before == 1
    # Alone, an acknowledgement is written after the delay; a cancellation at once.
    started = asyncio.get_running_loop().time()
    acked = await pg.delete_messages([("ua1", new.message_id)])
    assert [m and m.message_id for m in acked] == [new.message_id]
    assert asyncio.get_running_loop().time() - started >= 0.45
    await put(pg, first)
    started = asyncio.get_running_loop().time()
    assert await pg.delete_message("ua1", first.message_id) is not None
    assert asyncio.get_running_loop().time() - started < 0.45
    # Closing writes what waits.
    await put(pg, new)
    acking = asyncio.ensure_future(pg.delete_messages([("ua1", new.message_id)]))
    await asyncio.sleep(0)
    await commits(pg).drain()
    assert acking.done() and (await acking)[0] is not None


async def test_a_waiter_cancelled_before_its_batch_is_not_written(
    pg: PostgresStore, user_agent_held: Any
) -> None:
    await subscribe(pg)
    await subscribe(pg, "ua2", "ch2")
    commits(pg).max_writers = 1  # the others wait behind the held batch
    await user_agent_held("ua1")
    in_flight = asyncio.ensure_future(put(pg, message()))  # its batch waits for the lock
    await asyncio.sleep(0.2)
    assert not in_flight.done()
    kept, dropped = message("ua2", "ch2"), message("ua2", "ch2")
    waiting = [asyncio.ensure_future(put(pg, m)) for m in (kept, dropped)]
    await asyncio.sleep(0.05)
    waiting[1].cancel()
    in_flight.cancel()  # already taken: its write goes on, its answer is dropped
    await user_agent_held.release()
    assert await waiting[0] == []
    with pytest.raises(asyncio.CancelledError):
        await waiting[1]
    await commits(pg).drain()
    assert await stored_ids(pg, "ua2") == {kept.message_id}
    assert len(await stored_ids(pg, "ua1")) == 1


async def test_the_queue_is_bounded(pg: PostgresStore, user_agent_held: Any) -> None:
    await subscribe(pg)
    await subscribe(pg, "ua2", "ch2")
    commits(pg).max_waiting = 3
    commits(pg).max_writers = 1
    await user_agent_held("ua1")
    in_flight = asyncio.ensure_future(put(pg, message()))  # taken by the writer, held
    await asyncio.sleep(0.2)
    queued = [asyncio.ensure_future(put(pg, message("ua2", "ch2"))) for _ in range(3)]
    await asyncio.sleep(0.05)
    with pytest.raises(StoreUnavailable, match="waiting"):
        await put(pg, message("ua2", "ch2"))
    await user_agent_held.release()
    assert await asyncio.gather(in_flight, *queued) == [[], [], [], []]
    assert len(await stored_ids(pg, "ua2")) == 3


async def test_a_waiting_batch_does_not_hold_up_the_next(
    pg: PostgresStore, user_agent_held: Any
) -> None:
    """Another writer takes the next batch while one waits (here on a lock)."""
    await subscribe(pg)
    await subscribe(pg, "ua2", "ch2")
    await user_agent_held("ua1")
    held = asyncio.ensure_future(put(pg, message()))
    await asyncio.sleep(0.2)
    assert await asyncio.wait_for(put(pg, message("ua2", "ch2")), 5) == []
    assert not held.done()
    await user_agent_held.release()
    assert await held == []


async def test_a_batch_in_flight_is_not_overtaken_before_it_is_slow(
    pg: PostgresStore, user_agent_held: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One writer while batches come back quickly: what arrives meanwhile waits and joins
    the next batch (larger batches), rather than a second writer taking it at once."""
    monkeypatch.setattr(postgres_commit, "OVERTAKE_AFTER", 60.0)
    await subscribe(pg)
    await subscribe(pg, "ua2", "ch2")
    await user_agent_held("ua1")
    held = asyncio.ensure_future(put(pg, message()))
    await asyncio.sleep(0.2)
    behind = [asyncio.ensure_future(put(pg, message("ua2", "ch2"))) for _ in range(3)]
    await asyncio.sleep(0.3)
    assert not any(call.done() for call in behind)
    before = commits(pg).batches
    await user_agent_held.release()
    assert await asyncio.gather(held, *behind) == [[], [], [], []]
    assert commits(pg).batches - before == 2  # the held batch, then the three as one


async def test_a_call_made_as_the_last_writer_ends_gets_a_writer(pg: PostgresStore) -> None:
    """The waiter answered last runs before its writer task is done: its next call must
    not find that writer still counted (and no writer left to take it)."""
    await subscribe(pg)
    commits(pg).max_writers = 1

    async def one_after_another() -> list[list[str]]:
        return [await put(pg, message()) for _ in range(3)]  # in one task

    assert await asyncio.wait_for(one_after_another(), 5) == [[], [], []]


async def test_the_store_ceiling_holds_within_one_batch(pg: PostgresStore) -> None:
    """Ten pushes in one batch against a ceiling of five: five stored, five refused."""
    for i in range(10):
        await subscribe(pg, f"ua{i}", "ch")
    before = commits(pg).batches
    sent = [message(f"ua{i}", "ch") for i in range(10)]
    results = await asyncio.gather(
        *(put(pg, m, stored_messages=5) for m in sent), return_exceptions=True
    )
    assert commits(pg).batches - before == 1
    assert results.count([]) == 5
    assert all(isinstance(r, StoreFull) for r in results if r != [])
    assert await pg.count_messages() == 5


def test_the_store_url_sets_the_writers_and_the_acknowledgements_delay() -> None:
    from tidings.service.store.postgres import store_from_url

    store = store_from_url("postgresql://u@h/db?group_writers=1&ack_delay=0&application_name=x")
    assert store._commits is not None
    assert (store._commits.max_writers, store._commits.ack_delay) == (1, 0.0)
    assert "application_name=x" in store.dsn and "ack_delay" not in store.dsn


def final_status(message_id: str, state: str = "acknowledged") -> MessageStatus:
    return MessageStatus(message_id, b"key", state, 60, NOW, NOW + 60, "websocket", NOW, NOW + 1)


async def test_concurrent_statuses_share_one_commit(pg: PostgresStore) -> None:
    """The final statuses of pushes acknowledged unstored (live_acks.py): one INSERT,
    committed before any of them returns."""
    before = commits(pg).batches
    statuses = [final_status(f"m{n}") for n in range(20)]
    await asyncio.gather(*(pg.add_message_status(s) for s in statuses))
    assert commits(pg).batches - before == 1
    for status in statuses:
        assert await pg.get_message_status("ua1", status.message_id) == status
    # A message that has its status keeps it.
    await pg.add_message_status(final_status("m0", "deleted"))
    found = await pg.get_message_status("ua1", "m0")
    assert found is not None and found.state == "acknowledged"


async def test_statuses_share_the_commit_of_pushes_and_deletions(pg: PostgresStore) -> None:
    await subscribe(pg)
    first = message()
    await put(pg, first)
    before = commits(pg).batches
    new = message()
    pushed, _, cancelled, _ = await asyncio.gather(
        put(pg, new),
        pg.add_message_status(final_status("s1")),
        pg.delete_message("ua1", first.message_id),
        pg.add_message_status(final_status("s2")),
    )
    assert pushed == [] and cancelled is not None
    assert commits(pg).batches - before == 1
    assert await stored_ids(pg, "ua1") == {new.message_id}
    # One transaction wrote them all (the rows' xmin).
    written = await pg._run(
        lambda conn: conn.fetch(
            "SELECT xmin::text FROM message_status WHERE message_id = ANY($1::text[])"
            " UNION ALL SELECT xmin::text FROM messages WHERE message_id = $2",
            ["s1", "s2"],
            new.message_id,
        )
    )
    assert len(written) == 3 and len({row[0] for row in written}) == 1
    before = commits(pg).batches
    await asyncio.gather(put(pg, message()), pg.add_message_status(final_status("s3")))
    assert commits(pg).batches - before == 1
    for message_id in ("s1", "s2", "s3"):
        assert await pg.get_message_status("ua1", message_id) == final_status(message_id)


async def test_a_status_in_a_batch_rejected_whole_is_written_alone(pg: PostgresStore) -> None:
    await subscribe(pg)
    results = await asyncio.gather(
        put(pg, message(topic="bad\x00topic")),
        pg.add_message_status(final_status("s1")),
        return_exceptions=True,
    )
    assert isinstance(results[0], Exception) and results[1] is None
    assert await pg.get_message_status("ua1", "s1") == final_status("s1")
