"""SQLite's group commit: operations queued together share one transaction, and one
that fails half-way is undone alone while the others are committed."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tidings.service.store import MessageQuota, SubscriptionGone, TooManyMessages
from tidings.service.store import sqlite_commit as sqlite_module
from tidings.service.store.base import StoredMessage
from tidings.service.store.sqlite import SQLiteStore

from .test_store import NOW, message, put, subscribe


async def _queued_together(
    store: SQLiteStore, *messages: tuple[StoredMessage, int]
) -> list[object]:
    """Store `messages` as one group: the worker is held until all are queued."""
    hold = threading.Event()
    held = asyncio.ensure_future(store._run(lambda _db: hold.wait(5)))
    await asyncio.sleep(0.05)  # the worker thread is now inside `hold.wait`
    puts = [asyncio.ensure_future(put(store, m, limit)) for m, limit in messages]
    await asyncio.sleep(0.05)  # every put is queued behind it
    hold.set()
    await held
    return list(await asyncio.gather(*puts, return_exceptions=True))


async def test_a_failing_operation_is_undone_alone(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    await store.open()
    try:
        await subscribe(store)
        kept = message(topic="t")
        other = message()
        await put(store, kept)
        await put(store, other)
        # The first deletes `kept` (same topic) and is then refused at the limit of 1:
        # its delete must be rolled back, while the second, in the same group, stays.
        replacing, accepted = message(topic="t"), message()
        results = await _queued_together(store, (replacing, 1), (accepted, 100))
        assert isinstance(results[0], TooManyMessages)
        assert results[1] == []
        pending = {m.message_id for m in await store.pending_messages("ua1", NOW, 10)}
        assert pending == {kept.message_id, other.message_id, accepted.message_id}
    finally:
        await store.close()


async def test_a_group_without_failures_is_committed_whole(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    await store.open()
    try:
        await subscribe(store)
        sent = [message() for _ in range(20)]
        results = await _queued_together(store, *((m, 100) for m in sent))
        assert results == [[] for _ in sent]
        assert await store.count_messages() == 20
    finally:
        await store.close()


# Groups run on the event loop (synchronous=NORMAL) ---------------------------------


async def test_the_loop_never_waits_for_another_writer(tmp_path: Path) -> None:
    """Another process holding the write lock: the push goes to the worker thread,
    which waits for the lock, while the event loop keeps running."""
    store = SQLiteStore(tmp_path / "t.db")
    await store.open()
    other = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    try:
        await subscribe(store)
        other.execute("BEGIN IMMEDIATE")  # the write lock, as a --workers sibling
        pushed = asyncio.ensure_future(put(store, message()))
        ticks = 0
        for _ in range(20):  # 0.2 s during which the loop must keep turning
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks == 20 and not pushed.done()
        other.execute("COMMIT")
        assert await asyncio.wait_for(pushed, 5) == []
        assert await store.count_messages() == 1
    finally:
        other.close()
        await store.close()


async def test_a_group_waits_for_earlier_groups_on_the_worker(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    await store.open()
    try:
        await subscribe(store)
        hold = threading.Event()
        held = asyncio.ensure_future(store._run(lambda _db: hold.wait(5)))
        await asyncio.sleep(0.05)
        later = asyncio.ensure_future(put(store, message()))  # could run inline, but
        await asyncio.sleep(0.05)
        assert not later.done()  # order: it waits behind the held group
        hold.set()
        await held
        assert await later == []
    finally:
        await store.close()


async def test_the_call_after_a_worker_answer_runs_on_the_loop(tmp_path: Path) -> None:
    """The worker counts its batch finished before answering: a caller that resumes
    while the worker thread is still between answering and counting (a busy machine)
    must not find a backlog and send its next call to the worker too."""
    store = SQLiteStore(tmp_path / "t.db")
    await store.open()
    loop = asyncio.get_running_loop()
    wake = loop.call_soon_threadsafe
    loop_thread = threading.get_ident()

    def slow_after_waking(callback: Any, *args: Any) -> Any:
        handle = wake(callback, *args)
        if threading.get_ident() != loop_thread:
            time.sleep(0.05)  # the worker preempted right after waking the loop
        return handle

    try:
        await subscribe(store)
        loop.call_soon_threadsafe = slow_after_waking  # type: ignore[method-assign]
        await store._run(lambda _db: None)  # through the worker
        before = store._inline_commits
        assert await put(store, message()) == []
        assert store._inline_commits == before + 1
    finally:
        del loop.call_soon_threadsafe
        await store.close()


async def test_full_synchronous_mode_runs_every_group_on_the_worker(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db", synchronous="full")
    await store.open()
    try:
        await subscribe(store)
        assert await put(store, message()) == []
        assert store._inline is None and store._inline_commits == 0
    finally:
        await store.close()


async def test_inline_commits_ask_the_worker_to_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "CHECKPOINT_EVERY", 5)
    store = SQLiteStore(tmp_path / "t.db")
    checkpoints = threading.Semaphore(0)
    checkpoint = store._checkpoint

    def counted() -> None:
        checkpoint()
        checkpoints.release()

    monkeypatch.setattr(store, "_checkpoint", counted)
    await store.open()
    try:
        await subscribe(store)
        for _ in range(12):
            await put(store, message())
        assert store._inline_commits >= 10
        assert checkpoints.acquire(timeout=5)
        # The loop's connection never checkpoints on its own: that would fsync on it.
        assert store._inline is not None
        assert store._inline.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
    finally:
        await store.close()


async def test_a_crowd_of_calls_is_committed_in_bounded_groups(tmp_path: Path) -> None:
    """600 calls in one turn: groups of at most MAX_BATCH, the loop free in between."""
    store = SQLiteStore(tmp_path / "t.db")
    await store.open()
    try:
        await subscribe(store)
        commits_before = store._inline_commits
        results = await asyncio.gather(*(put(store, message(), 1000) for _ in range(600)))
        assert results == [[] for _ in range(600)]
        assert await store.count_messages() == 600
        assert store._inline_commits - commits_before >= 600 // sqlite_module.MAX_BATCH + 1
    finally:
        await store.close()


async def test_a_group_of_reads_takes_no_write_lock(tmp_path: Path) -> None:
    """A push's check (`check_message`, a read) runs on the loop outside any write
    transaction: another process holding the write lock does not delay it, it sees
    what is committed, and a refusal is still explained (in one read snapshot)."""
    store = SQLiteStore(tmp_path / "t.db")
    await store.open()
    other = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    quota = MessageQuota(per_subscription=1)
    try:
        await subscribe(store)
        commits = store._inline_commits
        other.execute("BEGIN IMMEDIATE")  # the write lock, as a --workers sibling
        checked = asyncio.ensure_future(store.check_message(message(), quota=quota))
        for _ in range(10):  # answered on the loop within a few turns, not on the worker
            await asyncio.sleep(0)
        assert checked.done() and checked.result() is True
        gone = asyncio.ensure_future(store.check_message(message(channel_id="ch9"), quota=quota))
        for _ in range(10):
            await asyncio.sleep(0)
        assert gone.done() and isinstance(gone.exception(), SubscriptionGone)
        other.execute("COMMIT")
        assert store._inline_commits == commits  # nothing to commit for reads
        await put(store, message())  # committed: the next read sees the quota reached
        with pytest.raises(TooManyMessages):
            await store.check_message(message(), quota=quota)
    finally:
        other.close()
        await store.close()
