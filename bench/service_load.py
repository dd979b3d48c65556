"""Accepted and delivered pushes per second on one service process (issue 9, item 1).

Side by side, in one run, on this machine:
  * Tidings: `wrk` posts valid aes128gcm bodies with a VAPID header to subscriptions
    whose user agents (WebSocket clients in another process) are connected and
    acknowledge every message; we report accepted/s (wrk) and delivered/s (agents);
  * the ceiling: the same server stack (Tidings' HTTP/1.1 connection code) answering
    201 to the same POST with no work at all;
  * a peer: the npm `web-push-testing` push service receiving the same load.

    python bench/service_load.py [--duration 10] [--connections 64] [--agents 200]

Needs `wrk` (apt-get install wrk) and, for the peer, node with tests/node installed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

import rawws  # noqa: E402
from benchkit import free_port, start_tidings, thread_cpu, wait_port  # noqa: E402
from tidings.webpush import VapidKey, encrypt, sign_vapid  # noqa: E402

WRK_SCRIPT = """
local paths = {}
for line in io.lines(os.getenv("PATHS_FILE")) do paths[#paths + 1] = line end
local body = io.open(os.getenv("BODY_FILE"), "rb"):read("*a")
local headers = {}
for line in io.lines(os.getenv("HEADERS_FILE")) do
  local k, v = line:match("^([^:]+): (.*)$")
  headers[k] = v
end
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("POST", paths[(counter % #paths) + 1], headers, body)
end
"""


def run_wrk(
    base: str,
    paths: list[str],
    headers: dict[str, str],
    body: bytes,
    duration: int,
    connections: int,
    workdir: Path,
) -> dict[str, float]:
    """Run wrk; return requests/s, accepted (2xx) requests/s and the non-2xx count."""
    (workdir / "paths").write_text("\n".join(paths) + "\n")
    (workdir / "body").write_bytes(body)
    (workdir / "headers").write_text("".join(f"{k}: {v}\n" for k, v in headers.items()))
    (workdir / "script.lua").write_text(WRK_SCRIPT)
    env = {
        **os.environ,
        "PATHS_FILE": str(workdir / "paths"),
        "BODY_FILE": str(workdir / "body"),
        "HEADERS_FILE": str(workdir / "headers"),
    }
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            "-s",
            str(workdir / "script.lua"),
            base,
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)

    def ms(m: re.Match[str] | None) -> float:
        if m is None:
            return float("nan")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
        return float(m.group(1)) * scale

    non2xx = int(bad.group(1)) if bad else 0
    return {
        "rps": rps,
        "accepted": rps * (total - non2xx) / max(total, 1),
        "total": total,
        "non2xx": non2xx,
        "p50_ms": ms(p50),
        "p99_ms": ms(p99),
    }


# The user agents: a separate process holding WebSockets that acknowledge everything.

# The user agents: lean raw WebSocket clients (a few syscalls and one JSON parse per
# message), so that the agents take as little of the two cores as they can; every
# notification is acknowledged, all those read together in one ack frame.
AGENTS_CODE = (
    rawws.client_prelude()
    + r"""
import asyncio, json, re, sys, time, uuid

from rawws import HANDSHAKE, frame, frames

NOTIFICATION = re.compile(
    rb'{"messageType":"notification","channelID":"([^"]+)","version":"([^"]+)"'
)
ACK_UPDATE = '{"channelID":"%s","version":"%s","code":100}'

class Agent(asyncio.Protocol):
    def __init__(self, counter):
        self.counter, self.buf, self.waiter = counter, b"", None
        self.handshaken = False
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        self.buf += data
        if not self.handshaken:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.buf, self.handshaken = self.buf[end + 4:], True
            self.waiter.set_result(None)
        got, self.buf = frames(self.buf)
        updates = []
        for raw in got:
            # Notifications are most of what arrives: their two ids are read without
            # decoding the JSON, so that the agents keep up with the service.
            ids = NOTIFICATION.match(raw)
            if ids is not None:
                self.counter[0] += 1
                updates.append(ACK_UPDATE % (ids[1].decode(), ids[2].decode()))
                continue
            m = json.loads(raw)
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(m)
        if updates:
            self.transport.write(
                frame('{"messageType":"ack","updates":[%s]}' % ",".join(updates))
            )
    async def ask(self, message):
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(frame(json.dumps(message)))
        return await self.waiter

async def agent(host, port, n_subs, endpoints, counter):
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(lambda: Agent(counter), host, port)
    proto.waiter = loop.create_future()
    proto.transport.write(HANDSHAKE.format(host=host).encode())
    await proto.waiter
    await proto.ask({"messageType": "hello", "use_webpush": True})
    for _ in range(n_subs):
        reply = await proto.ask({"messageType": "register", "channelID": str(uuid.uuid4())})
        endpoints.append(reply["pushEndpoint"])
    return proto

async def main():
    host, port = sys.argv[1], int(sys.argv[2])
    n_agents, n_subs = int(sys.argv[3]), int(sys.argv[4])
    endpoints, counter = [], [0]
    agents = [await agent(host, port, n_subs, endpoints, counter) for _ in range(n_agents)]
    print(json.dumps(endpoints), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    start, t0 = counter[0], time.perf_counter()
    await loop.run_in_executor(None, sys.stdin.readline)
    report = {"delivered": counter[0] - start, "seconds": time.perf_counter() - t0}
    print(json.dumps(report), flush=True)

try:
    import uvloop
    uvloop.run(main())
except ImportError:
    asyncio.run(main())
"""
)


def start_agents(port: int, agents: int) -> tuple[subprocess.Popen[str], list[str]]:
    """`agents` user agents (AGENTS_CODE) of one subscription each; their endpoints."""
    process = subprocess.Popen(
        [sys.executable, "-c", AGENTS_CODE, "127.0.0.1", str(port), str(agents), "1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, json.loads(process.stdout.readline())


def start_profiler(args: argparse.Namespace, pid: int) -> subprocess.Popen[bytes] | None:
    """py-spy on the service for most of the load phase (--profile FILE)."""
    if not args.profile:
        return None
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    seconds = max(1, args.duration - 2)
    return subprocess.Popen(
        [
            *(py_spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "100"),
            *("--threads", "--format", args.profile_format, "--output", args.profile),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def bench_tidings(args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    port = free_port()
    data = workdir / "svc"
    # The load sends thousands of pushes a second to each of a few hundred subscriptions,
    # all signed with one VAPID key: far past the per-subscription limit (600/min) and
    # the per-key one (5,000/s after a burst of 50,000), which would then measure 429s.
    config = workdir / "bench.toml"
    config.write_text('rate_push_subscription = "off"\nrate_push_vapid_key = "off"\n')
    service = start_tidings(
        port,
        data / "t.db",
        *shlex.split(args.serve_args),
        config=config,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        profile_to=args.cprofile,
    )
    try:
        wait_port(port)
        agents, endpoints = start_agents(port, args.agents)
        assert agents.stdout is not None and agents.stdin is not None
        key = VapidKey.generate()
        vapid = sign_vapid(key, endpoints[0], "mailto:bench@example.com").authorization
        body = encrypt(b"x" * 100, VapidKey.generate().public_key_bytes, os.urandom(16))
        paths = [e.split(str(port), 1)[1] for e in endpoints]
        headers = {"TTL": "60", "Content-Encoding": "aes128gcm", "Authorization": vapid}
        agents.stdin.write("go\n")
        agents.stdin.flush()
        profiler = start_profiler(args, service.pid)
        cpu_before = thread_cpu(service.pid)
        result = run_wrk(
            f"http://127.0.0.1:{port}",
            paths,
            headers,
            body,
            args.duration,
            args.connections,
            workdir,
        )
        cpu_after = thread_cpu(service.pid)
        if profiler is not None:
            profiler.wait(args.duration + 30)
        time.sleep(0.5)  # let the last deliveries land
        agents.stdin.write("stop\n")
        agents.stdin.flush()
        delivered = json.loads(agents.stdout.readline())
        agents.terminate()
        result["delivered_per_s"] = delivered["delivered"] / args.duration
        result["cpu"] = {  # type: ignore[assignment]
            name: (ticks - cpu_before.get(name, 0)) / os.sysconf("SC_CLK_TCK") / args.duration
            for name, ticks in cpu_after.items()
        }
        return result
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(20)


NULL_SERVER = r"""
import asyncio, sys
sys.path.insert(0, sys.argv[2])
from tidings.service.http.admission import ConnectionAdmission
from tidings.service.http.h1 import Http1Connection
from tidings.service.http.messages import Response
class NullApp:
    def body_limit(self, method, path): return 4096
    async def handle(self, request): return Response(201, {"location": "/m/x", "ttl": "60"})
    def too_large(self, request): return Response(413)
    def plain_error(self, status, message): return Response(status)
class Context:
    def __init__(self):
        self.app = NullApp(); self.connections = set(); self.draining = False
        self.request_timeout = 30.0; self.keepalive_timeout = 75.0
        self.admission = ConnectionAdmission(per_address=None, max_connections=None)
    def admit(self, transport): return self.admission.open("127.0.0.1")
    def date_header(self): return b"date: Mon, 30 Nov 2026 00:00:00 GMT\r\n"
    def log_request(self, *a): pass
async def main():
    loop = asyncio.get_running_loop()
    ctx = Context()
    server = await loop.create_server(lambda: Http1Connection(ctx), "127.0.0.1", int(sys.argv[1]))
    await asyncio.Event().wait()
import uvloop
uvloop.run(main())
"""


def post_nothing(port: int, args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    """The load the do-nothing servers get: a push-sized POST to one path, as from wrk."""
    return run_wrk(
        f"http://127.0.0.1:{port}",
        ["/push/x"],
        {"TTL": "60"},
        b"\0" * 230,
        args.duration,
        args.connections,
        workdir,
    )


def bench_ceiling(args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", NULL_SERVER, str(port), str(REPO / "src")])
    try:
        wait_port(port)
        return post_nothing(port, args, workdir)
    finally:
        server.terminate()
        server.wait(10)


UVICORN_APP = r"""
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 201,
                "headers": [(b"location", b"/m/x"), (b"ttl", b"60")]})
    await send({"type": "http.response.body", "body": b""})
"""


def bench_uvicorn(args: argparse.Namespace, workdir: Path) -> dict[str, float] | None:
    """The reference of issue 9: a do-nothing POST handler on uvicorn (httptools, uvloop)."""
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        return None
    (workdir / "null_app.py").write_text(UVICORN_APP)
    port = free_port()
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "uvicorn", "null_app:app", "--port", str(port)),
            *("--loop", "uvloop", "--http", "httptools", "--log-level", "warning"),
            "--no-access-log",
        ],
        cwd=workdir,
    )
    try:
        wait_port(port)
        return post_nothing(port, args, workdir)
    finally:
        server.terminate()
        server.wait(10)


def bench_peer(args: argparse.Namespace, workdir: Path) -> dict[str, float] | None:
    node_dir = REPO / "tests" / "node"
    if shutil.which("node") is None or not (node_dir / "node_modules").exists():
        return None
    port = free_port()
    peer = subprocess.Popen(
        ["node", str(node_dir / "wpt-server.js"), str(port)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=node_dir,
    )
    try:
        assert peer.stdout is not None
        ready = json.loads(peer.stdout.readline())
        base = ready.get("url", f"http://127.0.0.1:{port}").rstrip("/")
        key = VapidKey.generate()
        import httpx

        sub = httpx.post(
            f"{base}/subscribe",
            json={"applicationServerKey": key.public_key_b64, "userVisibleOnly": "true"},
        ).json()["data"]
        endpoint = sub["endpoint"]
        path = "/" + endpoint.split("/", 3)[3]
        from tidings.webpush import Subscription

        subscription = Subscription.from_json(sub)
        body = encrypt(b"x" * 100, subscription.p256dh, subscription.auth)
        vapid = sign_vapid(key, endpoint, "mailto:bench@example.com").authorization
        headers = {
            "TTL": "60",
            "Content-Encoding": "aes128gcm",
            "Authorization": vapid,
            "Content-Type": "application/octet-stream",
        }
        return run_wrk(base, [path], headers, body, args.duration, args.connections, workdir)
    finally:
        peer.terminate()
        peer.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument(
        "--serve-args", default="", help='extra `tidings serve` arguments, e.g. "--workers 2"'
    )
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--profile", help="py-spy the service during its load phase into FILE")
    parser.add_argument(
        "--cprofile", help="run the service under cProfile, its stats written to FILE at exit"
    )
    parser.add_argument(
        "--profile-format", default="raw", choices=["raw", "flamegraph", "speedscope"]
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        print(
            f"# {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} cores; "
            f"{args.duration}s each, wrk -c{args.connections}, {args.agents} agents"
        )
        ceiling = bench_ceiling(args, workdir)
        print(
            f"ceiling (same server, no work):   {ceiling['rps']:>9,.0f} req/s  "
            f"p50 {ceiling['p50_ms']:.2f} ms  p99 {ceiling['p99_ms']:.2f} ms"
        )
        uvicorn = bench_uvicorn(args, workdir)
        if uvicorn is not None:
            print(
                f"uvicorn do-nothing (reference):   {uvicorn['rps']:>9,.0f} req/s  "
                f"p50 {uvicorn['p50_ms']:.2f} ms  p99 {uvicorn['p99_ms']:.2f} ms"
            )
        tidings = bench_tidings(args, workdir)
        print(
            f"tidings accepted (2xx):           {tidings['accepted']:>9,.0f} req/s  "
            f"p50 {tidings['p50_ms']:.2f} ms  p99 {tidings['p99_ms']:.2f} ms  "
            f"non-2xx {tidings['non2xx']}"
        )
        print(f"tidings delivered+acked:          {tidings['delivered_per_s']:>9,.0f} msg/s")
        busy = {name: share for name, share in tidings["cpu"].items() if share >= 0.01}  # type: ignore[attr-defined]
        print(
            "tidings service CPU (cores):      "
            + ", ".join(f"{name} {share:.2f}" for name, share in busy.items())
            + f"; {1e6 * sum(busy.values()) / max(tidings['accepted'], 1):.0f} µs per push"
        )
        peer = None if args.skip_peer else bench_peer(args, workdir)
        if peer is not None:
            print(
                f"web-push-testing accepted (2xx):  {peer['accepted']:>9,.0f} req/s  "
                f"non-2xx {peer['non2xx']}"
            )
            print(f"ratio tidings/peer: {tidings['accepted'] / peer['accepted']:.1f}x")
        print(f"ratio tidings/own ceiling: {tidings['accepted'] / ceiling['rps']:.0%}")
        if uvicorn is not None:
            print(f"ratio tidings/uvicorn do-nothing: {tidings['accepted'] / uvicorn['rps']:.0%}")


if __name__ == "__main__":
    main()
