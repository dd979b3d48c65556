"""The store suite runs every test on both engines: `store` is parametrised.

`stores` makes further stores on the same data (another node of a cluster, or another
process on the same SQLite file), for the tests of concurrent writers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from store.engines import create_database, drop_database, postgres_schema, require_postgres
from tidings.service.store import Store, open_store

ENGINES = ["sqlite", "postgresql"]
StoreFactory = Callable[[], Store]


@pytest.fixture(scope="session")
def postgres_test_database() -> Iterator[str]:
    """One database for the whole store suite (each test gets a schema in it)."""
    require_postgres()
    # In a thread of its own: the first test to ask may be running an event loop.
    with ThreadPoolExecutor(1) as thread:
        name = thread.submit(asyncio.run, create_database()).result()
        yield name
        thread.submit(asyncio.run, drop_database(name)).result()


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def store_url(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[str]:
    if engine == "sqlite":
        yield f"sqlite:///{tmp_path / 'tidings.db'}"
        return
    database = request.getfixturevalue("postgres_test_database")
    async with postgres_schema(database) as url:
        yield url


@pytest.fixture
async def stores(store_url: str) -> AsyncIterator[Callable[[], object]]:
    """A factory of opened stores on the test's data; all closed at teardown."""
    opened: list[Store] = []

    async def make() -> Store:
        store = open_store(store_url)
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


@pytest.fixture
async def store(stores: Callable[[], object]) -> Store:
    return await stores()  # type: ignore[misc, no-any-return]
