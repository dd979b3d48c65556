"""The push element's state in one SQLite file: runtimes, their hyperties, pending messages.

A runtime row exists from its first registration: it holds the SHA-256 of the runtime's
credential (the credential itself is never stored) and, while the runtime is registered
for push, its subscription. `addresses` are the hyperty addresses allocated to (owned
by) a runtime, `hyperties` those registered for push, `objects` the data object URLs a
runtime sends from (bound to it on first use).

Each call is one short statement on a local file (WAL mode), run on the event loop as the
user agent's state does. `":memory:"` keeps everything in memory (tests, the demo).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tidings.hyperty.message import Message
from tidings.hyperty.rules import Registration

log = logging.getLogger("tidings.hyperty.store")

__all__ = ["ElementStore", "Pending", "RuntimeRecord", "credential_hash"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runtimes (
    runtime TEXT PRIMARY KEY,
    credential TEXT NOT NULL UNIQUE,
    subscription TEXT,
    user TEXT,
    registered_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS addresses (
    address TEXT PRIMARY KEY,
    runtime TEXT NOT NULL REFERENCES runtimes(runtime) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS addresses_runtime ON addresses (runtime);
CREATE TABLE IF NOT EXISTS hyperties (
    hyperty TEXT PRIMARY KEY,
    runtime TEXT NOT NULL REFERENCES runtimes(runtime) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS objects (
    object TEXT PRIMARY KEY,
    runtime TEXT NOT NULL REFERENCES runtimes(runtime) ON DELETE CASCADE,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS objects_runtime ON objects (runtime, created);
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


def credential_hash(credential: str) -> str:
    """What the store keeps of a credential: its SHA-256, hex."""
    return hashlib.sha256(credential.encode()).hexdigest()


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
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(runtimes)")}
        if columns and "credential" not in columns:
            # Registrations from before runtimes had credentials cannot be owned by anyone:
            # the runtimes register again (and get a credential).
            log.warning("%s: dropping registrations made without credentials", name)
            self._db.executescript("DROP TABLE hyperties; DROP TABLE runtimes;")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    # Runtimes and what they own ------------------------------------------------------------

    def create_runtime(self, runtime: str, credential: str, now: float) -> bool:
        """Record a new runtime with its credential; False when the runtime exists."""
        with self._db:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO runtimes (runtime, credential, registered_at) "
                "VALUES (?, ?, ?)",
                (runtime, credential_hash(credential), now),
            )
        return cursor.rowcount > 0

    def runtime_by_credential(self, credential: str) -> str | None:
        """The runtime a credential was issued to, None for any other string."""
        row = self._db.execute(
            "SELECT runtime FROM runtimes WHERE credential = ?", (credential_hash(credential),)
        ).fetchone()
        return None if row is None else str(row[0])

    def runtime_exists(self, runtime: str) -> bool:
        row = self._db.execute("SELECT 1 FROM runtimes WHERE runtime = ?", (runtime,)).fetchone()
        return row is not None

    def put_runtime(self, registration: Registration, now: float | None = None) -> None:
        """Record (or replace) a runtime's push registration and the hyperties it hosts.

        The runtime must exist (`create_runtime`).
        """
        subscription = registration.subscription
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "UPDATE runtimes SET subscription = ?, user = ?, registered_at = ? "
                "WHERE runtime = ?",
                (
                    None if subscription is None else json.dumps(subscription),
                    registration.user,
                    time.time() if now is None else now,
                    registration.runtime,
                ),
            )
            self._db.execute("DELETE FROM hyperties WHERE runtime = ?", (registration.runtime,))
            self._db.executemany(
                "INSERT OR REPLACE INTO hyperties VALUES (?, ?)",
                [(hyperty, registration.runtime) for hyperty in registration.hyperties],
            )

    def delete_runtime(self, runtime: str) -> bool:
        """Unregister a runtime for push (its subscription and hyperty list go; it keeps its
        credential and addresses); False when it was not registered."""
        with self._db:
            self._db.execute("BEGIN")
            cursor = self._db.execute(
                "UPDATE runtimes SET subscription = NULL "
                "WHERE runtime = ? AND subscription IS NOT NULL",
                (runtime,),
            )
            hyperties = self._db.execute("DELETE FROM hyperties WHERE runtime = ?", (runtime,))
        return cursor.rowcount > 0 or hyperties.rowcount > 0

    def runtime_for(self, hyperty: str) -> RuntimeRecord | None:
        """The runtime registered for push with `hyperty`, if any."""
        row = self._db.execute(
            "SELECT r.runtime, r.subscription, r.user FROM hyperties h "
            "JOIN runtimes r ON r.runtime = h.runtime "
            "WHERE h.hyperty = ? AND r.subscription IS NOT NULL",
            (hyperty,),
        ).fetchone()
        if row is None:
            return None
        return RuntimeRecord(row[0], json.loads(row[1]), row[2])

    def get_runtime(self, runtime: str) -> RuntimeRecord | None:
        """The runtime's push registration, None when it is not registered for push."""
        row = self._db.execute(
            "SELECT runtime, subscription, user FROM runtimes "
            "WHERE runtime = ? AND subscription IS NOT NULL",
            (runtime,),
        ).fetchone()
        return None if row is None else RuntimeRecord(row[0], json.loads(row[1]), row[2])

    def hyperties_of(self, runtime: str) -> list[str]:
        rows = self._db.execute(
            "SELECT hyperty FROM hyperties WHERE runtime = ? ORDER BY hyperty", (runtime,)
        )
        return [row[0] for row in rows]

    def runtime_count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM runtimes").fetchone()[0])

    def allocate(self, runtime: str, addresses: list[str]) -> None:
        """Give `addresses` (fresh, unguessable) to `runtime`."""
        with self._db:
            self._db.executemany(
                "INSERT INTO addresses VALUES (?, ?)", [(a, runtime) for a in addresses]
            )

    def owner_of(self, address: str) -> str | None:
        """The runtime an address was allocated to."""
        row = self._db.execute(
            "SELECT runtime FROM addresses WHERE address = ?", (address,)
        ).fetchone()
        return None if row is None else str(row[0])

    def address_count(self, runtime: str) -> int:
        return int(
            self._db.execute(
                "SELECT count(*) FROM addresses WHERE runtime = ?", (runtime,)
            ).fetchone()[0]
        )

    def claim_object(self, data_object: str, runtime: str, now: float, keep: int) -> str:
        """The runtime a data object URL belongs to, binding it to `runtime` if unbound.

        A runtime holds at most `keep` objects: binding one more releases its oldest.
        """
        with self._db:
            self._db.execute("BEGIN")
            row = self._db.execute(
                "SELECT runtime FROM objects WHERE object = ?", (data_object,)
            ).fetchone()
            if row is not None:
                return str(row[0])
            self._db.execute("INSERT INTO objects VALUES (?, ?, ?)", (data_object, runtime, now))
            self._db.execute(
                "DELETE FROM objects WHERE runtime = ? AND object NOT IN (SELECT object FROM "
                "objects WHERE runtime = ? ORDER BY created DESC, rowid DESC LIMIT ?)",
                (runtime, runtime, keep),
            )
        return runtime

    def object_count(self, runtime: str) -> int:
        return int(
            self._db.execute(
                "SELECT count(*) FROM objects WHERE runtime = ?", (runtime,)
            ).fetchone()[0]
        )

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
