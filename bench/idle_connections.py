"""Idle WebSocket connections: resident memory and idle CPU per connection (issue 9.3).

Opens N WebSocket connections to a `tidings serve` process, each completing the
push protocol's `hello` (the clients run in other processes, spread over source
addresses 127.0.0.2..n so that ephemeral ports never run out), then reports the
service's resident memory per connection and the CPU it burns while they idle; then
registers a subscription on a random 1% and reports the delivery latency of pushes
to them under that load.

    python bench/idle_connections.py --connections 10000 [--clients 4] [--serve-args ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import rawws  # noqa: E402
from benchkit import free_port, start_tidings  # noqa: E402

CLIENT_CODE = (
    rawws.client_prelude()
    + r"""
import asyncio, base64, json, os, random, sys, time, uuid
host, port = sys.argv[1], int(sys.argv[2])
count, src_base, sample = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])

from rawws import HANDSHAKE, frame, frames

async def connect(i, endpoints, latencies):
    src = f"127.0.0.{src_base + i // 20000}"
    reader, writer = await asyncio.open_connection(host, port, local_addr=(src, 0))
    writer.write(HANDSHAKE.format(host=host).encode())
    await reader.readuntil(b"\r\n\r\n")
    writer.write(frame(json.dumps({"messageType": "hello", "use_webpush": True})))
    buf = b""
    while True:
        buf += await reader.read(4096)
        got, buf = frames(buf)
        if got: break
    if random.random() < sample:
        writer.write(frame(json.dumps({"messageType": "register", "channelID": str(uuid.uuid4())})))
        while True:
            buf += await reader.read(4096)
            got, buf = frames(buf)
            if got: break
        endpoints.append(json.loads(got[0])["pushEndpoint"])
        asyncio.ensure_future(listen(reader, writer, buf, latencies))
    return reader, writer

async def listen(reader, writer, buf, latencies):
    while True:
        data = await reader.read(65536)
        if not data: return
        buf += data
        got, buf = frames(buf)
        for text in got:
            m = json.loads(text)
            if m.get("messageType") == "notification":
                sent = float(base64.urlsafe_b64decode(m["data"] + "==")[-20:].decode().strip())
                latencies.append(time.time() - sent)
                update = {"channelID": m["channelID"], "version": m["version"], "code": 100}
                writer.write(frame(json.dumps({"messageType": "ack", "updates": [update]})))

async def main():
    endpoints, latencies, conns = [], [], []
    sem = asyncio.Semaphore(200)
    async def one(i):
        async with sem:
            conns.append(await connect(i, endpoints, latencies))
    await asyncio.gather(*(one(i) for i in range(count)))
    print(json.dumps({"ready": len(conns), "endpoints": endpoints}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    print(json.dumps({"latencies": latencies}), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
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


def tree_cpu_seconds(pid: int) -> float:
    return sum(cpu_seconds(p) for p in process_tree(pid))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--sample", type=float, default=0.01, help="share that subscribes")
    parser.add_argument("--idle", type=float, default=10, help="seconds to measure idle CPU")
    parser.add_argument("--pushes", type=int, default=200)
    parser.add_argument(
        "--serve-args", default="", help='extra `tidings serve` arguments, e.g. "--workers 2"'
    )
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        service = start_tidings(port, f"{tmp}/t.db", *shlex.split(args.serve_args))
        try:
            time.sleep(3)  # workers, if any, are up
            baseline = tree_rss_kib(service.pid)
            per_client = args.connections // args.clients
            clients = [
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        CLIENT_CODE,
                        "127.0.0.1",
                        str(port),
                        str(per_client),
                        str(2 + i * 5),
                        str(args.sample),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for i in range(args.clients)
            ]
            started = time.monotonic()
            endpoints: list[str] = []
            ready = 0
            for client in clients:
                assert client.stdout is not None
                report = json.loads(client.stdout.readline())
                ready += report["ready"]
                endpoints += report["endpoints"]
            opened = time.monotonic() - started
            time.sleep(2)
            loaded = tree_rss_kib(service.pid)
            cpu0 = tree_cpu_seconds(service.pid)
            time.sleep(args.idle)
            idle_cpu = (tree_cpu_seconds(service.pid) - cpu0) / args.idle
            workers = len(process_tree(service.pid))
            per_conn = (loaded - baseline) * 1024 / max(ready, 1)
            print(f"# {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores")
            print(f"connections with hello: {ready} in {opened:.1f} s")
            print(
                f"service RSS ({workers} processes): {baseline / 1024:.1f} MiB before, "
                f"{loaded / 1024:.1f} MiB after -> {per_conn / 1024:.2f} kB per connection"
            )
            print(f"idle CPU: {idle_cpu:.1%} of a core with {ready} connections")
            import httpx

            key = os.urandom(16)
            pub = None
            with httpx.Client() as http:
                for i in range(args.pushes):
                    endpoint = endpoints[i % len(endpoints)]
                    stamp = f"{time.time():20.6f}".encode()
                    body = b"\0" * 16 + (4096).to_bytes(4, "big") + b"\0" + b"x" * 40 + stamp
                    http.post(
                        endpoint,
                        content=body,
                        headers={"TTL": "60", "Content-Encoding": "aes128gcm"},
                    )
                    time.sleep(0.005)
            time.sleep(1)
            latencies: list[float] = []
            for client in clients:
                assert client.stdin is not None and client.stdout is not None
                client.stdin.write("report\n")
                client.stdin.flush()
                latencies += json.loads(client.stdout.readline())["latencies"]
            if latencies:
                latencies.sort()
                q = statistics.quantiles(latencies, n=100)
                print(
                    f"delivery to {len(endpoints)} subscribed agents under load: "
                    f"{len(latencies)}/{args.pushes} delivered, p50 {q[49] * 1000:.2f} ms, "
                    f"p99 {q[98] * 1000:.2f} ms"
                )
            del key, pub
            for client in clients:
                client.kill()
        finally:
            service.send_signal(signal.SIGTERM)
            service.wait(30)


if __name__ == "__main__":
    main()
