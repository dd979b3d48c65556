"""The PostgreSQL store's connections: one `asyncpg` pool per node.

Connection failures, timeouts and a server that cannot take writes become
`StoreUnavailable` (the service answers 503), never a bug-shaped error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from tidings.service.store.base import StoreUnavailable
from tidings.service.store.postgres_schema import migrate

T = TypeVar("T")

# Errors that mean "the database cannot answer now" rather than a bug in a statement.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncio.TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,
    asyncpg.exceptions.PostgresSystemError,
)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What a released connection needs reset besides what asyncpg always does (roll
    back a transaction left open): nothing. The store changes no session state (no SET,
    LISTEN, cursor or session advisory lock), and asyncpg's default reset query would be
    a second round trip after every statement."""


def _reason(exc: BaseException) -> str:
    """An exception's text, or its name when it has none (a timeout has none)."""
    return str(exc) or type(exc).__name__


class PostgresPool:
    """A pool of connections shared by the node's tasks (the base of `PostgresStore`)."""

    def __init__(
        self,
        dsn: str,
        *,
        min_connections: int = 1,
        max_connections: int = 10,
        timeout: float = 5.0,
    ) -> None:
        self.dsn = dsn
        self._min = min_connections
        self._max = max_connections
        self._timeout = timeout
        self._pool: asyncpg.Pool | None = None

    # Plumbing -----------------------------------------------------------------------

    async def _run(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run `work` on a pooled connection; connection trouble is StoreUnavailable."""
        if self._pool is None:
            raise StoreUnavailable("the store is not open")
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                return await work(conn)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"PostgreSQL: {_reason(exc)}") from exc

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self._min,
                max_size=self._max,
                timeout=self._timeout,
                command_timeout=self._timeout,
                reset=_keep_session,
            )
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {_reason(exc)}") from exc
        await self._run(migrate)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), self._timeout)
            except _UNAVAILABLE:
                pool.terminate()

    async def ping(self) -> None:
        await self._run(lambda conn: conn.fetchval("SELECT 1"))
