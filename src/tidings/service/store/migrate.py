"""Copy an SQLite store into PostgreSQL: growing from one node to many.

Every table both stores have is copied, column by column where both have the column,
from one read snapshot of the SQLite file: user agents, subscriptions, receipt
subscriptions, stored messages (in their delivery order, the expired ones left out:
`expires_at` is absolute, so each keeps the TTL it had left) and queued receipts.
Rows already in PostgreSQL are kept (ON CONFLICT DO NOTHING), and each batch is its
own transaction, so the copy is idempotent and an interrupted one resumes where it
stopped when run again. The token key fingerprints are merged, so nodes started on
PostgreSQL with the same key file accept the endpoints already handed out.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Copied first, in this order (rows refer to those before them); other shared tables after.
ORDERED_TABLES = (
    "user_agents",
    "subscriptions",
    "receipt_subscriptions",
    "messages",
    "receipts",
)
_FINGERPRINTS_META = "token_key_fingerprints"
# Never copied: the engines' own bookkeeping and generated row numbers.
_SKIPPED_TABLES = {"sqlite_sequence", "tidings_schema", "meta", "user_agent_usage"}
_GENERATED_COLUMNS = {"seq"}
# Kept by PostgreSQL's triggers as the messages are copied: a copied value would count twice.
_DERIVED_COLUMNS = {("subscriptions", "stored")}

#: Told of each batch: (table, rows just read).
Progress = Callable[[str, int], None]


class MigrationError(RuntimeError):
    """The copy cannot start or go on; the message says why."""


@dataclass
class TableCopy:
    """One table's outcome: rows read from SQLite, rows PostgreSQL gained."""

    table: str
    read: int = 0
    added: int = 0

    @property
    def already_there(self) -> int:
        return self.read - self.added


def _convert(value: Any, pg_type: str) -> Any:
    """An SQLite value as the PostgreSQL column wants it."""
    if value is None:
        return None
    if pg_type == "boolean":
        return bool(value)
    if pg_type in ("integer", "bigint", "smallint"):
        return int(value)
    if pg_type in ("double precision", "real", "numeric"):
        return float(value)
    if pg_type == "bytea":
        return bytes(value)
    return value


def _source_tables(source: sqlite3.Connection) -> list[str]:
    rows = source.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return [str(row[0]) for row in rows if row[0] not in _SKIPPED_TABLES]


def _source_columns(source: sqlite3.Connection, table: str) -> list[str]:
    return [str(row[1]) for row in source.execute(f"PRAGMA table_info({table})")]


def _unexpired(table: str, now: float) -> tuple[str, tuple[float, ...]]:
    """The WHERE clause (and its parameters) leaving expired messages behind: an expired
    message must never be delivered."""
    return (" WHERE expires_at > ?", (now,)) if table == "messages" else ("", ())


def _batches(
    source: sqlite3.Connection, table: str, columns: list[str], now: float, size: int
) -> Iterator[list[tuple[Any, ...]]]:
    where, parameters = _unexpired(table, now)
    # Messages in delivery order (PostgreSQL numbers them as inserted), receipts likewise.
    order = " ORDER BY seq" if "seq" in _source_columns(source, table) else ""
    cursor = source.execute(
        f"SELECT {', '.join(columns)} FROM {table}{where}{order}",  # noqa: S608 - names from the schema
        parameters,
    )
    while batch := cursor.fetchmany(size):
        yield batch


async def migrate_sqlite_to_postgres(
    sqlite_file: Path,
    postgres_url: str,
    *,
    batch_size: int = 1000,
    progress: Progress | None = None,
    now: float | None = None,
) -> list[TableCopy]:
    """Copy `sqlite_file` into the store at `postgres_url` (made if new); the outcome."""
    import asyncpg

    from tidings.service.store.postgres import store_from_url

    if not sqlite_file.exists():  # noqa: ASYNC240 - once, before any work
        raise MigrationError(f"no SQLite database at {sqlite_file}")
    now = time.time() if now is None else now
    # The PostgreSQL store makes or upgrades its own schema, as a node would.
    store = store_from_url(postgres_url)
    try:
        await store.open()
    finally:
        await store.close()
    source = sqlite3.connect(f"file:{sqlite_file}?mode=ro", uri=True)
    target = await asyncpg.connect(store.dsn)
    try:
        source.execute("BEGIN")  # one read snapshot for every table
        return await _copy(source, target, now, batch_size, progress)
    except sqlite3.DatabaseError as exc:
        raise MigrationError(f"{sqlite_file} is not a readable Tidings database: {exc}") from exc
    finally:
        source.close()
        await target.close()


def source_row_counts(sqlite_file: Path, now: float | None = None) -> dict[str, int]:
    """Rows each table will read (for a progress bar's total)."""
    now = time.time() if now is None else now
    source = sqlite3.connect(f"file:{sqlite_file}?mode=ro", uri=True)
    try:
        counts = {}
        for table in _source_tables(source):
            where, parameters = _unexpired(table, now)
            counts[table] = int(
                source.execute(
                    f"SELECT count(*) FROM {table}{where}",  # noqa: S608 - names from the schema
                    parameters,
                ).fetchone()[0]
            )
        return counts
    finally:
        source.close()


async def _copy(
    source: sqlite3.Connection,
    target: Any,
    now: float,
    batch_size: int,
    progress: Progress | None,
) -> list[TableCopy]:
    await _merge_fingerprints(source, target)
    present = _source_tables(source)
    tables = [t for t in ORDERED_TABLES if t in present]
    tables += sorted(t for t in present if t not in ORDERED_TABLES)
    outcome = []
    for table in tables:
        pg_columns = {
            str(row["column_name"]): str(row["data_type"])
            for row in await target.fetch(
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_name = $1 AND table_schema = current_schema()",
                table,
            )
        }
        if not pg_columns:
            continue  # a table only the SQLite store has: nothing to copy it into
        columns = [
            c
            for c in _source_columns(source, table)
            if c in pg_columns
            and c not in _GENERATED_COLUMNS
            and (table, c) not in _DERIVED_COLUMNS
        ]
        copy = TableCopy(table)
        before = int(await target.fetchval(f"SELECT count(*) FROM {table}"))  # noqa: S608
        statement = _insert_statement(table, columns, [pg_columns[c] for c in columns])
        for batch in _batches(source, table, columns, now, batch_size):
            rows = [
                tuple(_convert(v, pg_columns[c]) for v, c in zip(row, columns, strict=True))
                for row in batch
            ]
            async with target.transaction():  # a batch at a time: resumable
                await target.executemany(statement, rows)
            copy.read += len(rows)
            if progress is not None:
                progress(table, len(rows))
        copy.added = int(await target.fetchval(f"SELECT count(*) FROM {table}")) - before  # noqa: S608
        outcome.append(copy)
    return outcome


def _insert_statement(table: str, columns: list[str], types: list[str]) -> str:
    names = ", ".join(columns)
    # Typed placeholders: in INSERT ... SELECT the server cannot infer them.
    values = ", ".join(f"${i}::{kind}" for i, kind in enumerate(types, start=1))
    if table == "receipts":
        # Numbered by PostgreSQL, so no key says a receipt is already there: its
        # subscription, message and status do.
        return (
            f"INSERT INTO receipts ({names}) SELECT {values} WHERE NOT EXISTS ("  # noqa: S608
            "SELECT 1 FROM receipts WHERE receipt_id = $"
            f"{columns.index('receipt_id') + 1} AND message_id = ${columns.index('message_id') + 1}"
            f" AND status = ${columns.index('status') + 1})"
        )
    return f"INSERT INTO {table} ({names}) VALUES ({values}) ON CONFLICT DO NOTHING"  # noqa: S608


async def _merge_fingerprints(source: sqlite3.Connection, target: Any) -> None:
    """Copy `meta`, the key fingerprints as the union of both stores'."""
    for key, value in source.execute("SELECT key, value FROM meta").fetchall():
        if key == _FINGERPRINTS_META:
            existing = await target.fetchval("SELECT value FROM meta WHERE key = $1", key)
            merged = set(str(value).split(",")) | set((existing or "").split(","))
            value = ",".join(sorted(f for f in merged if f))
            await target.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                key,
                value,
            )
        else:
            await target.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT DO NOTHING", key, value
            )
