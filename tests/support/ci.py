"""Skip-or-fail policy for tests that need a real peer (Firefox, node, PostgreSQL, Redis).

Outside CI a missing peer skips the test with a message saying what is missing; in CI
(the CI environment variable is set) the same absence fails the test, so nothing that
CI is meant to prove is ever silently skipped there.
"""

from __future__ import annotations

import os
import socket

import pytest


def in_ci() -> bool:
    """True when running under CI (CI=true or any non-empty value but 'false'/'0')."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def require(available: bool, what: str) -> None:
    """Skip (outside CI) or fail (in CI) the calling test unless `available`."""
    if available:
        return
    if in_ci():
        pytest.fail(f"{what} is required in CI but missing", pytrace=False)
    pytest.skip(f"{what} is missing; install it or run `make test` to run this test")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tcp_reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
