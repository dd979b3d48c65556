"""The real PostgreSQL and Redis the scale-out tests use, each test isolated.

PostgreSQL: a fresh database per use (`postgres_database()`), or a fresh schema inside
one (`postgres_schema()`, much faster: the store suite makes one per test). Redis: a
key prefix of its own per test (`redis_url()`), or a private `redis-server` process
(`RedisProcess`) for the tests that stop and restart it. Outside CI a missing server
skips the test; in CI it fails (support.ci.require).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

from support.ci import free_port, require, tcp_reachable

PG_HOST = os.environ.get("TIDINGS_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TIDINGS_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("TIDINGS_TEST_PG_USER", "postgres")
PG_ADMIN_DB = os.environ.get("TIDINGS_TEST_PG_DB", "test")
REDIS_HOST = "127.0.0.1"
REDIS_PORT = int(os.environ.get("TIDINGS_TEST_REDIS_PORT", "6379"))


def pg_url(database: str, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}" + (f"?{query}" if query else "")


def require_postgres() -> None:
    require(tcp_reachable(PG_HOST, PG_PORT), f"PostgreSQL on {PG_HOST}:{PG_PORT}")


def require_redis() -> None:
    require(tcp_reachable(REDIS_HOST, REDIS_PORT), f"Redis on {REDIS_HOST}:{REDIS_PORT}")


async def create_database() -> str:
    """A new empty database; returns its name."""
    name = "tidings_test_" + secrets.token_hex(6)
    admin = await asyncpg.connect(pg_url(PG_ADMIN_DB))
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    return name


async def drop_database(name: str) -> None:
    admin = await asyncpg.connect(pg_url(PG_ADMIN_DB))
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """The URL of a database of its own, dropped afterwards."""
    require_postgres()
    name = await create_database()
    try:
        yield pg_url(name)
    finally:
        await drop_database(name)


@contextlib.asynccontextmanager
async def postgres_schema(database: str) -> AsyncIterator[str]:
    """The URL of a fresh schema in `database` (its search_path), dropped afterwards."""
    schema = "t_" + secrets.token_hex(6)
    conn = await asyncpg.connect(pg_url(database))
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    try:
        yield pg_url(database, search_path=schema)
    finally:
        conn = await asyncpg.connect(pg_url(database))
        try:
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        finally:
            await conn.close()


def redis_url(db: int = 0, prefix: str | None = None, port: int = REDIS_PORT) -> str:
    """A cluster URL with a key prefix no other test uses."""
    prefix = prefix or f"tidings-test-{secrets.token_hex(4)}:"
    return f"redis://{REDIS_HOST}:{port}/{db}?prefix={prefix}"


async def delete_prefix(url: str) -> None:
    """Remove every key a test left under its prefix."""
    import redis.asyncio as aioredis

    base, _, query = url.partition("?prefix=")
    client = aioredis.from_url(base)
    try:
        keys = [key async for key in client.scan_iter(match=query + "*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


class RedisProcess:
    """A private redis-server (no persistence) that a test may kill and restart."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    @property
    def url(self) -> str:
        return redis_url(port=self.port)

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.data_dir),
            ],
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + 10
        while not tcp_reachable("127.0.0.1", self.port, 0.2):
            assert self.process.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


async def wait_for(predicate: object, timeout: float = 10, interval: float = 0.05) -> None:
    """Wait until `predicate()` (sync or async) is true."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()  # type: ignore[operator]
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(interval)
