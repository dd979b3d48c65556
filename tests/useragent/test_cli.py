"""`tidings listen` and `tidings agent` as real processes against a real service, over
both push protocols (Firefox's WebSocket protocol and RFC 8030)."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

import httpx

from support.service import REPO, RunningService, running_service
from tidings.service.tls import self_signed
from tidings.webpush import VapidKey, encrypt

from .helpers import send_pywebpush
from .test_end_to_end import protocol, send_pywebpush_status

__all__ = ["protocol"]  # the fixture, shared with test_end_to_end

# Named by a hash of the message id: over RFC 8030 the id is a URL.
WAKE_SCRIPT = """
import hashlib, json, os, sys
out = sys.argv[1]
message_id = os.environ.get("TIDINGS_MESSAGE_ID", "")
record = {
    "stdin": sys.stdin.buffer.read().decode(),
    "event": os.environ["TIDINGS_EVENT"],
    "scope": os.environ["TIDINGS_SCOPE"],
    "message_id": message_id,
    "endpoint": os.environ["TIDINGS_ENDPOINT"],
}
name = hashlib.sha256(message_id.encode()).hexdigest()
with open(os.path.join(out, name + ".json"), "w") as f:
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


def service_args(service: RunningService, protocol: str) -> list[str]:
    """`--service` (and `--protocol`) for `protocol`: the ws:// URL, or RFC 8030 by option."""
    if protocol == "rfc8030":
        return ["--service", service.url, "--protocol", "rfc8030"]
    return ["--service", service.ws_url]


async def test_listen_prints_a_subscription_pywebpush_accepts(
    service: RunningService, protocol: str
) -> None:
    key = VapidKey.generate()
    # An http:// URL means the WebSocket protocol; an h2c:// URL means RFC 8030.
    url = service.url.replace("http://", "h2c://") if protocol == "rfc8030" else service.url
    process = await tidings(
        "listen", "--service", url, "--application-server-key", key.public_key_b64
    )
    try:
        subscription = await read_json_line(process)
        assert set(subscription) == {"endpoint", "expirationTime", "keys"}
        assert subscription["endpoint"].startswith(service.url + "/push/")
        assert await send_pywebpush(subscription, "hello listener", key) == 201
        first = await read_json_line(process)
        assert first["text"] == "hello listener"
        assert set(first) == {"id", "received_at", "text"}
        if protocol == "rfc8030":
            assert first["id"].startswith(service.url + "/m/")
        assert await send_pywebpush(subscription, b"\xff\x00\xfe", key) == 201
        second = await read_json_line(process)
        assert base64.b64decode(second["base64"]) == b"\xff\x00\xfe"
        assert second["id"] != first["id"]
    finally:
        code, stderr = await stop(process)
    assert code == 0, stderr
    assert "Traceback" not in stderr


async def test_agent_exec_wakes_a_command_that_was_not_running(
    service: RunningService, tmp_path: Path, protocol: str
) -> None:
    key = VapidKey.generate()
    state, out = tmp_path / "state", tmp_path / "out"
    out.mkdir()
    script = tmp_path / "wake.py"
    script.write_text(WAKE_SCRIPT)
    command = f"{sys.executable} {script} {out}"
    connect = service_args(service, protocol)
    process = await tidings(
        "agent", "subscribe", *connect, "--state", str(state),
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

    daemon = await tidings("agent", *connect, "--state", str(state))
    try:
        records = await wait_records(out, 1)
        assert records[0]["stdin"] == "wake up"
        assert records[0]["event"] == "push" and records[0]["scope"] == "wake"
        assert records[0]["endpoint"] == subscription["endpoint"]
        assert records[0]["message_id"]
        if protocol == "rfc8030":
            assert records[0]["message_id"].startswith(service.url + "/m/")
        # A live message wakes the command again.
        assert await send_pywebpush(subscription, "again", key) == 201
        records = await wait_records(out, 2)
        assert sorted(r["stdin"] for r in records) == ["again", "wake up"]
    finally:
        code, stderr = await stop(daemon, signal.SIGTERM)
    assert code == 0, stderr
    assert service.service is not None
    assert await service.service.pending(_uaid(service, state, protocol)) == []  # both acked

    process = await tidings(
        "agent", "unsubscribe", *connect, "--state", str(state), "--scope", "wake"
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, stderr.decode()
    assert await send_pywebpush_status(subscription, key) in (404, 410)


def _uaid(service: RunningService, state: Path, protocol: str) -> str:
    """The service's id of the user agent whose state is `state`."""
    from tidings.useragent.state import StateStore

    store = StateStore(state)
    try:
        assert store.uaid is not None
        if protocol == "rfc8030":  # the set URL: the service knows the set by its token
            assert service.service is not None
            return service.service.open_set(store.uaid.rsplit("/set/", 1)[1])
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


# RFC 8030 only ----------------------------------------------------------------------------------


async def test_listen_over_tls_with_cafile(tmp_path: Path) -> None:
    cert, key_pem = self_signed(["127.0.0.1"])
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key_pem)
    settings = {"tls_cert": str(tmp_path / "cert.pem"), "tls_key": str(tmp_path / "key.pem")}
    async with running_service(tmp_path / "svc", **settings) as service:
        process = await tidings(
            "listen", "--service", service.url, "--protocol", "rfc8030",
            "--cafile", str(tmp_path / "cert.pem"),
        )  # fmt: skip
        try:
            subscription = await read_json_line(process)
            keys = subscription["keys"]
            body = encrypt(b"secure", keys["p256dh"], keys["auth"])
            context = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
            async with httpx.AsyncClient(verify=context) as client:
                response = await client.post(
                    subscription["endpoint"],
                    content=body,
                    headers={"TTL": "60", "Content-Encoding": "aes128gcm"},
                )
            assert response.status_code == 201
            assert (await read_json_line(process))["text"] == "secure"
        finally:
            code, stderr = await stop(process)
        assert code == 0, stderr
