"""What TLS connections cost `tidings serve` before and after their handshake.

For each source tree (`--src`, repeat it to compare main's and a branch's; the trees
alternate within each round), a fresh `tidings serve` over TLS for each measure
(uvloop; loopback exempt from the per-address caps, so both trees do the same work):

- silent: `--silent` TCP connections to the TLS port that send nothing: the service's
  RSS growth per connection, and how many it counts (`tidings_open_connections`);
- hello: `--hello` connections that send a whole ClientHello and then nothing more: the
  service has done its share of the handshake (key exchange, signature) and waits for
  the client's Finished; RSS per connection and CPU per handshake;
- full: `--full` connections one after another, each a whole handshake and one
  request (`connection: close`): the service's CPU per connection;
- flood: `--flood` silent connections from 127.0.0.2, which here counts (only
  127.0.0.1 exempt), the default caps in force: how many the service closed within a
  second, how many descriptors it holds for them, what it counts.

    python bench/tls_handshakes.py [--src DIR ...] [--rounds 2] [--phases silent,hello,full,flood]

RSS is read from /proc after the connections are open and the service has settled;
CPU from /proc/<pid>/stat (all threads). Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "src"))

from benchkit import free_port, process_cpu_seconds  # noqa: E402
from h2_abuse_rss import rss_mb  # noqa: E402
from tidings.service.tls import self_signed  # noqa: E402

SETTLE = 1.0  # seconds for the service to take every connection before RSS is read
LIMIT = 120.0  # seconds any one phase may take


def start(src: str, directory: Path, cert: str, key: str) -> tuple[subprocess.Popen[bytes], int]:
    """`tidings serve` from the tree `src`, over TLS, once it answers /health."""
    port = free_port()
    command = [sys.executable, "-m", "tidings", "serve", "--port", str(port)]
    command += ["--db", str(directory / "tidings.db"), "--log-level", "warning"]
    command += ["--tls-cert", cert, "--tls-key", key]
    env = {**os.environ, "PYTHONPATH": src, "TIDINGS_TLS_HANDSHAKE_TIMEOUT": "600"}
    env["TIDINGS_RATE_LIMIT_EXEMPT"] = "127.0.0.1/32"  # 127.0.0.2 counts (the flood's)
    process = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.DEVNULL)
    trust = ssl.create_default_context(cafile=cert)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"https://127.0.0.1:{port}/health", verify=trust).status_code == 200:
                return process, port
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("tidings serve did not start")


def open_connections(port: int) -> float:
    """`tidings_open_connections` as the service counts it (-1 if it has no such gauge)."""
    text = httpx.get(f"https://127.0.0.1:{port}/metrics", verify=False).text
    for line in text.splitlines():
        if line.startswith("tidings_open_connections "):
            return float(line.split()[1])
    return -1.0


def client_hello(trust: ssl.SSLContext) -> bytes:
    """A fresh ClientHello (its own key share), as a client's first flight."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = trust.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def hold(
    port: int, count: int, hello: bool, trust: ssl.SSLContext, source: str = "127.0.0.1"
) -> list[socket.socket]:
    """`count` connections from `source`, each sending a ClientHello (`hello`) or nothing."""
    sockets = []
    deadline = time.monotonic() + LIMIT
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        sock = socket.create_connection(("127.0.0.1", port), 10, (source, 0))
        if hello:
            sock.sendall(client_hello(trust))
        sockets.append(sock)
    return sockets


def full(port: int, count: int, trust: ssl.SSLContext) -> int:
    """`count` whole handshakes, each with one request; how many were answered 200."""
    done = 0
    deadline = time.monotonic() + LIMIT
    request = b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n"
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as tcp,
            trust.wrap_socket(tcp, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(request)
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
            done += answer.startswith(b"HTTP/1.1 200")
    return done


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the service has closed `sock` (EOF or reset waiting), without blocking."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def flood(src: str, pid: int, port: int, count: int, trust: ssl.SSLContext) -> None:
    """`count` silent connections from one counted address, a second to settle."""
    descriptors = len(os.listdir(f"/proc/{pid}/fd"))
    sockets = hold(port, count, False, trust, source="127.0.0.2")
    time.sleep(SETTLE)
    held = len(os.listdir(f"/proc/{pid}/fd")) - descriptors
    closed = sum(closed_by_server(sock) for sock in sockets)
    text = httpx.get(f"https://127.0.0.1:{port}/metrics", verify=trust).text
    wanted = ("tidings_open_connections ", "tidings_tls_handshakes ", "tidings_connections_")
    lines = text.splitlines()
    figures = [line for line in lines if line.startswith(wanted) and "_created" not in line]
    print(
        f"{src}\tflood\t{len(sockets)} from 127.0.0.2\tclosed within {SETTLE:.0f} s: {closed}\t"
        f"descriptors held: {held}\t{'; '.join(figures)}",
        flush=True,
    )
    for sock in sockets:
        sock.close()


def measure(src: str, phase: str, count: int, directory: Path, cert: str, key: str) -> None:
    """One phase against a fresh service (freed memory would be reused by the next)."""
    trust = ssl.create_default_context(cafile=cert)
    trust.set_alpn_protocols(["http/1.1"])
    process, port = start(src, directory, cert, key)
    try:
        open_connections(port)  # warm: the first TLS request and /metrics allocate once
        full(port, 10, trust)
        time.sleep(SETTLE)
        before_rss, before_cpu = rss_mb(process.pid), process_cpu_seconds(process.pid)
        if phase == "full":
            started = time.monotonic()
            answered = full(port, count, trust)
            elapsed = time.monotonic() - started
            cpu = process_cpu_seconds(process.pid) - before_cpu
            print(
                f"{src}\tfull\t{answered} answered in {elapsed:.1f} s\t"
                f"service CPU {cpu * 1000 / max(1, answered):.2f} ms each",
                flush=True,
            )
            return
        if phase == "flood":
            flood(src, process.pid, port, count, trust)
            return
        sockets = hold(port, count, phase == "hello", trust)
        time.sleep(SETTLE)
        rss, cpu = rss_mb(process.pid), process_cpu_seconds(process.pid)
        counted = open_connections(port) - 1  # less the /metrics request's own
        held = max(1, len(sockets))
        print(
            f"{src}\t{phase}\t{len(sockets)} held\tcounted {counted:.0f}\t"
            f"RSS +{rss - before_rss:.1f} MB ({(rss - before_rss) * 1024 / held:.1f} kB each)\t"
            f"CPU {(cpu - before_cpu) * 1000 / held:.2f} ms each",
            flush=True,
        )
        for sock in sockets:
            sock.close()
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(30)
        process.kill()  # a no-op once it has exited
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", action="append", help="a source tree (default: this one)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--silent", type=int, default=2000)
    parser.add_argument("--hello", type=int, default=1000)
    parser.add_argument("--full", type=int, default=500)
    parser.add_argument("--flood", type=int, default=5000)
    parser.add_argument(
        "--phases", default="silent,hello,full,flood", help="which, comma-separated"
    )
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        cert_pem, key_pem = self_signed(["127.0.0.1"])
        cert, key = directory / "cert.pem", directory / "key.pem"
        cert.write_bytes(cert_pem)
        key.write_bytes(key_pem)
        counts = {"silent": args.silent, "hello": args.hello, "full": args.full}
        counts["flood"] = args.flood
        phases = [(phase, counts[phase]) for phase in args.phases.split(",")]
        runs = 0
        for _ in range(args.rounds):
            for phase, count in phases:
                for src in args.src or [str(REPO / "src")]:
                    runs += 1
                    run = directory / str(runs)
                    run.mkdir()
                    measure(src, phase, count, run, str(cert), str(key))


if __name__ == "__main__":
    main()
