"""SQLite CPU per push on the service's path through the store, without the service.

Each round stores `--batch` signed, Topic-less pushes for as many user agents (their
calls made in one loop turn, so that the group commit takes them together, as under
load), then deletes them as the acknowledgements of one `delete_messages` call.
Reports the process's CPU per push for the whole cycle (insert, ack, statuses,
commits); compare two versions with PYTHONPATH:

    PYTHONPATH=src python bench/sqlite_push_cycle.py [--pushes 22000] [--batch 22]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import tempfile
import time
from pathlib import Path

from tidings.service.store import MessageQuota, StoredMessage, SubscriptionRecord
from tidings.service.store.sqlite import SQLiteStore
from tidings.service.tokens import new_message_id

USER_AGENTS = 200  # as bench/service_load.py: one subscription each


def push(uaid: str, now: float) -> StoredMessage:
    return StoredMessage(
        message_id=new_message_id(),  # as the service makes them
        uaid=uaid,
        channel_id="00000000-0000-4000-8000-000000000000",
        body=secrets.token_bytes(186),
        ttl=60,
        created_at=now,
        expires_at=now + 60,
        urgency="normal",
        topic=None,
        headers={"encoding": "aes128gcm"},
        receipt_id=None,
        vapid_hash=b"k" * 16,
        has_status=True,
    )


async def cycle(pushes: int, batch: int) -> float:
    """CPU seconds per push over `pushes` stored then acknowledged `batch` at a time."""
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "t.db")
        await store.open()
        now = time.time()
        uaids = [secrets.token_hex(16) for _ in range(USER_AGENTS)]
        for uaid in uaids:
            await store.add_user_agent(uaid, now)
            await store.add_subscription(
                SubscriptionRecord(uaid, "00000000-0000-4000-8000-000000000000", None, now)
            )
        quota = MessageQuota()
        rounds = pushes // batch
        messages = [push(uaids[i % USER_AGENTS], now) for i in range(rounds * batch)]
        started = time.process_time()
        for start in range(0, len(messages), batch):
            group = messages[start : start + batch]
            await asyncio.gather(*(store.store_message(m, quota=quota) for m in group))
            await store.delete_messages([(m.uaid, m.message_id) for m in group])
        spent = time.process_time() - started
        await store.close()
        return spent / len(messages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pushes", type=int, default=22_000)
    parser.add_argument("--batch", type=int, default=22, help="pushes and acks per round")
    args = parser.parse_args()
    per_push = asyncio.run(cycle(args.pushes, args.batch))
    print(
        f"SQLite path CPU per push (store + ack, batches of {args.batch}): {1e6 * per_push:.1f} µs"
    )


if __name__ == "__main__":
    main()
