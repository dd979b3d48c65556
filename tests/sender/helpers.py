"""Test helpers for the sender: real subscriptions with private keys, and scripted push services."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import http_ece
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from support.ci import free_port
from tidings.webpush import b64url_decode, b64url_encode


@dataclass
class Keys:
    """A user agent's side of a subscription: what it needs to decrypt."""

    private_key: ec.EllipticCurvePrivateKey
    auth: bytes

    @classmethod
    def generate(cls) -> Keys:
        return cls(ec.generate_private_key(ec.SECP256R1()), os.urandom(16))

    @property
    def p256dh(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )

    def subscription(self, endpoint: str) -> dict[str, Any]:
        return {
            "endpoint": endpoint,
            "expirationTime": None,
            "keys": {"p256dh": b64url_encode(self.p256dh), "auth": b64url_encode(self.auth)},
        }

    def decrypt(self, body: bytes, headers: dict[str, str]) -> bytes:
        """Decrypt with http_ece, the third-party implementation pywebpush uses."""
        encoding = headers["Content-Encoding"]
        if encoding == "aes128gcm":
            return bytes(
                http_ece.decrypt(
                    body, private_key=self.private_key, auth_secret=self.auth, version="aes128gcm"
                )
            )
        params = dict(
            p.strip().split("=", 1) for p in headers["Crypto-Key"].replace(",", ";").split(";")
        )
        salt = headers["Encryption"].split("=", 1)[1]
        return bytes(
            http_ece.decrypt(
                body,
                private_key=self.private_key,
                dh=b64url_decode(params["dh"]),
                salt=b64url_decode(salt),
                auth_secret=self.auth,
                version="aesgcm",
            )
        )


Answer = tuple[int, dict[str, str], bytes]


@dataclass
class Seen:
    """One request the scripted service received."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    peer: Any


@dataclass
class ScriptedService:
    """A local push service whose answers a test scripts per path (aiohttp, HTTP/1.1)."""

    port: int = 0
    requests: list[Seen] = field(default_factory=list)
    scripts: dict[str, list[Answer]] = field(default_factory=dict)
    default: Answer = (201, {"Location": "/m/1", "TTL": "60"}, b"")
    delay: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0
    peers: set[Any] = field(default_factory=set)
    chunked: bool = False
    handler_hook: Callable[[web.Request], Any] | None = None
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def endpoint(self, path: str) -> str:
        return f"{self.url}/push/{path}"

    def script(self, path: str, *answers: Answer) -> None:
        """Answer requests to /push/<path> with these, in order (then the default)."""
        self.scripts[path] = list(answers)

    def seen(self, path: str) -> list[Seen]:
        return [r for r in self.requests if r.path == path]

    def plaintexts(self, keys: list[Keys], prefix: str) -> list[list[bytes]]:
        """For subscriber i (path `prefix`i), every request it got, decrypted with its keys."""
        return [
            [k.decrypt(r.body, r.headers) for r in self.seen(f"{prefix}{i}")]
            for i, k in enumerate(keys)
        ]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        path = request.match_info["path"]
        self.requests.append(
            Seen(path, dict(request.headers), body, time.monotonic(), request.transport)
        )
        self.peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        queue = self.scripts.get(path)
        status, headers, payload = queue.pop(0) if queue else self.default
        if self.chunked:
            response = web.StreamResponse(status=status, headers=headers)
            response.enable_chunked_encoding()
            await response.prepare(request)
            for i in range(0, len(payload), 7):
                await response.write(payload[i : i + 7])
            await response.write_eof()
            return response
        return web.Response(status=status, headers=headers, body=payload)

    async def start(self) -> ScriptedService:
        app = web.Application(client_max_size=1 << 20)
        app.router.add_post("/push/{path}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def error_body(code: int, errno: int, error: str, message: str) -> bytes:
    import json

    return json.dumps({"code": code, "errno": errno, "error": error, "message": message}).encode()
