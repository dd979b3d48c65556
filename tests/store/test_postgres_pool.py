"""The PostgreSQL pool's errors (store/postgres_pool.py) say what went wrong, also when
the exception's own text is empty (a timeout waiting for a connection)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tidings.service.store import StoreUnavailable
from tidings.service.store.postgres_pool import PostgresPool


@pytest.fixture
def engine() -> str:
    return "postgresql"  # this module only: the conftest's fixtures on PostgreSQL


async def test_a_timeout_waiting_for_a_connection_is_named(store_url: str) -> None:
    pool = PostgresPool(store_url, max_connections=1, timeout=0.2)
    await pool.open()
    held = asyncio.Event()
    release = asyncio.Event()

    async def hold(conn: asyncpg.Connection) -> None:
        held.set()
        await release.wait()

    holder = asyncio.create_task(pool._run(hold))
    try:
        await held.wait()
        with pytest.raises(StoreUnavailable) as caught:
            await pool._run(lambda conn: conn.fetchval("SELECT 1"))
        assert str(caught.value) == "PostgreSQL: TimeoutError"
    finally:
        release.set()
        await holder
        await pool.close()
