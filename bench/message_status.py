"""What a message status costs the store: a push stored and acknowledged, signed or not.

A VAPID-signed push gets a status row written in its insert's transaction and ended in
its acknowledgement's (docs/rfc8030.md, "Message status"); an unsigned one does not.
This times both on the SQLite store alone (CPU time of the process, so the worker
thread's checkpoints count), in groups as the service's group commit makes them, and
alternates the two kinds so that a busy machine weighs on both alike.

    python bench/message_status.py [--messages 20000] [--group 64] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tidings.service.store import MessageQuota, StoredMessage, SubscriptionRecord
from tidings.service.store.sqlite import SQLiteStore

AGENTS = 200


async def cost(signed: bool, messages: int, group: int) -> float:
    """CPU microseconds per message to store it and delete it as acknowledged."""
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "tidings.db")
        await store.open()
        uaids = [secrets.token_hex(16) for _ in range(AGENTS)]
        for uaid in uaids:
            await store.add_user_agent(uaid, time.time())
            await store.add_subscription(SubscriptionRecord(uaid, "ch", None, time.time()))
        quota = MessageQuota()
        key_hash = secrets.token_bytes(16) if signed else None
        started = time.process_time()
        for first in range(0, messages, group):
            now = time.time()
            batch = [
                StoredMessage(
                    secrets.token_hex(16),
                    uaids[i % AGENTS],
                    "ch",
                    b"x" * 100,
                    60,
                    now,
                    now + 60,
                    vapid_hash=key_hash,
                )
                for i in range(first, first + group)
            ]
            await asyncio.gather(*(store.store_message(m, quota=quota) for m in batch))
            await store.delete_messages([(m.uaid, m.message_id) for m in batch])
        spent = time.process_time() - started
        await store.close()
    return 1e6 * spent / messages


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--group", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    results: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for signed in (False, True):
            results[signed].append(await cost(signed, args.messages, args.group))
    unsigned, signed = min(results[False]), min(results[True])
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}, SQLite, best of {args.rounds}")
    print(f"unsigned push, stored and acknowledged: {unsigned:6.1f} µs CPU")
    print(f"signed push (with its status):          {signed:6.1f} µs CPU")
    print(f"the status adds {signed - unsigned:.1f} µs ({signed / unsigned:.2f}x)")


if __name__ == "__main__":
    asyncio.run(main())
