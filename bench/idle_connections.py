"""Idle WebSocket connections: resident memory and idle CPU per connection (issue 9.3).

Opens N WebSocket connections to a `tidings serve` process, each completing the
push protocol's `hello` (the clients run in other processes, spread over source
addresses 127.0.0.2..n so that ephemeral ports never run out), then reports the
service's resident memory per connection and the CPU it burns while they idle; then
registers a subscription on a random 1% and reports the delivery latency of pushes
to them under that load.

    python bench/idle_connections.py --connections 10000 [--clients 4] [--serve-args ...]
        [--hold 60 --push-rate 50] [--min-available-gib 4]

Each client process holds at most its open-file limit of connections, from source
addresses 127.<client>.<n>.1 (10,000 each). While the connections are held
(`--hold` seconds), pushes go to the subscribed sample at `--push-rate`; the kernel's
memory (Slab, sockstat) is read before and after opening. If the machine's available
memory falls under `--min-available-gib`, the clients are killed and the run reports
what was held.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import rawws  # noqa: E402
from benchkit import free_port, start_tidings, wait_healthy  # noqa: E402

CLIENT_CODE = (
    rawws.client_prelude()
    + r"""
import asyncio, base64, json, os, random, socket, sys, time, uuid
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux
host, port = sys.argv[1], int(sys.argv[2])
count, src_base, sample = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
concurrency = int(sys.argv[6])

from rawws import HANDSHAKE, frame, frames

async def read_some(reader):
    data = await reader.read(4096)
    if not data:  # at end of stream read() returns at once: without this the loop spins
        raise ConnectionResetError("closed by the service before its reply")
    return data

async def connect(i, endpoints, latencies):
    # Source addresses 127.<client>.<n>.1, 10,000 connections each: never short of ports.
    src = f"127.{src_base}.{1 + i // 10000}.1"
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # The port is then chosen by connect() from the whole 4-tuple: bind(src, 0) searches
    # the address's ports itself and took ~6 ms a call at 7,500 ports in use (200,000 held).
    sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    sock.setblocking(False)
    try:
        sock.bind((src, 0))
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(HANDSHAKE.format(host=host).encode())
    await reader.readuntil(b"\r\n\r\n")
    writer.write(frame(json.dumps({"messageType": "hello", "use_webpush": True})))
    buf = b""
    while True:
        buf += await read_some(reader)
        got, buf = frames(buf)
        if got: break
    if random.random() < sample:
        for attempt in range(5):  # a 503 (store busy) is asked again, as Firefox does
            register = {"messageType": "register", "channelID": str(uuid.uuid4())}
            writer.write(frame(json.dumps(register)))
            while True:
                buf += await read_some(reader)
                got, buf = frames(buf)
                if got: break
            reply = json.loads(got[0])
            if "pushEndpoint" in reply: break
            await asyncio.sleep(0.5 * 2**attempt)
        else:
            writer.close()
            raise RuntimeError(f"register answered status {reply.get('status')} five times")
        endpoints.append(reply["pushEndpoint"])
        asyncio.ensure_future(listen(reader, writer, buf, latencies))
    return reader, writer

async def listen(reader, writer, buf, latencies):
    while True:
        data = await reader.read(65536)
        if not data: return
        buf += data
        got, buf = frames(buf)
        for text in got:
            if not text.startswith(b"{"):
                # A close frame (code + reason): the service let this connection go.
                print(f"closed by the service: {text[2:].decode(errors='replace')}",
                      file=sys.stderr)  # fmt: skip
                return
            m = json.loads(text)
            if m.get("messageType") == "notification":
                sent = float(base64.urlsafe_b64decode(m["data"] + "==")[-20:].decode().strip())
                latencies.append(time.time() - sent)
                update = {"channelID": m["channelID"], "version": m["version"], "code": 100}
                writer.write(frame(json.dumps({"messageType": "ack", "updates": [update]})))

async def main():
    endpoints, latencies, conns, failures = [], [], [], []
    sem = asyncio.Semaphore(concurrency)
    async def one(i):
        async with sem:
            for attempt in range(3):  # a connection closed while opening is tried again
                try:  # ... then counted, not fatal: the limits are the point
                    conns.append(await asyncio.wait_for(connect(i, endpoints, latencies), 60))
                    break
                except Exception as exc:
                    if attempt == 2:
                        failures.append(f"{type(exc).__name__}: {exc}")
    await asyncio.gather(*(one(i) for i in range(count)))
    report = {"ready": len(conns), "endpoints": endpoints, "failed": len(failures)}
    print(json.dumps({**report, "failures": sorted(set(failures))[:5]}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    still_open = sum(1 for reader, _ in conns if not reader.at_eof())
    print(json.dumps({"latencies": latencies, "open": still_open}), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
try:
    import uvloop  # smaller transports: more connections per client process
    uvloop.run(main())
except ImportError:
    asyncio.run(main())
"""
)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (the workers of `tidings serve --workers N`)."""
    pids = [pid]
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        pids += process_tree(int(child))
    return pids


def tree_rss_kib(pid: int) -> int:
    return sum(rss_kib(p) for p in process_tree(pid))


def settled_rss_kib(pid: int, timeout: float = 60) -> int:
    """The service's RSS once every worker has started: unchanged by 1 % over 2 s.

    A baseline taken while workers still start (3 s after launch, as before) counted
    their start-up memory as the connections' (5.46 against 3.9 kB at 500,000)."""
    previous = tree_rss_kib(pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(2)
        current = tree_rss_kib(pid)
        if abs(current - previous) <= previous / 100:
            return current
        previous = current
    return previous


def tree_cpu_seconds(pid: int) -> float:
    return sum(cpu_seconds(p) for p in process_tree(pid))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def meminfo_kib() -> dict[str, int]:
    """/proc/meminfo in KiB (MemAvailable, Slab, SUnreclaim...)."""
    values = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        values[name] = int(rest.split()[0])
    return values


def sockstat() -> str:
    """The kernel's TCP socket counts and pages (/proc/net/sockstat)."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            return line
    return ""


def watch_memory(floor_kib: int, clients: list[subprocess.Popen[str]], stop: threading.Event,
                 tripped: list[int]) -> None:  # fmt: skip
    """Kill the clients if the machine's available memory falls under `floor_kib`."""
    while not stop.wait(0.5):
        available = meminfo_kib()["MemAvailable"]
        if available < floor_kib:
            tripped.append(available)
            for client in clients:
                client.kill()
            return


def push_for(endpoints: list[str], seconds: float, rate: float) -> tuple[int, int]:
    """POST to the sampled endpoints in turn at `rate`/s for `seconds`; (sent, non-201)."""
    import httpx

    sent = failed = 0
    start = time.monotonic()
    with httpx.Client() as http:
        while time.monotonic() - start < seconds:
            delay = start + sent / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            stamp = f"{time.time():20.6f}".encode()
            body = b"\0" * 16 + (4096).to_bytes(4, "big") + b"\0" + b"x" * 40 + stamp
            try:
                answer = http.post(
                    endpoints[sent % len(endpoints)],
                    content=body,
                    headers={"TTL": "60", "Content-Encoding": "aes128gcm"},
                )
                failed += answer.status_code != 201
            except httpx.HTTPError:
                failed += 1
            sent += 1
    return sent, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--sample", type=float, default=0.01, help="share that subscribes")
    parser.add_argument(
        "--concurrency", type=int, default=200, help="handshakes in flight per client process"
    )
    parser.add_argument("--idle", type=float, default=10, help="seconds to measure idle CPU")
    parser.add_argument("--hold", type=float, default=60, help="seconds held while pushing")
    parser.add_argument("--push-rate", type=float, default=50, help="pushes/s while held")
    parser.add_argument(
        "--min-available-gib", type=float, default=4.0,
        help="kill the clients if the machine's available memory falls under this",
    )  # fmt: skip
    parser.add_argument(
        "--serve-args", default="", help='extra `tidings serve` arguments, e.g. "--workers 2"'
    )
    args = parser.parse_args()
    per_client = args.connections // args.clients
    fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if per_client > fd_limit - 100:
        parser.error(f"{per_client} connections per client: over {fd_limit} files, add --clients")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        service = start_tidings(port, f"{tmp}/t.db", *shlex.split(args.serve_args))
        try:
            wait_healthy(port, service)
            baseline = settled_rss_kib(service.pid)
            kernel_before = meminfo_kib()
            sockets_before = sockstat()
            command = [sys.executable, "-c", CLIENT_CODE, "127.0.0.1", str(port), str(per_client)]
            clients = [
                subprocess.Popen(
                    [*command, str(1 + i), str(args.sample), str(args.concurrency)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for i in range(args.clients)
            ]
            stop, tripped = threading.Event(), []
            floor = int(args.min_available_gib * 1024 * 1024)
            threading.Thread(
                target=watch_memory, args=(floor, clients, stop, tripped), daemon=True
            ).start()
            started = time.monotonic()
            endpoints: list[str] = []
            ready = failed = 0
            failures: set[str] = set()
            for client in clients:
                assert client.stdout is not None
                line = client.stdout.readline()
                if not line:
                    continue  # killed (memory floor) or crashed
                report = json.loads(line)
                ready += report["ready"]
                failed += report["failed"]
                failures.update(report["failures"])
                endpoints += report["endpoints"]
            opened = time.monotonic() - started
            stop.set()
            time.sleep(2)
            loaded = tree_rss_kib(service.pid)
            kernel_loaded = meminfo_kib()
            client_rss = sum(rss_kib(c.pid) for c in clients if c.poll() is None)
            cpu0 = tree_cpu_seconds(service.pid)
            time.sleep(args.idle)
            idle_cpu = (tree_cpu_seconds(service.pid) - cpu0) / args.idle
            workers = len(process_tree(service.pid))
            per_conn = (loaded - baseline) * 1024 / max(ready, 1)
            slab = (kernel_loaded["Slab"] - kernel_before["Slab"]) * 1024 / max(ready, 1)
            print(f"# {time.strftime('%Y-%m-%d %H:%M')} UTC, {os.cpu_count()} cores, "
                  f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
            print(f"connections with hello: {ready} in {opened:.1f} s; {failed} failed "
                  f"{sorted(failures)[:5]}")  # fmt: skip
            if tripped:
                print(f"clients killed: available memory fell to {tripped[0] / 1048576:.1f} GiB")
            print(
                f"service RSS ({workers} processes): {baseline / 1024:.1f} MiB before, "
                f"{loaded / 1024:.1f} MiB after -> {per_conn / 1024:.2f} KiB "
                f"({per_conn / 1000:.2f} kB) per connection"
            )
            print(
                f"kernel: Slab {kernel_before['Slab'] / 1024:.0f} -> "
                f"{kernel_loaded['Slab'] / 1024:.0f} MiB ({slab / 1024:.2f} KiB per connection, "
                f"both ends), MemAvailable {kernel_before['MemAvailable'] / 1048576:.1f} -> "
                f"{kernel_loaded['MemAvailable'] / 1048576:.1f} GiB; "
                f"client processes {client_rss / 1048576:.2f} GiB"
            )
            print(f"sockstat before: {sockets_before}\nsockstat loaded: {sockstat()}")
            print(f"idle CPU: {idle_cpu:.1%} of a core with {ready} connections")
            if not endpoints:
                return
            hold_start = time.monotonic()
            pushed, push_failures = push_for(endpoints, args.hold, args.push_rate)
            held = time.monotonic() - hold_start
            time.sleep(1)
            latencies: list[float] = []
            still_open = 0
            for client in clients:
                if client.poll() is not None:
                    continue
                assert client.stdin is not None and client.stdout is not None
                client.stdin.write("report\n")
                client.stdin.flush()
                report = json.loads(client.stdout.readline())
                latencies += report["latencies"]
                still_open += report["open"]
            print(
                f"held {held:.0f} s: {still_open} of {ready} connections still open; "
                f"service RSS {tree_rss_kib(service.pid) / 1024:.1f} MiB"
            )
            if latencies:
                latencies.sort()
                q = statistics.quantiles(latencies, n=100, method="inclusive")
                print(
                    f"pushes to {len(endpoints)} subscribed agents while held: {pushed} sent "
                    f"({push_failures} not 201), {len(latencies)} delivered, "
                    f"p50 {q[49] * 1000:.2f} ms, p99 {q[98] * 1000:.2f} ms, "
                    f"max {latencies[-1] * 1000:.2f} ms"
                )
            for client in clients:
                client.kill()
        finally:
            service.send_signal(signal.SIGTERM)
            service.wait(60)


if __name__ == "__main__":
    main()
