"""`bench/service_load.py`'s do-nothing server (its "ceiling" line) still runs on the
current HTTP/1.1 code: it broke once when connections started asking for admission."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from support.bench import load_bench

REPO = Path(__file__).resolve().parents[1]


def _null_server_code() -> str:
    return str(load_bench("service_load").NULL_SERVER)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_null_server_answers_201() -> None:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", _null_server_code(), str(port), str(REPO / "src")],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                answer = httpx.post(f"http://127.0.0.1:{port}/push/x", content=b"\0" * 230)
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        assert answer.status_code == 201
        assert answer.headers["location"] == "/m/x"
    finally:
        server.terminate()
        _, errors = server.communicate(timeout=10)
    assert b"Traceback" not in errors
