"""Identical store-failure warnings from many connections or requests at once are
aggregated (the 500k benchmark's PostgreSQL timeouts wrote tens of thousands of the
same line; a store outage or a full store under load would write one a request)."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from support.service import running_service
from tidings.service import acceptance, service_base
from tidings.service.store import StoredMessage, StoreFull, StoreUnavailable
from tidings.service.store_retry import WarningTally
from tidings.webpush import encrypt


def test_one_line_per_interval_then_the_count_of_those_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    tally = WarningTally(logging.getLogger("tidings.test"), interval=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "tidings.test"):
        for number in range(20_000):
            tally.warning("cannot load stored messages for %s: %s", f"ua{number}", "timeout")
        now[0] += 10.0
        tally.warning("cannot load stored messages for %s: %s", "last", "timeout")
        tally.warning("cannot load stored messages for %s: %s", "counted", "timeout")
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "cannot load stored messages for ua0: timeout",
        "cannot load stored messages for last: timeout (and 19999 more like it not logged)",
    ]


def test_the_hello_and_monitor_warnings_are_aggregated() -> None:
    from tidings.service import monitor, ws_session

    assert isinstance(ws_session.STORED_READ_FAILED, WarningTally)
    assert isinstance(monitor.STORED_READ_FAILED, WarningTally)


@pytest.mark.parametrize(
    ("failure", "status", "line"),
    [
        (StoreUnavailable("database is locked"), 503, "store unavailable"),
        (StoreFull("the store holds 1000000 messages"), 507, "push refused"),
    ],
)
async def test_a_failing_store_logs_one_line_for_many_refused_pushes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    failure: Exception,
    status: int,
    line: str,
) -> None:
    log = logging.getLogger("tidings.service")
    monkeypatch.setattr(service_base, "STORE_UNAVAILABLE", WarningTally(log), raising=False)
    monkeypatch.setattr(acceptance, "STORE_FULL", WarningTally(log), raising=False)
    async with running_service(tmp_path) as running:
        assert running.service is not None
        agent = await running.agent()
        registration = await agent.register()

        async def failing(message: StoredMessage, **options: object) -> None:
            raise failure

        running.service.store.store_message = failing  # type: ignore[assignment,method-assign]
        keys = registration.subscription_info()["keys"]
        headers = {"ttl": "600", "content-encoding": "aes128gcm"}
        with caplog.at_level(logging.WARNING, "tidings.service"):
            async with httpx.AsyncClient(timeout=10) as client:
                for number in range(30):
                    body = encrypt(b"%d" % number, keys["p256dh"], keys["auth"])
                    answer = await client.post(registration.endpoint, content=body, headers=headers)
                    assert answer.status_code == status, answer.text
        await agent.close()
    lines = [record.getMessage() for record in caplog.records if line in record.getMessage()]
    assert len(lines) == 1, lines  # one a request before
