"""The embedded store: one SQLite file in WAL mode, no other server needed.

All statements run on one connection owned by a single worker thread, so the event
loop never blocks on disk and transactions never interleave. With `synchronous=NORMAL`
(the default) a committed transaction survives the process being killed (it is in the
WAL, in the OS page cache) but the last few may be lost if the machine loses power;
`synchronous=FULL` makes every commit reach the disk before the push is answered.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from tidings.service.store.base import (
    Receipt,
    StoredMessage,
    StoreUnavailable,
    SubscriptionGone,
    SubscriptionRecord,
    TooManyMessages,
)

T = TypeVar("T")

SCHEMA_VERSION = 2

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
}

# Column order shared by the statements below and `_message_from_row`.
_INSERT_MESSAGE = (
    "INSERT INTO messages (message_id, uaid, channel_id, body, ttl, created_at, expires_at,"
    " urgency, topic, headers, receipt_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SELECT_PENDING = (
    "SELECT message_id, uaid, channel_id, body, ttl, created_at, expires_at, urgency, topic,"
    " headers, receipt_id FROM messages WHERE uaid = ? AND expires_at > ? ORDER BY seq LIMIT ?"
)
_DELETE_MESSAGE = (
    "DELETE FROM messages WHERE uaid = ? AND message_id = ? RETURNING message_id, uaid,"
    " channel_id, body, ttl, created_at, expires_at, urgency, topic, headers, receipt_id,"
    " delivered"
)
_INSERT_RECEIPT = (
    "INSERT INTO receipts (receipt_id, uaid, channel_id, message_id, status, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
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
        headers=json.loads(row[9]),
        receipt_id=row[10],
    )


class SQLiteStore:
    """`Store` on a SQLite file, every call on one dedicated thread."""

    def __init__(self, path: Path, *, synchronous: str = "normal") -> None:
        if synchronous.lower() not in ("normal", "full", "extra"):
            raise ValueError("synchronous must be normal, full or extra")
        self.path = path
        self._synchronous = synchronous.upper()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tidings-sqlite")
        self._conn: sqlite3.Connection | None = None

    # Plumbing -----------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.OperationalError as exc:
            # Disk full, read-only file, locked database: the caller answers 503.
            raise StoreUnavailable(str(exc)) from exc
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(f"database error: {exc}") from exc

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailable("the store is not open")
        return self._conn

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA journal_mode=WAL")
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

    async def open(self) -> None:
        await self._run(self._open_sync)

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def close(self) -> None:
        await self._run(self._close_sync)
        self._executor.shutdown(wait=True)

    async def ping(self) -> None:
        await self._run(lambda: self._db.execute("SELECT 1").fetchone())

    # Metadata -----------------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        def query() -> str | None:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return None if row is None else str(row[0])

        return await self._run(query)

    async def set_meta(self, key: str, value: str) -> None:
        await self._run(
            lambda: self._db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
        )

    # User agents ----------------------------------------------------------------------

    async def has_user_agent(self, uaid: str) -> bool:
        def query() -> bool:
            row = self._db.execute("SELECT 1 FROM user_agents WHERE uaid = ?", (uaid,)).fetchone()
            return row is not None

        return await self._run(query)

    async def add_user_agent(self, uaid: str, now: float) -> None:
        await self._run(
            lambda: self._db.execute(
                "INSERT OR IGNORE INTO user_agents (uaid, created_at) VALUES (?, ?)", (uaid, now)
            )
        )

    # Subscriptions --------------------------------------------------------------------

    async def add_subscription(self, record: SubscriptionRecord) -> SubscriptionRecord:
        def write() -> SubscriptionRecord:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "INSERT OR IGNORE INTO subscriptions (uaid, channel_id, vapid_hash, created_at)"
                    " VALUES (?, ?, ?, ?)",
                    (record.uaid, record.channel_id, record.vapid_hash, record.created_at),
                )
                row = db.execute(
                    "SELECT vapid_hash, created_at FROM subscriptions"
                    " WHERE uaid = ? AND channel_id = ?",
                    (record.uaid, record.channel_id),
                ).fetchone()
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            stored_hash = None if row[0] is None else bytes(row[0])
            return SubscriptionRecord(record.uaid, record.channel_id, stored_hash, row[1])

        return await self._run(write)

    async def get_subscription(self, uaid: str, channel_id: str) -> SubscriptionRecord | None:
        def query() -> SubscriptionRecord | None:
            row = self._db.execute(
                "SELECT vapid_hash, created_at FROM subscriptions"
                " WHERE uaid = ? AND channel_id = ?",
                (uaid, channel_id),
            ).fetchone()
            if row is None:
                return None
            return SubscriptionRecord(
                uaid, channel_id, None if row[0] is None else bytes(row[0]), row[1]
            )

        return await self._run(query)

    async def delete_subscription(self, uaid: str, channel_id: str) -> bool:
        def write() -> bool:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "DELETE FROM messages WHERE uaid = ? AND channel_id = ?", (uaid, channel_id)
                )
                deleted = db.execute(
                    "DELETE FROM subscriptions WHERE uaid = ? AND channel_id = ?",
                    (uaid, channel_id),
                ).rowcount
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return deleted > 0

        return await self._run(write)

    async def count_subscriptions(self, uaid: str) -> int:
        def query() -> int:
            row = self._db.execute(
                "SELECT count(*) FROM subscriptions WHERE uaid = ?", (uaid,)
            ).fetchone()
            return int(row[0])

        return await self._run(query)

    async def list_subscriptions(self, uaid: str) -> list[SubscriptionRecord]:
        def query() -> list[SubscriptionRecord]:
            rows = self._db.execute(
                "SELECT channel_id, vapid_hash, created_at FROM subscriptions WHERE uaid = ?"
                " ORDER BY created_at",
                (uaid,),
            ).fetchall()
            return [
                SubscriptionRecord(uaid, row[0], None if row[1] is None else bytes(row[1]), row[2])
                for row in rows
            ]

        return await self._run(query)

    async def delete_user_agent(self, uaid: str) -> int:
        def write() -> int:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("DELETE FROM messages WHERE uaid = ?", (uaid,))
                count = db.execute("DELETE FROM subscriptions WHERE uaid = ?", (uaid,)).rowcount
                db.execute("DELETE FROM user_agents WHERE uaid = ?", (uaid,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return int(count)

        return await self._run(write)

    # Messages -------------------------------------------------------------------------

    async def store_message(self, message: StoredMessage, *, max_per_user_agent: int) -> list[str]:
        def write() -> list[str]:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                replaced = self._store_message_locked(db, message, max_per_user_agent)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return replaced

        return await self._run(write)

    @staticmethod
    def _store_message_locked(
        db: sqlite3.Connection, message: StoredMessage, max_per_user_agent: int
    ) -> list[str]:
        exists = db.execute(
            "SELECT 1 FROM subscriptions WHERE uaid = ? AND channel_id = ?",
            (message.uaid, message.channel_id),
        ).fetchone()
        if exists is None:
            raise SubscriptionGone(message.channel_id)
        replaced: list[str] = []
        if message.topic is not None:
            rows = db.execute(
                "DELETE FROM messages WHERE uaid = ? AND channel_id = ? AND topic = ?"
                " RETURNING message_id",
                (message.uaid, message.channel_id, message.topic),
            ).fetchall()
            replaced = [row[0] for row in rows]
        count = db.execute(
            "SELECT count(*) FROM messages WHERE uaid = ? AND expires_at > ?",
            (message.uaid, message.created_at),
        ).fetchone()[0]
        if count >= max_per_user_agent:
            raise TooManyMessages(message.uaid)
        db.execute(
            _INSERT_MESSAGE,
            (
                message.message_id,
                message.uaid,
                message.channel_id,
                message.body,
                message.ttl,
                message.created_at,
                message.expires_at,
                message.urgency,
                message.topic,
                json.dumps(message.headers, separators=(",", ":")),
                message.receipt_id,
            ),
        )
        return replaced

    async def pending_messages(self, uaid: str, now: float, limit: int) -> list[StoredMessage]:
        def query() -> list[StoredMessage]:
            rows = self._db.execute(
                _SELECT_PENDING,
                (uaid, now, limit),
            ).fetchall()
            return [_message_from_row(row) for row in rows]

        return await self._run(query)

    async def mark_delivered(self, uaid: str, message_id: str) -> None:
        await self._run(
            lambda: self._db.execute(
                "UPDATE messages SET delivered = 1 WHERE uaid = ? AND message_id = ?",
                (uaid, message_id),
            )
        )

    async def delete_message(self, uaid: str, message_id: str) -> StoredMessage | None:
        def write() -> StoredMessage | None:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(_DELETE_MESSAGE, (uaid, message_id)).fetchone()
                if row is not None and row[10] is not None and row[11]:
                    db.execute(_INSERT_RECEIPT, (row[10], row[1], row[2], row[0], 204, time.time()))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return None if row is None else _message_from_row(row)

        return await self._run(write)

    async def delete_expired(self, now: float) -> int:
        def write() -> int:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "INSERT INTO receipts (receipt_id, uaid, channel_id, message_id, status,"
                    " created_at) SELECT receipt_id, uaid, channel_id, message_id, 410, ?"
                    " FROM messages WHERE expires_at <= ? AND receipt_id IS NOT NULL",
                    (now, now),
                )
                removed = db.execute("DELETE FROM messages WHERE expires_at <= ?", (now,)).rowcount
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return int(removed)

        return await self._run(write)

    async def add_receipt_subscription(self, receipt_id: str, now: float) -> None:
        await self._run(
            lambda: self._db.execute(
                "INSERT OR IGNORE INTO receipt_subscriptions (receipt_id, created_at)"
                " VALUES (?, ?)",
                (receipt_id, now),
            )
        )

    async def has_receipt_subscription(self, receipt_id: str) -> bool:
        def query() -> bool:
            row = self._db.execute(
                "SELECT 1 FROM receipt_subscriptions WHERE receipt_id = ?", (receipt_id,)
            ).fetchone()
            return row is not None

        return await self._run(query)

    async def pending_receipts(self, receipt_id: str, limit: int) -> list[Receipt]:
        def query() -> list[Receipt]:
            rows = self._db.execute(
                "SELECT seq, receipt_id, uaid, channel_id, message_id, status, created_at"
                " FROM receipts WHERE receipt_id = ? ORDER BY seq LIMIT ?",
                (receipt_id, limit),
            ).fetchall()
            return [Receipt(*row) for row in rows]

        return await self._run(query)

    async def delete_receipt(self, seq: int) -> None:
        await self._run(lambda: self._db.execute("DELETE FROM receipts WHERE seq = ?", (seq,)))

    async def count_messages(self) -> int:
        def query() -> int:
            return int(self._db.execute("SELECT count(*) FROM messages").fetchone()[0])

        return await self._run(query)
