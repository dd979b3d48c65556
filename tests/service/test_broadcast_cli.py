"""`tidings broadcast set/list/delete` against a running service (a real process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support.service import REPO, ServiceProcess, TestAgent

TOKEN = "cli-admin-token"


def tidings(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tidings", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "src")},
    )


async def test_set_list_delete_and_the_client_hears(tmp_path: Path) -> None:
    process = ServiceProcess(tmp_path / "svc", args=["--dashboard-token", TOKEN])
    process.start()
    try:
        agent = TestAgent(process.ws_url)
        await agent.connect(hello=False)
        await agent.send({"messageType": "hello", "broadcasts": {}})
        await agent.expect("hello")
        common = ("--service", process.url, "--token", TOKEN)
        done = tidings("broadcast", "set", "kinto:5", "v1", *common)
        assert done.returncode == 0, done.stderr
        await agent.send({"messageType": "broadcast_subscribe", "broadcasts": {"kinto:5": "v0"}})
        assert (await agent.expect("broadcast"))["broadcasts"] == {"kinto:5": "v1"}
        assert tidings("broadcast", "set", "kinto:5", "v2", *common).returncode == 0
        assert (await agent.expect("broadcast", timeout=30))["broadcasts"] == {"kinto:5": "v2"}
        listed = tidings("broadcast", "list", *common)
        assert json.loads(listed.stdout) == {"kinto:5": "v2"}
        assert tidings("broadcast", "delete", "kinto:5", *common).returncode == 0
        assert json.loads(tidings("broadcast", "list", *common).stdout) == {}
        await agent.close()
    finally:
        process.stop()


def test_without_the_token_the_command_fails_and_nothing_changes(tmp_path: Path) -> None:
    process = ServiceProcess(tmp_path / "svc", args=["--dashboard-token", TOKEN])
    process.start()
    try:
        refused = tidings("broadcast", "set", "kinto:5", "v1", "--service", process.url)
        assert refused.returncode == 1
        assert "401" in refused.stderr
        wrong = tidings(
            "broadcast", "set", "kinto:5", "v1", "--service", process.url, "--token", "x"
        )
        assert wrong.returncode == 1
        listed = tidings("broadcast", "list", "--service", process.url, "--token", TOKEN)
        assert json.loads(listed.stdout) == {}
    finally:
        process.stop()
