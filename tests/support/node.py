"""Drive the npm Web Push peers from tests: `web-push` (sender) and `web-push-testing`.

- `WebPushTestingServer` runs the web-push-testing push service (tests/node/wpt-server.js)
  on 127.0.0.1 and wraps its HTTP API (subscribe, get-notifications, expire);
  the fixture `web_push_testing_server` yields a started one.
- `node_send()` sends one message with the `web-push` library (tests/node/send.js)
  and returns the push service's answer.
- `node_cli_send()` runs the `web-push send-notification` CLI itself.

All of it is async (node runs as a subprocess), so a push service running inside the
test's own event loop keeps serving while node talks to it. Everything here calls
`require_node()`: skip outside CI, fail in CI, when node or tests/node/node_modules
is missing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from support.ci import require

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
NODE_MODULES = NODE_DIR / "node_modules"
WEB_PUSH_CLI = NODE_MODULES / ".bin" / "web-push"
PLAIN_HTTP_PRELOAD = NODE_DIR / "plain-http.js"


def node_available() -> bool:
    """True when `node` and the npm peers in tests/node/node_modules are installed."""
    return (
        shutil.which("node") is not None
        and (NODE_MODULES / "web-push" / "package.json").is_file()
        and (NODE_MODULES / "web-push-testing" / "package.json").is_file()
    )


def require_node() -> None:
    """Skip (outside CI) or fail (in CI) unless node and the npm peers are present."""
    require(node_available(), "node + tests/node/node_modules (run make node-deps)")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class VapidKeys:
    """A VAPID key pair in the form web-push, pywebpush and browsers take.

    `public_key`: the raw uncompressed P-256 point (65 bytes), base64url, no padding:
    the applicationServerKey. `private_key`: the raw 32-byte scalar, base64url, no
    padding: what `web-push` and pywebpush's `vapid_private_key` accept.
    """

    public_key: str
    private_key: str

    @classmethod
    def generate(cls) -> VapidKeys:
        """A fresh key pair."""
        key = ec.generate_private_key(ec.SECP256R1())
        public = key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        private = key.private_numbers().private_value.to_bytes(32, "big")
        return cls(public_key=_b64url(public), private_key=_b64url(private))


# --------------------------------------------------------------------------- web-push-testing


class WebPushTestingServer:
    """The npm `web-push-testing` push service, bound to 127.0.0.1, as a subprocess.

    Its HTTP API (all POST, JSON in and out):
    `/subscribe` {applicationServerKey, userVisibleOnly: "true"} -> {data: subscription
    + clientHash}; the endpoint `/notify/<clientHash>` decrypts what it is sent (it
    reads a body only with `Content-Type: application/octet-stream`, checks VAPID when
    the subscription has a key, needs a TTL header) and answers 201;
    `/get-notifications` {clientHash} -> {data: {messages: [plaintext, ...]}};
    `/expire-subscription/<clientHash>` makes later pushes answer 410.
    """

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.url = ""
        self.process: asyncio.subprocess.Process | None = None
        self.output: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 15) -> None:
        """Start `node wpt-server.js` and wait for its ready line."""
        require_node()
        self.process = await asyncio.create_subprocess_exec(
            "node",
            str(NODE_DIR / "wpt-server.js"),
            str(self.port),
            cwd=NODE_DIR,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        except TimeoutError:
            await self.stop()
            raise AssertionError(f"web-push-testing server not ready in {timeout} s") from None
        try:
            ready = json.loads(line)
        except ValueError:
            rest = await _read_rest(self.process, 2)
            await self.stop()
            raise AssertionError(
                f"web-push-testing server failed to start: {line.decode()}{rest}"
            ) from None
        self.port, self.url = int(ready["port"]), str(ready["url"])
        self._reader = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        """Keep reading the server's output so its pipe never fills."""
        assert self.process is not None and self.process.stdout is not None
        async for line in self.process.stdout:
            self.output.append(line.decode(errors="replace").rstrip())

    async def stop(self, timeout: float = 5) -> None:
        """Stop the server by its PID: SIGTERM, then SIGKILL."""
        process, self.process = self.process, None
        if process is not None:
            await _end_process(process, timeout)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None

    async def __aenter__(self) -> WebPushTestingServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _post(self, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
            return await client.post(path, json=body or {})

    async def subscribe(
        self, application_server_key: str | None, *, user_visible_only: bool = True
    ) -> dict[str, Any]:
        """Create a subscription: {endpoint, keys: {p256dh, auth}, clientHash}."""
        # web-push-testing wants the *strings* "true"/"false" here, not JSON booleans.
        body: dict[str, Any] = {"userVisibleOnly": "true" if user_visible_only else "false"}
        if application_server_key is not None:
            body["applicationServerKey"] = application_server_key
        response = await self._post("/subscribe", body)
        if response.status_code != 200:
            raise AssertionError(f"web-push-testing /subscribe: {response.text}")
        return dict(response.json()["data"])

    async def get_notifications(self, client_hash: str) -> list[str]:
        """The plaintexts this subscription has received so far, oldest first."""
        response = await self._post("/get-notifications", {"clientHash": client_hash})
        if response.status_code != 200:
            raise AssertionError(f"web-push-testing /get-notifications: {response.text}")
        return [str(m) for m in response.json()["data"]["messages"]]

    async def wait_notifications(
        self, client_hash: str, count: int = 1, timeout: float = 10
    ) -> list[str]:
        """Wait until at least `count` messages arrived; return them all."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            messages = await self.get_notifications(client_hash)
            if len(messages) >= count:
                return messages
            if loop.time() >= deadline:
                raise AssertionError(
                    f"{len(messages)} of {count} messages in {timeout} s; server says:\n"
                    + "\n".join(self.output[-20:])
                )
            await asyncio.sleep(0.05)

    async def expire(self, client_hash: str) -> None:
        """Expire a subscription: later pushes to it get 410."""
        response = await self._post(f"/expire-subscription/{client_hash}")
        if response.status_code != 200:
            raise AssertionError(f"web-push-testing /expire-subscription: {response.text}")


@pytest.fixture
async def web_push_testing_server() -> AsyncIterator[WebPushTestingServer]:
    """A started web-push-testing push service on 127.0.0.1 (stopped at teardown)."""
    require_node()
    server = WebPushTestingServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


# --------------------------------------------------------------------------- senders


async def node_send(
    subscription: dict[str, Any],
    payload: str | bytes | None = None,
    *,
    vapid: VapidKeys | None = None,
    vapid_public_key: str | None = None,
    vapid_private_key: str | None = None,
    subject: str = "mailto:tests@tidings.invalid",
    ttl: int | None = None,
    urgency: str | None = None,
    topic: str | None = None,
    content_encoding: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> dict[str, Any]:
    """Send one message with the npm `web-push` library (tests/node/send.js).

    Returns {"ok", "statusCode", "headers", "body", "request": {method, endpoint,
    headers, bodyLength}}; or {"ok": False, "error": ...} when no answer came.
    VAPID is used when `vapid` or both key arguments are given. Over http:// the
    library builds the request and send.js sends it with node's http module.
    """
    require_node()
    request: dict[str, Any] = {"subscription": subscription}
    if isinstance(payload, bytes):
        request["payloadBase64"] = base64.b64encode(payload).decode()
    elif payload is not None:
        request["payload"] = payload
    public = vapid.public_key if vapid else vapid_public_key
    private = vapid.private_key if vapid else vapid_private_key
    if public and private:
        request["vapid"] = {"subject": subject, "publicKey": public, "privateKey": private}
    for name, value in (
        ("ttl", ttl),
        ("urgency", urgency),
        ("topic", topic),
        ("contentEncoding", content_encoding),
        ("headers", headers),
    ):
        if value is not None:
            request[name] = value
    request["timeout"] = int(timeout * 1000)
    code, out, err = await _run(
        ["node", str(NODE_DIR / "send.js")], json.dumps(request).encode(), timeout + 10
    )
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise AssertionError(f"send.js printed no result (exit {code}): {out}\n{err}")
    return dict(json.loads(lines[-1]))


@dataclass(frozen=True)
class CliResult:
    """What `web-push send-notification` did. It exits 0 even on failure, so `ok`
    is read from its output ("Push message sent.")."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """True when the CLI reports the message as sent."""
        return self.returncode == 0 and "Push message sent." in self.stdout

    @property
    def status_code(self) -> int | None:
        """The push service's status code from a WebPushError print-out, if any."""
        marker = "statusCode: "
        if marker not in self.stdout:
            return None
        digits = self.stdout.split(marker, 1)[1].split(",", 1)[0].strip()
        return int(digits) if digits.isdigit() else None


async def node_cli_send(
    endpoint: str,
    *,
    key: str | None = None,
    auth: str | None = None,
    payload: str | None = None,
    vapid: VapidKeys | None = None,
    vapid_subject: str = "mailto:tests@tidings.invalid",
    vapid_pubkey: str | None = None,
    vapid_pvtkey: str | None = None,
    ttl: int | None = None,
    encoding: str | None = None,
    plain_http: bool | None = None,
    timeout: float = 30,
) -> CliResult:
    """Run `node_modules/.bin/web-push send-notification` with these options.

    The CLI always sends with https.request, so it cannot reach an http://
    endpoint by itself; with `plain_http` (default: when the endpoint is http://)
    NODE_OPTIONS preloads tests/node/plain-http.js, which turns its https.request
    into http.request. The CLI code and its arguments stay as a user runs them.
    """
    require_node()
    args = [str(WEB_PUSH_CLI), "send-notification", f"--endpoint={endpoint}"]
    public = vapid.public_key if vapid else vapid_pubkey
    private = vapid.private_key if vapid else vapid_pvtkey
    for name, value in (
        ("key", key),
        ("auth", auth),
        ("payload", payload),
        ("ttl", ttl),
        ("encoding", encoding),
        ("vapid-pubkey", public),
        ("vapid-pvtkey", private),
    ):
        if value is not None:
            args.append(f"--{name}={value}")
    if public or private:
        args.append(f"--vapid-subject={vapid_subject}")
    env = dict(os.environ)
    if plain_http if plain_http is not None else endpoint.startswith("http:"):
        preload = f"--require {PLAIN_HTTP_PRELOAD}"
        env["NODE_OPTIONS"] = f"{env.get('NODE_OPTIONS', '')} {preload}".strip()
    code, out, err = await _run(args, b"", timeout, env=env)
    return CliResult(code, out, err)


# --------------------------------------------------------------------------- processes


async def _run(
    args: list[str], stdin: bytes, timeout: float, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """Run a command to completion within `timeout`; killed by PID if it overruns."""
    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=NODE_DIR,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin), timeout)
    except TimeoutError:
        await _end_process(process, 1)
        raise AssertionError(f"{' '.join(args[:2])} did not finish in {timeout} s") from None
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def _read_rest(process: asyncio.subprocess.Process, timeout: float) -> str:
    """Whatever else the process prints within `timeout` (for error messages)."""
    if process.stdout is None:
        return ""
    with contextlib.suppress(TimeoutError):
        return (await asyncio.wait_for(process.stdout.read(), timeout)).decode(errors="replace")
    return ""


async def _end_process(process: asyncio.subprocess.Process, timeout: float) -> None:
    """SIGTERM the process by PID, wait, SIGKILL; always reap it."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), timeout)
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await asyncio.wait_for(process.wait(), 5)
