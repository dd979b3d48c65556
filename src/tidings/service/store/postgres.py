"""The scale-out store: PostgreSQL through `asyncpg`, shared by every node of a cluster.

The same rules as the SQLite store, made safe for many nodes writing at once:

- `store_message` is one call of a server-side function that takes a transaction-level
  advisory lock on the user agent, so topic replacement and the per-user-agent limit
  are decided by one writer at a time (two messages with one topic never both survive).
- Messages reference their subscription with ON DELETE CASCADE: a message can never
  outlive its subscription, even when a push and an unregister race.
- Deleting a message or an expired batch and queueing its receipt is one statement
  (`DELETE ... RETURNING` feeding an `INSERT`), so two nodes sweeping at once cannot
  both emit a receipt for the same message.

Every hot query is an index look-up: messages by (uaid, seq) and by primary key
(uaid, message_id), expiry by expires_at, receipts by (receipt_id, seq). Schema
migrations run at start under an advisory lock, so nodes starting together apply
them once. Connection failures become `StoreUnavailable` (the service answers 503).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg

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

SCHEMA_VERSION = 4

# SQLSTATEs raised by tidings_store_message and tidings_add_subscription (class "TD",
# user defined).
_GONE = "TD001"
_SUBSCRIPTION_FULL = "TD003"
_USER_AGENT_FULL = "TD004"
_BYTES_FULL = "TD005"
_STORE_FULL = "TD006"
_TOO_MANY_SUBSCRIPTIONS = "TD007"

# Any number works: it only has to be the same for every node of a cluster.
_MIGRATION_LOCK = 0x7469_6469_6E67  # "tiding"

# Constant SQL text shared by the versions of tidings_store_message (never user input).
# The start of tidings_store_message in every schema: one writer per user agent (its
# limits and topic replacement cannot race), the subscription must exist, then the
# message of the same topic goes.
_LOCK = """
        PERFORM pg_advisory_xact_lock(hashtextextended(p_uaid, 0));
        PERFORM 1 FROM subscriptions WHERE uaid = p_uaid AND channel_id = p_channel_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'subscription gone' USING ERRCODE = 'TD001';
        END IF;
"""
_REPLACE = """        IF p_topic IS NOT NULL THEN
            WITH gone AS (
                DELETE FROM messages
                WHERE uaid = p_uaid AND channel_id = p_channel_id AND topic = p_topic
                RETURNING message_id
            )
            SELECT coalesce(array_agg(message_id), '{}') INTO replaced FROM gone;
        END IF;
"""
_LOCK_AND_REPLACE = _LOCK + _REPLACE

# Its end: the insert, and the ids of the messages the topic replaced.
_INSERT_AND_RETURN = """
        INSERT INTO messages (uaid, message_id, channel_id, body, ttl, created_at,
                              expires_at, urgency, topic, headers, receipt_id)
        VALUES (p_uaid, p_message_id, p_channel_id, p_body, p_ttl, p_created_at,
                p_expires_at, p_urgency, p_topic, p_headers, p_receipt_id);
        RETURN replaced;
    END
    $$;
"""

# The parameters and the variables of tidings_store_message since schema 2.
_QUOTA_PARAMETERS = """\
        p_message_id text, p_uaid text, p_channel_id text, p_body bytea, p_ttl integer,
        p_created_at double precision, p_expires_at double precision, p_urgency text,
        p_topic text, p_headers text, p_receipt_id text, p_max_subscription integer,
        p_max_user_agent integer, p_max_bytes bigint, p_max_stored bigint"""
_DECLARE_COUNTS = """    ) RETURNS text[] LANGUAGE plpgsql AS $$
    DECLARE
        replaced text[] := '{}';
        in_channel bigint;
        stored bigint;
        stored_bytes bigint;
    BEGIN
"""

# The quota checks of tidings_store_message since schema 2.
_CHECK_QUOTAS = """        SELECT count(*) FILTER (WHERE channel_id = p_channel_id), count(*),
               coalesce(sum(octet_length(body)), 0)
        INTO in_channel, stored, stored_bytes
        FROM messages WHERE uaid = p_uaid AND expires_at > p_created_at;
        IF in_channel >= p_max_subscription THEN
            RAISE EXCEPTION 'subscription quota' USING ERRCODE = 'TD003';
        END IF;
        IF stored >= p_max_user_agent THEN
            RAISE EXCEPTION 'user agent quota' USING ERRCODE = 'TD004';
        END IF;
        IF stored_bytes + octet_length(p_body) > p_max_bytes THEN
            RAISE EXCEPTION 'user agent byte quota' USING ERRCODE = 'TD005';
        END IF;
        -- Near the ceiling, pushes take turns on one more lock (held to commit, as is
        -- their count's increment) and look again: exact. Far from it, none waits.
        IF (SELECT sum(n) FROM message_counts) >= p_max_stored - 1024 THEN
            PERFORM pg_advisory_xact_lock(7596132042353772902);
            IF (SELECT sum(n) FROM message_counts) >= p_max_stored THEN
                RAISE EXCEPTION 'store full' USING ERRCODE = 'TD006';
            END IF;
        END IF;
"""

# Schema 3: the signed messages a Topic replaces leave their final status.
_REPLACED_STATUSES = """        IF p_topic IS NOT NULL THEN
            INSERT INTO message_status
            SELECT message_id, vapid_hash, 'replaced', ttl, created_at, expires_at,
                   delivered_via, delivered_at, p_created_at, p_created_at
            FROM messages
            WHERE uaid = p_uaid AND channel_id = p_channel_id AND topic = p_topic
              AND vapid_hash IS NOT NULL
            ON CONFLICT DO NOTHING;
        END IF;
"""

# Schema 3's end of tidings_store_message: the key hash of a signed push goes in its
# row (its status while stored: no other write).
_INSERT_WITH_STATUS_AND_RETURN = """
        INSERT INTO messages (uaid, message_id, channel_id, body, ttl, created_at,
                              expires_at, urgency, topic, headers, receipt_id, vapid_hash)
        VALUES (p_uaid, p_message_id, p_channel_id, p_body, p_ttl, p_created_at,
                p_expires_at, p_urgency, p_topic, p_headers, p_receipt_id, p_vapid_hash);
        RETURN replaced;
    END
    $$;
"""

_MIGRATIONS: dict[int, str] = {
    1: "".join(
        (
            """
    CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL);
    CREATE TABLE user_agents (uaid text PRIMARY KEY, created_at double precision NOT NULL);
    CREATE TABLE subscriptions (
        uaid text NOT NULL,
        channel_id text NOT NULL,
        vapid_hash bytea,
        created_at double precision NOT NULL,
        PRIMARY KEY (uaid, channel_id)
    );
    CREATE TABLE messages (
        uaid text NOT NULL,
        message_id text NOT NULL,
        seq bigint GENERATED ALWAYS AS IDENTITY,
        channel_id text NOT NULL,
        topic text,
        urgency text NOT NULL,
        ttl integer NOT NULL,
        created_at double precision NOT NULL,
        expires_at double precision NOT NULL,
        headers text NOT NULL,
        body bytea NOT NULL,
        receipt_id text,
        delivered boolean NOT NULL DEFAULT false,
        PRIMARY KEY (uaid, message_id),
        FOREIGN KEY (uaid, channel_id) REFERENCES subscriptions ON DELETE CASCADE
    );
    CREATE INDEX messages_by_uaid ON messages (uaid, seq);
    CREATE INDEX messages_by_expiry ON messages (expires_at);
    CREATE UNIQUE INDEX messages_by_topic ON messages (uaid, channel_id, topic)
        WHERE topic IS NOT NULL;
    CREATE TABLE receipt_subscriptions (
        receipt_id text PRIMARY KEY,
        created_at double precision NOT NULL
    );
    CREATE TABLE receipts (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        receipt_id text NOT NULL,
        uaid text NOT NULL,
        channel_id text NOT NULL,
        message_id text NOT NULL,
        status integer NOT NULL,
        created_at double precision NOT NULL
    );
    CREATE INDEX receipts_by_subscription ON receipts (receipt_id, seq);

    -- The whole of store_message in one round trip and one transaction.
    CREATE FUNCTION tidings_store_message(
        p_message_id text, p_uaid text, p_channel_id text, p_body bytea, p_ttl integer,
        p_created_at double precision, p_expires_at double precision, p_urgency text,
        p_topic text, p_headers text, p_receipt_id text, p_max integer
    ) RETURNS text[] LANGUAGE plpgsql AS $$
    DECLARE
        replaced text[] := '{}';
        stored integer;
    BEGIN
""",
            _LOCK_AND_REPLACE,
            """        SELECT count(*) INTO stored FROM messages
        WHERE uaid = p_uaid AND expires_at > p_created_at;
        IF stored >= p_max THEN
            RAISE EXCEPTION 'too many messages' USING ERRCODE = 'TD002';
        END IF;
""",
            _INSERT_AND_RETURN,
        )
    ),
    # Quotas per subscription, per user agent (count and bytes) and for the whole store;
    # an atomic subscription cap; user agents expire when not seen for long.
    #
    # The whole store's message count is kept in 16 rows, the stripe of a message
    # chosen by its user agent, updated by statement triggers: no COUNT(*) per push,
    # and pushes of different user agents rarely wait on the same row (one counter row
    # would make every push of every node take turns). A push reads the sum of the
    # stripes (16 rows of one page). Within 1024 of the ceiling it also takes a global
    # advisory lock, held until its commit like its increment, and reads the sum again:
    # pushes near the ceiling take turns, so it is never passed, unless more than 1024
    # store transactions are in flight at once (more than the pools of all nodes).
    2: "".join(
        (
            """
    ALTER TABLE user_agents ADD COLUMN last_seen double precision NOT NULL DEFAULT 0;
    UPDATE user_agents SET last_seen = greatest(created_at, extract(epoch from now()));
    CREATE INDEX user_agents_by_last_seen ON user_agents (last_seen);

    CREATE TABLE message_counts (stripe integer PRIMARY KEY, n bigint NOT NULL);
    INSERT INTO message_counts (stripe, n) SELECT s, 0 FROM generate_series(0, 15) s;
    UPDATE message_counts c SET n = d.k FROM (
        SELECT hashtext(uaid) & 15 AS stripe, count(*) AS k FROM messages GROUP BY 1
    ) d WHERE c.stripe = d.stripe;

    CREATE FUNCTION tidings_count_messages() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        -- Stripes are locked in order, so two bulk deletes cannot deadlock.
        IF TG_OP = 'INSERT' THEN
            PERFORM 1 FROM message_counts WHERE stripe IN
                (SELECT DISTINCT hashtext(uaid) & 15 FROM new_rows)
                ORDER BY stripe FOR UPDATE;
            UPDATE message_counts c SET n = c.n + d.k FROM (
                SELECT hashtext(uaid) & 15 AS stripe, count(*) AS k FROM new_rows GROUP BY 1
            ) d WHERE c.stripe = d.stripe;
        ELSE
            PERFORM 1 FROM message_counts WHERE stripe IN
                (SELECT DISTINCT hashtext(uaid) & 15 FROM old_rows)
                ORDER BY stripe FOR UPDATE;
            UPDATE message_counts c SET n = c.n - d.k FROM (
                SELECT hashtext(uaid) & 15 AS stripe, count(*) AS k FROM old_rows GROUP BY 1
            ) d WHERE c.stripe = d.stripe;
        END IF;
        RETURN NULL;
    END
    $$;
    CREATE TRIGGER messages_counted_in AFTER INSERT ON messages
        REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION tidings_count_messages();
    CREATE TRIGGER messages_counted_out AFTER DELETE ON messages
        REFERENCING OLD TABLE AS old_rows
        FOR EACH STATEMENT EXECUTE FUNCTION tidings_count_messages();

    DROP FUNCTION tidings_store_message(text, text, text, bytea, integer, double precision,
        double precision, text, text, text, text, integer);
    CREATE FUNCTION tidings_store_message(
""",
            _QUOTA_PARAMETERS,
            "\n",
            _DECLARE_COUNTS,
            _LOCK_AND_REPLACE,
            _CHECK_QUOTAS,
            _INSERT_AND_RETURN,
            """
    -- The count and the insert under the user agent's lock: the cap cannot be raced.
    CREATE FUNCTION tidings_add_subscription(
        p_uaid text, p_channel_id text, p_vapid_hash bytea, p_created_at double precision,
        p_max integer
    ) RETURNS subscriptions LANGUAGE plpgsql AS $$
    DECLARE
        found_row subscriptions;
    BEGIN
        PERFORM pg_advisory_xact_lock(hashtextextended(p_uaid, 0));
        SELECT * INTO found_row FROM subscriptions
        WHERE uaid = p_uaid AND channel_id = p_channel_id;
        IF FOUND THEN
            RETURN found_row;
        END IF;
        IF p_max IS NOT NULL
           AND (SELECT count(*) FROM subscriptions WHERE uaid = p_uaid) >= p_max THEN
            RAISE EXCEPTION 'too many subscriptions' USING ERRCODE = 'TD007';
        END IF;
        INSERT INTO subscriptions (uaid, channel_id, vapid_hash, created_at)
        VALUES (p_uaid, p_channel_id, p_vapid_hash, p_created_at)
        RETURNING * INTO found_row;
        RETURN found_row;
    END
    $$;
    """,
        )
    ),
    3: """
    CREATE TABLE broadcasts (broadcast_id text PRIMARY KEY, version text NOT NULL);
    """,
    # The status of each VAPID-signed push for its sender (see the SQLite store): in its
    # message's row while stored, then a row of message_status.
    4: "".join(
        (
            """
    ALTER TABLE messages ADD COLUMN vapid_hash bytea;
    ALTER TABLE messages ADD COLUMN delivered_via text;
    ALTER TABLE messages ADD COLUMN delivered_at double precision;
    CREATE TABLE message_status (
        message_id text PRIMARY KEY,
        vapid_hash bytea NOT NULL,
        state text NOT NULL,
        ttl integer NOT NULL,
        created_at double precision NOT NULL,
        expires_at double precision NOT NULL,
        delivered_via text,
        delivered_at double precision,
        final_at double precision,
        ends_at double precision NOT NULL
    );
    CREATE INDEX message_status_by_end ON message_status (ends_at);

    DROP FUNCTION tidings_store_message(text, text, text, bytea, integer, double precision,
        double precision, text, text, text, text, integer, integer, bigint, bigint);
    CREATE FUNCTION tidings_store_message(
""",
            _QUOTA_PARAMETERS,
            ",\n        p_vapid_hash bytea\n",
            _DECLARE_COUNTS,
            _LOCK,
            _REPLACED_STATUSES,
            _REPLACE,
            _CHECK_QUOTAS,
            _INSERT_WITH_STATUS_AND_RETURN,
        )
    ),
}

# User agents not seen since $1, at most $2, with their subscriptions (and so their
# messages); SKIP LOCKED lets two nodes sweeping at once share the work.
_DELETE_STALE_USER_AGENTS = """
WITH stale AS (
    SELECT uaid FROM user_agents WHERE last_seen < $1
    ORDER BY last_seen LIMIT $2 FOR UPDATE SKIP LOCKED
), subscriptions_gone AS (
    DELETE FROM subscriptions WHERE uaid IN (SELECT uaid FROM stale)
), gone AS (
    DELETE FROM user_agents WHERE uaid IN (SELECT uaid FROM stale) RETURNING 1
)
SELECT count(*) FROM gone
"""

_SELECT_PENDING = """
SELECT message_id, uaid, channel_id, body, ttl, created_at, expires_at, urgency, topic,
       headers, receipt_id
FROM messages WHERE uaid = $1 AND expires_at > $2 ORDER BY seq LIMIT $3
"""

# Receipt subscriptions nothing can use any more (see the SQLite store).
_DELETE_STALE_RECEIPT_SUBSCRIPTIONS = """
DELETE FROM receipt_subscriptions rs WHERE rs.created_at < $1
  AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.receipt_id = rs.receipt_id)
  AND NOT EXISTS (SELECT 1 FROM receipts r WHERE r.receipt_id = rs.receipt_id)
"""

# Acknowledged or cancelled messages, one or the acknowledgements of one event-loop
# turn, in one statement (one round trip).
_DELETE_MESSAGES = """
WITH keys AS (
    SELECT * FROM unnest($1::text[], $2::text[]) AS k(uaid, message_id)
), gone AS (
    DELETE FROM messages m USING keys k
    WHERE m.uaid = k.uaid AND m.message_id = k.message_id
    RETURNING m.message_id, m.uaid, m.channel_id, m.body, m.ttl, m.created_at,
              m.expires_at, m.urgency, m.topic, m.headers, m.receipt_id, m.delivered,
              m.vapid_hash, m.delivered_via, m.delivered_at
), status AS (
    -- $4: WebSocket acknowledgements (a delivery over WebSocket too); otherwise a
    -- DELETE of the message resource: acknowledged if it was delivered, else the
    -- sender's cancellation.
    INSERT INTO message_status
    SELECT message_id, vapid_hash,
           CASE WHEN $4 OR delivered_at IS NOT NULL THEN 'acknowledged' ELSE 'deleted' END,
           ttl, created_at, expires_at,
           CASE WHEN $4 THEN coalesce(delivered_via, 'websocket') ELSE delivered_via END,
           CASE WHEN $4 THEN coalesce(delivered_at, $3) ELSE delivered_at END, $3, $3
    FROM gone WHERE vapid_hash IS NOT NULL
    ON CONFLICT DO NOTHING
), receipt AS (
    INSERT INTO receipts (receipt_id, uaid, channel_id, message_id, status, created_at)
    SELECT receipt_id, uaid, channel_id, message_id, 204, $3 FROM gone
    WHERE receipt_id IS NOT NULL AND delivered
      AND receipt_id IN (SELECT receipt_id FROM receipt_subscriptions)
)
SELECT * FROM gone
"""

# A bounded batch, so a large backlog never becomes one huge transaction; SKIP LOCKED
# lets two nodes sweeping at once share the work instead of waiting on each other.
EXPIRY_BATCH = 5000
_DELETE_EXPIRED = """
WITH gone AS (
    DELETE FROM messages WHERE (uaid, message_id) IN (
        SELECT uaid, message_id FROM messages WHERE expires_at <= $1
        ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED
    )
    RETURNING receipt_id, uaid, channel_id, message_id, vapid_hash, ttl, created_at,
              expires_at, delivered_via, delivered_at
), status AS (
    INSERT INTO message_status
    SELECT message_id, vapid_hash, 'expired', ttl, created_at, expires_at, delivered_via,
           delivered_at, $1, $1
    FROM gone WHERE vapid_hash IS NOT NULL
    ON CONFLICT DO NOTHING
), receipt AS (
    INSERT INTO receipts (receipt_id, uaid, channel_id, message_id, status, created_at)
    SELECT receipt_id, uaid, channel_id, message_id, 410, $1 FROM gone
    WHERE receipt_id IS NOT NULL
      AND receipt_id IN (SELECT receipt_id FROM receipt_subscriptions)
)
SELECT count(*) FROM gone
"""

# Deliveries (uaid, message id, via, at): of stored messages in their rows, of TTL-0
# pushes (recorded as dropped before they were offered) in their statuses.
_MARK_DELIVERED = """
WITH d AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[])
        AS d(uaid, message_id, via, at)
), stored AS (
    UPDATE messages m SET delivered_via = d.via, delivered_at = d.at FROM d
    WHERE m.uaid = d.uaid AND m.message_id = d.message_id AND m.delivered_at IS NULL
)
UPDATE message_status s SET delivered_via = d.via, delivered_at = d.at, state = 'delivered'
FROM d WHERE s.message_id = d.message_id AND s.state = 'expired' AND s.ttl = 0
  AND s.delivered_at IS NULL
"""

# A status: ended (message_status), or its message's row while it is stored.
_SELECT_STATUS = """
SELECT message_id, vapid_hash, state, ttl, created_at, expires_at, delivered_via,
       delivered_at, final_at FROM message_status WHERE message_id = $2
UNION ALL
SELECT message_id, vapid_hash,
       CASE WHEN delivered_at IS NULL THEN 'stored' ELSE 'delivered' END, ttl,
       created_at, expires_at, delivered_via, delivered_at, NULL FROM messages
WHERE uaid = $1 AND message_id = $2 AND vapid_hash IS NOT NULL
LIMIT 1
"""

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


def _message_from_row(row: asyncpg.Record) -> StoredMessage:
    return StoredMessage(
        message_id=row["message_id"],
        uaid=row["uaid"],
        channel_id=row["channel_id"],
        body=bytes(row["body"]),
        ttl=row["ttl"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        urgency=row["urgency"],
        topic=row["topic"],
        headers=decode_headers(row["headers"]),
        receipt_id=row["receipt_id"],
    )


class PostgresStore:
    """`Store` on PostgreSQL, with a connection pool shared by the node's tasks."""

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
            raise StoreUnavailable(f"PostgreSQL: {exc or type(exc).__name__}") from exc

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            # Held until commit: nodes starting together migrate one after the other.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS tidings_schema (version integer NOT NULL)"
            )
            version = await conn.fetchval("SELECT max(version) FROM tidings_schema") or 0
            for target in sorted(v for v in _MIGRATIONS if v > version):
                await conn.execute(_MIGRATIONS[target])
                await conn.execute("INSERT INTO tidings_schema (version) VALUES ($1)", target)

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self._min,
                max_size=self._max,
                timeout=self._timeout,
                command_timeout=self._timeout,
            )
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
        await self._run(self._migrate)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), self._timeout)
            except _UNAVAILABLE:
                pool.terminate()

    async def ping(self) -> None:
        await self._run(lambda conn: conn.fetchval("SELECT 1"))

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
                # Messages go with their subscriptions (ON DELETE CASCADE).
                count = await conn.fetchval(
                    "WITH gone AS (DELETE FROM subscriptions WHERE uaid = $1 RETURNING 1)"
                    " SELECT count(*) FROM gone",
                    uaid,
                )
                await conn.execute("DELETE FROM user_agents WHERE uaid = $1", uaid)
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
                if code == _GONE:
                    raise SubscriptionGone(message.channel_id) from None
                if code == _SUBSCRIPTION_FULL:
                    raise TooManyMessages("subscription", quota.per_subscription) from None
                if code == _USER_AGENT_FULL:
                    raise TooManyMessages("user_agent", quota.per_user_agent) from None
                if code == _BYTES_FULL:
                    raise TooManyMessages("bytes", quota.bytes_per_user_agent) from None
                if code == _STORE_FULL:
                    raise StoreFull(
                        f"the store holds its maximum of {quota.stored_messages} messages"
                    ) from None
                if isinstance(exc, asyncpg.exceptions.ForeignKeyViolationError):
                    raise SubscriptionGone(message.channel_id) from None  # unregister raced
                raise
            return list(replaced)

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
        rows = await self._run(
            lambda conn: conn.fetch(
                _DELETE_MESSAGES,
                [k[0] for k in keys],
                [k[1] for k in keys],
                time.time(),
                acknowledged,
            )
        )
        deleted = {(row["uaid"], row["message_id"]): _message_from_row(row) for row in rows}
        # A key named twice (the same ack repeated) finds its message the first time only.
        return [deleted.pop(key, None) for key in keys]

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


def store_from_url(url: str) -> PostgresStore:
    """A PostgreSQL store for `postgresql://user@host/db?pool_max=20&timeout=5`.

    `pool_min`, `pool_max` (connections per node, default 1 and 10) and `timeout`
    (seconds before a query or a connection attempt counts as unavailable, default 5)
    are Tidings' own settings; other query parameters go to the server as usual.
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
        else:
            rest.append((name, value))
    return PostgresStore(urlunsplit(parts._replace(query=urlencode(rest))), **settings)
