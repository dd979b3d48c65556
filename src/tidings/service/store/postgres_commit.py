"""PostgreSQL's group commit: concurrent pushes and acknowledgements, one transaction.

Each push alone was a durable commit (a WAL flush) and a round trip: the node's rate
was PostgreSQL's commit rate. Here a push or a deletion joins a bounded queue drained
by writer tasks; a writer takes what has gathered (at most MAX_BATCH) and writes it on
one pooled connection in one statement, so one round trip and one transaction: pushes
alone in one call of `tidings_store_messages`, pushes and deletions together in one
call of `tidings_write_batch` (arrays; the batch's locks are taken first, in one order,
so that batches never deadlock; the pushes are written by one INSERT, the deletions by
one `DELETE ... USING unnest(...)`). Each waiter is answered after the COMMIT that
holds its write, so a 201 still means the message is durable. The final statuses of
signed pushes acknowledged without being stored (`add_message_status`, live_acks.py)
join the same queue: alone, one INSERT of them all; with pushes or deletions, an INSERT
in a WITH of the batch's statement, so still one statement and one commit. While a batch is with
PostgreSQL the next gathers and goes when it is back: the busier the node, the larger
the batches. A batch still in flight after OVERTAKE_AFTER (waiting on a lock, a slow
flush) lets another writer (at most MAX_WRITERS) take the next one past it.

Failures:

- A push refused by its own rules (subscription gone, a quota, the store's ceiling) is
  decided before anything of it is written (schema 6: in set form, or one by one near a
  quota), so only its waiter is told and the rest of the batch stands.
- Any other error of the batch's statement (a deadlock with another node's batch, a
  value PostgreSQL refuses, a bug): the batch is rolled back and each of its
  operations run again alone, so that only the one at fault fails.
- The connection or the server failing: the whole batch is unavailable (503), nothing
  of it was committed.

The queue is bounded (MAX_WAITING): past it a call fails at once with StoreUnavailable
(the service answers 503) instead of waiting behind a backlog it cannot clear. A waiter
cancelled before its batch is taken is left out of it; once taken, its write goes on
and only its answer is dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg

from tidings.service.store.base import (
    MessageQuota,
    MessageStatus,
    StoredMessage,
    StoreUnavailable,
    message_columns,
    status_columns,
)
from tidings.service.store.postgres_pool import _UNAVAILABLE

T = TypeVar("T")

log = logging.getLogger(__name__)

MAX_BATCH = 64  # operations per transaction
MAX_WAITING = 4096  # operations queued at most; more fail at once (StoreUnavailable)
MAX_WRITERS = 2  # batches in flight at once, each on its own pooled connection
# A second writer only once the batch in flight has taken this long (waiting on a lock or
# a slow flush): two writers at all times halved the batches and cost PostgreSQL ~30 %
# more CPU per push on two cores (BENCHMARKS.md, "One writer until a batch is slow").
OVERTAKE_AFTER = 0.02
# A user agent's acknowledgements (their deletes) start no transaction of their own for
# this long: a push's batch takes them first. Nobody waits on them (the user agent is not
# answered), and on two nodes the holder's acks began about half its transactions.
ACK_DELAY = 0.01

_STORE_MESSAGES = (
    "SELECT replaced, code FROM tidings_store_messages($1::text[], $2::text[], $3::text[],"
    " $4::bytea[], $5::integer[], $6::float8[], $7::float8[], $8::text[], $9::text[],"
    " $10::text[], $11::text[], $12::integer[], $13::integer[], $14::bigint[],"
    " $15::bigint[], $16::bytea[], $17::text[])"
)

# The same pushes after the deletions' keys, one flag per key, and the time: pushes'
# rows first, then the deleted messages (schema 6).
_WRITE_BATCH = (
    "SELECT * FROM tidings_write_batch($1::text[], $2::text[], $3::float8, $4::boolean[],"
    " $5::text[], $6::text[], $7::text[], $8::bytea[], $9::integer[], $10::float8[],"
    " $11::float8[], $12::text[], $13::text[], $14::text[], $15::text[], $16::integer[],"
    " $17::integer[], $18::bigint[], $19::bigint[], $20::bytea[])"
)

# Statuses (the 10 columns of message_status, one array each from parameter $N on).
_STATUS_COLUMNS = (
    *("text", "bytea", "text", "integer", "float8"),  # message_id .. created_at
    *("float8", "text", "float8", "float8", "float8"),  # expires_at .. ends_at
)


def _insert_statuses(first: int) -> str:
    arrays = ", ".join(f"${first + i}::{kind}[]" for i, kind in enumerate(_STATUS_COLUMNS))
    insert = "INSERT INTO message_status SELECT * FROM unnest("  # constant text only
    return insert + arrays + ") ON CONFLICT DO NOTHING"


_INSERT_STATUSES = _insert_statuses(1)
# With pushes, or pushes and deletions: the statuses' INSERT in a WITH (always run to
# its end, read or not), its arrays after the batch's parameters.
_STORE_MESSAGES_AND_STATUSES = f"WITH statuses AS ({_insert_statuses(18)}) {_STORE_MESSAGES}"
_WRITE_BATCH_AND_STATUSES = f"WITH statuses AS ({_insert_statuses(21)}) {_WRITE_BATCH}"

Connection = Any  # an asyncpg connection (untyped library)
Runner = Callable[[Callable[[Connection], Awaitable[T]]], Awaitable[T]]


class _Push:
    __slots__ = ("future", "message", "quota")

    def __init__(
        self, message: StoredMessage, quota: MessageQuota, future: asyncio.Future[Any]
    ) -> None:
        self.message = message
        self.quota = quota
        self.future = future


class _Deletion:
    __slots__ = ("acknowledged", "future", "keys")

    def __init__(
        self, keys: Sequence[tuple[str, str]], acknowledged: bool, future: asyncio.Future[Any]
    ) -> None:
        self.keys = keys
        self.acknowledged = acknowledged
        self.future = future


class _Status:
    __slots__ = ("future", "status")

    def __init__(self, status: MessageStatus, future: asyncio.Future[Any]) -> None:
        self.status = status
        self.future = future


_Operation = _Push | _Deletion | _Status
#: An operation, its value, and its error (an exception, _RETRY or None).
_Answer = tuple[_Operation, Any, BaseException | object | None]


class _Failed(Exception):
    """A batch statement failed for a reason other than availability: go item by item."""


class PostgresGroupCommit:
    """The queue and its writer. The store gives it three things: `run` (a pooled
    connection, connection errors as StoreUnavailable), how one push is written alone
    and what its SQLSTATE means, and the deletion statement."""

    def __init__(
        self,
        run: Runner[Any],
        *,
        push_alone: Callable[[StoredMessage, MessageQuota], Awaitable[list[str]]],
        push_refused: Callable[[str, StoredMessage, MessageQuota], BaseException | None],
        delete_statement: str,
        delete_rows: Callable[[list[Any], Sequence[tuple[str, str]]], list[Any]],
        now: Callable[[], float],
        max_batch: int = MAX_BATCH,
        max_waiting: int = MAX_WAITING,
        max_writers: int = MAX_WRITERS,
        ack_delay: float = ACK_DELAY,
    ) -> None:
        self._run = run
        self._push_alone = push_alone
        self._push_refused = push_refused
        self._delete_statement = delete_statement
        self._delete_rows = delete_rows
        self._now = now
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.max_writers = max_writers
        self.ack_delay = ack_delay
        self._ack_timer: asyncio.TimerHandle | None = None  # acks waiting for a writer
        self._waiting: deque[_Operation] = deque()
        self._writers: set[asyncio.Task[None]] = set()
        self._slow = 0  # batches in flight for longer than OVERTAKE_AFTER
        self.batches = 0  # committed (for tests and the benchmark)

    # Calls ------------------------------------------------------------------------

    async def store_message(self, message: StoredMessage, quota: MessageQuota) -> list[str]:
        future: asyncio.Future[list[str]] = self._future()
        self._enqueue(_Push(message, quota, future))
        return await future

    async def delete_messages(
        self, keys: Sequence[tuple[str, str]], acknowledged: bool
    ) -> list[Any]:
        future: asyncio.Future[list[Any]] = self._future()
        self._enqueue(_Deletion(keys, acknowledged, future))
        return await future

    async def add_status(self, status: MessageStatus) -> None:
        """Insert a final status (ignored if the message has one); returns once committed."""
        future: asyncio.Future[None] = self._future()
        self._enqueue(_Status(status, future))
        await future

    async def drain(self) -> None:
        """Return once every queued operation has been answered (before closing)."""
        if self._waiting and not self._writers:
            self._start_writer()  # acknowledgements waiting out ACK_DELAY
        while self._writers:
            await asyncio.wait(set(self._writers))

    # The writer ----------------------------------------------------------------------

    @staticmethod
    def _future() -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    def _enqueue(self, operation: _Operation) -> None:
        if len(self._waiting) >= self.max_waiting:
            raise StoreUnavailable(
                f"PostgreSQL: {len(self._waiting)} writes already waiting to be committed"
            )
        self._waiting.append(operation)
        if not self._writers:
            if isinstance(operation, _Deletion) and operation.acknowledged and self.ack_delay:
                if self._ack_timer is None:
                    loop = asyncio.get_running_loop()
                    self._ack_timer = loop.call_later(self.ack_delay, self._acks_due)
                return
            self._start_writer()
        elif self._slow and len(self._writers) < self.max_writers:
            self._start_writer()

    def _acks_due(self) -> None:
        self._ack_timer = None
        if self._waiting and not self._writers:
            self._start_writer()

    def _start_writer(self) -> None:
        if self._ack_timer is not None:  # the acks waiting go with this writer
            self._ack_timer.cancel()
            self._ack_timer = None
        writer = asyncio.ensure_future(self._write())
        self._writers.add(writer)
        writer.add_done_callback(self._writers.discard)

    def _overtake(self, marks: list[bool]) -> None:
        """A batch in flight is slow: another writer takes what waits now or comes later
        while it stays so (an idle writer finds nothing and ends)."""
        marks.append(True)
        self._slow += 1
        if self._waiting and len(self._writers) < self.max_writers:
            self._start_writer()

    async def _write(self) -> None:
        try:
            # One turn of the loop first: the calls made in this turn join the batch.
            await asyncio.sleep(0)
            while self._waiting:
                batch: list[_Operation] = []
                while self._waiting and len(batch) < self.max_batch:
                    operation = self._waiting.popleft()
                    if not operation.future.done():  # cancelled waiters are left out
                        batch.append(operation)
                if batch:
                    timer: asyncio.TimerHandle | None = None
                    marks: list[bool] = []  # one when the timer fired for this batch
                    if self.max_writers > 1:
                        loop = asyncio.get_running_loop()
                        timer = loop.call_later(OVERTAKE_AFTER, self._overtake, marks)
                    try:
                        await self._commit(batch)
                    finally:
                        if timer is not None:
                            timer.cancel()
                        self._slow -= len(marks)
        finally:
            # Now, not in a done callback (a turn later): a call queued in between
            # would find every writer counted and none left to take it.
            self._writers.discard(asyncio.current_task())

    async def _commit(self, batch: list[_Operation]) -> None:
        try:
            answers = await self._run(lambda conn: self._transaction(conn, batch))
        except _Failed as failed:
            log.warning("a batch of %d writes failed (%s): each runs alone", len(batch), failed)
            await asyncio.gather(*(self._alone(op) for op in batch))
            return
        except BaseException as exc:  # unavailable, or the writer cancelled: nobody stored
            error = exc if isinstance(exc, Exception) else StoreUnavailable("store closing")
            for op in batch:
                _settle(op.future, None, error)
            if not isinstance(exc, Exception):
                raise
            return
        self.batches += 1
        retries: list[_Operation] = []
        for op, value, error in answers:
            if error is _RETRY:
                retries.append(op)
            else:
                _settle(op.future, value, error)
        if retries:
            await asyncio.gather(*(self._alone(op) for op in retries))

    async def _transaction(self, conn: Connection, batch: list[_Operation]) -> list[_Answer]:
        """The batch in one statement, so one transaction and one round trip: its
        answers, to be given after that statement's COMMIT."""
        pushes = [op for op in batch if isinstance(op, _Push)]
        # Acknowledgements first, then cancellations (a key in both is acknowledged).
        deletions = sorted(
            (op for op in batch if isinstance(op, _Deletion)), key=lambda d: not d.acknowledged
        )
        keys = [key for d in deletions for key in d.keys]
        statuses = [op for op in batch if isinstance(op, _Status)]
        extra = _status_columns(statuses) if statuses else []
        try:
            if not pushes and not deletions:
                await conn.execute(_INSERT_STATUSES, *extra)
                rows = []
            elif not deletions:
                statement = _STORE_MESSAGES_AND_STATUSES if statuses else _STORE_MESSAGES
                rows = await conn.fetch(statement, *_push_columns(pushes), [], *extra)
            else:
                rows = await conn.fetch(
                    _WRITE_BATCH_AND_STATUSES if statuses else _WRITE_BATCH,
                    [key[0] for key in keys],
                    [key[1] for key in keys],
                    self._now(),
                    [d.acknowledged for d in deletions for _ in d.keys],
                    *_push_columns(pushes),
                    *extra,
                )
        except (ValueError, TypeError) as exc:  # a value asyncpg cannot encode
            raise _Failed(f"{type(exc).__name__}: {exc}") from exc
        except asyncpg.exceptions.PostgresError as exc:
            if isinstance(exc, _UNAVAILABLE):
                raise
            raise _Failed(f"{type(exc).__name__}: {exc}") from exc
        answers = self._push_answers(pushes, rows[: len(pushes)])
        # One result list over every key; each caller gets the slice of its keys.
        results = self._delete_rows(rows[len(pushes) :], keys)
        start = 0
        for d in deletions:
            answers.append((d, results[start : start + len(d.keys)], None))
            start += len(d.keys)
        answers.extend((status, None, None) for status in statuses)
        return answers

    def _push_answers(self, pushes: list[_Push], rows: list[Any]) -> list[_Answer]:
        answers: list[_Answer] = []
        for push, row in zip(pushes, rows, strict=True):
            code = row["code"]
            if code is None:
                answers.append((push, list(row["replaced"]), None))
            else:
                # Refused by its rules: told so. Anything else (not a code the
                # function answers today): run again alone, as without batches.
                refused = self._push_refused(code, push.message, push.quota)
                answers.append((push, None, _RETRY if refused is None else refused))
        return answers

    async def _alone(self, op: _Operation) -> None:
        """One operation in a transaction of its own (after its batch failed)."""
        try:
            if isinstance(op, _Push):
                value: Any = await self._push_alone(op.message, op.quota)
            elif isinstance(op, _Status):
                columns = _status_columns([op])
                await self._run(lambda conn: conn.execute(_INSERT_STATUSES, *columns))
                value = None
            else:
                value = await self._run(
                    lambda conn: self._delete_keys(conn, op.keys, op.acknowledged)
                )
        except Exception as exc:
            _settle(op.future, None, exc)
        else:
            _settle(op.future, value, None)

    async def _delete_keys(
        self, conn: Connection, keys: Sequence[tuple[str, str]], acknowledged: bool
    ) -> list[Any]:
        rows = await conn.fetch(
            self._delete_statement,
            [k[0] for k in keys],
            [k[1] for k in keys],
            self._now(),
            [acknowledged] * len(keys),
        )
        return self._delete_rows(rows, keys)


_RETRY = object()  # an answer meaning "run this push again, alone"


def _push_columns(pushes: list[_Push]) -> list[list[Any]]:
    """The pushes as the 16 arrays of tidings_store_messages (one per column)."""
    if not pushes:
        return [[] for _ in range(16)]
    rows = [
        (
            *message_columns(push.message),
            push.quota.per_subscription,
            push.quota.per_user_agent,
            push.quota.bytes_per_user_agent,
            push.quota.stored_messages,
            push.message.vapid_hash,
        )
        for push in pushes
    ]
    return [list(column) for column in zip(*rows, strict=True)]


def _status_columns(statuses: list[_Status]) -> list[list[Any]]:
    """The statuses as the 10 arrays of message_status (one per column)."""
    rows = [status_columns(op.status) for op in statuses]
    return [list(column) for column in zip(*rows, strict=True)]


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | object | None) -> None:
    if future.done():  # its waiter was cancelled: the write stands, the answer goes
        return
    if isinstance(error, BaseException):
        future.set_exception(error)
    else:
        future.set_result(value)
