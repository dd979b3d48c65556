"""Store reads retried after an outage stay bounded: identical warnings from many
connections are aggregated and the retries of a whole node share one gate (the 500k
benchmark's PostgreSQL timeouts wrote tens of thousands of the same line)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tidings.service import store_retry
from tidings.service.store_retry import WarningTally


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


async def test_retries_of_many_connections_share_the_node_wide_gate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a gate of one place, retried reads of many connections go one at a time."""
    monkeypatch.setattr(store_retry, "retry_delays", lambda: [0.0, 0.0, 0.0])
    in_flight = [0, 0]  # now, most at once

    async def read() -> str:
        in_flight[0] += 1
        in_flight[1] = max(in_flight)
        await asyncio.sleep(0)  # let the other readers run while this one reads
        in_flight[0] -= 1
        return "stored"

    gate = asyncio.Semaphore(1)
    answers = await asyncio.gather(*(store_retry.retry_read(read, gate=gate) for _ in range(50)))
    assert answers == ["stored"] * 50 and in_flight[1] == 1
