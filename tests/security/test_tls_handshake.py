"""A client that opens TCP to the TLS port and never finishes the handshake is closed.

`tls_handshake_timeout` (10 s by default, asyncio's own default is 60 s) bounds how long
such a connection holds a socket and TLS state. Checked in this event loop and against
a real `tidings serve` process (uvloop, the setting given through the environment).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.ci import free_port
from support.service import REPO, running_service
from tidings.service.config import ServiceConfig
from tidings.service.tls import self_signed

DEADLINE = 30.0  # generous for a loaded machine, and well under asyncio's 60 s default


def certificate(directory: Path) -> tuple[str, str]:
    cert_pem, key_pem = self_signed(["127.0.0.1"])
    cert, key = directory / "cert.pem", directory / "key.pem"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    key.chmod(0o600)
    return str(cert), str(key)


async def closed_by_server(port: int, first_bytes: bytes = b"") -> bytes:
    """Connect, send `first_bytes` (maybe nothing), then read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if first_bytes:
            writer.write(first_bytes)
            await writer.drain()
        received = b""
        async with asyncio.timeout(DEADLINE):
            while chunk := await reader.read(65536):
                received += chunk
        return received
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def test_setting() -> None:
    assert ServiceConfig().tls_handshake_timeout == 10.0
    with pytest.raises(ValueError, match="tls_handshake_timeout"):
        ServiceConfig(tls_handshake_timeout=0)


async def test_silent_and_stalled_handshakes_are_closed(tmp_path: Path) -> None:
    cert, key = certificate(tmp_path)
    async with running_service(
        tmp_path, tls_cert=cert, tls_key=key, tls_handshake_timeout=0.5
    ) as running:
        port = running.config.port
        # Nothing at all, and the first bytes of a ClientHello (a TLS record header).
        silent, stalled = await asyncio.gather(
            closed_by_server(port), closed_by_server(port, b"\x16\x03\x01\x02\x00\x01")
        )
        assert silent == b"" and stalled == b""
        # A real client still gets through.
        trust = ssl.create_default_context(cafile=cert)
        async with httpx.AsyncClient(verify=trust, timeout=10) as client:
            assert (await client.get(running.url + "/health")).status_code == 200


@contextlib.contextmanager
def tls_serve(tmp_path: Path, **settings: str) -> Iterator[tuple[int, str]]:
    """`tidings serve` over TLS (uvloop), `settings` as TIDINGS_* variables: port and CA."""
    cert, key = certificate(tmp_path)
    port = free_port()
    command = [sys.executable, "-m", "tidings", "serve", "--port", str(port)]
    command += ["--db", str(tmp_path / "tidings.db"), "--tls-cert", cert, "--tls-key", key]
    variables = {f"TIDINGS_{name.upper()}": value for name, value in settings.items()}
    env = {**os.environ, **variables, "PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "service.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=log, cwd=REPO, env=env)
    try:
        trust = ssl.create_default_context(cafile=cert)
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, (tmp_path / "service.log").read_text()
            try:
                if httpx.get(f"https://127.0.0.1:{port}/health", verify=trust).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "tidings serve did not start"
                time.sleep(0.05)
        yield port, cert
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
def tls_process(tmp_path: Path) -> Iterator[tuple[int, str]]:
    with tls_serve(tmp_path, tls_handshake_timeout="0.5") as running:
        yield running


async def test_a_real_server_closes_a_silent_client(tls_process: tuple[int, str]) -> None:
    port, _ = tls_process
    assert await closed_by_server(port) == b""
