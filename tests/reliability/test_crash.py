"""Crash safety: SIGKILL in the middle of a steady push load, 20 times, loses nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from reliability.crashload import run_crash_cycles

CYCLES = 20  # bench/crash.py runs as many as asked


@pytest.mark.timeout(150)
async def test_sigkill_under_load_loses_no_accepted_message(tmp_path: Path) -> None:
    report = await run_crash_cycles(tmp_path, CYCLES, seed=8030)
    print(report.summary())
    assert report.accepted > 0 and report.delivered > 0, report.summary()
    assert not report.missing, f"accepted but never delivered: {report.missing[:10]}"
    assert not report.unexpected, f"delivered but never accepted: {report.unexpected[:10]}"
    assert report.cycles == CYCLES
