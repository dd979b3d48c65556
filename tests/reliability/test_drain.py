"""SIGTERM drains: requests being answered finish, nothing accepted is lost, exit code 0."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from reliability.crashload import run_crash_cycles


@pytest.mark.timeout(90)
async def test_sigterm_under_load_loses_no_accepted_message(tmp_path: Path) -> None:
    report = await run_crash_cycles(tmp_path, 4, seed=6455, kill_signal=signal.SIGTERM)
    print(report.summary(), report.statuses)
    assert report.exit_codes == [0, 0, 0, 0]
    assert report.accepted > 0
    assert not report.missing, f"accepted but never delivered: {report.missing[:10]}"
    assert not report.unexpected
    # Draining answers what it took; nothing was refused for shutting down.
    assert set(report.statuses) == {201}, report.statuses
