"""The user agent's persistent state: one SQLite file, readable by its owner only.

It holds what a browser keeps in its profile: the `uaid` the service knows us by, the
registrations (scopes, and for the daemon the command each one wakes), each scope's
subscription with its P-256 private key and auth secret, and the ids of recently
handled messages so a redelivery fires no second event. The file is created with mode
0600 before SQLite opens it (SQLite gives its `-wal` and `-shm` files the same mode).

Calls are synchronous: each is one short statement on a local file, well under a
millisecond, so the event loop does not need a thread for them.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_STATE_FILE", "StateStore", "StoredRegistration", "StoredSubscription"]

DEFAULT_STATE_FILE = "useragent.db"
"""The file name used inside a state directory."""

SEEN_KEPT_SECONDS = 7 * 24 * 3600
"""How long a handled message id is remembered (the longest a service keeps a message)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS registrations (
    scope TEXT PRIMARY KEY,
    exec_command TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS subscriptions (
    scope TEXT PRIMARY KEY REFERENCES registrations(scope) ON DELETE CASCADE,
    handle TEXT NOT NULL UNIQUE,
    endpoint TEXT NOT NULL,
    private_key BLOB NOT NULL,
    auth BLOB NOT NULL,
    application_server_key TEXT,
    user_visible_only INTEGER NOT NULL,
    expiration_time REAL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS seen (
    message_id TEXT PRIMARY KEY,
    code INTEGER NOT NULL,
    seen_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS seen_by_time ON seen(seen_at);
"""


@dataclass(frozen=True, slots=True)
class StoredRegistration:
    """A scope the user agent serves, and (for the daemon) the command it wakes."""

    scope: str
    exec_command: str | None
    created_at: float


@dataclass(frozen=True, slots=True)
class StoredSubscription:
    """A scope's subscription with its secrets: the raw private scalar and auth."""

    scope: str
    handle: str
    endpoint: str
    private_key: bytes
    auth: bytes
    application_server_key: str | None
    user_visible_only: bool
    expiration_time: float | None
    created_at: float


def resolve_state_file(path: str | os.PathLike[str]) -> Path:
    """The SQLite file for `path`.

    An existing file, or a new name with a suffix (`ua.db`), is the file itself; an
    existing directory, or a new name without a suffix (`state`), is a directory
    (created with mode 0700) holding `useragent.db`.
    """
    target = Path(path)
    if target.is_file() or (not target.exists() and target.suffix):
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return target
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    return target / DEFAULT_STATE_FILE


class StateStore:
    """The SQLite state file of one user agent."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = resolve_state_file(path)
        # Create the file owner-only before SQLite opens it, so no secret is ever exposed.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        os.chmod(self.path, 0o600)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    # Meta ---------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        """A stored setting, or None."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str | None) -> None:
        """Store (or with None, delete) a setting."""
        if value is None:
            self._db.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            self._db.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    @property
    def uaid(self) -> str | None:
        """The id the push service knows this user agent by."""
        return self.get_meta("uaid")

    @uaid.setter
    def uaid(self, value: str | None) -> None:
        self.set_meta("uaid", value)

    # Registrations --------------------------------------------------------------------

    def put_registration(self, scope: str, exec_command: str | None = None) -> StoredRegistration:
        """Record a scope (keeping its creation time); set or clear its command."""
        self._db.execute(
            "INSERT INTO registrations(scope, exec_command, created_at) VALUES (?, ?, ?) "
            "ON CONFLICT(scope) DO UPDATE SET exec_command = excluded.exec_command",
            (scope, exec_command, time.time()),
        )
        registration = self.get_registration(scope)
        assert registration is not None
        return registration

    def ensure_registration(self, scope: str) -> StoredRegistration:
        """Record a scope unless it is known; an existing command is kept."""
        self._db.execute(
            "INSERT INTO registrations(scope, exec_command, created_at) VALUES (?, NULL, ?) "
            "ON CONFLICT(scope) DO NOTHING",
            (scope, time.time()),
        )
        registration = self.get_registration(scope)
        assert registration is not None
        return registration

    def get_registration(self, scope: str) -> StoredRegistration | None:
        """The registration of `scope`, if any."""
        row = self._db.execute(
            "SELECT scope, exec_command, created_at FROM registrations WHERE scope = ?",
            (scope,),
        ).fetchone()
        return None if row is None else StoredRegistration(row[0], row[1], row[2])

    def registrations(self) -> list[StoredRegistration]:
        """Every registration, oldest first."""
        rows = self._db.execute(
            "SELECT scope, exec_command, created_at FROM registrations ORDER BY created_at, scope"
        ).fetchall()
        return [StoredRegistration(*row) for row in rows]

    def delete_registration(self, scope: str) -> None:
        """Forget a scope and its subscription."""
        self._db.execute("DELETE FROM registrations WHERE scope = ?", (scope,))

    # Subscriptions --------------------------------------------------------------------

    _COLUMNS = (
        "scope, handle, endpoint, private_key, auth, application_server_key, "
        "user_visible_only, expiration_time, created_at"
    )

    def _subscription(self, row: Any) -> StoredSubscription | None:
        if row is None:
            return None
        (scope, handle, endpoint, private_key, auth, key, visible, expiration, created) = row
        return StoredSubscription(
            str(scope),
            str(handle),
            str(endpoint),
            bytes(private_key),
            bytes(auth),
            None if key is None else str(key),
            bool(visible),
            None if expiration is None else float(expiration),
            float(created),
        )

    def put_subscription(self, subscription: StoredSubscription) -> None:
        """Store a scope's subscription, replacing the previous one of that scope."""
        s = subscription
        self._db.execute(
            f"INSERT OR REPLACE INTO subscriptions({self._COLUMNS}) "  # noqa: S608 - constant
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                s.scope,
                s.handle,
                s.endpoint,
                s.private_key,
                s.auth,
                s.application_server_key,
                int(s.user_visible_only),
                s.expiration_time,
                s.created_at,
            ),
        )

    def get_subscription(self, scope: str) -> StoredSubscription | None:
        """The subscription of `scope`, if any."""
        return self._subscription(
            self._db.execute(
                f"SELECT {self._COLUMNS} FROM subscriptions WHERE scope = ?",  # noqa: S608
                (scope,),
            ).fetchone()
        )

    def subscription_by_handle(self, handle: str) -> StoredSubscription | None:
        """The subscription the service calls `handle` (a channel id), if any."""
        return self._subscription(
            self._db.execute(
                f"SELECT {self._COLUMNS} FROM subscriptions WHERE handle = ?",  # noqa: S608
                (handle,),
            ).fetchone()
        )

    def subscription_by_endpoint(self, endpoint: str) -> StoredSubscription | None:
        """The subscription whose push endpoint is `endpoint`, if any."""
        return self._subscription(
            self._db.execute(
                f"SELECT {self._COLUMNS} FROM subscriptions WHERE endpoint = ?",  # noqa: S608
                (endpoint,),
            ).fetchone()
        )

    def subscriptions(self) -> list[StoredSubscription]:
        """Every subscription, oldest first."""
        rows = self._db.execute(
            f"SELECT {self._COLUMNS} FROM subscriptions ORDER BY created_at, scope"  # noqa: S608
        ).fetchall()
        return [s for s in (self._subscription(row) for row in rows) if s is not None]

    def delete_subscription(self, scope: str) -> None:
        """Forget the subscription of `scope` (its registration stays)."""
        self._db.execute("DELETE FROM subscriptions WHERE scope = ?", (scope,))

    # Handled messages -----------------------------------------------------------------

    def seen(self, message_id: str) -> int | None:
        """The ack code a message was handled with, or None if never handled."""
        row = self._db.execute(
            "SELECT code FROM seen WHERE message_id = ?", (message_id,)
        ).fetchone()
        return None if row is None else int(row[0])

    def mark_seen(self, message_id: str, code: int) -> None:
        """Remember that a message was handled (and with which ack code)."""
        self._db.execute(
            "INSERT OR REPLACE INTO seen(message_id, code, seen_at) VALUES (?, ?, ?)",
            (message_id, code, time.time()),
        )

    def prune_seen(self, older_than: float = SEEN_KEPT_SECONDS) -> int:
        """Forget handled ids older than `older_than` seconds; return how many."""
        cursor = self._db.execute("DELETE FROM seen WHERE seen_at < ?", (time.time() - older_than,))
        return cursor.rowcount
