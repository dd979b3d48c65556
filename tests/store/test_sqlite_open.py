"""Stores opening one new SQLite file together wait for each other, never fail.

A new file is in rollback-journal mode until the first store switches it to WAL. If
another connection holds the write lock while a store asks for WAL mode, SQLite
answers "database is locked" at once, without waiting for the busy timeout (seen as
a flaky `test_nodes_opening_together_migrate_once[sqlite]`).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest

from tidings.service.store import open_store
from tidings.service.store import sqlite as sqlite_store


async def test_a_store_opening_while_another_holds_the_write_lock_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "tidings.db"
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))  # new: rollback-journal mode
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE other (x)")
    other.execute("BEGIN IMMEDIATE")  # another opener, mid-write
    waits: list[float] = []

    def release_then_wait(delay: float) -> None:
        # The store found the file locked and waits: the other writer finishes now.
        waits.append(delay)
        if other.in_transaction:
            other.execute("COMMIT")

    monkeypatch.setattr(sqlite_store, "_sleep_while_locked", release_then_wait, raising=False)
    store = open_store(f"sqlite:///{path}")
    try:
        await store.open()  # before the fix: StoreUnavailable('database is locked')
        await store.add_user_agent("ua1", 1.0)
        assert await store.has_user_agent("ua1")
    finally:
        await store.close()
        other.close()
    assert len(waits) == 1
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_many_stores_opening_one_new_file_together_all_open(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tidings.db'}"
    for _ in range(5):  # the race is on the first open of a new file: try several
        (tmp_path / "tidings.db").unlink(missing_ok=True)
        stores = [open_store(url) for _ in range(8)]
        try:
            await asyncio.gather(*(s.open() for s in stores))
            await stores[0].add_user_agent("ua1", 1.0)
            for other in stores[1:]:
                assert await other.has_user_agent("ua1")
        finally:
            await asyncio.gather(*(s.close() for s in stores))
        for leftover in ("tidings.db-wal", "tidings.db-shm"):
            (tmp_path / leftover).unlink(missing_ok=True)
