"""What the benchmarks share: free ports, readiness waits, and `tidings serve` itself.

Imported by the scripts in bench/ (which put this folder on `sys.path`), as `rawws` is.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 20) -> None:
    """Return once something accepts connections on 127.0.0.1:`port`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def start_tidings(
    port: int,
    db: Path | str,
    *extra: str,
    config: Path | None = None,
    stdout: IO[Any] | int | None = None,
    stderr: IO[Any] | int | None = None,
    env: dict[str, str] | None = None,
    profile_to: str | None = None,
) -> subprocess.Popen[bytes]:
    """`tidings serve` on 127.0.0.1:`port` with the store `db`, logging warnings only;
    with `profile_to`, under cProfile, its stats written there once it has drained."""
    profiler = ("-m", "cProfile", "-o", profile_to) if profile_to else ()
    command: Sequence[str] = [
        *(sys.executable, *profiler, "-m", "tidings", "serve"),
        *("--port", str(port), "--db", str(db)),
        *("--log-level", "warning"),
        *(("--config", str(config)) if config is not None else ()),
        *extra,
    ]
    return subprocess.Popen(command, cwd=REPO, stdout=stdout, stderr=stderr, env=env)


def wait_healthy(port: int, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """Return once the service answers 200 on /health; kill it and raise otherwise."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).status_code == 200:
                return
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("tidings serve did not start")


def thread_cpu(pid: int) -> dict[str, int]:
    """CPU clock ticks (user + system) used so far by each thread of `pid`: the event
    loop is "main", the others (the SQLite worker, executors) are named by thread id."""
    ticks: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            name = "main" if task.name == str(pid) else f"thread {task.name}"
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            ticks[name] = int(fields[11]) + int(fields[12])
    return ticks


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, every thread, ended ones too) used so far by `pid`."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
