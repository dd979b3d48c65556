"""Receipt subscriptions nobody uses any more are swept; used and monitored ones stay."""

from __future__ import annotations

import time

from support.service import RunningService
from tidings.service import core


async def test_the_sweep_removes_only_long_unused_receipt_subscriptions(
    service: RunningService,
) -> None:
    assert service.service is not None
    push_service = service.service
    store = push_service.store
    long_ago = time.time() - push_service.config.max_ttl - core.RECEIPT_SUBSCRIPTION_GRACE - 60
    for receipt_id in ("forgotten", "monitored", "fresh"):
        await store.add_receipt_subscription(receipt_id, long_ago)
    assert await store.use_receipt_subscription("fresh", time.time())  # named by a push
    push_service.hub.listen_receipts("monitored", _Listener())  # an open monitor
    await push_service._sweep_receipt_subscriptions()
    assert not await store.has_receipt_subscription("forgotten")
    assert await store.has_receipt_subscription("monitored")
    assert await store.has_receipt_subscription("fresh")


class _Listener:
    """A receipt monitor that does nothing."""

    def receipts_ready(self) -> None:
        pass

    def close(self) -> None:
        pass
