"""PostgreSQL's checks of pushes written before they are stored, read together.

`PostgresStore.check_message` (live_acks.py: a push to a quickly acknowledging
WebSocket is refused, if it would be, before it is written to its user agent) reads
what `tidings_push_one` would decide, without storing anything. One read per push was
a statement, a pool checkout and a transaction of its own each: on one node it cost
more CPU, the node's and PostgreSQL's, than the group-committed insert and delete it
saves (BENCHMARKS.md, "Pushes acknowledged unstored on PostgreSQL"). Here, as in group
commit, the checks made while one read is with PostgreSQL gather and go together in
one statement (`_CHECK_MESSAGES`, a row per push, each checked as if alone): one
round trip, one checkout and one snapshot for all of them.

A read takes no lock and writes nothing: one reader at a time suffices, and nothing
waits on it but the checks themselves. The queue is bounded (MAX_WAITING, as group
commit's): past it `check_message` answers "cannot tell" and the push is stored first
(a check asked anyway fails at once with StoreUnavailable). A statement refused as
a whole (a value PostgreSQL cannot hold) is read again push by push, so only that
push fails; the connection or the server failing fails the whole batch
(StoreUnavailable).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import asyncpg

from tidings.service.store.base import MessageQuota, StoredMessage, StoreUnavailable
from tidings.service.store.postgres_commit import MAX_BATCH, MAX_WAITING, Runner
from tidings.service.store.postgres_pool import _UNAVAILABLE
from tidings.service.store.postgres_schema import _CHECK_MESSAGES

_Check = tuple[StoredMessage, MessageQuota, "asyncio.Future[str | None]"]


class PostgresChecks:
    """The queue of checks and its reader; `check` answers a refusal's SQLSTATE or None."""

    def __init__(
        self, run: Runner[Any], *, max_batch: int = MAX_BATCH, max_waiting: int = MAX_WAITING
    ) -> None:
        self._run = run
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self._waiting: deque[_Check] = deque()
        self._reader: asyncio.Task[None] | None = None
        self.reads = 0  # statements answered (for tests and the benchmark)

    def full(self) -> bool:
        """Whether a check would be refused now (`check_message` then stores first)."""
        return len(self._waiting) >= self.max_waiting

    async def check(self, message: StoredMessage, quota: MessageQuota) -> str | None:
        if len(self._waiting) >= self.max_waiting:
            raise StoreUnavailable(f"PostgreSQL: {len(self._waiting)} checks already waiting")
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((message, quota, future))
        if self._reader is None:
            self._reader = asyncio.ensure_future(self._read())
        return await future

    async def drain(self) -> None:
        """Return once every queued check has been answered (before closing)."""
        if self._reader is not None:
            await asyncio.wait({self._reader})

    async def _read(self) -> None:
        try:
            await asyncio.sleep(0)  # the checks made in this turn of the loop join
            while self._waiting:
                batch: list[_Check] = []
                while self._waiting and len(batch) < self.max_batch:
                    check = self._waiting.popleft()
                    if not check[2].done():  # cancelled waiters are left out
                        batch.append(check)
                if batch:
                    await self._answer(batch)
        finally:
            # Now, not in a done callback (a turn later): a check queued in between
            # would find a reader that is gone.
            self._reader = None

    async def _answer(self, batch: list[_Check]) -> None:
        try:
            codes = await self.read([(message, quota) for message, quota, _ in batch])
        except (ValueError, TypeError, asyncpg.exceptions.PostgresError) as exc:
            if isinstance(exc, _UNAVAILABLE) or len(batch) == 1:
                _settle(batch, exc)
            else:  # one push's value refused the statement: each alone
                await asyncio.gather(*(self._answer([check]) for check in batch))
            return
        except BaseException as exc:  # unavailable, or the reader cancelled
            _settle(batch, exc if isinstance(exc, Exception) else StoreUnavailable("closing"))
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, future), code in zip(batch, codes, strict=True):
            if not future.done():
                future.set_result(code)

    async def read(self, pushes: list[tuple[StoredMessage, MessageQuota]]) -> list[str | None]:
        """The pushes checked in one statement: a SQLSTATE or None each, in order."""
        columns: list[list[Any]] = [[] for _ in range(9)]
        for message, quota in pushes:
            for column, value in zip(
                columns,
                (
                    message.uaid,
                    message.channel_id,
                    len(message.body),
                    message.created_at,
                    message.topic,
                    quota.per_subscription,
                    quota.per_user_agent,
                    quota.bytes_per_user_agent,
                    quota.stored_messages,
                ),
                strict=True,
            ):
                column.append(value)
        rows = await self._run(lambda conn: conn.fetch(_CHECK_MESSAGES, *columns))
        self.reads += 1
        return [row["code"] for row in rows]


def _settle(batch: list[_Check], error: BaseException) -> None:
    for _, _, future in batch:
        if not future.done():
            future.set_exception(error)
