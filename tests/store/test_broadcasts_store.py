"""The store's broadcasts table, on SQLite and on PostgreSQL (the `store` fixture)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

from tidings.service.store import Store, open_store
from tidings.service.store import sqlite as sqlite_store


async def test_set_list_change_delete(store: Store) -> None:
    assert await store.list_broadcasts() == {}
    assert await store.set_broadcast("kinto:1", "v1", max_broadcasts=10)
    assert await store.set_broadcast("remote-settings/monitor_changes", '"1"', max_broadcasts=10)
    assert await store.set_broadcast("kinto:1", "v2", max_broadcasts=10)
    assert await store.list_broadcasts() == {
        "kinto:1": "v2",
        "remote-settings/monitor_changes": '"1"',
    }
    assert await store.delete_broadcast("kinto:1")
    assert not await store.delete_broadcast("kinto:1")
    assert await store.list_broadcasts() == {"remote-settings/monitor_changes": '"1"'}


async def test_a_new_broadcast_past_the_limit_is_refused(store: Store) -> None:
    for i in range(3):
        assert await store.set_broadcast(f"id{i}", "v", max_broadcasts=3)
    assert not await store.set_broadcast("id3", "v", max_broadcasts=3)
    assert await store.set_broadcast("id0", "changed", max_broadcasts=3)  # existing: fine
    assert len(await store.list_broadcasts()) == 3


async def test_writers_racing_stay_within_the_limit(stores: Callable[[], object]) -> None:
    nodes: list[Store] = [await stores() for _ in range(3)]  # type: ignore[misc]
    results = await asyncio.gather(
        *(
            node.set_broadcast(f"n{n}-{i}", "v", max_broadcasts=5)
            for n, node in enumerate(nodes)
            for i in range(4)
        )
    )
    assert sum(results) == 5
    assert len(await nodes[0].list_broadcasts()) == 5


async def test_a_version_2_sqlite_file_is_migrated_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for version in (1, 2):  # the file as the previous release left it
        for statement in sqlite_store._statements(sqlite_store._MIGRATIONS[version]):
            conn.execute(statement)
    conn.execute("PRAGMA user_version=2")
    conn.execute("INSERT INTO user_agents (uaid, created_at) VALUES ('ua1', 1.0)")
    conn.close()
    store = open_store(f"sqlite:///{path}")
    await store.open()
    try:
        assert await store.has_user_agent("ua1")
        assert await store.set_broadcast("kinto:1", "v1", max_broadcasts=10)
        assert await store.list_broadcasts() == {"kinto:1": "v1"}
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_store.SCHEMA_VERSION == 6
    conn.close()
