"""The push service's own latency at fixed rates, with bare clients (issue 9, item 2).

`bench/latency.py` measures the whole chain: Tidings' `Sender` encrypting each message
and its `UserAgent` decrypting it and running a handler, all on this machine's two
cores with the service. Past about 2,000 messages/s those two Python processes, not
the service, set the pace. This benchmark takes them out: one process (uvloop) holds

  - a bare HTTP/1.1 sender: keep-alive connections writing prebuilt POSTs (a valid
    aes128gcm header, VAPID, TTL) on an open-loop schedule, each body carrying its
    sequence number, with `time.monotonic_ns()` noted just before the write;
  - a bare WebSocket user agent (`rawws`) that notes when each notification frame
    arrives and acknowledges it.

The figure is therefore POST written to notification read: the service's parsing,
checks, SQLite commit and delivery, plus loopback. Nothing is decrypted (the service
does not decrypt either), so the bodies need not be real ciphertexts.

    python bench/wire_latency.py [--rates 100,1000,5000] [--duration 10] [--plot F]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import struct
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

import rawws  # noqa: E402
from benchkit import free_port  # noqa: E402
from latency import latency_figures, plot, start_service  # noqa: E402
from tidings.webpush import VapidKey, sign_vapid  # noqa: E402

CONNECTIONS = 32  # sender keep-alive connections (more than enough at 5,000/s)
# salt (16) | record size (4) | key id length (1) | key id: a P-256 point (65)
AES128GCM_HEADER = os.urandom(16) + struct.pack("!IB", 4096, 65) + b"\x04" + os.urandom(64)


class Agent(asyncio.Protocol):
    """A user agent on a bare WebSocket: hello, one registration, ack everything."""

    def __init__(self) -> None:
        self.buffer = b""
        self.replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.received: dict[int, int] = {}
        self.transport: asyncio.Transport | None = None
        self.upgraded = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        self.buffer += data
        if not self.upgraded.done():
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            self.buffer = rest
            self.upgraded.set_result(head.startswith(b"HTTP/1.1 101"))
        payloads, self.buffer = rawws.frames(self.buffer)
        acks = []
        for payload in payloads:
            message = json.loads(payload)
            if message.get("messageType") != "notification":
                self.replies.put_nowait(message)
                continue
            body = base64.urlsafe_b64decode(message["data"] + "==")
            seq = int.from_bytes(
                body[len(AES128GCM_HEADER) : len(AES128GCM_HEADER) + 8], "big", signed=True
            )
            self.received.setdefault(seq, now)
            acks.append({"channelID": message["channelID"], "version": message["version"]})
        if acks and self.transport is not None:
            self.transport.write(rawws.frame(json.dumps({"messageType": "ack", "updates": acks})))

    async def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self.transport is not None
        self.transport.write(rawws.frame(json.dumps(message)))
        return await asyncio.wait_for(self.replies.get(), 10)


class Poster(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; answers are counted, not parsed further."""

    def __init__(self, idle: asyncio.Queue[Poster], answered: dict[int, int]) -> None:
        self.idle = idle
        self.answered = answered
        self.buffer = b""
        self.current = -1
        self.failures = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.idle.put_nowait(self)

    def post(self, seq: int, request: bytes) -> None:
        assert self.transport is not None
        self.current = seq
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head, sep, rest = self.buffer.partition(b"\r\n\r\n")
        if not sep:
            return
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(rest) < length:
            return
        self.buffer = rest[length:]
        if not head.startswith(b"HTTP/1.1 201"):
            self.failures += 1
        self.answered[self.current] = time.monotonic_ns()
        self.idle.put_nowait(self)


async def run_rate(port: int, rate: float, duration: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    _, agent = await loop.create_connection(Agent, "127.0.0.1", port)
    assert agent.transport is not None
    agent.transport.write(rawws.HANDSHAKE.format(host=f"127.0.0.1:{port}").encode())
    assert await agent.upgraded
    await agent.ask({"messageType": "hello", "use_webpush": True})
    registered = await agent.ask({"messageType": "register", "channelID": str(uuid.uuid4())})
    endpoint = registered["pushEndpoint"]
    path = endpoint.split(str(port), 1)[1]
    vapid = sign_vapid(VapidKey.generate(), endpoint, "mailto:bench@example.com").authorization
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nTTL: 60\r\n"
        f"Content-Encoding: aes128gcm\r\nAuthorization: {vapid}\r\n"
        f"Content-Length: {len(AES128GCM_HEADER) + 8 + 32}\r\n\r\n"
    ).encode()

    def request(seq: int) -> bytes:
        return head + AES128GCM_HEADER + seq.to_bytes(8, "big", signed=True) + b"\0" * 32

    idle: asyncio.Queue[Poster] = asyncio.Queue()
    answered: dict[int, int] = {}
    posters = []
    for _ in range(CONNECTIONS):
        _, poster = await loop.create_connection(lambda: Poster(idle, answered), "127.0.0.1", port)
        posters.append(poster)
    sent: dict[int, int] = {}
    warmup = 50
    for seq in range(-warmup, 0):
        (await idle.get()).post(seq, request(seq))
    await asyncio.sleep(0.5)
    total = int(rate * duration)
    start = time.monotonic()
    for seq in range(total):
        delay = start + seq / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        poster = await idle.get()  # every connection busy: the schedule slips (reported)
        sent[seq] = time.monotonic_ns()
        poster.post(seq, request(seq))
    achieved = total / (time.monotonic() - start)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(agent.received) < total + warmup:
        await asyncio.sleep(0.05)
    for poster in posters:
        assert poster.transport is not None
        poster.transport.close()
    agent.transport.close()
    latencies = sorted((agent.received[s] - sent[s]) / 1e6 for s in sent if s in agent.received)
    round_trips = sorted((answered[s] - sent[s]) / 1e6 for s in sent if s in answered)
    return {
        "rate": rate,
        "achieved_rate": round(achieved, 1),
        "sent": total,
        "received": len(latencies),
        "failures": sum(p.failures for p in posters),
        **latency_figures(latencies, round_trips),
    }


async def main(args: argparse.Namespace) -> None:
    load_before = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory(prefix="tidings-wire-") as tmp:
        port = free_port()
        service = start_service(port, Path(tmp))
        try:
            for rate in (float(r) for r in args.rates.split(",")):
                result = await run_rate(port, rate, args.duration)
                results.append(result)
        finally:
            service.send_signal(signal.SIGTERM)
            service.wait(20)
    print("| rate (msg/s) | achieved | received | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) |"
          " POST answered p50 / p99 (ms) | non-201 |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['rate']:g} | {r['achieved_rate']} | {r['received']}/{r['sent']} | "
            f"{r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | {r['max_ms']} | "
            f"{r['post_p50_ms']} / {r['post_p99_ms']} | {r['failures']} |"
        )
    print(
        f"\n{time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} cores; "
        f"load average before {load_before:.2f}, after {os.getloadavg()[0]:.2f}"
    )
    if args.plot:
        plot(
            results,
            Path(args.plot),
            xlabel="POST written to notification read (ms, log scale)",
            title="Tidings push service latency, bare clients, one machine",
        )
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="100,1000,5000", help="messages/s, comma-separated")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per rate")
    parser.add_argument("--plot", help="write a latency CDF plot (PNG) here")
    import uvloop

    uvloop.run(main(parser.parse_args()))
