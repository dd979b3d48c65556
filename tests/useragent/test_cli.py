"""`tidings listen` and `tidings agent` as real processes against a real service."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import sys
from pathlib import Path
from typing import Any

from support.service import REPO, RunningService
from tidings.webpush import VapidKey

from .helpers import send_pywebpush

WAKE_SCRIPT = """
import json, os, sys
out = sys.argv[1]
record = {
    "stdin": sys.stdin.buffer.read().decode(),
    "event": os.environ["TIDINGS_EVENT"],
    "scope": os.environ["TIDINGS_SCOPE"],
    "message_id": os.environ.get("TIDINGS_MESSAGE_ID", ""),
    "endpoint": os.environ["TIDINGS_ENDPOINT"],
}
with open(os.path.join(out, record["message_id"] + ".json"), "w") as f:
    json.dump(record, f)
"""


async def tidings(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidings",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )


async def read_json_line(process: asyncio.subprocess.Process, timeout: float = 15) -> Any:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout)
    assert line, "the process ended early"
    return json.loads(line)


async def stop(process: asyncio.subprocess.Process, sig: int = signal.SIGINT) -> tuple[int, str]:
    process.send_signal(sig)
    _, stderr = await asyncio.wait_for(process.communicate(), 15)
    assert process.returncode is not None
    return process.returncode, stderr.decode()


async def test_listen_prints_a_subscription_pywebpush_accepts(service: RunningService) -> None:
    key = VapidKey.generate()
    process = await tidings(
        "listen", "--service", service.url, "--application-server-key", key.public_key_b64
    )
    try:
        subscription = await read_json_line(process)
        assert set(subscription) == {"endpoint", "expirationTime", "keys"}
        assert await send_pywebpush(subscription, "hello listener", key) == 201
        first = await read_json_line(process)
        assert first["text"] == "hello listener"
        assert set(first) == {"id", "received_at", "text"}
        assert await send_pywebpush(subscription, b"\xff\x00\xfe", key) == 201
        second = await read_json_line(process)
        assert base64.b64decode(second["base64"]) == b"\xff\x00\xfe"
        assert second["id"] != first["id"]
    finally:
        code, stderr = await stop(process)
    assert code == 0, stderr
    assert "Traceback" not in stderr


async def test_agent_exec_wakes_a_command_that_was_not_running(
    service: RunningService, tmp_path: Path
) -> None:
    key = VapidKey.generate()
    state, out = tmp_path / "state", tmp_path / "out"
    out.mkdir()
    script = tmp_path / "wake.py"
    script.write_text(WAKE_SCRIPT)
    command = f"{sys.executable} {script} {out}"
    process = await tidings(
        "agent", "subscribe", "--service", service.ws_url, "--state", str(state),
        "--scope", "wake", "--key", key.public_key_b64, "--exec", command,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, stderr.decode()
    subscription = json.loads(stdout)
    # Nothing runs now; the message waits at the service.
    assert await send_pywebpush(subscription, "wake up", key) == 201

    listing = await tidings("agent", "list", "--state", str(state), "--json")
    rows = [json.loads(line) for line in (await listing.communicate())[0].splitlines()]
    assert rows == [
        {
            "scope": "wake",
            "exec": command,
            "endpoint": subscription["endpoint"],
            "application_server_key": key.public_key_b64,
        }
    ]

    daemon = await tidings("agent", "--service", service.ws_url, "--state", str(state))
    try:
        records = await wait_records(out, 1)
        assert records[0]["stdin"] == "wake up"
        assert records[0]["event"] == "push" and records[0]["scope"] == "wake"
        assert records[0]["endpoint"] == subscription["endpoint"]
        assert records[0]["message_id"]
        # A live message wakes the command again.
        assert await send_pywebpush(subscription, "again", key) == 201
        records = await wait_records(out, 2)
        assert sorted(r["stdin"] for r in records) == ["again", "wake up"]
    finally:
        code, stderr = await stop(daemon, signal.SIGTERM)
    assert code == 0, stderr
    assert service.service is not None
    assert await service.service.pending(_uaid(state)) == []  # both acknowledged


def _uaid(state: Path) -> str:
    from tidings.useragent.state import StateStore

    store = StateStore(state)
    try:
        assert store.uaid is not None
        return store.uaid
    finally:
        store.close()


async def wait_records(out: Path, count: int, timeout: float = 15) -> list[dict[str, str]]:
    async with asyncio.timeout(timeout):
        while True:
            files = sorted(out.glob("*.json"))
            if len(files) >= count:
                try:
                    return [json.loads(f.read_text()) for f in files]
                except ValueError:
                    pass  # a file being written
            await asyncio.sleep(0.05)
