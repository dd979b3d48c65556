"""SQLite's group-commit engine: the calls of one event-loop turn, one transaction.

Operations requested during one turn of the event loop are committed together (group
commit) and every caller is answered only after the shared COMMIT. A group runs
without savepoints; if one operation fails (a gone subscription, a full user agent)
the transaction is rolled back and the group replayed with a savepoint around each
operation, so that only the failed one is undone.

Where a group runs:

- With `synchronous=NORMAL` (the default) a COMMIT in WAL mode is a write into the OS
  page cache, never an fsync, so the event loop runs the group itself, on a connection
  of its own: no thread hop, no hand-over of the GIL (measured: about 1.2x the pushes
  per second of handing every group to a thread). The fsyncs happen in checkpoints,
  which that connection never runs: the worker thread checkpoints (PASSIVE) instead.
  If another process holds the write lock (`--workers`), the group does not wait on
  the loop: it goes to the worker thread, which waits for the lock.
- Operations that may take long (sweeping expired messages, counting every row) and
  any group while the worker still has earlier ones (order is kept) go to the worker
  thread and its own connection.
- With `synchronous=FULL` every COMMIT reaches the disk before the push is answered,
  so every group goes to the worker thread.
- A group of read-only operations alone (a push's check) runs without BEGIN
  IMMEDIATE and COMMIT: no write lock, nothing to commit; each read sees what is
  committed when it runs.

With NORMAL a committed transaction survives the process being killed (it is in the
WAL, in the OS page cache) but the last few may be lost if the machine loses power.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from tidings.service.store.base import StoreUnavailable

T = TypeVar("T")

log = logging.getLogger(__name__)

MAX_BATCH = 256  # operations committed together at most

Operation = Callable[[Any], Any]  # takes the connection (None before open)


class _Job:
    """One call waiting to run: on the event loop (`inline`) or on the worker thread."""

    __slots__ = ("fn", "future", "inline", "loop", "read_only", "transactional")

    def __init__(
        self,
        fn: Operation,
        future: asyncio.Future[Any],
        loop: asyncio.AbstractEventLoop,
        transactional: bool,
        inline: bool,
        read_only: bool = False,
    ) -> None:
        self.fn = fn
        self.future = future
        self.loop = loop
        self.transactional = transactional
        self.inline = inline
        self.read_only = read_only


_STOP = object()
_CHECKPOINT = object()
CHECKPOINT_EVERY = 200  # inline commits between two checkpoint requests


class _Replay(Exception):
    """An operation of a group failed: run the group again with savepoints."""


#: A call's answer: its future, and the value or the error to settle it with.
_Answer = tuple[asyncio.Future[Any], Any, BaseException | None]


def _settle(results: list[_Answer]) -> None:
    for future, value, error in results:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)


def _as_store_error(exc: BaseException) -> BaseException:
    """Disk full, read-only file, locked or corrupt database: the caller answers 503."""
    if isinstance(exc, sqlite3.OperationalError):
        return StoreUnavailable(str(exc))
    if isinstance(exc, sqlite3.DatabaseError):
        return StoreUnavailable(f"database error: {exc}")
    return exc


class SQLiteGroupCommit:
    """Runs a store's operations on SQLite, writes grouped (the base of `SQLiteStore`).

    The store opens `_conn` (the worker thread's connection) and, with NORMAL,
    `_inline` (the event loop's) in an operation run by `_run`.
    """

    def __init__(self, *, synchronous: str) -> None:
        self._synchronous = synchronous.upper()
        self._jobs: queue.SimpleQueue[list[_Job] | object] = queue.SimpleQueue()
        self._outbox: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None  # the worker thread's
        self._inline: sqlite3.Connection | None = None  # the event loop's (NORMAL only)
        self._inline_lock = threading.Lock()  # several loops (threads) may share a store
        # Groups handed to the worker and groups it has finished: each counter has one
        # writer, so their difference (the backlog) needs no lock.
        self._handed = 0
        self._finished = 0
        self._inline_commits = 0

    # Running operations --------------------------------------------------------------

    def _call(
        self, fn: Operation, *, transactional: bool, inline: bool, read_only: bool = False
    ) -> asyncio.Future[Any]:
        # The future itself, not a coroutine awaiting it: every store call on the push
        # path is one frame fewer to create, suspend and resume.
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="tidings-sqlite", daemon=True)
            self._thread.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        # Calls made during one turn of the event loop run together, at its end.
        outbox = self._outbox.get(loop)
        if outbox is None:
            outbox = self._outbox[loop] = []
            loop.call_soon(self._submit, loop)
        outbox.append(_Job(fn, future, loop, transactional, inline, read_only))
        return future

    def _submit(self, loop: asyncio.AbstractEventLoop) -> None:
        jobs = self._outbox.pop(loop, None)
        if jobs:
            self._submit_jobs(loop, jobs)

    def _submit_jobs(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job]) -> None:
        if len(jobs) > MAX_BATCH:
            # A crowd of calls (user agents reconnecting at once): one group now, the
            # rest at the next turn, so that the loop reads its sockets in between. A
            # group asked for meanwhile is submitted after these (call_soon is FIFO).
            loop.call_soon(self._submit_jobs, loop, jobs[MAX_BATCH:])
            jobs = jobs[:MAX_BATCH]
        if self._run_inline(jobs):
            return
        self._handed += 1
        self._jobs.put(jobs)

    def _run_inline(self, jobs: list[_Job]) -> bool:
        """Commit `jobs` on the event loop; False if they must go to the worker."""
        db = self._inline
        if db is None or self._handed != self._finished:
            return False  # FULL mode, closed, or earlier groups still with the worker
        reads_only = True
        for job in jobs:
            if not job.inline:
                return False
            reads_only = reads_only and job.read_only
        if not self._inline_lock.acquire(blocking=False):
            return False
        try:
            if reads_only:  # no write lock to take: another process's never delays it
                results = self._run_reads(db, jobs)
            else:
                try:
                    db.execute("BEGIN IMMEDIATE")
                except sqlite3.Error:
                    return False  # locked by another process: the worker waits for it
                results = self._commit_group(db, jobs, begun=True)
        finally:
            self._inline_lock.release()
        _settle(results)
        if reads_only:
            return True
        self._inline_commits += 1
        if self._inline_commits % CHECKPOINT_EVERY == 0:
            self._jobs.put(_CHECKPOINT)
        return True

    def _run(self, fn: Callable[[sqlite3.Connection | None], T]) -> asyncio.Future[T]:
        """Run `fn` alone on the worker, outside any transaction (open, close, pragmas)."""
        return self._call(fn, transactional=False, inline=False)

    def _op(
        self, fn: Callable[[sqlite3.Connection], T], *, slow: bool = False, read_only: bool = False
    ) -> asyncio.Future[T]:
        """Run `fn` in a transaction, possibly committed together with others (await
        the answer). A `slow` operation (one that may touch every row) always runs on
        the worker. A `read_only` one writes nothing: in a group of such operations
        alone each runs outside any transaction (SQLite's own read transaction per
        statement, seeing what is committed), without BEGIN IMMEDIATE's write lock or a
        COMMIT; one that reads more than once and needs one snapshot opens it (BEGIN)
        when `db.in_transaction` is False."""
        return self._call(fn, transactional=True, inline=not slow, read_only=read_only)

    def _work(self) -> None:
        while True:
            first = self._jobs.get()
            if first is _STOP:
                return
            if first is _CHECKPOINT:
                self._checkpoint()
                continue
            batch: list[_Job] = list(first)  # type: ignore[call-overload]
            handed = 1
            stop = checkpoint = False
            while len(batch) < MAX_BATCH:
                try:
                    jobs = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if jobs is _STOP:
                    stop = True
                    break
                if jobs is _CHECKPOINT:
                    checkpoint = True  # once this batch is committed
                    continue
                batch.extend(jobs)  # type: ignore[arg-type]
                handed += 1
            by_loop: dict[asyncio.AbstractEventLoop, list[_Answer]] = {}
            for job, answer in zip(batch, self._execute(batch), strict=True):
                by_loop.setdefault(job.loop, []).append(answer)
            # Counted finished before anyone is answered: a caller woken by its answer
            # may commit its next call on the loop at once, and must not find this
            # batch still counted as the worker's backlog.
            self._finished += handed
            for loop, settled in by_loop.items():
                loop.call_soon_threadsafe(_settle, settled)
            if checkpoint:
                self._checkpoint()
            if stop:
                return

    def _checkpoint(self) -> None:
        """Copy the WAL into the database file without waiting for anyone (PASSIVE)."""
        if self._conn is not None:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:
                log.warning("SQLite checkpoint failed: %s", exc)

    def _execute(self, batch: list[_Job]) -> list[_Answer]:
        """Run `batch` in order; return one answer per job, not yet sent."""
        answers: list[_Answer] = []
        group: list[_Job] = []
        for job in batch:
            if job.transactional:
                group.append(job)
                continue
            if group:
                answers.extend(self._commit_on_worker(group))
                group = []
            answers.append(self._run_alone(job))
        if group:
            answers.extend(self._commit_on_worker(group))
        return answers

    def _run_alone(self, job: _Job) -> _Answer:
        try:
            return job.future, job.fn(self._conn), None
        except BaseException as exc:
            return job.future, None, _as_store_error(exc)

    def _commit_on_worker(self, group: list[_Job]) -> list[_Answer]:
        """On the worker: commit `group`; one answer per job."""
        db = self._conn
        if db is None:
            closed = StoreUnavailable("the store is not open")
            return [(job.future, None, closed) for job in group]
        if all(job.read_only for job in group):
            return self._run_reads(db, group)
        return self._commit_group(db, group, begun=False)

    @staticmethod
    def _run_reads(db: sqlite3.Connection, group: list[_Job]) -> list[_Answer]:
        """A group of read-only operations: each alone, outside any transaction (no
        write lock, no COMMIT), so each sees what is committed when it runs; one that
        fails is answered with its error, the others with their results."""
        results: list[_Answer] = []
        for job in group:
            try:
                results.append((job.future, job.fn(db), None))
            except Exception as exc:
                results.append((job.future, None, _as_store_error(exc)))
        return results

    def _commit_group(
        self, db: sqlite3.Connection, group: list[_Job], *, begun: bool
    ) -> list[_Answer]:
        try:
            try:
                return self._run_group(db, group, savepoints=False, begun=begun)
            except _Replay:
                return self._run_group(db, group, savepoints=True, begun=False)
        except sqlite3.Error as exc:
            # BEGIN or COMMIT failed (disk full, read-only, locked): nothing was
            # stored, so nobody is told otherwise.
            if db.in_transaction:
                db.execute("ROLLBACK")
            error = _as_store_error(exc)
            return [(job.future, None, error) for job in group]

    @staticmethod
    def _run_group(
        db: sqlite3.Connection, group: list[_Job], *, savepoints: bool, begun: bool
    ) -> list[_Answer]:
        """Run `group` in one transaction and commit it.

        Without savepoints (the common case: no operation fails) the first failure
        rolls everything back and raises _Replay; the group then runs again with a
        savepoint around each operation, so that only the failed one is undone.
        """
        results: list[_Answer] = []
        if not begun:
            db.execute("BEGIN IMMEDIATE")
        for job in group:
            if not savepoints:
                try:
                    results.append((job.future, job.fn(db), None))
                except Exception:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise _Replay from None
                continue
            db.execute("SAVEPOINT op")
            try:
                results.append((job.future, job.fn(db), None))
                db.execute("RELEASE op")
            except Exception as exc:
                db.execute("ROLLBACK TO op")
                db.execute("RELEASE op")
                results.append((job.future, None, _as_store_error(exc)))
        db.execute("COMMIT")
        return results

    async def _stop_worker(self) -> None:
        """After the connections are closed: the worker thread ends."""
        if self._thread is None:
            return
        self._jobs.put(_STOP)
        await asyncio.to_thread(self._thread.join)
        self._thread = None
