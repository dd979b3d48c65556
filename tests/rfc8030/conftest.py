"""Fixtures for the RFC 8030 conformance suite: a service and HTTP/2 clients."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.service import RunningService, running_service
from tidings.http2 import H2Client
from tidings.service.tls import self_signed


@dataclass
class Rfc8030:
    """A running service and a way to open HTTP/2 connections to it."""

    service: RunningService
    ssl_context: ssl.SSLContext | None = None

    async def connect(self) -> H2Client:
        return await H2Client.connect(self.service.url, ssl_context=self.ssl_context)


@pytest.fixture(params=["h2c", "tls"])
async def rfc(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Rfc8030]:
    """The service over cleartext HTTP/2 (prior knowledge) and over TLS with ALPN h2."""
    settings: dict[str, object] = {"expiry_sweep_interval": 0.2}
    context = None
    if request.param == "tls":
        cert, key = self_signed(["127.0.0.1"])
        (tmp_path / "cert.pem").write_bytes(cert)
        (tmp_path / "key.pem").write_bytes(key)
        settings |= {"tls_cert": str(tmp_path / "cert.pem"), "tls_key": str(tmp_path / "key.pem")}
        context = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    async with running_service(tmp_path, **settings) as service:
        yield Rfc8030(service, context)


@pytest.fixture
async def h2c(tmp_path: Path) -> AsyncIterator[Rfc8030]:
    """The service over cleartext HTTP/2 only (for tests whose transport does not matter)."""
    async with running_service(tmp_path, expiry_sweep_interval=0.2) as service:
        yield Rfc8030(service)
