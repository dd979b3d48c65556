"""SQLite's group commit: operations queued together share one transaction, and one
that fails half-way is undone alone while the others are committed."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from tidings.service.store import TooManyMessages
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
