"""Identical store-failure warnings from many connections at once are aggregated (the
500k benchmark's PostgreSQL timeouts wrote tens of thousands of the same line)."""

from __future__ import annotations

import logging

import pytest

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
