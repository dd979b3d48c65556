"""Giving up live receipts (TTL-0 messages sent live that want a receipt, at a node's
stop or in the expiry sweep) writes their 410s with one store call per batch
(`Store.add_receipts`), where it made one per receipt: 1,000 calls for 1,000. Each
receipt is still queued once, none for a receipt subscription gone meanwhile, and the
monitors of each receipt subscription are told. On SQLite and on PostgreSQL."""

from __future__ import annotations

import functools
import inspect
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support.service import running_service
from tidings.service.cluster import LIVE_FORGET_BATCH
from tidings.service.keyfile import write_keys
from tidings.service.store import Receipt, Store
from tidings.service.tokens import TokenSealer

pytestmark = pytest.mark.timeout(120)

LIVE = 1000


def count_store_calls(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every call of a `Store` method on `store` from now on, by name."""
    calls: list[str] = []

    def counted(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        async def call(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return await method(*args, **kwargs)

        return call

    for name, _ in inspect.getmembers(Store, inspect.iscoroutinefunction):
        if not name.startswith("_"):
            monkeypatch.setattr(store, name, counted(name, getattr(store, name)))
    return calls


async def test_giving_up_live_receipts_costs_a_store_call_per_batch(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = tmp_path / "tidings-secrets.json"  # a shared store wants one made beforehand
    write_keys(secrets, {1: TokenSealer.new_key()}, 1)
    async with running_service(tmp_path, store=store_url, secrets=str(secrets)) as node:
        service = node.service
        assert service is not None
        for receipt_id in ("r-a", "r-b"):
            await service.store.add_receipt_subscription(receipt_id, time.time())
        names = ("r-a", "r-b", "r-gone")  # r-gone: deleted meanwhile (never made here)
        for n in range(LIVE):  # as the push path leaves them
            message_id = f"message-{n:04}"
            receipt = Receipt(0, names[n % 3], "ua", "channel", message_id, 0, time.time())
            service._live_receipts[message_id] = receipt
        told: list[str] = []
        monkeypatch.setattr(service.hub, "notify_receipt", told.append)

        calls = count_store_calls(service.store, monkeypatch)
        await service.give_up_live_receipts(math.inf)  # what stop() does
        monkeypatch.undo()

        # Old code: 1,000 (one add_receipt each).
        assert calls == ["add_receipts"] * math.ceil(LIVE / LIVE_FORGET_BATCH), calls
        assert not service._live_receipts
        for receipt_id in ("r-a", "r-b"):
            queued = await service.store.pending_receipts(receipt_id, 2 * LIVE)
            wanted = [f"message-{n:04}" for n in range(LIVE) if names[n % 3] == receipt_id]
            assert [r.message_id for r in queued] == wanted  # each once, in order
            assert {r.status for r in queued} == {410}
        assert await service.store.pending_receipts("r-gone", 10) == []
        assert set(told) == set(names)  # every receipt's monitors (r-gone's: none)
