"""Running a Tidings push service in tests, and a minimal user agent to talk to it.

`running_service()` runs the service inside the test's event loop (fast, inspectable);
`ServiceProcess` runs `tidings serve` as a real process (for restarts and kills).
`TestAgent` speaks Firefox's WebSocket protocol with real keys, so what it receives
is decrypted exactly as a browser would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from support.ci import free_port
from tidings.service.config import ServiceConfig
from tidings.service.core import PushService
from tidings.service.http.server import HttpServer
from tidings.service.push_app import PushApp
from tidings.service.run import build_server
from tidings.webpush import VapidKey, b64url_encode, decrypt, public_key_bytes

REPO = Path(__file__).resolve().parents[2]


@dataclass
class RunningService:
    """A service started by a test: its URLs and, in-process, the objects themselves."""

    config: ServiceConfig
    service: PushService | None = None
    server: HttpServer[PushApp] | None = None  # in-process: the listener (its connections)

    @property
    def url(self) -> str:
        return self.config.origin

    @property
    def ws_url(self) -> str:
        return self.config.websocket_url

    async def agent(self, uaid: str | None = None) -> TestAgent:
        """A connected test user agent that has said hello."""
        agent = TestAgent(self.ws_url)
        await agent.connect(uaid)
        return agent


@contextlib.asynccontextmanager
async def running_service(tmp_path: Path, **settings: Any) -> AsyncIterator[RunningService]:
    """Run the service in this event loop on a free port until the block ends."""
    config = ServiceConfig(
        port=free_port(), db=str(tmp_path / "tidings.db"), log_level="warning"
    ).with_overrides(settings)
    server = build_server(config)
    await server.start()
    try:
        yield RunningService(config, server.app.service, server)
    finally:
        await server.stop(grace=2)


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[RunningService]:
    """A push service on SQLite in a temporary directory, in this event loop."""
    async with running_service(tmp_path) as running:
        yield running


class ServiceProcess:
    """`tidings serve` as a separate process, which a test can stop, kill and restart."""

    def __init__(self, data_dir: Path, *, port: int | None = None, args: list[str] | None = None):
        self.data_dir = data_dir
        self.port = port or free_port()
        self.args = args or []
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "service.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def start(self, timeout: float = 20) -> None:
        """Start the process and wait until /health answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        command = [sys.executable, "-m", "tidings", "serve", "--port", str(self.port)]
        command += ["--db", str(self.data_dir / "tidings.db"), *self.args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(command, stdout=log, stderr=log, cwd=REPO, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tidings serve exited early:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=0.5).status_code == 200:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"tidings serve did not answer /health:\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Send `sig` and wait for the process to end; return its exit code."""
        if self.process is None:
            return 0
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.process = None
        return code

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        self.stop(signal.SIGKILL)

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


@pytest.fixture
def service_process(tmp_path: Path) -> Any:
    """A started `tidings serve` process; always stopped at teardown."""
    process = ServiceProcess(tmp_path / "service")
    process.start()
    yield process
    process.stop()


def pywebpush_key(key: VapidKey) -> str:
    """A VAPID key in the form pywebpush takes as a string: base64url of PKCS#8 DER."""
    der = key.private_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return b64url_encode(der)


@dataclass
class Registration:
    """A subscription of the test agent, with its private keys."""

    channel_id: str
    endpoint: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes
    application_server_key: str | None = None

    def subscription_info(self) -> dict[str, Any]:
        """The browser's `PushSubscription.toJSON()` for this registration."""
        return {
            "endpoint": self.endpoint,
            "expirationTime": None,
            "keys": {
                "p256dh": b64url_encode(public_key_bytes(self.private_key.public_key())),
                "auth": b64url_encode(self.auth),
            },
        }


@dataclass
class Notification:
    """A `notification` frame, decrypted with the registration's keys when possible."""

    frame: dict[str, Any]
    plaintext: bytes | None

    @property
    def version(self) -> str:
        return str(self.frame["version"])

    @property
    def channel_id(self) -> str:
        return str(self.frame["channelID"])


@dataclass
class TestAgent:
    """A minimal user agent speaking Firefox's WebSocket push protocol."""

    ws_url: str
    uaid: str | None = None
    registrations: dict[str, Registration] = field(default_factory=dict)
    ws: Any = None
    _frames: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    _reader: asyncio.Task[None] | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    close_code: int | None = None

    __test__ = False  # not a pytest test class

    async def connect(self, uaid: str | None = None, *, hello: bool = True) -> None:
        self.ws = await websockets.connect(self.ws_url, open_timeout=10, compression=None)
        self._reader = asyncio.create_task(self._read())
        if hello:
            await self.hello(uaid or self.uaid)

    async def _read(self) -> None:
        try:
            async for text in self.ws:
                self._frames.put_nowait(json.loads(text))
        except websockets.ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.closed.set()

    async def send(self, message: dict[str, Any] | str) -> None:
        await self.ws.send(message if isinstance(message, str) else json.dumps(message))

    async def receive(self, timeout: float = 5) -> dict[str, Any]:
        """The next frame from the service."""
        return await asyncio.wait_for(self._frames.get(), timeout)

    async def expect(self, message_type: str, timeout: float = 5) -> dict[str, Any]:
        """The next frame, which must be of `message_type`."""
        frame = await self.receive(timeout)
        assert frame.get("messageType") == message_type, frame
        return frame

    async def hello(self, uaid: str | None = None) -> dict[str, Any]:
        message: dict[str, Any] = {"messageType": "hello", "broadcasts": {}, "use_webpush": True}
        if uaid:
            message["uaid"] = uaid
        await self.send(message)
        reply = await self.expect("hello")
        self.uaid = reply["uaid"]
        return reply

    async def register(self, application_server_key: str | None = None) -> Registration:
        """Subscribe a new channel, as `pushManager.subscribe` does."""
        channel_id = str(uuid.uuid4())
        message: dict[str, Any] = {"messageType": "register", "channelID": channel_id}
        if application_server_key:
            message["key"] = application_server_key
        await self.send(message)
        reply = await self.expect("register")
        assert reply["status"] == 200, reply
        registration = Registration(
            channel_id,
            reply["pushEndpoint"],
            ec.generate_private_key(ec.SECP256R1()),
            os.urandom(16),
            application_server_key,
        )
        self.registrations[channel_id] = registration
        return registration

    async def unregister(self, registration: Registration) -> dict[str, Any]:
        await self.send(
            {"messageType": "unregister", "channelID": registration.channel_id, "code": 200}
        )
        self.registrations.pop(registration.channel_id, None)
        return await self.expect("unregister")

    async def next_notification(self, timeout: float = 5, *, ack: bool = True) -> Notification:
        """The next pushed message, decrypted, acknowledged unless told not to."""
        frame = await self.expect("notification", timeout)
        registration = self.registrations.get(frame["channelID"])
        plaintext: bytes | None = None
        if registration is not None and "data" in frame:
            from tidings.webpush import b64url_decode

            body = b64url_decode(frame["data"])
            encoding = frame.get("headers", {}).get("encoding")
            if encoding == "aes128gcm":
                plaintext = decrypt(body, registration.private_key, registration.auth)
        if ack:
            await self.ack(frame)
        return Notification(frame, plaintext)

    async def ack(self, frame: dict[str, Any], code: int = 100) -> None:
        update = {"channelID": frame["channelID"], "version": frame["version"], "code": code}
        await self.send({"messageType": "ack", "updates": [update]})

    async def no_frame(self, within: float = 0.3) -> None:
        """Assert nothing arrives for `within` seconds."""
        with contextlib.suppress(TimeoutError):
            frame = await self.receive(within)
            raise AssertionError(f"unexpected frame {frame}")

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


async def put_broadcast(
    service_url: str, broadcast_id: str, version: str, token: str
) -> httpx.Response:
    """Set a Megaphone broadcast through the admin API (`tidings broadcast set`'s call)."""
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.put(
            f"{service_url}/api/broadcasts/{broadcast_id}",
            json={"version": version},
            headers={"authorization": f"Bearer {token}"},
        )
