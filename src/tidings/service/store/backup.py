"""Online backup and restore of the SQLite store together with its token key file.

A backup is a directory holding a consistent copy of the database (SQLite's online
backup API: the service keeps running and writing), the key file that opens the
endpoints the database's subscriptions were given, and `manifest.json` saying what was
copied. Both secrets stay owner-only (0600, the directory 0700). A restore checks the
copy's integrity and that its key file is the one its endpoints were sealed with
(the same rule the service applies at start-up) before anything is replaced.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path

from tidings.service.keyfile import (
    KeyFileError,
    held_fingerprints,
    read_keys,
    write_private_file,
)

DATABASE_NAME = "tidings.db"
KEY_FILE_NAME = "tidings-secrets.json"
MANIFEST_NAME = "manifest.json"
_FINGERPRINTS_META = "token_key_fingerprints"


class BackupError(RuntimeError):
    """The backup cannot be made or used; the message says why and what to do."""


@dataclass(frozen=True)
class Manifest:
    """What a backup holds (written as manifest.json beside the copies)."""

    created_at: str
    schema_version: int
    database_bytes: int
    database_sha256: str
    user_agents: int
    subscriptions: int
    messages: int
    key_fingerprints: list[str]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def _describe(database: Path) -> tuple[int, dict[str, int], set[str]]:
    """Schema version, row counts and recorded key fingerprints, checking integrity."""
    conn = _read_only(database)
    try:
        problems = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        if problems != ["ok"]:
            raise BackupError(f"{database} is damaged: {'; '.join(problems[:5])}")
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        counts = {
            table: int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608 - fixed names
            for table in ("user_agents", "subscriptions", "messages")
        }
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (_FINGERPRINTS_META,)).fetchone()
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{database} is not a Tidings database: {exc}") from exc
    finally:
        conn.close()
    recorded = set(row[0].split(",")) if row and row[0] else set()
    return version, counts, recorded


def _check_key_file(key_file: Path, recorded: set[str]) -> list[str]:
    """The key file's fingerprints, if it opens the endpoints the database recorded."""
    try:
        keys, _current = read_keys(key_file)
        return sorted(held_fingerprints(key_file, keys, recorded))
    except KeyFileError as exc:  # unreadable, or another service's (the service's own rule)
        raise BackupError(str(exc)) from exc


def backup_sqlite(database: Path, key_file: Path, out: Path) -> Manifest:
    """Copy `database` (online, consistent) and `key_file` into the new directory `out`."""
    if not database.exists():
        raise BackupError(f"no database at {database}")
    if not key_file.exists():
        raise BackupError(
            f"no token key file at {key_file}: a backup without it could not open any "
            "endpoint (name it with --secrets)"
        )
    if out.exists() and any(out.iterdir()):
        raise BackupError(f"{out} exists and is not empty: name a new directory")
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    out.chmod(0o700)
    copy = out / DATABASE_NAME
    os.close(os.open(copy, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600))
    source = _read_only(database)
    target = sqlite3.connect(copy)
    try:
        # One step: a copy in several steps starts over whenever the running service
        # writes between two of them. One step holds a read snapshot, which in WAL mode
        # does not stop the service's writers.
        source.backup(target, pages=-1)
    finally:
        target.close()
        source.close()
    copy.chmod(0o600)
    version, counts, recorded = _describe(copy)
    fingerprints = _check_key_file(key_file, recorded)
    write_private_file(out / KEY_FILE_NAME, key_file.read_bytes())
    manifest = Manifest(
        created_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        schema_version=version,
        database_bytes=copy.stat().st_size,
        database_sha256=_sha256(copy),
        key_fingerprints=fingerprints,
        **counts,
    )
    (out / MANIFEST_NAME).write_text(json.dumps(asdict(manifest), indent=2) + "\n")
    return manifest


def check_backup(backup: Path) -> Manifest:
    """The manifest of `backup` once its files are whole and belong together."""
    try:
        manifest = Manifest(**json.loads((backup / MANIFEST_NAME).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise BackupError(f"{backup} is not a Tidings backup: {exc}") from exc
    copy = backup / DATABASE_NAME
    if not copy.exists() or _sha256(copy) != manifest.database_sha256:
        raise BackupError(f"{copy} is missing or changed since the backup was made")
    _version, _counts, recorded = _describe(copy)
    _check_key_file(backup / KEY_FILE_NAME, recorded)
    return manifest


def restore_sqlite(backup: Path, database: Path, key_file: Path, *, force: bool) -> Manifest:
    """Put a checked backup in place of `database` and `key_file` (the service stopped)."""
    manifest = check_backup(backup)
    if not force and (database.exists() or key_file.exists()):
        raise BackupError(
            f"{database} or {key_file} exists: stop the service, then restore with --force "
            "to replace them (messages and subscriptions made since the backup are lost)"
        )
    database.parent.mkdir(parents=True, exist_ok=True)
    staged = database.with_name(database.name + ".restoring")
    os.close(os.open(staged, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600))
    staged.write_bytes((backup / DATABASE_NAME).read_bytes())
    staged.chmod(0o600)
    # The old file's write-ahead log must not be replayed onto the restored one.
    for suffix in ("-wal", "-shm"):
        database.with_name(database.name + suffix).unlink(missing_ok=True)
    os.replace(staged, database)
    write_private_file(key_file, (backup / KEY_FILE_NAME).read_bytes())
    return manifest
