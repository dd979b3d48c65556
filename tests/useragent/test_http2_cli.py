"""`tidings listen` and `tidings agent` over RFC 8030, as real processes."""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import sys
from pathlib import Path

import httpx

from support.service import RunningService, running_service
from tidings.service.tls import self_signed
from tidings.webpush import VapidKey, encrypt

from .helpers import send_pywebpush
from .test_cli import read_json_line, stop, tidings, wait_records

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


async def test_listen_with_an_h2c_url(service: RunningService) -> None:
    key = VapidKey.generate()
    h2c = service.url.replace("http://", "h2c://")
    process = await tidings(
        "listen", "--service", h2c, "--application-server-key", key.public_key_b64
    )
    try:
        subscription = await read_json_line(process)
        assert subscription["endpoint"].startswith(service.url + "/push/")
        assert await send_pywebpush(subscription, "hello over HTTP/2", key) == 201
        line = await read_json_line(process)
        assert line["text"] == "hello over HTTP/2"
        assert line["id"].startswith(service.url + "/m/")
    finally:
        code, stderr = await stop(process)
    assert code == 0, stderr
    assert "Traceback" not in stderr


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


async def test_agent_subscribe_then_daemon_over_rfc8030(
    service: RunningService, tmp_path: Path
) -> None:
    key = VapidKey.generate()
    state, out = tmp_path / "state", tmp_path / "out"
    out.mkdir()
    script = tmp_path / "wake.py"
    script.write_text(WAKE_SCRIPT)
    command = f"{sys.executable} {script} {out}"
    process = await tidings(
        "agent", "subscribe", "--service", service.url, "--protocol", "rfc8030",
        "--state", str(state), "--scope", "wake", "--key", key.public_key_b64, "--exec", command,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, stderr.decode()
    subscription = json.loads(stdout)
    assert await send_pywebpush(subscription, "wake up", key) == 201  # nothing runs now

    daemon = await tidings(
        "agent", "--service", service.url, "--protocol", "rfc8030", "--state", str(state)
    )
    try:
        records = await wait_records(out, 1)
        assert records[0]["stdin"] == "wake up"
        assert records[0]["event"] == "push" and records[0]["scope"] == "wake"
        assert records[0]["endpoint"] == subscription["endpoint"]
        assert records[0]["message_id"].startswith(service.url + "/m/")
        assert await send_pywebpush(subscription, "again", key) == 201
        records = await wait_records(out, 2)
        assert sorted(r["stdin"] for r in records) == ["again", "wake up"]
    finally:
        code, stderr = await stop(daemon, signal.SIGTERM)
    assert code == 0, stderr

    process = await tidings(
        "agent", "unsubscribe", "--service", service.url, "--protocol", "rfc8030",
        "--state", str(state), "--scope", "wake",
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, stderr.decode()
    assert await send_pywebpush_status(subscription, key) in (404, 410)


async def send_pywebpush_status(info: dict[str, object], key: VapidKey) -> int:
    from pywebpush import WebPushException

    try:
        return await send_pywebpush(info, "x", key)
    except WebPushException as exc:
        assert exc.response is not None
        return int(exc.response.status_code)
