"""The embedded store: one SQLite file in WAL mode, no other server needed.

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

With NORMAL a committed transaction survives the process being killed (it is in the
WAL, in the OS page cache) but the last few may be lost if the machine loses power.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tidings.service.store.base import (
    SEEN_RESOLUTION,
    MessageQuota,
    MessageStatus,
    Receipt,
    StoredMessage,
    StoreFull,
    StoreUnavailable,
    SubscriptionGone,
    SubscriptionRecord,
    TooManyMessages,
    TooManySubscriptions,
    decode_headers,
    message_columns,
    status_columns,
)

T = TypeVar("T")

log = logging.getLogger(__name__)

MAX_BATCH = 256  # operations committed together at most

Operation = Callable[[Any], Any]  # takes the connection (None before open)

SCHEMA_VERSION = 5

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS user_agents (
        uaid TEXT PRIMARY KEY,
        created_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS subscriptions (
        uaid TEXT NOT NULL,
        channel_id TEXT NOT NULL,
        vapid_hash BLOB,
        created_at REAL NOT NULL,
        PRIMARY KEY (uaid, channel_id)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id TEXT NOT NULL UNIQUE,
        uaid TEXT NOT NULL,
        channel_id TEXT NOT NULL,
        topic TEXT,
        urgency TEXT NOT NULL,
        ttl INTEGER NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        headers TEXT NOT NULL,
        body BLOB NOT NULL
    );
    CREATE INDEX IF NOT EXISTS messages_by_uaid ON messages (uaid, seq);
    CREATE INDEX IF NOT EXISTS messages_by_expiry ON messages (expires_at);
    CREATE UNIQUE INDEX IF NOT EXISTS messages_by_topic
        ON messages (uaid, channel_id, topic) WHERE topic IS NOT NULL;
    """,
    2: """
    ALTER TABLE messages ADD COLUMN receipt_id TEXT;
    ALTER TABLE messages ADD COLUMN delivered INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE IF NOT EXISTS receipt_subscriptions (
        receipt_id TEXT PRIMARY KEY,
        created_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS receipts (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        receipt_id TEXT NOT NULL,
        uaid TEXT NOT NULL,
        channel_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        status INTEGER NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX IF NOT EXISTS receipts_by_subscription ON receipts (receipt_id, seq);
    """,
    # User agents not seen for long expire; user agents known before count as seen now.
    # The whole store's message count is kept by triggers (one row, no COUNT per push:
    # SQLite has one writer at a time anyway, so the row is no point of contention).
    3: """
    ALTER TABLE user_agents ADD COLUMN last_seen REAL NOT NULL DEFAULT 0;
    UPDATE user_agents SET last_seen = max(created_at, CAST(strftime('%s', 'now') AS REAL));
    CREATE INDEX IF NOT EXISTS user_agents_by_last_seen ON user_agents (last_seen);
    CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)
        WITHOUT ROWID;
    INSERT INTO counters (name, value) SELECT 'messages', count(*) FROM messages;
    CREATE TRIGGER IF NOT EXISTS messages_counted_in AFTER INSERT ON messages BEGIN
        UPDATE counters SET value = value + 1 WHERE name = 'messages';
    END;
    CREATE TRIGGER IF NOT EXISTS messages_counted_out AFTER DELETE ON messages BEGIN
        UPDATE counters SET value = value - 1 WHERE name = 'messages';
    END;
    """,
    4: """
    CREATE TABLE IF NOT EXISTS broadcasts (
        broadcast_id TEXT PRIMARY KEY,
        version TEXT NOT NULL
    ) WITHOUT ROWID;
    """,
    # The status of each VAPID-signed push, for its sender (MessageStatus): while it is
    # stored, in its message's row (no other write on the hot path); once it leaves the
    # store, a row of message_status, kept `message_status_retention` after `ends_at`.
    5: """
    ALTER TABLE messages ADD COLUMN vapid_hash BLOB;
    ALTER TABLE messages ADD COLUMN delivered_via TEXT;
    ALTER TABLE messages ADD COLUMN delivered_at REAL;
    CREATE TABLE IF NOT EXISTS message_status (
        message_id TEXT PRIMARY KEY,
        vapid_hash BLOB NOT NULL,
        state TEXT NOT NULL,
        ttl INTEGER NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        delivered_via TEXT,
        delivered_at REAL,
        final_at REAL,
        ends_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS message_status_by_end ON message_status (ends_at);
    """,
}

# Column order shared by the statements below and `_message_from_row`. A push is
# inserted only while its subscription exists, its subscription and its user agent are
# under their quotas of unexpired messages (count and bytes: one index range of the
# user agent's rows, at most its quota long) and the store under its ceiling.
_INSERT_CHECKED_MESSAGE = (
    "INSERT INTO messages (message_id, uaid, channel_id, body, ttl, created_at, expires_at,"
    " urgency, topic, headers, receipt_id, vapid_hash) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?"
    " WHERE EXISTS (SELECT 1 FROM subscriptions WHERE uaid = ? AND channel_id = ?)"
    " AND (SELECT coalesce(sum(channel_id = ?), 0) < ? AND count(*) < ?"
    " AND coalesce(sum(length(body)), 0) + ? <= ?"
    " FROM messages WHERE uaid = ? AND expires_at > ?)"
    " AND (SELECT value FROM counters WHERE name = 'messages') < ?"
)
_USER_AGENT_USAGE = (
    "SELECT coalesce(sum(channel_id = ?), 0), count(*), coalesce(sum(length(body)), 0)"
    " FROM messages WHERE uaid = ? AND expires_at > ?"
)
_SELECT_PENDING = (
    "SELECT message_id, uaid, channel_id, body, ttl, created_at, expires_at, urgency, topic,"
    " headers, receipt_id FROM messages WHERE uaid = ? AND expires_at > ? ORDER BY seq LIMIT ?"
)
_DELETE_MESSAGE = (
    "DELETE FROM messages WHERE uaid = ? AND message_id = ? RETURNING message_id, uaid,"
    " channel_id, body, ttl, created_at, expires_at, urgency, topic, headers, receipt_id,"
    " delivered, vapid_hash, delivered_via, delivered_at"
)
_INSERT_STATUS = (
    "INSERT OR IGNORE INTO message_status (message_id, vapid_hash, state, ttl, created_at,"
    " expires_at, delivered_via, delivered_at, final_at, ends_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# The final status of signed messages leaving the store: `state` ?1 at ?2.
_FINAL_STATUSES = (
    "INSERT OR IGNORE INTO message_status SELECT message_id, vapid_hash, ?1, ttl,"
    " created_at, expires_at, delivered_via, delivered_at, ?2, ?2 FROM messages"
)
# `state` ?1 at ?2 for the messages of a subscription ?3, ?4 with the topic ?5.
_REPLACED_STATUSES = (
    _FINAL_STATUSES + " WHERE uaid = ?3 AND channel_id = ?4 AND topic = ?5"
    " AND vapid_hash IS NOT NULL"
)
# `state` ?1 at ?2 for the messages expired at ?2.
_EXPIRED_STATUSES = _FINAL_STATUSES + " WHERE expires_at <= ?2 AND vapid_hash IS NOT NULL"
# A delivery: of a stored message, in its row; of a TTL-0 push (recorded as dropped
# before it was offered), in its status.
_DELIVER_MESSAGE = (
    "UPDATE messages SET delivered_via = ?, delivered_at = ?"
    " WHERE uaid = ? AND message_id = ? AND delivered_at IS NULL"
)
_DELIVER_STATUS = (
    "UPDATE message_status SET delivered_via = ?1, delivered_at = ?2, state = 'delivered'"
    " WHERE message_id = ?4 AND state = 'expired' AND ttl = 0 AND delivered_at IS NULL"
)


# Receipt subscriptions nothing can use any more: unused for longer than any message
# lives, named by no stored message, holding no receipt.
_DELETE_STALE_RECEIPT_SUBSCRIPTIONS = (
    "DELETE FROM receipt_subscriptions WHERE created_at < ?"
    " AND receipt_id NOT IN (SELECT receipt_id FROM messages WHERE receipt_id IS NOT NULL)"
    " AND receipt_id NOT IN (SELECT receipt_id FROM receipts)"
)
# A receipt is queued only while its receipt subscription exists.
_INSERT_RECEIPT = (
    "INSERT INTO receipts (receipt_id, uaid, channel_id, message_id, status, created_at)"
    " SELECT ?, ?, ?, ?, ?, ? WHERE EXISTS"
    " (SELECT 1 FROM receipt_subscriptions WHERE receipt_id = ?)"
)


def _statements(script: str) -> list[str]:
    """The statements of a migration script, one by one (executescript would commit)."""
    statements: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return [s for s in statements if s.strip(" ;\n")]


BUSY_TIMEOUT = 5.0  # seconds a connection waits for another's write lock
_sleep_while_locked = time.sleep  # between attempts to enter WAL mode (tests watch it)


def _enter_wal_mode(conn: sqlite3.Connection) -> None:
    """`PRAGMA journal_mode=WAL`, waiting for other connections as a busy timeout would.

    A new file starts in rollback-journal mode. Switching it to WAL writes its header
    while holding a read lock; when another connection (a store opening the same file
    at the same moment) holds the write lock meanwhile, SQLite answers SQLITE_BUSY at
    once without calling the busy handler (waiting could deadlock: the other needs our
    read lock gone). So the switch is retried here, the read lock released in between,
    until BUSY_TIMEOUT has passed. Once the file is in WAL mode the pragma takes no
    lock that can conflict, so later openers pass at the first attempt.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT
    delay = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL").fetchall()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        _sleep_while_locked(delay)
        delay = min(delay * 2, 0.05)


def _message_from_row(row: tuple[Any, ...]) -> StoredMessage:
    return StoredMessage(
        message_id=row[0],
        uaid=row[1],
        channel_id=row[2],
        body=bytes(row[3]),
        ttl=row[4],
        created_at=row[5],
        expires_at=row[6],
        urgency=row[7],
        topic=row[8],
        headers=decode_headers(row[9]),
        receipt_id=row[10],
    )


class _Job:
    """One call waiting to run: on the event loop (`inline`) or on the worker thread."""

    __slots__ = ("fn", "future", "inline", "loop", "transactional")

    def __init__(
        self,
        fn: Operation,
        future: asyncio.Future[Any],
        loop: asyncio.AbstractEventLoop,
        transactional: bool,
        inline: bool,
    ) -> None:
        self.fn = fn
        self.future = future
        self.loop = loop
        self.transactional = transactional
        self.inline = inline


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


class SQLiteStore:
    """`Store` on a SQLite file, every call on one dedicated thread, writes grouped."""

    def __init__(self, path: Path, *, synchronous: str = "normal") -> None:
        if synchronous.lower() not in ("normal", "full", "extra"):
            raise ValueError("synchronous must be normal, full or extra")
        self.path = path
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

    async def _call(self, fn: Operation, *, transactional: bool, inline: bool) -> Any:
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
        outbox.append(_Job(fn, future, loop, transactional, inline))
        return await future

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
        if not all(job.inline for job in jobs):
            return False
        if not self._inline_lock.acquire(blocking=False):
            return False
        try:
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error:
                return False  # locked by another process: the worker waits for it
            results = self._commit_group(db, jobs, begun=True)
        finally:
            self._inline_lock.release()
        _settle(results)
        self._inline_commits += 1
        if self._inline_commits % CHECKPOINT_EVERY == 0:
            self._jobs.put(_CHECKPOINT)
        return True

    async def _run(self, fn: Callable[[sqlite3.Connection | None], T]) -> T:
        """Run `fn` alone on the worker, outside any transaction (open, close, pragmas)."""
        result: T = await self._call(fn, transactional=False, inline=False)
        return result

    async def _op(self, fn: Callable[[sqlite3.Connection], T], *, slow: bool = False) -> T:
        """Run `fn` in a transaction, possibly committed together with others.

        A `slow` operation (one that may touch every row) always runs on the worker.
        """
        result: T = await self._call(fn, transactional=True, inline=not slow)
        return result

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
        return self._commit_group(db, group, begun=False)

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

    # Life cycle -----------------------------------------------------------------------

    def _open_sync(self, _db: sqlite3.Connection | None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Owner-only from the start: user agent ids let a client take over a connection.
        # SQLite gives the -wal and -shm files the mode of the database file.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        # The busy timeout is set by connect(), before any statement runs.
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
        _enter_wal_mode(conn)
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        # The version is read inside the write transaction, so processes opening the
        # file together (--reuse-port workers) migrate once; a crash leaves the old one.
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for target in sorted(v for v in _MIGRATIONS if v > version):
                for statement in _statements(_MIGRATIONS[target]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={target}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._conn = conn
        if self._synchronous == "NORMAL":
            # A busy timeout of 0: never wait on the loop, hand over to the worker.
            inline = sqlite3.connect(
                self.path, timeout=0, isolation_level=None, check_same_thread=False
            )
            inline.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints (fsync) elsewhere
            inline.execute("PRAGMA synchronous=NORMAL")
            inline.execute("PRAGMA foreign_keys=ON")
            self._inline = inline

    async def open(self) -> None:
        await self._run(self._open_sync)

    def _close_sync(self, _db: sqlite3.Connection | None) -> None:
        with self._inline_lock:
            if self._inline is not None:
                self._inline.close()
                self._inline = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def close(self) -> None:
        if self._thread is None:
            return
        await self._run(self._close_sync)
        self._jobs.put(_STOP)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    async def ping(self) -> None:
        await self._op(lambda db: db.execute("SELECT 1").fetchone())

    # Metadata -----------------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        def query(db: sqlite3.Connection) -> str | None:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return None if row is None else str(row[0])

        return await self._op(query)

    async def set_meta(self, key: str, value: str) -> None:
        await self._op(
            lambda db: db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
        )

    # Broadcasts -----------------------------------------------------------------------

    async def list_broadcasts(self) -> dict[str, str]:
        def query(db: sqlite3.Connection) -> dict[str, str]:
            rows = db.execute("SELECT broadcast_id, version FROM broadcasts").fetchall()
            return {str(row[0]): str(row[1]) for row in rows}

        return await self._op(query)

    async def set_broadcast(self, broadcast_id: str, version: str, *, max_broadcasts: int) -> bool:
        def write(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "INSERT INTO broadcasts (broadcast_id, version) SELECT ?, ?"
                " WHERE EXISTS (SELECT 1 FROM broadcasts WHERE broadcast_id = ?)"
                " OR (SELECT count(*) FROM broadcasts) < ?"
                " ON CONFLICT (broadcast_id) DO UPDATE SET version = excluded.version",
                (broadcast_id, version, broadcast_id, max_broadcasts),
            )
            return bool(cursor.rowcount)

        return await self._op(write)

    async def delete_broadcast(self, broadcast_id: str) -> bool:
        def write(db: sqlite3.Connection) -> bool:
            cursor = db.execute("DELETE FROM broadcasts WHERE broadcast_id = ?", (broadcast_id,))
            return bool(cursor.rowcount)

        return await self._op(write)

    # User agents ----------------------------------------------------------------------

    async def has_user_agent(self, uaid: str) -> bool:
        def query(db: sqlite3.Connection) -> bool:
            row = db.execute("SELECT 1 FROM user_agents WHERE uaid = ?", (uaid,)).fetchone()
            return row is not None

        return await self._op(query)

    async def add_user_agent(self, uaid: str, now: float) -> None:
        await self._op(
            lambda db: db.execute(
                "INSERT INTO user_agents (uaid, created_at, last_seen) VALUES (?, ?, ?)"
                " ON CONFLICT (uaid) DO UPDATE SET last_seen = excluded.last_seen",
                (uaid, now, now),
            )
        )

    async def touch_user_agent(self, uaid: str, now: float) -> bool:
        def write(db: sqlite3.Connection) -> bool:
            if db.execute(
                "UPDATE user_agents SET last_seen = ? WHERE uaid = ? AND last_seen < ?",
                (now, uaid, now - SEEN_RESOLUTION),
            ).rowcount:
                return True
            row = db.execute("SELECT 1 FROM user_agents WHERE uaid = ?", (uaid,)).fetchone()
            return row is not None

        return await self._op(write)

    async def touch_user_agents(self, uaids: Sequence[str], now: float) -> None:
        await self._op(
            lambda db: db.executemany(
                "UPDATE user_agents SET last_seen = ? WHERE uaid = ? AND last_seen < ?",
                [(now, uaid, now - SEEN_RESOLUTION) for uaid in uaids],
            ),
            slow=True,
        )

    async def delete_stale_user_agents(self, seen_before: float, limit: int) -> int:
        def write(db: sqlite3.Connection) -> int:
            stale = db.execute(
                "SELECT uaid FROM user_agents WHERE last_seen < ? ORDER BY last_seen LIMIT ?",
                (seen_before, limit),
            ).fetchall()
            db.executemany("DELETE FROM messages WHERE uaid = ?", stale)
            db.executemany("DELETE FROM subscriptions WHERE uaid = ?", stale)
            db.executemany("DELETE FROM user_agents WHERE uaid = ?", stale)
            return len(stale)

        return await self._op(write, slow=True)

    # Subscriptions --------------------------------------------------------------------

    async def add_subscription(
        self, record: SubscriptionRecord, *, max_per_user_agent: int | None = None
    ) -> SubscriptionRecord:
        def write(db: sqlite3.Connection) -> SubscriptionRecord:
            # Counted and inserted in one statement of the write transaction: writers
            # (threads, processes) take turns, so the cap cannot be raced past.
            db.execute(
                "INSERT OR IGNORE INTO subscriptions (uaid, channel_id, vapid_hash, created_at)"
                " SELECT ?, ?, ?, ? WHERE ? IS NULL"
                " OR (SELECT count(*) FROM subscriptions WHERE uaid = ?) < ?",
                (
                    record.uaid,
                    record.channel_id,
                    record.vapid_hash,
                    record.created_at,
                    max_per_user_agent,
                    record.uaid,
                    max_per_user_agent,
                ),
            )
            row = db.execute(
                "SELECT vapid_hash, created_at FROM subscriptions"
                " WHERE uaid = ? AND channel_id = ?",
                (record.uaid, record.channel_id),
            ).fetchone()
            if row is None:
                raise TooManySubscriptions(record.uaid)
            stored_hash = None if row[0] is None else bytes(row[0])
            return SubscriptionRecord(record.uaid, record.channel_id, stored_hash, row[1])

        return await self._op(write)

    async def get_subscription(self, uaid: str, channel_id: str) -> SubscriptionRecord | None:
        def query(db: sqlite3.Connection) -> SubscriptionRecord | None:
            row = db.execute(
                "SELECT vapid_hash, created_at FROM subscriptions"
                " WHERE uaid = ? AND channel_id = ?",
                (uaid, channel_id),
            ).fetchone()
            if row is None:
                return None
            return SubscriptionRecord(
                uaid, channel_id, None if row[0] is None else bytes(row[0]), row[1]
            )

        return await self._op(query)

    async def delete_subscription(self, uaid: str, channel_id: str) -> bool:
        def write(db: sqlite3.Connection) -> bool:
            db.execute("DELETE FROM messages WHERE uaid = ? AND channel_id = ?", (uaid, channel_id))
            deleted = db.execute(
                "DELETE FROM subscriptions WHERE uaid = ? AND channel_id = ?",
                (uaid, channel_id),
            ).rowcount
            return deleted > 0

        return await self._op(write)

    async def count_subscriptions(self, uaid: str) -> int:
        def query(db: sqlite3.Connection) -> int:
            row = db.execute(
                "SELECT count(*) FROM subscriptions WHERE uaid = ?", (uaid,)
            ).fetchone()
            return int(row[0])

        return await self._op(query)

    async def list_subscriptions(self, uaid: str) -> list[SubscriptionRecord]:
        def query(db: sqlite3.Connection) -> list[SubscriptionRecord]:
            rows = db.execute(
                "SELECT channel_id, vapid_hash, created_at FROM subscriptions WHERE uaid = ?"
                " ORDER BY created_at",
                (uaid,),
            ).fetchall()
            return [
                SubscriptionRecord(uaid, row[0], None if row[1] is None else bytes(row[1]), row[2])
                for row in rows
            ]

        return await self._op(query)

    async def delete_user_agent(self, uaid: str) -> int:
        def write(db: sqlite3.Connection) -> int:
            db.execute("DELETE FROM messages WHERE uaid = ?", (uaid,))
            count = db.execute("DELETE FROM subscriptions WHERE uaid = ?", (uaid,)).rowcount
            db.execute("DELETE FROM user_agents WHERE uaid = ?", (uaid,))
            return int(count)

        return await self._op(write, slow=True)

    # Messages -------------------------------------------------------------------------

    async def store_message(self, message: StoredMessage, *, quota: MessageQuota) -> list[str]:
        return await self._op(lambda db: self._store_message_in(db, message, quota))

    @staticmethod
    def _store_message_in(
        db: sqlite3.Connection, message: StoredMessage, quota: MessageQuota
    ) -> list[str]:
        replaced: list[str] = []
        if message.topic is not None:
            keys = (message.uaid, message.channel_id, message.topic)
            db.execute(_REPLACED_STATUSES, ("replaced", message.created_at, *keys))
            rows = db.execute(
                "DELETE FROM messages WHERE uaid = ? AND channel_id = ? AND topic = ?"
                " RETURNING message_id",
                keys,
            ).fetchall()
            replaced = [row[0] for row in rows]
        # One statement checks the subscription and the quotas and inserts; only when
        # nothing was inserted do we look again to say why.
        inserted = db.execute(
            _INSERT_CHECKED_MESSAGE,
            (
                *message_columns(message),
                message.vapid_hash,
                message.uaid,
                message.channel_id,
                message.channel_id,
                quota.per_subscription,
                quota.per_user_agent,
                len(message.body),
                quota.bytes_per_user_agent,
                message.uaid,
                message.created_at,
                quota.stored_messages,
            ),
        ).rowcount
        if inserted:
            return replaced
        exists = db.execute(
            "SELECT 1 FROM subscriptions WHERE uaid = ? AND channel_id = ?",
            (message.uaid, message.channel_id),
        ).fetchone()
        if exists is None:
            raise SubscriptionGone(message.channel_id)
        in_channel, count, size = db.execute(
            _USER_AGENT_USAGE, (message.channel_id, message.uaid, message.created_at)
        ).fetchone()
        if in_channel >= quota.per_subscription:
            raise TooManyMessages("subscription", quota.per_subscription)
        if count >= quota.per_user_agent:
            raise TooManyMessages("user_agent", quota.per_user_agent)
        if size + len(message.body) > quota.bytes_per_user_agent:
            raise TooManyMessages("bytes", quota.bytes_per_user_agent)
        raise StoreFull(f"the store holds its maximum of {quota.stored_messages} messages")

    async def pending_messages(self, uaid: str, now: float, limit: int) -> list[StoredMessage]:
        def query(db: sqlite3.Connection) -> list[StoredMessage]:
            rows = db.execute(
                _SELECT_PENDING,
                (uaid, now, limit),
            ).fetchall()
            return [_message_from_row(row) for row in rows]

        return await self._op(query)

    async def mark_delivered(self, uaid: str, message_id: str) -> None:
        await self._op(
            lambda db: db.execute(
                "UPDATE messages SET delivered = 1 WHERE uaid = ? AND message_id = ?",
                (uaid, message_id),
            )
        )

    async def delete_message(self, uaid: str, message_id: str) -> StoredMessage | None:
        return await self._op(lambda db: self._delete_message_in(db, uaid, message_id, False))

    async def delete_messages(self, keys: Sequence[tuple[str, str]]) -> list[StoredMessage | None]:
        return await self._op(
            lambda db: [self._delete_message_in(db, uaid, mid, True) for uaid, mid in keys]
        )

    @staticmethod
    def _delete_message_in(
        db: sqlite3.Connection, uaid: str, message_id: str, acknowledged: bool
    ) -> StoredMessage | None:
        row = db.execute(_DELETE_MESSAGE, (uaid, message_id)).fetchone()
        if row is None:
            return None
        now = time.time()
        if row[10] is not None and row[11]:
            db.execute(_INSERT_RECEIPT, (row[10], row[1], row[2], row[0], 204, now, row[10]))
        if row[12] is not None:  # signed: its final status
            via, delivered_at = row[13], row[14]
            if acknowledged:  # over WebSocket: a delivery too, if not yet recorded
                via, delivered_at = via or "websocket", delivered_at or now
            state = "acknowledged" if delivered_at is not None else "deleted"
            db.execute(
                _INSERT_STATUS,
                (row[0], row[12], state, row[4], row[5], row[6], via, delivered_at, now, now),
            )
        return _message_from_row(row)

    async def delete_expired(self, now: float) -> int:
        def write(db: sqlite3.Connection) -> int:
            db.execute(
                "INSERT INTO receipts (receipt_id, uaid, channel_id, message_id, status,"
                " created_at) SELECT receipt_id, uaid, channel_id, message_id, 410, ?"
                " FROM messages WHERE expires_at <= ? AND receipt_id IN"
                " (SELECT receipt_id FROM receipt_subscriptions)",
                (now, now),
            )
            db.execute(_EXPIRED_STATUSES, ("expired", now))
            removed = db.execute("DELETE FROM messages WHERE expires_at <= ?", (now,)).rowcount
            return int(removed)

        return await self._op(write, slow=True)

    # Message statuses ---------------------------------------------------------------

    async def add_message_status(self, status: MessageStatus) -> None:
        await self._op(lambda db: db.execute(_INSERT_STATUS, status_columns(status)))

    async def mark_statuses_delivered(
        self, deliveries: Sequence[tuple[str, str, str, float]]
    ) -> None:
        def write(db: sqlite3.Connection) -> None:
            rows = [(via, at, uaid, message_id) for uaid, message_id, via, at in deliveries]
            db.executemany(_DELIVER_MESSAGE, rows)
            db.executemany(_DELIVER_STATUS, rows)

        await self._op(write)

    async def get_message_status(self, uaid: str, message_id: str) -> MessageStatus | None:
        def query(db: sqlite3.Connection) -> MessageStatus | None:
            row = db.execute(
                "SELECT message_id, vapid_hash, state, ttl, created_at, expires_at, delivered_via,"
                " delivered_at, final_at FROM message_status WHERE message_id = ?"
                " UNION ALL SELECT message_id, vapid_hash, CASE WHEN delivered_at IS NULL"
                " THEN 'stored' ELSE 'delivered' END, ttl, created_at, expires_at,"
                " delivered_via, delivered_at, NULL FROM messages"
                " WHERE uaid = ? AND message_id = ? AND vapid_hash IS NOT NULL",
                (message_id, uaid, message_id),
            ).fetchone()
            if row is None:
                return None
            return MessageStatus(row[0], bytes(row[1]), *row[2:])

        return await self._op(query)

    async def delete_old_statuses(self, ended_before: float, limit: int) -> int:
        def write(db: sqlite3.Connection) -> int:
            return int(
                db.execute(
                    "DELETE FROM message_status WHERE message_id IN (SELECT message_id"
                    " FROM message_status WHERE ends_at < ? ORDER BY ends_at LIMIT ?)",
                    (ended_before, limit),
                ).rowcount
            )

        return await self._op(write, slow=True)

    async def add_receipt_subscription(self, receipt_id: str, now: float) -> None:
        await self._op(
            lambda db: db.execute(
                "INSERT OR IGNORE INTO receipt_subscriptions (receipt_id, created_at)"
                " VALUES (?, ?)",
                (receipt_id, now),
            )
        )

    async def has_receipt_subscription(self, receipt_id: str) -> bool:
        def query(db: sqlite3.Connection) -> bool:
            row = db.execute(
                "SELECT 1 FROM receipt_subscriptions WHERE receipt_id = ?", (receipt_id,)
            ).fetchone()
            return row is not None

        return await self._op(query)

    async def use_receipt_subscription(self, receipt_id: str, now: float) -> bool:
        def write(db: sqlite3.Connection) -> bool:
            return bool(
                db.execute(
                    "UPDATE receipt_subscriptions SET created_at = ? WHERE receipt_id = ?",
                    (now, receipt_id),
                ).rowcount
            )

        return await self._op(write)

    async def delete_stale_receipt_subscriptions(self, unused_since: float) -> int:
        def write(db: sqlite3.Connection) -> int:
            return int(db.execute(_DELETE_STALE_RECEIPT_SUBSCRIPTIONS, (unused_since,)).rowcount)

        return await self._op(write, slow=True)

    async def pending_receipts(self, receipt_id: str, limit: int) -> list[Receipt]:
        def query(db: sqlite3.Connection) -> list[Receipt]:
            rows = db.execute(
                "SELECT seq, receipt_id, uaid, channel_id, message_id, status, created_at"
                " FROM receipts WHERE receipt_id = ? ORDER BY seq LIMIT ?",
                (receipt_id, limit),
            ).fetchall()
            return [Receipt(*row) for row in rows]

        return await self._op(query)

    async def delete_receipt(self, seq: int) -> None:
        await self._op(lambda db: db.execute("DELETE FROM receipts WHERE seq = ?", (seq,)))

    async def count_messages(self) -> int:
        def query(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT value FROM counters WHERE name = 'messages'").fetchone()
            return int(row[0])

        return await self._op(query)

    async def count_all_subscriptions(self) -> int:
        def query(db: sqlite3.Connection) -> int:
            return int(db.execute("SELECT count(*) FROM subscriptions").fetchone()[0])

        return await self._op(query, slow=True)

    async def delete_receipt_subscription(self, receipt_id: str) -> bool:
        def write(db: sqlite3.Connection) -> bool:
            db.execute("DELETE FROM receipts WHERE receipt_id = ?", (receipt_id,))
            return bool(
                db.execute(
                    "DELETE FROM receipt_subscriptions WHERE receipt_id = ?", (receipt_id,)
                ).rowcount
            )

        return await self._op(write)
