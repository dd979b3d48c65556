"""The SQLite store's schema: its migrations and the statements of its hot path.

The store (`sqlite.py`) runs these; the schema version is SQLite's `user_version`.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

from tidings.service.store.base import StoredMessage, decode_headers

SCHEMA_VERSION = 6

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
    # What each user agent (`user_agent_usage`: messages, body bytes) and each
    # subscription (`subscriptions.stored`) has stored, kept by triggers like the
    # store's count, so that a push's quota check reads two rows instead of every
    # stored message of its user agent. They count every stored message, expired or
    # not until the sweep removes it: under the quotas a push passes at once; at or
    # over one the exact count (unexpired messages, as before) decides.
    6: """
    CREATE TABLE IF NOT EXISTS user_agent_usage (
        uaid TEXT PRIMARY KEY,
        stored INTEGER NOT NULL,
        stored_bytes INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO user_agent_usage (uaid, stored, stored_bytes)
        SELECT uaid, count(*), sum(length(body)) FROM messages GROUP BY uaid;
    ALTER TABLE subscriptions ADD COLUMN stored INTEGER NOT NULL DEFAULT 0;
    UPDATE subscriptions SET stored = counted.n
        FROM (SELECT uaid, channel_id, count(*) AS n FROM messages GROUP BY uaid, channel_id)
        AS counted
        WHERE subscriptions.uaid = counted.uaid AND subscriptions.channel_id = counted.channel_id;
    CREATE TRIGGER IF NOT EXISTS messages_used_in AFTER INSERT ON messages BEGIN
        INSERT INTO user_agent_usage (uaid, stored, stored_bytes)
            VALUES (new.uaid, 1, length(new.body))
            ON CONFLICT (uaid) DO UPDATE SET stored = stored + 1,
                stored_bytes = stored_bytes + excluded.stored_bytes;
        UPDATE subscriptions SET stored = stored + 1
            WHERE uaid = new.uaid AND channel_id = new.channel_id;
    END;
    -- A user agent with nothing stored keeps no row (gone user agents leave none).
    CREATE TRIGGER IF NOT EXISTS messages_used_out AFTER DELETE ON messages BEGIN
        UPDATE user_agent_usage SET stored = stored - 1,
            stored_bytes = stored_bytes - length(old.body) WHERE uaid = old.uaid;
        DELETE FROM user_agent_usage WHERE uaid = old.uaid AND stored <= 0;
        UPDATE subscriptions SET stored = stored - 1
            WHERE uaid = old.uaid AND channel_id = old.channel_id;
    END;
    """,
}

# Column order shared by the statements below and `_message_from_row`. A push is
# inserted only while its subscription exists, its subscription and its user agent are
# under their quotas of unexpired messages (count and bytes) and the store under its
# ceiling. The quotas are read from the usage counters (two rows); only when those say
# a quota may be reached are the user agent's unexpired messages counted (one index
# range, at most its quota long): the OR is evaluated left to right.
_INSERT_CHECKED_MESSAGE = (
    "INSERT INTO messages (message_id, uaid, channel_id, body, ttl, created_at, expires_at,"
    " urgency, topic, headers, receipt_id, vapid_hash)"
    " SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12"
    " WHERE EXISTS (SELECT 1 FROM subscriptions WHERE uaid = ?2 AND channel_id = ?3)"
    " AND (((SELECT stored < ?13 FROM subscriptions WHERE uaid = ?2 AND channel_id = ?3)"
    " AND (SELECT coalesce(max(stored), 0) < ?14"
    " AND coalesce(max(stored_bytes), 0) + length(?4) <= ?15"
    " FROM user_agent_usage WHERE uaid = ?2))"
    " OR (SELECT coalesce(sum(channel_id = ?3), 0) < ?13 AND count(*) < ?14"
    " AND coalesce(sum(length(body)), 0) + length(?4) <= ?15"
    " FROM messages WHERE uaid = ?2 AND expires_at > ?6))"
    " AND (SELECT value FROM counters WHERE name = 'messages') < ?16"
)
# The insert's checks alone: a row when the push would be stored. Its parameters are
# those the checks read, renumbered from 1 (`_CHECK_PARAMETERS`: the insert's number of
# each), the body's length bound for `length(body)`: binding the insert's sixteen, body
# and headers included, cost a bind each.
_CHECK_PARAMETERS = (2, 3, 4, 6, 13, 14, 15, 16)  # uaid, channel, body length, created, quotas
_CHECK_MESSAGE = re.sub(
    r"\?(\d+)",
    lambda number: f"?{_CHECK_PARAMETERS.index(int(number[1])) + 1}",
    "SELECT 1 WHERE" + _INSERT_CHECKED_MESSAGE.split(" WHERE", 1)[1],
).replace("length(?3)", "?3")
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
