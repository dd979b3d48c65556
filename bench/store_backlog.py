"""The SQLite store's CPU for one push and its acknowledgement, by the agent's backlog.

One `SQLiteStore` in one process, no service: a user agent with `--backlog` stored
messages gets `--pairs` pushes, each acknowledged at once (the store's work of a
delivered push), and the process CPU per pair is printed. With `--src` given more than
once, each source tree (a `src` folder) runs in a child process of its own, the trees
alternating `--repeat` times, so that their figures come from one run. With `--sweep`
N, also the CPU of the expiry sweep removing N expired messages of N/10 user agents.

    python bench/store_backlog.py [--backlog 0 --backlog 1000] [--pairs 3000]
        [--sweep 100000] [--src /tmp/main/src --src src] [--repeat 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if "PYTHONPATH" not in os.environ:  # the tree this file is in, unless told another
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

# Raised far above the backlogs measured: every push is accepted.
QUOTA = {"per_subscription": 100_000, "per_user_agent": 100_000, "bytes_per_user_agent": 1 << 40}


async def cpu_per_pair(backlog: int, pairs: int) -> float:
    """Process CPU (µs) per push + acknowledgement to an agent holding `backlog`."""
    from tidings.service.store import MessageQuota, SubscriptionRecord
    from tidings.service.store.base import StoredMessage
    from tidings.service.store.sqlite import SQLiteStore

    now = time.time()
    quota = MessageQuota(**QUOTA)

    def push() -> StoredMessage:
        return StoredMessage(
            message_id=secrets.token_hex(16), uaid="ua", channel_id="ch", body=b"x" * 200,
            ttl=3600, created_at=now, expires_at=now + 3600, topic=None, receipt_id=None,
        )  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="tidings-store-backlog-") as tmp:
        store = SQLiteStore(Path(tmp) / "t.db")
        await store.open()
        try:
            await store.add_user_agent("ua", now)
            await store.add_subscription(SubscriptionRecord("ua", "ch", None, now))
            for _ in range(backlog):
                await store.store_message(push(), quota=quota)
            started = time.process_time()
            for _ in range(pairs):
                message = push()
                await store.store_message(message, quota=quota)
                await store.delete_messages([("ua", message.message_id)])
            return 1e6 * (time.process_time() - started) / pairs
        finally:
            await store.close()


async def sweep_cpu(expired: int) -> float:
    """Process CPU (ms) of the sweep removing `expired` messages, 10 per user agent."""
    from tidings.service.store import SubscriptionRecord
    from tidings.service.store.sqlite import SQLiteStore

    with tempfile.TemporaryDirectory(prefix="tidings-store-sweep-") as tmp:
        store = SQLiteStore(Path(tmp) / "t.db")
        await store.open()
        try:
            agents = max(1, expired // 10)
            for n in range(agents):
                await store.add_subscription(SubscriptionRecord(f"ua{n}", "ch", None, 0.0))

            def fill(db: sqlite3.Connection) -> None:
                db.execute(
                    "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
                    " INSERT INTO messages (message_id, uaid, channel_id, urgency, ttl,"
                    " created_at, expires_at, headers, body) SELECT printf('m%d', i),"
                    " 'ua' || (i % ?), 'ch', 'normal', 60, 0, 60, '{}', randomblob(200) FROM n",
                    (expired - 1, agents),
                )

            await store._op(fill, slow=True)
            started = time.process_time()
            assert await store.delete_expired(61.0) == expired
            return 1e3 * (time.process_time() - started)
        finally:
            await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, action="append", help="stored messages")
    parser.add_argument("--pairs", type=int, default=3000, help="pushes, each acknowledged")
    parser.add_argument("--sweep", type=int, default=0, help="expired messages to sweep")
    parser.add_argument("--src", action="append", help="a source tree to measure")
    parser.add_argument("--repeat", type=int, default=2, help="alternations of the trees")
    args = parser.parse_args()
    backlogs = args.backlog or [0, 1000]
    if not args.src:
        for backlog in backlogs:
            cpu = asyncio.run(cpu_per_pair(backlog, args.pairs))
            print(f"backlog {backlog:6}: {cpu:6.1f} µs CPU per push + ack", flush=True)
        if args.sweep:
            cpu = asyncio.run(sweep_cpu(args.sweep))
            print(f"sweep of {args.sweep} expired: {cpu:6.0f} ms CPU", flush=True)
        return
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    own = ["--pairs", str(args.pairs), f"--sweep={args.sweep}"]
    own += [f"--backlog={backlog}" for backlog in backlogs]
    for _ in range(args.repeat):
        for src in args.src:
            print(f"{src}:", flush=True)
            env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
            subprocess.run([sys.executable, __file__, *own], env=env, check=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
