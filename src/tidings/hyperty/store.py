"""The push element's state in one SQLite file: runtimes, their hyperties, pending messages.

Each call is one short statement on a local file (WAL mode), run on the event loop as the
user agent's state does. `":memory:"` keeps everything in memory (tests, the demo).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tidings.hyperty.message import Message
from tidings.hyperty.rules import Registration

__all__ = ["ElementStore", "Pending", "RuntimeRecord"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runtimes (
    runtime TEXT PRIMARY KEY,
    subscription TEXT NOT NULL,
    user TEXT,
    registered_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS hyperties (
    hyperty TEXT PRIMARY KEY,
    runtime TEXT NOT NULL REFERENCES runtimes(runtime) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS pending (
    key INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id INTEGER NOT NULL,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    reply_to TEXT NOT NULL,
    object TEXT,
    message TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS pending_match ON pending (message_id, sender, recipient);
CREATE INDEX IF NOT EXISTS pending_object ON pending (object, recipient);
"""


@dataclass(frozen=True)
class RuntimeRecord:
    """A registered runtime and where to push to it."""

    runtime: str
    subscription: dict[str, Any]
    user: str | None


@dataclass(frozen=True)
class Pending:
    """A message pushed to a sleeping runtime, kept until answered, cancelled or expired."""

    key: int
    message: Message
    reply_to: str
    """Where the answer goes: the caller hyperty (`body.source`), else the sender."""
    object: str | None
    created: float


class ElementStore:
    """Runtimes, hyperties and pending messages of one push element."""

    def __init__(self, path: str | os.PathLike[str] = ":memory:") -> None:
        name = str(path)
        if name != ":memory:":
            Path(name).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(name, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA foreign_keys = ON")
        if name != ":memory:":
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    # Runtimes -----------------------------------------------------------------------------

    def put_runtime(self, registration: Registration, now: float | None = None) -> None:
        """Record (or replace) a runtime's registration and the hyperties it hosts."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM runtimes WHERE runtime = ?", (registration.runtime,))
            self._db.execute(
                "INSERT INTO runtimes VALUES (?, ?, ?, ?)",
                (
                    registration.runtime,
                    json.dumps(registration.subscription),
                    registration.user,
                    time.time() if now is None else now,
                ),
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO hyperties VALUES (?, ?)",
                [(hyperty, registration.runtime) for hyperty in registration.hyperties],
            )

    def delete_runtime(self, runtime: str) -> bool:
        """Forget a runtime and its hyperties; False when it was not registered."""
        with self._db:
            cursor = self._db.execute("DELETE FROM runtimes WHERE runtime = ?", (runtime,))
        return cursor.rowcount > 0

    def runtime_for(self, hyperty: str) -> RuntimeRecord | None:
        """The runtime hosting `hyperty`, if one registered it."""
        row = self._db.execute(
            "SELECT r.runtime, r.subscription, r.user FROM hyperties h "
            "JOIN runtimes r ON r.runtime = h.runtime WHERE h.hyperty = ?",
            (hyperty,),
        ).fetchone()
        if row is None:
            return None
        return RuntimeRecord(row[0], json.loads(row[1]), row[2])

    def get_runtime(self, runtime: str) -> RuntimeRecord | None:
        row = self._db.execute(
            "SELECT runtime, subscription, user FROM runtimes WHERE runtime = ?", (runtime,)
        ).fetchone()
        return None if row is None else RuntimeRecord(row[0], json.loads(row[1]), row[2])

    def hyperties_of(self, runtime: str) -> list[str]:
        rows = self._db.execute(
            "SELECT hyperty FROM hyperties WHERE runtime = ? ORDER BY hyperty", (runtime,)
        )
        return [row[0] for row in rows]

    def runtime_count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM runtimes").fetchone()[0])

    # Pending messages ---------------------------------------------------------------------

    def add_pending(
        self, message: Message, reply_to: str, object_url: str | None, ttl: float, now: float
    ) -> int:
        """Keep a pushed message until its answer, its cancel, or `ttl` seconds."""
        with self._db:
            cursor = self._db.execute(
                "INSERT INTO pending (message_id, sender, recipient, reply_to, object, message, "
                "created, expires) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    message.id,
                    message.from_,
                    message.target,
                    reply_to,
                    object_url,
                    message.to_json(),
                    now,
                    now + ttl,
                ),
            )
        return int(cursor.lastrowid or 0)

    def _pending(self, row: tuple[Any, ...]) -> Pending:
        return Pending(row[0], Message.from_json(row[1]), row[2], row[3], row[4])

    _COLUMNS = "key, message, reply_to, object, created"

    def take_pending_for(self, response: Message, now: float) -> Pending | None:
        """Remove and return the pending request `response` answers (same id, swapped ends).

        A provisional response (1xx) leaves it pending.
        """
        row = self._db.execute(
            f"SELECT {self._COLUMNS} FROM pending WHERE message_id = ? AND sender = ? "  # noqa: S608
            "AND recipient = ? AND expires > ? ORDER BY key DESC LIMIT 1",
            (response.id, response.target, response.from_, now),
        ).fetchone()
        if row is None:
            return None
        if response.is_final:
            self.remove_pending(int(row[0]))
        return self._pending(row)

    def cancel_pending(self, object_url: str, recipient: str) -> list[Pending]:
        """Remove and return the pending messages about `object_url` for `recipient`."""
        rows = self._db.execute(
            f"SELECT {self._COLUMNS} FROM pending WHERE object = ? AND recipient = ?",  # noqa: S608
            (object_url, recipient),
        ).fetchall()
        for row in rows:
            self.remove_pending(int(row[0]))
        return [self._pending(row) for row in rows]

    def pending_for(self, recipient: str, now: float) -> list[Pending]:
        """Unexpired pending messages for a hyperty, oldest first."""
        rows = self._db.execute(
            f"SELECT {self._COLUMNS} FROM pending WHERE recipient = ? AND expires > ? "  # noqa: S608
            "ORDER BY key",
            (recipient, now),
        ).fetchall()
        return [self._pending(row) for row in rows]

    def remove_pending(self, key: int) -> None:
        with self._db:
            self._db.execute("DELETE FROM pending WHERE key = ?", (key,))

    def expire(self, now: float) -> int:
        """Drop pending messages whose TTL passed; how many went."""
        with self._db:
            cursor = self._db.execute("DELETE FROM pending WHERE expires <= ?", (now,))
        return cursor.rowcount
