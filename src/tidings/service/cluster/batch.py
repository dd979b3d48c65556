"""Calls to Redis gathered into one round trip, as group commit gathers writes.

A node under load makes the same few Redis calls for every push (a rate limit's bucket,
a route to another node); each call on its own costs a connection checkout, a command
packed and a reply parsed in Python, and a wake-up: more CPU than Redis spends on it.
`Batcher` queues the calls and sends them as one: the calls made while the event loop
runs one step, then those queued while that round trip was under way, and so on. One
batch is in flight at a time, so calls reach Redis in the order they were made.

`ScriptCaller` makes a batch's one call on a connection of its own: with one batch in
flight there is nothing to share it with, and redis-py's client path (a pool checkout,
its locks and hooks, the script object) cost more CPU per call than the round trip.
`Publisher` sends a batch of PUBLISHes the same way, written together.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

__all__ = ["Batcher", "Publisher", "ScriptCaller"]

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Queues items; `send(items)` gives one result per item, in order, for a batch.

    If `send` raises, every caller of that batch gets the exception (each handles it as
    it handled a failed call of its own before).
    """

    def __init__(self, send: Callable[[list[T]], Awaitable[Sequence[R]]], max_batch: int) -> None:
        self._send = send
        self._max = max_batch
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.batches = 0  # round trips made (for tests and benchmarks)

    def __len__(self) -> int:
        """Items queued and not yet sent."""
        return len(self._queue)

    def submit(self, item: T) -> asyncio.Future[R]:
        """Queue `item`; the future has its result once its batch came back."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._flusher is None:
            # Started on the loop's next step: the calls of this step join the batch.
            self._flusher = asyncio.ensure_future(self._flush())
        return future

    async def call(self, item: T) -> R:
        return await self.submit(item)

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[: self._max], self._queue[self._max :]
                self.batches += 1
                try:
                    results = await self._send([item for item, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                except asyncio.CancelledError:
                    _fail(batch)  # closed mid-batch: its callers are not left waiting
                    raise
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():  # its caller may have been cancelled
                        future.set_result(result)
        finally:
            self._flusher = None

    async def close(self) -> None:
        """Stop sending; calls still queued or under way fail with `ConnectionError` (an
        OSError: each caller handles it as a call that found Redis gone)."""
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        _fail(self._queue)
        self._queue.clear()


class _OwnConnection:
    """One connection of its own, made by `client`'s pool (its address, credentials,
    TLS, database and timeouts), for one call at a time; after a failure it is dropped
    and the next call makes a new one."""

    def __init__(self, client: Any) -> None:
        self._pool = client.connection_pool
        self._connection: Any = None

    def _connected(self) -> Any:
        connection = self._connection
        if connection is None:
            connection = self._connection = self._pool.make_connection()
        return connection

    async def _drop(self, connection: Any) -> None:
        """A reply may still be on its way (a timeout, a cancellation): never read it as
        the next call's."""
        self._connection = None
        await connection.disconnect(nowait=True)

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.disconnect(nowait=True)


class ScriptCaller(_OwnConnection):
    """A Lua script called on a connection of its own (`_OwnConnection`), for a
    `Batcher`'s one call at a time. Errors are redis-py's (RedisError, OSError); after
    any but a script's own error the connection is dropped."""

    def __init__(self, client: Any, script: str) -> None:
        super().__init__(client)
        self._script = script
        self._sha = hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()  # for EVALSHA

    async def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        from redis.exceptions import NoScriptError, ResponseError

        connection = self._connected()
        try:
            try:
                await connection.send_command("EVALSHA", self._sha, len(keys), *keys, *args)
                return await connection.read_response()
            except NoScriptError:  # Redis restarted or flushed its scripts: EVAL loads it
                await connection.send_command("EVAL", self._script, len(keys), *keys, *args)
                return await connection.read_response()
        except ResponseError:
            raise  # the script failed: the connection is in step still
        except BaseException:
            await self._drop(connection)
            raise


class Publisher(_OwnConnection):
    """PUBLISHes written together on a connection of its own (`_OwnConnection`), one
    batch at a time. Errors are redis-py's (RedisError, OSError)."""

    async def __call__(self, messages: Sequence[tuple[str, str]]) -> None:
        connection = self._connected()
        try:
            commands = [("PUBLISH", channel, payload) for channel, payload in messages]
            await connection.send_packed_command(connection.pack_commands(commands))
            for _ in commands:
                await connection.read_response()
        except BaseException:
            await self._drop(connection)
            raise


def _fail(calls: list[tuple[Any, asyncio.Future[Any]]]) -> None:
    for _, future in calls:
        if not future.done():
            future.set_exception(ConnectionError("the Redis client was closed"))
