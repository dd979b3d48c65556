"""Fan-out benchmark: one message to many distinct subscriptions, Tidings vs pywebpush.

    .venv/bin/python bench/fanout.py                # 10,000 subscriptions, 3 rounds
    .venv/bin/python bench/fanout.py --n 2000 --rounds 1 --variants tidings,pywebpush_async

A local sink answers 201 to every push (raw asyncio.Protocol on uvloop, in its own
process: HTTP/1.1 keep-alive, and a minimal h2c variant); with `--target service` the
pushes go to a local `tidings serve` (SQLite) instead, to subscriptions made on it,
where each push is checked, stored and answered for real. Every variant runs in its own
subprocess so its peak memory (ru_maxrss) is its own; rounds are interleaved and the
median is reported. Each subscription has its own P-256 key pair and auth secret.
A variant's clock starts once its modules are imported; Tidings variants time the
`send_many` call (a Sender is long-lived in an application server), and CPU µs/msg is
the CPU time of the timed phase in the sending process (worker processes not included).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import platform
import resource
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchkit import free_port, start_tidings, wait_healthy

HERE = Path(__file__).resolve()
PAYLOAD = b'{"title":"Tidings","body":"A new message is waiting for you.","id":1234567}'
SLOW = {"pywebpush_loop", "pywebpush_session", "pywebpush_async"}
VARIANTS = [
    "floor",
    "pywebpush_loop",
    "pywebpush_session",
    "pywebpush_async",
    "tidings",
    "tidings_asyncio",
    "tidings_h2c",
    "tidings_1worker",
    "tidings_2workers",
]

# --------------------------------------------------------------------------- sinks

_H1_ANSWER = b"HTTP/1.1 201 Created\r\nLocation: /m/1\r\nTTL: 60\r\nContent-Length: 0\r\n\r\n"


class _H1Sink(asyncio.Protocol):
    """Answers 201 to every HTTP/1.1 request (Content-Length bodies), keep-alive."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        answers = 0
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = bytes(buf[:end]).lower()
            at = head.find(b"content-length:")
            length = (
                int(head[at + 15 : head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None])
                if at >= 0
                else 0
            )
            if len(buf) < end + 4 + length:
                break
            del buf[: end + 4 + length]
            answers += 1
        if answers:
            self.transport.write(_H1_ANSWER * answers)


_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream)
        + payload
    )


# :status 201 as a literal with the indexed name :status (static index 8), then ttl.
_H2_ANSWER_BLOCK = b"\x08\x03201" + b"\x00\x03ttl\x0260"


class _H2cSink(asyncio.Protocol):
    """Answers 201 to every HTTP/2 stream (prior knowledge), without decoding HPACK."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buf = bytearray()
        self.preface = False
        settings = struct.pack(">HI", 3, 1000) + struct.pack(">HI", 4, 1 << 20)
        transport.write(_frame(4, 0, 0, settings) + _frame(8, 0, 0, struct.pack(">I", 1 << 24)))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.preface:
            if len(buf) < len(_PREFACE):
                return
            del buf[: len(_PREFACE)]
            self.preface = True
        out = []
        received = 0
        while len(buf) >= 9:
            length = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + length:
                break
            kind, flags = buf[3], buf[4]
            stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
            del buf[: 9 + length]
            if kind == 0:  # DATA
                received += length
                if flags & 1:
                    out.append(_frame(1, 5, stream, _H2_ANSWER_BLOCK))
            elif kind == 1 and flags & 1:  # HEADERS ending the stream (no body)
                out.append(_frame(1, 5, stream, _H2_ANSWER_BLOCK))
            elif kind == 4 and not flags & 1:  # SETTINGS: acknowledge
                out.append(_frame(4, 1, 0))
            elif kind == 6 and not flags & 1:  # PING
                out.append(_frame(6, 1, 0, bytes(8)))
        if received:
            out.append(_frame(8, 0, 0, struct.pack(">I", received)))
        if out:
            self.transport.write(b"".join(out))


def run_sink(port: int, h2c: bool) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            _H2cSink if h2c else _H1Sink, "127.0.0.1", port, backlog=4096
        )
        print("ready", flush=True)
        await server.serve_forever()

    uvloop.run(main())


# --------------------------------------------------------------------------- variants


def load_subs(path: Path, n: int, port: int) -> list[dict[str, Any]]:
    subs = []
    with path.open() as handle:
        for i, line in enumerate(handle):
            if i >= n:
                break
            sub = json.loads(line)
            if not sub["endpoint"].startswith("http"):  # a sink's: any path will do
                sub["endpoint"] = f"http://127.0.0.1:{port}/wpush/v2/{sub['endpoint']}"
            subs.append(sub)
    return subs


def variant_floor(subs: list[dict[str, Any]], port: int) -> int:
    from tidings.webpush import encrypt

    for sub in subs:
        encrypt(PAYLOAD, sub["keys"]["p256dh"], sub["keys"]["auth"])
    return len(subs)


def _pywebpush_key() -> Any:
    from py_vapid import Vapid02

    key = Vapid02()
    key.generate_keys()
    return key


def variant_pywebpush_loop(subs: list[dict[str, Any]], port: int, session: Any = None) -> int:
    from pywebpush import webpush

    key = _pywebpush_key()
    claims = {"sub": "mailto:bench@example.com"}
    ok = 0
    for sub in subs:
        response = webpush(
            sub, PAYLOAD.decode(), key, dict(claims), ttl=60, requests_session=session
        )
        ok += response.status_code == 201  # type: ignore[union-attr]
    return ok


def variant_pywebpush_session(subs: list[dict[str, Any]], port: int) -> int:
    import requests

    with requests.Session() as session:
        return variant_pywebpush_loop(subs, port, session)


def variant_pywebpush_async(subs: list[dict[str, Any]], port: int) -> int:
    import aiohttp
    import uvloop
    from pywebpush import webpush_async

    key = _pywebpush_key()

    async def main() -> int:
        ok = 0
        sem = asyncio.Semaphore(50)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50)) as session:

            async def one(sub: dict[str, Any]) -> None:
                nonlocal ok
                async with sem:
                    response = await webpush_async(
                        sub,
                        PAYLOAD.decode(),
                        key,
                        {"sub": "mailto:bench@example.com"},
                        ttl=60,
                        aiohttp_session=session,
                    )
                    ok += response.status == 201  # type: ignore[union-attr]

            await asyncio.gather(*(one(s) for s in subs))
        return ok

    return uvloop.run(main())


def _tidings(
    subs: list[dict[str, Any]], *, workers: int = 0, h2c: bool = False, loop: str = "uvloop"
) -> int:
    from tidings.sender import Sender
    from tidings.webpush import VapidKey

    async def main() -> int:
        async with Sender(
            VapidKey.generate(), "mailto:bench@example.com", encrypt_workers=workers, h2c=h2c
        ) as sender:
            # The Sender (and its worker pool) is long-lived in an application server:
            # time the fan-out itself, not process start-up.
            cpu = time.process_time()
            summary = await sender.send_many(subs, PAYLOAD, ttl=60, concurrency=100)
            _PHASE_CPU.append(time.process_time() - cpu)
        _PHASE.append(summary.elapsed)
        return summary.accepted

    if loop == "uvloop":
        import uvloop

        return uvloop.run(main())
    return asyncio.run(main())


_PHASE: list[float] = []
"""Set by variants that time their own sending phase (excluding set-up)."""
_PHASE_CPU: list[float] = []
"""The CPU time of that phase."""
_IMPORTS = {
    "floor": ["tidings.webpush"],
    "pywebpush_loop": ["pywebpush", "py_vapid"],
    "pywebpush_session": ["pywebpush", "py_vapid", "requests"],
    "pywebpush_async": ["pywebpush", "py_vapid", "aiohttp", "uvloop"],
}
"""Modules a variant imports, loaded before its clock starts (as in a running server)."""

RUNNERS = {
    "floor": variant_floor,
    "pywebpush_loop": variant_pywebpush_loop,
    "pywebpush_session": variant_pywebpush_session,
    "pywebpush_async": variant_pywebpush_async,
    "tidings": lambda subs, port: _tidings(subs),
    "tidings_asyncio": lambda subs, port: _tidings(subs, loop="asyncio"),
    "tidings_h2c": lambda subs, port: _tidings(subs, h2c=True),
    "tidings_1worker": lambda subs, port: _tidings(subs, workers=1),
    "tidings_2workers": lambda subs, port: _tidings(subs, workers=2),
    "tidings_before": lambda subs, port: _tidings(subs),  # `--before`: another checkout's
}


def run_variant(name: str, subs_file: Path, n: int, port: int) -> None:
    subs = load_subs(subs_file, n, port)
    for module in _IMPORTS.get(name, []):
        importlib.import_module(module)
    started = time.perf_counter()
    cpu = time.process_time()
    ok = RUNNERS[name](subs, port)
    elapsed = _PHASE[0] if _PHASE else time.perf_counter() - started
    cpu = _PHASE_CPU[0] if _PHASE_CPU else time.process_time() - cpu
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(
        json.dumps(
            {
                "variant": name,
                "n": len(subs),
                "ok": ok,
                "elapsed": elapsed,
                "rate": len(subs) / elapsed,
                "cpu_per_msg_us": cpu / len(subs) * 1e6,
                "maxrss_kb": rss,
                "children_maxrss_kb": children,
            }
        )
    )


# --------------------------------------------------------------------------- driver


def make_subscriptions(path: Path, n: int, endpoints: list[str] | None = None) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from tidings.webpush import b64url_encode

    with path.open("w") as handle:
        for i in range(n):
            key = ec.generate_private_key(ec.SECP256R1())
            raw = key.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
            handle.write(
                json.dumps(
                    {
                        "endpoint": endpoints[i] if endpoints else f"{i:08d}{os.urandom(12).hex()}",
                        "keys": {
                            "p256dh": b64url_encode(raw),
                            "auth": b64url_encode(os.urandom(16)),
                        },
                    }
                )
                + "\n"
            )


def start_sink(h2c: bool) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    args = [sys.executable, str(HERE), "--sink", str(port)] + (["--h2c"] if h2c else [])
    process = subprocess.Popen(args, stdout=subprocess.PIPE)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == b"ready"
    return process, port


SERVICE_CONFIG = """
# One VAPID key sends every variant's fan-out, and each subscription gets one message
# per variant and round: past the defaults meant for real traffic.
rate_push_vapid_key = "off"
rate_push_subscription = "off"
"""


def start_service(workdir: Path, n: int) -> tuple[subprocess.Popen[bytes], int, list[str]]:
    """`tidings serve` on SQLite, and `n` subscriptions made on it (RFC 8030 subscribe)."""
    import httpx

    port = free_port()
    config = workdir / "service.toml"
    config.write_text(SERVICE_CONFIG)
    process = start_tidings(port, workdir / "service.db", config=config)
    wait_healthy(port, process)
    base = f"http://127.0.0.1:{port}"

    async def subscribe_all() -> list[str]:
        from tidings.webpush.links import link_target

        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            semaphore = asyncio.Semaphore(32)

            async def one() -> str:
                async with semaphore:
                    answer = await client.post("/subscribe")
                answer.raise_for_status()
                target = link_target(answer.headers["link"], "urn:ietf:params:push")
                assert target is not None
                return target

            return list(await asyncio.gather(*(one() for _ in range(n))))

    return process, port, asyncio.run(subscribe_all())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=10_000, help="subscriptions for the fast variants")
    parser.add_argument(
        "--slow-n", type=int, default=2_000, help="subscriptions for pywebpush variants"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument(
        "--target",
        choices=["sink", "service"],
        default="sink",
        help="push to local sinks answering 201, or to a local Tidings service (SQLite)",
    )
    parser.add_argument(
        "--before",
        type=Path,
        help="another checkout's src directory: its one-process sender runs as "
        "`tidings_before` in the same rounds (a before/after comparison in one run)",
    )
    parser.add_argument("--sink", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--h2c", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--subs", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        run_sink(args.sink, args.h2c)
        return
    if args.variant:
        run_variant(args.variant, args.subs, args.n, args.port)
        return

    import tempfile

    variants = [v for v in args.variants.split(",") if v]
    if args.before and "tidings_before" not in variants:
        variants.append("tidings_before")
    args.load_at_start = os.getloadavg()  # the machine may be shared: say how busy it was
    with tempfile.TemporaryDirectory() as tmp:
        subs_file = Path(tmp) / "subs.jsonl"
        count = max(args.n, args.slow_n)
        if args.target == "service":
            # One process serves both: h2c is recognised by its connection preface.
            service, h1_port, endpoints = start_service(Path(tmp), count)
            make_subscriptions(subs_file, count, endpoints)
            h1 = h2 = service
            h2_port = h1_port
        else:
            make_subscriptions(subs_file, count)
            h1, h1_port = start_sink(False)
            h2, h2_port = start_sink(True)
        results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        try:
            for round_ in range(args.rounds):
                for name in variants:
                    n = args.slow_n if name in SLOW else args.n
                    port = h2_port if name == "tidings_h2c" else h1_port
                    env = dict(os.environ)
                    if name == "tidings_before":
                        if not args.before:
                            parser.error("tidings_before needs --before SRC")
                        path = [str(args.before.resolve()), env.get("PYTHONPATH", "")]
                        env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
                    out = subprocess.run(
                        [
                            sys.executable,
                            str(HERE),
                            "--variant",
                            name,
                            "--subs",
                            str(subs_file),
                            "--n",
                            str(n),
                            "--port",
                            str(port),
                        ],
                        capture_output=True,
                        check=True,
                        text=True,
                        env=env,
                    ).stdout
                    result = json.loads(out.strip().splitlines()[-1])
                    results[name].append(result)
                    print(
                        f"round {round_ + 1} {name:18} {result['rate']:9.0f} msg/s  "
                        f"ok {result['ok']}/{result['n']}  rss {result['maxrss_kb'] / 1024:.0f} MB",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            h1.terminate()
            h2.terminate()
            h1.wait(30)
    report(results, args)


def report(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    med = {v: statistics.median(r["rate"] for r in rs) for v, rs in results.items() if rs}
    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.python_implementation()} "
        f"{platform.python_version()}, {platform.platform()}; load average (1 min) "
        f"{args.load_at_start[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end"
    )
    target = "a local Tidings service (SQLite)" if args.target == "service" else "local sinks"
    print(
        f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}; rounds: {args.rounds} (median shown); "
        f"pushes to {target}\n"
    )
    print("| variant | messages | msg/s (median) | CPU µs/msg | peak RSS MB | ok |")
    print("|---|---:|---:|---:|---:|---|")
    for v, rs in results.items():
        if not rs:
            continue
        cpu = statistics.median(r["cpu_per_msg_us"] for r in rs)
        rss = max(r["maxrss_kb"] for r in rs) / 1024
        ok = all(r["ok"] == r["n"] for r in rs)
        print(
            f"| {v} | {rs[0]['n']} | {med[v]:,.0f} | {cpu:,.0f} | {rss:.0f} "
            f"| {'yes' if ok else 'NO'} |"
        )
    ratios = []
    for name in ("tidings_before", "tidings", "tidings_h2c", "tidings_1worker", "tidings_2workers"):
        if name not in med:
            continue
        parts = [f"**{name}**:"]
        for base in ("pywebpush_loop", "pywebpush_async"):
            if base in med:
                parts.append(f"{med[name] / med[base]:.1f}x {base}")
        if "floor" in med:
            parts.append(f"{med[name] / med['floor'] * 100:.0f}% of the one-core encryption floor")
            if "worker" not in name:  # (workers' CPU is not in the sending process's)
                floor_cpu = statistics.median(r["cpu_per_msg_us"] for r in results["floor"])
                cpu = statistics.median(r["cpu_per_msg_us"] for r in results[name])
                parts.append(f"floor's CPU per message / its own {floor_cpu / cpu * 100:.0f}%")
        ratios.append(" ".join(parts[:1]) + " " + ", ".join(parts[1:]))
    print()
    for line in ratios:
        print("- " + line)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
