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
    python bench/wire_latency.py --curve [--first 1000 --step 1000] --plot F.png

With `--curve` the rate climbs from 1,000/s until the service saturates (less than 97 %
of the offered rate achieved, a message lost, or p99 over a second) and the plot is
p50/p99 against the offered rate.
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
from benchkit import free_port, process_cpu_seconds  # noqa: E402
from latency import latency_figures, plot, save_plot, start_service  # noqa: E402
from tidings.webpush import VapidKey, sign_vapid  # noqa: E402

CONNECTIONS = 32  # sender keep-alive connections by default (more than enough at 5,000/s)
ACKS_PER_FRAME = 200  # a backlog read at once is acknowledged in frames the service takes
SATURATED_SHARE = 0.97  # a rate is past saturation once less than this share of it is achieved
SATURATED_P99_MS = 1000.0  # ... or once its p99 passes a second (a queue, not a service time)
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
        self.uaid: str | None = None

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
            for first in range(0, len(acks), ACKS_PER_FRAME):
                updates = acks[first : first + ACKS_PER_FRAME]
                self.transport.write(
                    rawws.frame(json.dumps({"messageType": "ack", "updates": updates}))
                )

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


async def connect_agent(port: int) -> tuple[Agent, str]:
    """A bare user agent with one subscription, and its push endpoint."""
    _, agent = await asyncio.get_running_loop().create_connection(Agent, "127.0.0.1", port)
    assert agent.transport is not None
    agent.transport.write(rawws.HANDSHAKE.format(host=f"127.0.0.1:{port}").encode())
    assert await agent.upgraded
    agent.uaid = (await agent.ask({"messageType": "hello", "use_webpush": True}))["uaid"]
    registered = await agent.ask({"messageType": "register", "channelID": str(uuid.uuid4())})
    return agent, registered["pushEndpoint"]


async def run_rate(
    port: int,
    rate: float,
    duration: float,
    connections: int = CONNECTIONS,
    service_pid: int = 0,
    agent_count: int = 1,
    deliver: bool = True,
) -> dict[str, Any]:
    """Push at `rate` for `duration` s; with `deliver` False the agents are gone (stored)."""
    loop = asyncio.get_running_loop()
    agents, endpoints = zip(*[await connect_agent(port) for _ in range(agent_count)], strict=True)
    if not deliver:  # every push is then stored for a user agent that is away
        for agent in agents:
            assert agent.transport is not None
            agent.transport.close()
    vapid = sign_vapid(VapidKey.generate(), endpoints[0], "mailto:bench@example.com").authorization
    heads = [
        (
            f"POST {endpoint.split(str(port), 1)[1]} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"TTL: 60\r\nContent-Encoding: aes128gcm\r\nAuthorization: {vapid}\r\n"
            f"Content-Length: {len(AES128GCM_HEADER) + 8 + 32}\r\n\r\n"
        ).encode()
        for endpoint in endpoints
    ]

    def request(seq: int) -> bytes:  # the agents take turns
        head = heads[seq % agent_count]
        return head + AES128GCM_HEADER + seq.to_bytes(8, "big", signed=True) + b"\0" * 32

    idle: asyncio.Queue[Poster] = asyncio.Queue()
    answered: dict[int, int] = {}
    posters = []
    for _ in range(connections):
        _, poster = await loop.create_connection(lambda: Poster(idle, answered), "127.0.0.1", port)
        posters.append(poster)
    sent: dict[int, int] = {}
    warmup = 50
    for seq in range(-warmup, 0):
        (await idle.get()).post(seq, request(seq))
    await asyncio.sleep(0.5)
    total = int(rate * duration)
    cpu_before = process_cpu_seconds(service_pid) if service_pid else 0.0
    own_cpu_before = time.process_time()
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
    while len(answered) < total + warmup and time.monotonic() < deadline:
        await asyncio.sleep(0.01)  # every POST answered (the figure when nothing is delivered)
    received: dict[int, int] = {}
    while deliver and time.monotonic() < deadline:
        received = {seq: t for agent in agents for seq, t in agent.received.items()}
        if len(received) >= total + warmup:
            break
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - start
    cpu = process_cpu_seconds(service_pid) - cpu_before if service_pid else 0.0
    own_cpu = time.process_time() - own_cpu_before
    for poster in posters:
        assert poster.transport is not None
        poster.transport.close()
    for agent in agents:
        assert agent.transport is not None
        agent.transport.close()
    latencies = sorted((received[s] - sent[s]) / 1e6 for s in sent if s in received)
    round_trips = sorted((answered[s] - sent[s]) / 1e6 for s in sent if s in answered)
    return {
        "rate": rate,
        "agents": agent_count,
        "achieved_rate": round(achieved, 1),
        "sent": total,
        "received": len(latencies),
        "failures": sum(p.failures for p in posters),
        "service_cpu_share": round(cpu / elapsed, 2),  # of one core, sending to last delivery
        "service_cpu_us_per_push": round(1e6 * cpu / total, 1),
        "client_cpu_share": round(own_cpu / elapsed, 2),  # this process: sender and agents
        **latency_figures(latencies, round_trips),
    }


def cpu_pressure() -> str:
    """The kernel's CPU pressure line (share of time some task waited for a CPU)."""
    try:
        return Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return "not available"


def saturated(result: dict[str, Any]) -> bool:
    """Whether the service no longer keeps up with this rate (the end of a curve)."""
    return (
        result["achieved_rate"] < SATURATED_SHARE * result["rate"]
        or result["received"] < result["sent"]
        or result["p99_ms"] > SATURATED_P99_MS
    )


def curve_rates(first: float, step: float, last: float) -> list[float]:
    """The offered rates of a curve: `first`, then every `step` up to `last`."""
    count = int((last - first) // step) + 1
    return [first + i * step for i in range(count)]


def plot_curve(results: list[dict[str, Any]], path: Path, title: str) -> None:
    """Delivery p50/p99 (and the POST's p99) against the offered rate, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [r["rate"] for r in results]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot(rates, [r["p50_ms"] for r in results], "o-", label="delivery p50")
    ax.plot(rates, [r["p99_ms"] for r in results], "s-", label="delivery p99")
    ax.plot(rates, [r["post_p99_ms"] for r in results], "^:", label="POST answered p99")
    for r in results:
        if saturated(r):
            ax.annotate(
                f"saturated: {r['achieved_rate']:,.0f}/s achieved",
                (r["rate"], r["p99_ms"]), textcoords="offset points", xytext=(-170, -4),
            )  # fmt: skip
    ax.set_yscale("log")
    agents = results[0]["agents"] if results else 1
    ax.set_xlabel(f"offered pushes per second (open loop, spread over {agents} subscriptions)")
    ax.set_ylabel("POST written to notification read (ms, log scale)")
    ax.axhline(2, color="grey", linestyle=":", linewidth=1)
    ax.axhline(10, color="grey", linestyle="--", linewidth=1)
    save_plot(fig, ax, path, title=title, legend="upper left")


async def main(args: argparse.Namespace) -> None:
    load_before = os.getloadavg()
    results = []
    if args.curve:
        rates = curve_rates(args.first, args.step, args.max_rate)
    else:
        rates = [float(r) for r in args.rates.split(",")]
    with tempfile.TemporaryDirectory(prefix="tidings-wire-") as tmp:
        port = free_port()
        service = start_service(port, Path(tmp))
        try:
            for rate in rates:
                result = await run_rate(
                    port, rate, args.duration, args.connections, service.pid, args.agents
                )
                results.append(result)
                print(
                    f"{rate:g}/s: achieved {result['achieved_rate']}, p50 {result['p50_ms']} ms, "
                    f"p99 {result['p99_ms']} ms, "
                    f"service CPU {result['service_cpu_share']} of a core "
                    f"({result['service_cpu_us_per_push']} µs per push), "
                    f"clients {result['client_cpu_share']} of a core, "
                    f"load {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
                if args.curve and saturated(result):
                    break
        finally:
            service.send_signal(signal.SIGTERM)
            service.wait(20)
    print("| rate (msg/s) | achieved | received | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) |"
          " POST answered p50 / p99 (ms) | non-201 | service CPU (core, µs/push) |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['rate']:g} | {r['achieved_rate']} | {r['received']}/{r['sent']} | "
            f"{r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | {r['max_ms']} | "
            f"{r['post_p50_ms']} / {r['post_p99_ms']} | {r['failures']} | "
            f"{r['service_cpu_share']}, {r['service_cpu_us_per_push']} |"
        )
    load_after = os.getloadavg()
    print(
        f"\n{time.strftime('%Y-%m-%d %H:%M')} UTC on {os.cpu_count()} cores; load average "
        f"(1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
        f"after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}; "
        f"CPU pressure after: {cpu_pressure()}"
    )
    if args.plot and args.curve:
        plot_curve(
            results, Path(args.plot), "Tidings delivery latency against load, one node, SQLite"
        )
        print(f"plot: {args.plot}")
    elif args.plot:
        plot(
            results,
            Path(args.plot),
            xlabel="POST written to notification read (ms, log scale)",
            title="Tidings push service latency, bare clients, one machine",
        )
        print(f"plot: {args.plot}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        summary = [{k: v for k, v in r.items() if k != "latencies_ms"} for r in results]
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="100,1000,5000", help="messages/s, comma-separated")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per rate")
    parser.add_argument(
        "--agents", type=int, default=1, help="user agents (one subscription each) sharing the load"
    )
    parser.add_argument("--connections", type=int, default=CONNECTIONS, help="sender keep-alives")
    parser.add_argument(
        "--curve", action="store_true",
        help="offer --first, then every --step more, until the service saturates (or --max-rate)",
    )  # fmt: skip
    parser.add_argument("--first", type=float, default=1000.0, help="first rate of --curve")
    parser.add_argument("--step", type=float, default=1000.0, help="rate step of --curve")
    parser.add_argument("--max-rate", type=float, default=30000.0, help="last rate of --curve")
    parser.add_argument("--plot", help="write a plot (PNG) here: a CDF per rate, or the --curve")
    parser.add_argument("--json", help="write the summary figures here")
    import uvloop

    uvloop.run(main(parser.parse_args()))
