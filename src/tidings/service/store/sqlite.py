"""The embedded store: one SQLite file in WAL mode, no other server needed.

Three files: the schema and statements (`sqlite_schema.py`), the group-commit engine
that runs every operation (`sqlite_commit.py`: the calls of one event-loop turn share
one COMMIT, each answered after it) and the store's operations, here.

Over 500 lines: one short method per `Store` operation (about 45), one interface.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, cast

from tidings.service.store.base import (
    SEEN_RESOLUTION,
    MessageQuota,
    MessageStatus,
    Receipt,
    StoredMessage,
    StoreFull,
    SubscriptionGone,
    SubscriptionRecord,
    TooManyMessages,
    TooManySubscriptions,
    message_columns,
    status_columns,
)
from tidings.service.store.sqlite_commit import (
    CHECKPOINT_EVERY,
    MAX_BATCH,
    SQLiteGroupCommit,
)
from tidings.service.store.sqlite_schema import (
    _CHECK_MESSAGE,
    _DELETE_MESSAGE,
    _DELETE_STALE_RECEIPT_SUBSCRIPTIONS,
    _DELIVER_MESSAGE,
    _DELIVER_STATUS,
    _EXPIRED_STATUSES,
    _INSERT_CHECKED_MESSAGE,
    _INSERT_RECEIPT,
    _INSERT_STATUS,
    _MIGRATIONS,
    _REPLACED_STATUSES,
    _SELECT_PENDING,
    _USER_AGENT_USAGE,
    SCHEMA_VERSION,
    _message_from_row,
    _statements,
)

# Imported from here before the engine and the schema had files of their own.
__all__ = [
    "CHECKPOINT_EVERY",
    "MAX_BATCH",
    "SCHEMA_VERSION",
    "_MIGRATIONS",
    "SQLiteStore",
    "_statements",
]

# sqlite3 binds an int, float or str parameter as it is, but "adapts" a bytes or a None
# one first: with no adapter registered for its type, it looks up `__adapt__` on its
# protocol and `__conform__` on the value, each lookup failing with an AttributeError
# formatted and dropped (about 1,800 instructions a parameter, ten a push). An adapter
# registered for the exact type returns the value as it is: the same value is bound
# (a blob, NULL), with one dict lookup and one C call. Process-wide, and the identity.
sqlite3.register_adapter(bytes, bytes)  # bytes(b) is b itself for exact bytes
sqlite3.register_adapter(type(None), cast(Callable[[None], None], {}.get))  # always None

_ACK_CHUNK = 256  # acknowledgements deleted by one statement at most (512 parameters)
# Fewer acknowledgements are deleted one statement each: the joined statement costs
# more for 1-4 keys (bench/sqlite_push_cycle.py: 307 against 244 µs a push at 1).
_ACK_JOIN_FROM = 6


def _checked(message: StoredMessage, quota: MessageQuota) -> tuple[Any, ...]:
    """The parameters of `_INSERT_CHECKED_MESSAGE`."""
    return (
        *message_columns(message),
        message.vapid_hash,
        quota.per_subscription,
        quota.per_user_agent,
        quota.bytes_per_user_agent,
        quota.stored_messages,
    )


@functools.cache
def _delete_acknowledged_statement(keys: int) -> str:
    """DELETE of the messages named by `keys` (uaid, message id) pairs, each found by its
    message id's index and deleted only if its uaid matches; returning what
    `_DELETE_MESSAGE` returns."""
    pairs = ", ".join(["(?, ?)"] * keys)
    returning = _DELETE_MESSAGE.split(" RETURNING ", 1)[1]
    # Only placeholders and constant text: the keys are bound as parameters.
    return (
        "DELETE FROM messages WHERE seq IN (SELECT m.seq FROM (VALUES "  # noqa: S608
        + pairs
        + ") AS k"
        " JOIN messages AS m ON m.message_id = k.column2 AND m.uaid = k.column1)"
        " RETURNING " + returning
    )


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


class SQLiteStore(SQLiteGroupCommit):
    """`Store` on a SQLite file, every call on one dedicated thread, writes grouped."""

    def __init__(self, path: Path, *, synchronous: str = "normal") -> None:
        if synchronous.lower() not in ("normal", "full", "extra"):
            raise ValueError("synchronous must be normal, full or extra")
        super().__init__(synchronous=synchronous)
        self.path = path

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
        await self._stop_worker()

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

    async def replace_topic(self, uaid: str, channel_id: str, topic: str, at: float) -> list[str]:
        return await self._op(lambda db: _replace_topic_in(db, (uaid, channel_id, topic), at))

    @staticmethod
    def _store_message_in(
        db: sqlite3.Connection, message: StoredMessage, quota: MessageQuota
    ) -> list[str]:
        replaced: list[str] = []
        if message.topic is not None:
            keys = (message.uaid, message.channel_id, message.topic)
            replaced = _replace_topic_in(db, keys, message.created_at)
        # One statement checks the subscription and the quotas and inserts; only when
        # nothing was inserted do we look again to say why.
        inserted = db.execute(_INSERT_CHECKED_MESSAGE, _checked(message, quota)).rowcount
        if inserted:
            return replaced
        SQLiteStore._refuse(db, message, quota)

    async def check_message(self, message: StoredMessage, *, quota: MessageQuota) -> bool:
        checked = (  # _CHECK_PARAMETERS
            message.uaid,
            message.channel_id,
            len(message.body),
            message.created_at,
            quota.per_subscription,
            quota.per_user_agent,
            quota.bytes_per_user_agent,
            quota.stored_messages,
        )

        def read(db: sqlite3.Connection) -> bool:
            if db.execute(_CHECK_MESSAGE, checked).fetchone() is not None:
                return True
            if db.in_transaction:
                SQLiteStore._refuse(db, message, quota)
            # Run alone (a group of reads): the check and why it failed in one snapshot.
            db.execute("BEGIN")
            try:
                if db.execute(_CHECK_MESSAGE, checked).fetchone() is not None:
                    return True
                SQLiteStore._refuse(db, message, quota)
            finally:
                db.execute("COMMIT")

        return await self._op(read, read_only=True)

    @staticmethod
    def _refuse(db: sqlite3.Connection, message: StoredMessage, quota: MessageQuota) -> NoReturn:
        """Raise why `message` is not stored (its checked insert or read found nothing)."""
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
        return await self._op(lambda db: self._delete_acknowledged_in(db, keys))

    @staticmethod
    def _delete_acknowledged_in(
        db: sqlite3.Connection, keys: Sequence[tuple[str, str]]
    ) -> list[StoredMessage | None]:
        """Acknowledged messages deleted in one statement per `_ACK_CHUNK` keys, their
        receipts and final statuses in one executemany each (not two statements a key),
        unless there are only a few."""
        if len(keys) < _ACK_JOIN_FROM:
            return [SQLiteStore._delete_message_in(db, uaid, mid, True) for uaid, mid in keys]
        found: dict[tuple[str, str], tuple[Any, ...]] = {}
        for start in range(0, len(keys), _ACK_CHUNK):
            chunk = keys[start : start + _ACK_CHUNK]
            # Padded to a power of two (a NULL key matches nothing): a few statements
            # in sqlite3's statement cache instead of one per batch size.
            size = 1 << (len(chunk) - 1).bit_length()
            params: list[str | None] = [value for key in chunk for value in key]
            params += [None] * (2 * size - len(params))
            for row in db.execute(_delete_acknowledged_statement(size), params):
                found[(row[1], row[0])] = row
        now = time.time()
        receipts: list[tuple[Any, ...]] = []
        statuses: list[tuple[Any, ...]] = []
        deleted: list[StoredMessage | None] = []
        for key in keys:
            row = found.pop(key, None)  # a key given twice: deleted once, then not found
            if row is None:
                deleted.append(None)
                continue
            if row[10] is not None and row[11]:
                receipts.append((row[10], row[1], row[2], row[0], 204, now, row[10]))
            if row[12] is not None:  # signed: its final status, a delivery over WebSocket
                via, delivered_at = row[13] or "websocket", row[14] or now
                statuses.append(
                    (row[0], row[12], "acknowledged", *row[4:7], via, delivered_at, now, now)
                )
            deleted.append(_message_from_row(row))
        if receipts:
            db.executemany(_INSERT_RECEIPT, receipts)
        if statuses:
            db.executemany(_INSERT_STATUS, statuses)
        return deleted

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

    async def add_receipt(self, receipt: Receipt) -> None:
        await self.add_receipts([receipt])

    async def add_receipts(self, receipts: Sequence[Receipt]) -> None:
        rows = [
            (r.receipt_id, r.uaid, r.channel_id, r.message_id, r.status, r.created_at, r.receipt_id)
            for r in receipts
        ]
        if rows:
            await self._op(lambda db: db.executemany(_INSERT_RECEIPT, rows))

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


def _replace_topic_in(db: sqlite3.Connection, keys: tuple[str, str, str], at: float) -> list[str]:
    """Delete the messages of (uaid, channel_id, topic), signed ones leaving a final
    "replaced" status; their ids."""
    db.execute(_REPLACED_STATUSES, ("replaced", at, *keys))
    rows = db.execute(
        "DELETE FROM messages WHERE uaid = ? AND channel_id = ? AND topic = ? RETURNING message_id",
        keys,
    ).fetchall()
    return [row[0] for row in rows]
