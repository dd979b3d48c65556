"""The PostgreSQL count trigger's cost per acknowledgement, as the subscriptions table
grows (issue 21, item 1): a session's first statement is a large deletion (as the expiry
sweep's), then `--acks` acknowledgements of one message each go through the store's own
statement. Schema 8 cached, from that first deletion, a plan that hashed the whole
`subscriptions` table for every later acknowledgement; schema 9 looks counters up by key.

    PYTHONPATH=<tree>/src python bench/pg_counter_plans.py [--subscriptions 10000,100000]

Prints the schema and, per table size, the server time per acknowledgement (the
statement's round trip to a local server, commits not flushed, median of `--acks`).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time

import asyncpg

from tidings.service.store import open_store
from tidings.service.store.postgres_schema import _DELETE_MESSAGES, SCHEMA_VERSION

ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
NOW = 1_800_000_000.0


async def one_size(subscriptions: int, acks: int) -> float:
    database = "tidings_plans_" + secrets.token_hex(4)
    admin = await asyncpg.connect(ADMIN)
    await admin.execute(f"CREATE DATABASE {database}")
    url = f"postgresql://postgres@127.0.0.1:5432/{database}"
    try:
        store = open_store(url)
        await store.open()  # the schema of the tree on PYTHONPATH
        await store.close()
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                "INSERT INTO user_agents (uaid, created_at, last_seen)"
                " SELECT 'ua' || i, $1::float8, $1::float8 FROM generate_series(1, $2::int) i",
                NOW,
                subscriptions,
            )
            await conn.execute(
                "INSERT INTO subscriptions (uaid, channel_id, created_at)"
                " SELECT 'ua' || i, 'ch', $1::float8 FROM generate_series(1, $2::int) i",
                NOW,
                subscriptions,
            )
            await conn.execute(
                "INSERT INTO messages (message_id, uaid, channel_id, urgency, ttl, created_at,"
                " expires_at, headers, body) SELECT 'm' || i, 'ua' || i, 'ch', 'normal', 60,"
                " $1::float8, $1::float8 + 60, '{}', '' FROM generate_series(1, $2::int) i",
                NOW,
                min(subscriptions, 500 + acks),
            )
            await conn.execute("ANALYZE")
        finally:
            await conn.close()
        conn = await asyncpg.connect(url)  # a fresh session, as a node's pool connection
        try:
            # The statement's own work, not the disk's: no flush per commit.
            await conn.execute("SET synchronous_commit = off")
            first = [f"ua{i}" for i in range(acks + 1, acks + 501)]
            await conn.execute("DELETE FROM messages WHERE uaid = ANY($1)", first)
            times = []
            for i in range(1, acks + 1):
                started = time.perf_counter()
                await conn.fetch(_DELETE_MESSAGES, [f"ua{i}"], [f"m{i}"], NOW, [True])
                times.append(time.perf_counter() - started)
        finally:
            await conn.close()
        return statistics.median(times)
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        await admin.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscriptions", default="10000,100000")
    parser.add_argument("--acks", type=int, default=200)
    args = parser.parse_args()
    print(f"schema {SCHEMA_VERSION}")
    for size in (int(n) for n in args.subscriptions.split(",")):
        median = await one_size(size, args.acks)
        print(f"{size:>10,} subscriptions: {median * 1e6:8.0f} us per acknowledgement")


if __name__ == "__main__":
    asyncio.run(main())
