"""The seeded short fault campaign (issue 22, docs/reliability.md) in `make test`.

Three nodes, PostgreSQL with a synchronous replica and Redis in network namespaces of
their own (lab 1: 198.18.1.0/24, so a long run in lab 0 may go on meanwhile), a
seeded nemesis and the checker; the campaign exits 1 when a promise was broken or a
node stayed unhealthy. It needs root (namespaces, iptables, tc, tmpfs mounts for the
PostgreSQL data directories), `fallocate` and the PostgreSQL and
Redis servers: outside CI their absence skips it with what is missing, in CI it fails.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from support.ci import require

REPO = Path(__file__).resolve().parents[2]
SEED = 11
# About two minutes on a loaded two-core machine: set-up, 45 s of faults, drain.
ARGUMENTS = ("--duration", "45", "--agents", "8", "--rfc8030-agents", "3", "--rate", "20",
             "--after", "4", "--drain", "12", "--lab", "1")  # fmt: skip

pytestmark = pytest.mark.timeout(420)


def missing() -> list[str]:
    """What this machine lacks for a campaign (empty when it can run one)."""
    gaps = []
    if os.geteuid() != 0:
        gaps.append("root (network namespaces, iptables, tc, tmpfs mounts)")
    for tool in ("ip", "iptables", "tc", "redis-server", "mount", "fallocate"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            gaps.append(tool)
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        gaps.append("the PostgreSQL server (initdb, pg_basebackup)")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        gaps.append("a postgres system user")
    if not gaps:
        probe = subprocess.run(["ip", "netns", "add", "tdf9-probe"], capture_output=True)
        subprocess.run(["ip", "netns", "del", "tdf9-probe"], capture_output=True)
        if probe.returncode != 0:
            gaps.append(f"network namespaces ({probe.stderr.decode().strip()})")
    return gaps


def test_a_short_seeded_campaign_keeps_every_promise() -> None:
    gaps = missing()
    require(not gaps, "for the fault campaign: " + ", ".join(gaps))
    # Not under pytest's tmp_path: its parent is root's alone, and PostgreSQL runs as
    # postgres. Kept when the campaign fails, for its history and logs.
    out = Path(tempfile.mkdtemp(prefix="tidings-faults-short-"))
    out.chmod(0o755)
    command = [sys.executable, str(REPO / "bench" / "faults" / "campaign.py"),
               "--seed", str(SEED), "--out", str(out), *ARGUMENTS]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    report = run.stdout[-6000:] + run.stderr[-3000:]
    assert run.returncode == 0, f"the campaign broke a promise (history in {out}):\n{report}"
    assert "receipts due" in run.stdout and "faults injected" in run.stdout, report
    shutil.rmtree(out, ignore_errors=True)
