"""The scale-out store: PostgreSQL through `asyncpg`, shared by every node of a cluster.

Over 500 lines: one short method per `Store` operation (about 45), one interface.

The same rules as the SQLite store, made safe for many nodes writing at once:

- `store_message` is one call of a server-side function that takes a transaction-level
  advisory lock on the user agent, so topic replacement and the per-user-agent limit
  are decided by one writer at a time (two messages with one topic never both survive).
- A message can never outlive its subscription, even when a push and an unregister
  race: the insert's count trigger updates the subscription's counter (waiting for an
  uncommitted unregister) and refuses the write if the row is gone, and a trigger
  deletes a subscription's messages with it (schema 8; before, a foreign key ON DELETE
  CASCADE, whose check ran once per inserted message).
- Deleting a message or an expired batch and queueing its receipt is one statement
  (`DELETE ... RETURNING` feeding an `INSERT`), so two nodes sweeping at once cannot
  both emit a receipt for the same message.

Every hot query is an index look-up: messages by (uaid, seq) and by primary key
(uaid, message_id), expiry by expires_at, receipts by (receipt_id, seq). Schema
migrations run at start under an advisory lock, so nodes starting together apply
them once. Connection failures become `StoreUnavailable` (the service answers 503).

Five files: the schema and statements (`postgres_schema.py`), the connection pool
(`postgres_pool.py`), group commit of pushes, deletions and final statuses
(`postgres_commit.py`), the checks of pushes written before they are stored, read
together (`postgres_checks.py`), and the store's operations, here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import asyncpg

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
from tidings.service.store.postgres_checks import PostgresChecks
from tidings.service.store.postgres_commit import ACK_DELAY, MAX_WRITERS, PostgresGroupCommit
from tidings.service.store.postgres_pool import PostgresPool
from tidings.service.store.postgres_schema import (
    _BYTES_FULL,
    _DELETE_EXPIRED,
    _DELETE_MESSAGES,
    _DELETE_STALE_RECEIPT_SUBSCRIPTIONS,
    _DELETE_STALE_USER_AGENTS,
    _DELETE_TOPIC,
    _GONE,
    _INSERT_RECEIPTS,
    _MARK_DELIVERED,
    _MIGRATIONS,
    _REPLACED_TOPIC_STATUSES,
    _SELECT_PENDING,
    _SELECT_STATUS,
    _STORE_FULL,
    _SUBSCRIPTION_FULL,
    _TOO_MANY_SUBSCRIPTIONS,
    _USER_AGENT_FULL,
    EXPIRY_BATCH,
    SCHEMA_VERSION,
    _message_from_row,
)

_FOREIGN_KEY_VIOLATION = "23503"  # schema 7 and before: a subscription deleted meanwhile

# Imported from here before the schema and the pool had files of their own.
__all__ = ["EXPIRY_BATCH", "SCHEMA_VERSION", "_MIGRATIONS", "PostgresStore", "store_from_url"]


class PostgresStore(PostgresPool):
    """`Store` on PostgreSQL, with a connection pool shared by the node's tasks.

    Pushes and message deletions go through group commit (`postgres_commit.py`) unless
    `group_commit` is False (each its own transaction, as before: for comparison).
    """

    def __init__(
        self,
        dsn: str,
        *,
        min_connections: int = 1,
        max_connections: int = 10,
        timeout: float = 5.0,
        group_commit: bool = True,
        group_writers: int = MAX_WRITERS,
        ack_delay: float = ACK_DELAY,
    ) -> None:
        super().__init__(
            dsn, min_connections=min_connections, max_connections=max_connections, timeout=timeout
        )
        self._commits: PostgresGroupCommit | None = None
        self._checks = PostgresChecks(self._run)
        self._group_checks = group_commit
        if group_commit:
            self._commits = PostgresGroupCommit(
                self._run,
                push_alone=self._store_message_alone,
                push_refused=_push_refused,
                delete_statement=_DELETE_MESSAGES,
                delete_rows=_deleted_in_order,
                now=time.time,
                max_writers=group_writers,
                ack_delay=ack_delay,
            )

    async def close(self) -> None:
        await self._checks.drain()
        if self._commits is not None:
            await self._commits.drain()  # every queued write answered first
        await super().close()

    # Metadata -----------------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        value = await self._run(
            lambda conn: conn.fetchval("SELECT value FROM meta WHERE key = $1", key)
        )
        return None if value is None else str(value)

    async def set_meta(self, key: str, value: str) -> None:
        await self._run(
            lambda conn: conn.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                key,
                value,
            )
        )

    # Broadcasts -----------------------------------------------------------------------

    async def list_broadcasts(self) -> dict[str, str]:
        rows = await self._run(
            lambda conn: conn.fetch("SELECT broadcast_id, version FROM broadcasts")
        )
        return {str(row[0]): str(row[1]) for row in rows}

    async def set_broadcast(self, broadcast_id: str, version: str, *, max_broadcasts: int) -> bool:
        async def write(conn: asyncpg.Connection) -> bool:
            async with conn.transaction():
                # One writer at a time: the count and the insert cannot race.
                await conn.execute("LOCK TABLE broadcasts IN SHARE ROW EXCLUSIVE MODE")
                status = await conn.execute(
                    "INSERT INTO broadcasts (broadcast_id, version) SELECT $1, $2"
                    " WHERE EXISTS (SELECT 1 FROM broadcasts WHERE broadcast_id = $1)"
                    " OR (SELECT count(*) FROM broadcasts) < $3"
                    " ON CONFLICT (broadcast_id) DO UPDATE SET version = excluded.version",
                    broadcast_id,
                    version,
                    max_broadcasts,
                )
            return bool(status != "INSERT 0 0")

        return await self._run(write)

    async def delete_broadcast(self, broadcast_id: str) -> bool:
        status = await self._run(
            lambda conn: conn.execute(
                "DELETE FROM broadcasts WHERE broadcast_id = $1", broadcast_id
            )
        )
        return bool(status != "DELETE 0")

    # User agents ----------------------------------------------------------------------

    async def has_user_agent(self, uaid: str) -> bool:
        row = await self._run(
            lambda conn: conn.fetchval("SELECT 1 FROM user_agents WHERE uaid = $1", uaid)
        )
        return row is not None

    async def add_user_agent(self, uaid: str, now: float) -> None:
        await self._run(
            lambda conn: conn.execute(
                "INSERT INTO user_agents (uaid, created_at, last_seen) VALUES ($1, $2, $2)"
                " ON CONFLICT (uaid) DO UPDATE SET last_seen = excluded.last_seen",
                uaid,
                now,
            )
        )

    async def touch_user_agent(self, uaid: str, now: float) -> bool:
        # The UPDATE writes only when the last record is old; the SELECT sees the row
        # as it was before the statement: it exists either way.
        found = await self._run(
            lambda conn: conn.fetchval(
                "WITH touched AS (UPDATE user_agents SET last_seen = $2"
                " WHERE uaid = $1 AND last_seen < $3 RETURNING 1)"
                " SELECT EXISTS (SELECT 1 FROM user_agents WHERE uaid = $1)",
                uaid,
                now,
                now - SEEN_RESOLUTION,
            )
        )
        return bool(found)

    async def touch_user_agents(self, uaids: Sequence[str], now: float) -> None:
        await self._run(
            lambda conn: conn.execute(
                "UPDATE user_agents SET last_seen = $2 WHERE uaid = ANY($1::text[])"
                " AND last_seen < $3",
                list(uaids),
                now,
                now - SEEN_RESOLUTION,
            )
        )

    async def delete_stale_user_agents(self, seen_before: float, limit: int) -> int:
        removed = await self._run(
            lambda conn: conn.fetchval(_DELETE_STALE_USER_AGENTS, seen_before, limit)
        )
        return int(removed)

    async def delete_user_agent(self, uaid: str) -> int:
        async def write(conn: asyncpg.Connection) -> int:
            async with conn.transaction():
                # Messages go with their subscriptions (their delete trigger).
                count = await conn.fetchval(
                    "WITH gone AS (DELETE FROM subscriptions WHERE uaid = $1 RETURNING 1)"
                    " SELECT count(*) FROM gone",
                    uaid,
                )
                await conn.execute("DELETE FROM user_agents WHERE uaid = $1", uaid)
                await conn.execute("DELETE FROM user_agent_usage WHERE uaid = $1", uaid)
            return int(count)

        return await self._run(write)

    # Subscriptions --------------------------------------------------------------------

    async def add_subscription(
        self, record: SubscriptionRecord, *, max_per_user_agent: int | None = None
    ) -> SubscriptionRecord:
        # Insert, or return the row that won, under the user agent's lock: race-free
        # across nodes, the cap included.
        async def write(conn: asyncpg.Connection) -> asyncpg.Record:
            try:
                return await conn.fetchrow(
                    "SELECT vapid_hash, created_at FROM tidings_add_subscription"
                    "($1, $2, $3, $4, $5)",
                    record.uaid,
                    record.channel_id,
                    record.vapid_hash,
                    record.created_at,
                    max_per_user_agent,
                )
            except asyncpg.exceptions.PostgresError as exc:
                if getattr(exc, "sqlstate", None) == _TOO_MANY_SUBSCRIPTIONS:
                    raise TooManySubscriptions(record.uaid) from None
                raise

        row = await self._run(write)
        stored_hash = None if row["vapid_hash"] is None else bytes(row["vapid_hash"])
        return SubscriptionRecord(record.uaid, record.channel_id, stored_hash, row["created_at"])

    async def get_subscription(self, uaid: str, channel_id: str) -> SubscriptionRecord | None:
        row = await self._run(
            lambda conn: conn.fetchrow(
                "SELECT vapid_hash, created_at FROM subscriptions"
                " WHERE uaid = $1 AND channel_id = $2",
                uaid,
                channel_id,
            )
        )
        if row is None:
            return None
        stored_hash = None if row["vapid_hash"] is None else bytes(row["vapid_hash"])
        return SubscriptionRecord(uaid, channel_id, stored_hash, row["created_at"])

    async def delete_subscription(self, uaid: str, channel_id: str) -> bool:
        status = await self._run(
            lambda conn: conn.execute(
                "DELETE FROM subscriptions WHERE uaid = $1 AND channel_id = $2",
                uaid,
                channel_id,
            )
        )
        return str(status) != "DELETE 0"

    async def list_subscriptions(self, uaid: str) -> list[SubscriptionRecord]:
        rows = await self._run(
            lambda conn: conn.fetch(
                "SELECT channel_id, vapid_hash, created_at FROM subscriptions WHERE uaid = $1"
                " ORDER BY created_at",
                uaid,
            )
        )
        return [
            SubscriptionRecord(
                uaid,
                row["channel_id"],
                None if row["vapid_hash"] is None else bytes(row["vapid_hash"]),
                row["created_at"],
            )
            for row in rows
        ]

    async def count_subscriptions(self, uaid: str) -> int:
        count = await self._run(
            lambda conn: conn.fetchval("SELECT count(*) FROM subscriptions WHERE uaid = $1", uaid)
        )
        return int(count)

    # Messages -------------------------------------------------------------------------

    async def store_message(self, message: StoredMessage, *, quota: MessageQuota) -> list[str]:
        if self._commits is None:
            return await self._store_message_alone(message, quota)
        return await self._commits.store_message(message, quota)

    async def _store_message_alone(self, message: StoredMessage, quota: MessageQuota) -> list[str]:
        """One push, its own transaction (without group commit, or retried alone)."""

        async def write(conn: asyncpg.Connection) -> list[str]:
            try:
                replaced = await conn.fetchval(
                    "SELECT tidings_store_message($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,"
                    " $11, $12, $13, $14, $15, $16)",
                    *message_columns(message),
                    quota.per_subscription,
                    quota.per_user_agent,
                    quota.bytes_per_user_agent,
                    quota.stored_messages,
                    message.vapid_hash,
                )
            except asyncpg.exceptions.PostgresError as exc:
                code = getattr(exc, "sqlstate", None)
                refused = _push_refused(code or "", message, quota)
                if refused is not None:
                    raise refused from None
                raise
            return list(replaced)

        return await self._run(write)

    async def check_message(self, message: StoredMessage, *, quota: MessageQuota) -> bool:
        # A read, no lock and no transaction of its own (the insert checks again), made
        # with the other pushes' checks of the moment (postgres_checks.py).
        if self._group_checks:
            if self._checks.full():
                return False  # checks are this far behind: the push is stored first
            code = await self._checks.check(message, quota)
        else:
            (code,) = await self._checks.read([(message, quota)])
        if code is None:
            return True
        refused = _push_refused(code, message, quota)
        assert refused is not None, code  # one of tidings_push_one's codes
        raise refused

    async def replace_topic(self, uaid: str, channel_id: str, topic: str, at: float) -> list[str]:
        async def write(conn: asyncpg.Connection) -> list[str]:
            async with conn.transaction():
                # The lock tidings_store_message takes: a push of the topic cannot race it.
                await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", uaid)
                await conn.execute(_REPLACED_TOPIC_STATUSES, uaid, channel_id, topic, at)
                rows = await conn.fetch(_DELETE_TOPIC, uaid, channel_id, topic)
            return [row["message_id"] for row in rows]

        return await self._run(write)

    async def pending_messages(self, uaid: str, now: float, limit: int) -> list[StoredMessage]:
        rows = await self._run(
            lambda conn: conn.fetch(
                _SELECT_PENDING,
                uaid,
                now,
                limit,
            )
        )
        return [_message_from_row(row) for row in rows]

    async def mark_delivered(self, uaid: str, message_id: str) -> None:
        await self._run(
            lambda conn: conn.execute(
                "UPDATE messages SET delivered = true WHERE uaid = $1 AND message_id = $2",
                uaid,
                message_id,
            )
        )

    async def delete_message(self, uaid: str, message_id: str) -> StoredMessage | None:
        return (await self._delete_messages([(uaid, message_id)], acknowledged=False))[0]

    async def delete_messages(self, keys: Sequence[tuple[str, str]]) -> list[StoredMessage | None]:
        return await self._delete_messages(keys, acknowledged=True)

    async def _delete_messages(
        self, keys: Sequence[tuple[str, str]], *, acknowledged: bool
    ) -> list[StoredMessage | None]:
        """One statement for both (the public methods are timed under their own names)."""
        if not keys:
            return []
        if self._commits is not None:
            return await self._commits.delete_messages(keys, acknowledged)
        rows = await self._run(
            lambda conn: conn.fetch(
                _DELETE_MESSAGES,
                [k[0] for k in keys],
                [k[1] for k in keys],
                time.time(),
                [acknowledged] * len(keys),
            )
        )
        return _deleted_in_order(rows, keys)

    async def delete_expired(self, now: float) -> int:
        total = 0
        while True:
            removed = await self._run(
                lambda conn: conn.fetchval(_DELETE_EXPIRED, now, EXPIRY_BATCH)
            )
            total += int(removed)
            if removed < EXPIRY_BATCH:
                return total

    # Message statuses ---------------------------------------------------------------

    async def add_message_status(self, status: MessageStatus) -> None:
        if self._commits is not None:  # concurrent ones share a commit
            await self._commits.add_status(status)
            return
        await self._run(
            lambda conn: conn.execute(
                "INSERT INTO message_status (message_id, vapid_hash, state, ttl, created_at,"
                " expires_at, delivered_via, delivered_at, final_at, ends_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
                *status_columns(status),
            )
        )

    async def mark_statuses_delivered(
        self, deliveries: Sequence[tuple[str, str, str, float]]
    ) -> None:
        if not deliveries:
            return
        await self._run(
            lambda conn: conn.execute(
                _MARK_DELIVERED,
                [d[0] for d in deliveries],
                [d[1] for d in deliveries],
                [d[2] for d in deliveries],
                [d[3] for d in deliveries],
            )
        )

    async def get_message_status(self, uaid: str, message_id: str) -> MessageStatus | None:
        row = await self._run(lambda conn: conn.fetchrow(_SELECT_STATUS, uaid, message_id))
        if row is None:
            return None
        return MessageStatus(row[0], bytes(row[1]), *row[2:])

    async def delete_old_statuses(self, ended_before: float, limit: int) -> int:
        status = await self._run(
            lambda conn: conn.execute(
                "DELETE FROM message_status WHERE message_id IN (SELECT message_id"
                " FROM message_status WHERE ends_at < $1 ORDER BY ends_at LIMIT $2"
                " FOR UPDATE SKIP LOCKED)",
                ended_before,
                limit,
            )
        )
        return int(status.split()[-1])

    # Receipts -------------------------------------------------------------------------

    async def add_receipt_subscription(self, receipt_id: str, now: float) -> None:
        await self._run(
            lambda conn: conn.execute(
                "INSERT INTO receipt_subscriptions (receipt_id, created_at) VALUES ($1, $2)"
                " ON CONFLICT DO NOTHING",
                receipt_id,
                now,
            )
        )

    async def has_receipt_subscription(self, receipt_id: str) -> bool:
        row = await self._run(
            lambda conn: conn.fetchval(
                "SELECT 1 FROM receipt_subscriptions WHERE receipt_id = $1", receipt_id
            )
        )
        return row is not None

    async def add_receipt(self, receipt: Receipt) -> None:
        await self.add_receipts([receipt])

    async def add_receipts(self, receipts: Sequence[Receipt]) -> None:
        if not receipts:
            return
        await self._run(
            lambda conn: conn.execute(
                _INSERT_RECEIPTS,
                [r.receipt_id for r in receipts],
                [r.uaid for r in receipts],
                [r.channel_id for r in receipts],
                [r.message_id for r in receipts],
                [r.status for r in receipts],
                [r.created_at for r in receipts],
            )
        )

    async def pending_receipts(self, receipt_id: str, limit: int) -> list[Receipt]:
        rows = await self._run(
            lambda conn: conn.fetch(
                "SELECT seq, receipt_id, uaid, channel_id, message_id, status, created_at"
                " FROM receipts WHERE receipt_id = $1 ORDER BY seq LIMIT $2",
                receipt_id,
                limit,
            )
        )
        return [Receipt(*row) for row in rows]

    async def use_receipt_subscription(self, receipt_id: str, now: float) -> bool:
        status = await self._run(
            lambda conn: conn.execute(
                "UPDATE receipt_subscriptions SET created_at = $1 WHERE receipt_id = $2",
                now,
                receipt_id,
            )
        )
        return bool(status != "UPDATE 0")

    async def delete_stale_receipt_subscriptions(self, unused_since: float) -> int:
        status = await self._run(
            lambda conn: conn.execute(_DELETE_STALE_RECEIPT_SUBSCRIPTIONS, unused_since)
        )
        return int(status.split()[-1])

    async def delete_receipt_subscription(self, receipt_id: str) -> bool:
        async def delete(conn: Any) -> bool:
            async with conn.transaction():
                await conn.execute("DELETE FROM receipts WHERE receipt_id = $1", receipt_id)
                status = await conn.execute(
                    "DELETE FROM receipt_subscriptions WHERE receipt_id = $1", receipt_id
                )
            return str(status).endswith(" 1")

        return bool(await self._run(delete))

    async def delete_receipt(self, seq: int) -> None:
        await self._run(lambda conn: conn.execute("DELETE FROM receipts WHERE seq = $1", seq))

    async def count_messages(self) -> int:
        # The trigger-kept count (see migration 2), not a scan of every message.
        count = await self._run(lambda conn: conn.fetchval("SELECT sum(n) FROM message_counts"))
        return int(count)

    async def count_all_subscriptions(self) -> int:
        count = await self._run(lambda conn: conn.fetchval("SELECT count(*) FROM subscriptions"))
        return int(count)


def _push_refused(code: str, message: StoredMessage, quota: MessageQuota) -> BaseException | None:
    """The error for a push that tidings_store_message refused with SQLSTATE `code`;
    None if `code` is not one of its refusals."""
    if code == _SUBSCRIPTION_FULL:
        return TooManyMessages("subscription", quota.per_subscription)
    if code == _USER_AGENT_FULL:
        return TooManyMessages("user_agent", quota.per_user_agent)
    if code == _BYTES_FULL:
        return TooManyMessages("bytes", quota.bytes_per_user_agent)
    if code == _STORE_FULL:
        return StoreFull(f"the store holds its maximum of {quota.stored_messages} messages")
    if code in (_GONE, _FOREIGN_KEY_VIOLATION):  # gone, or an unregister raced
        return SubscriptionGone(message.channel_id)
    return None


def _deleted_in_order(
    rows: list[asyncpg.Record], keys: Sequence[tuple[str, str]]
) -> list[StoredMessage | None]:
    """The deleted messages in the order of `keys`; a key named twice (the same ack
    repeated) finds its message the first time only."""
    deleted = {(row["uaid"], row["message_id"]): _message_from_row(row) for row in rows}
    return [deleted.pop(key, None) for key in keys]


def store_from_url(url: str) -> PostgresStore:
    """A PostgreSQL store for `postgresql://user@host/db?pool_max=20&timeout=5`.

    `pool_min`, `pool_max` (connections per node, default 1 and 10), `timeout`
    (seconds before a query or a connection attempt counts as unavailable, default 5)
    `group_commit` (`on`, the default, or `off`), `group_writers` (batches in flight
    at once, default 2) and `ack_delay` (seconds acknowledgements wait for a push's
    batch, default 0.01) are Tidings' own settings;
    other query parameters go to the server as usual.
    """
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    settings: dict[str, Any] = {}
    rest: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query):
        if name == "pool_min":
            settings["min_connections"] = int(value)
        elif name == "pool_max":
            settings["max_connections"] = int(value)
        elif name == "timeout":
            settings["timeout"] = float(value)
        elif name == "group_writers":
            settings["group_writers"] = int(value)
        elif name == "ack_delay":
            settings["ack_delay"] = float(value)
        elif name == "group_commit":
            settings["group_commit"] = value.lower() not in ("off", "0", "false", "no")
        else:
            rest.append((name, value))
    return PostgresStore(urlunsplit(parts._replace(query=urlencode(rest))), **settings)
