"""Push latency on one machine: from the application server's send to the handler running.

Three processes, as in a deployment squeezed onto one host:
  - `tidings serve` (SQLite store in a temporary directory),
  - a sender process (Tidings' `Sender`, VAPID-signed, HTTP/1.1 keep-alive) that sends
    at a fixed rate and notes `time.monotonic_ns()` just before each `send()` call,
  - this process, running a `UserAgent` whose `push` handler notes the time it runs.
CLOCK_MONOTONIC is one clock for every process on Linux, so the two notes subtract.
The send time includes the sender's encryption (~0.13 ms) and HTTP round trip.

Run: .venv/bin/python bench/latency.py [--duration 30] [--rates 10,100,1000]
     [--plot docs/img/latency.png] [--json bench/results/latency.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from benchkit import free_port, start_tidings, wait_healthy  # noqa: E402

WARMUP = 50  # messages sent and dropped from the figures before each run


# The sender process ------------------------------------------------------------------------


async def sender_main(args: argparse.Namespace) -> None:
    from tidings.sender import Sender
    from tidings.webpush import VapidKey

    spec = json.loads(Path(args.spec).read_text())
    key = VapidKey.from_string(spec["vapid"])
    subscription = spec["subscription"]
    sent: dict[int, int] = {}
    answered: dict[int, int] = {}
    failures = 0
    pending: set[asyncio.Task[None]] = set()

    async with Sender(key, "mailto:bench@example.com") as sender:

        async def one(seq: int) -> None:
            nonlocal failures
            sent[seq] = time.monotonic_ns()
            result = await sender.send(subscription, str(seq), ttl=300)
            answered[seq] = time.monotonic_ns()
            if not result.ok:
                failures += 1

        for seq in range(-WARMUP, 0):  # warm-up: connections, token, caches
            await one(seq)
        await asyncio.sleep(0.5)
        total = int(args.rate * args.duration)
        start = time.monotonic()
        for seq in range(total):
            delay = start + seq / args.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(seq))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)
        achieved = total / (time.monotonic() - start)
    Path(args.out).write_text(
        json.dumps(
            {"sent": sent, "answered": answered, "failures": failures, "achieved_rate": achieved}
        )
    )


# The orchestrating process (the user agent side) --------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]


def latency_figures(latencies: list[float], round_trips: list[float]) -> dict[str, Any]:
    """The percentiles reported for one rate, from sorted latencies and POST round trips."""
    return {
        "p50_ms": round(percentile(latencies, 50), 3),
        "p90_ms": round(percentile(latencies, 90), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
        "max_ms": round(latencies[-1], 3) if latencies else None,
        "post_p50_ms": round(percentile(round_trips, 50), 3),
        "post_p99_ms": round(percentile(round_trips, 99), 3),
        "latencies_ms": latencies,
    }


async def run_rate(
    service_url: str, state: Path, vapid: Any, rate: float, duration: float, work: Path
) -> dict[str, Any]:
    from tidings.useragent import PushEvent, UserAgent

    received: dict[int, int] = {}
    message_ids: set[str] = set()
    duplicates = 0  # the same message id fired twice: a user agent bug
    resent = 0  # the same payload under a new id: the sender retried a slow POST

    def on_push(event: PushEvent) -> None:
        nonlocal duplicates, resent
        now = time.monotonic_ns()
        assert event.data is not None
        seq = int(event.data.text())
        if event.message_id in message_ids:
            duplicates += 1
        elif seq in received:
            resent += 1
        message_ids.add(event.message_id)
        received.setdefault(seq, now)

    async with UserAgent(service_url, state) as ua:
        registration = await ua.register(f"bench-{rate:g}", on_push=on_push)
        subscription = await registration.push_manager.subscribe(
            application_server_key=vapid.public_key_b64
        )
        spec = work / f"spec-{rate:g}.json"
        out = work / f"sent-{rate:g}.json"
        spec.write_text(
            json.dumps({"subscription": subscription.to_json(), "vapid": vapid.to_pem().decode()})
        )
        sender = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--role", "sender", "--spec", str(spec), "--out", str(out),
            "--rate", str(rate), "--duration", str(duration), cwd=REPO,
        )  # fmt: skip
        await sender.wait()
        if sender.returncode != 0:
            raise RuntimeError(f"the sender failed with status {sender.returncode}")
        sent_doc = json.loads(out.read_text())
        sent = {int(k): v for k, v in sent_doc["sent"].items()}
        measured = [s for s in sent if s >= 0]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not all(s in received for s in measured):
            await asyncio.sleep(0.05)
    series = [(received[s] - sent[s]) / 1e6 for s in sorted(measured) if s in received]
    latencies = sorted(series)
    answered = {int(k): v for k, v in sent_doc["answered"].items()}
    round_trips = sorted((answered[s] - sent[s]) / 1e6 for s in measured if s in answered)
    return {
        "rate": rate,
        "achieved_rate": round(sent_doc["achieved_rate"], 1),
        "duration": duration,
        "sent": len(measured),
        "received": len(latencies),
        "send_failures": sent_doc["failures"],
        "duplicates": duplicates,
        "resent_by_sender": resent,
        **latency_figures(latencies, round_trips),
        "series_ms": series,
    }


def start_service(port: int, directory: Path) -> subprocess.Popen[bytes]:
    log = (directory / "service.log").open("wb")
    process = start_tidings(
        port, directory / "service.db", "--max-messages", "100000", stdout=log, stderr=log,
        # One subscription at up to 1000 msg/s: over the default per-subscription limit.
        env={
            **os.environ,
            "TIDINGS_RATE_PUSH_SUBSCRIPTION": "off",
            "TIDINGS_RATE_PUSH_VAPID_KEY": "off",  # wire_latency.py's curve passes 5,000/s
            "TIDINGS_MAX_MESSAGES_PER_SUBSCRIPTION": "100000",
            "TIDINGS_MAX_BYTES_PER_USER_AGENT": str(1 << 40),
        },
    )  # fmt: skip
    wait_healthy(port, process)
    return process


def plot(
    results: list[dict[str, Any]],
    path: Path,
    *,
    xlabel: str = "send() to push handler running (ms, log scale)",
    title: str = "Tidings user agent latency, one machine (service in its own process)",
) -> None:
    """A latency CDF per rate, log scale, with the issue's 2 ms and 10 ms marks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for result in results:
        values = result["latencies_ms"]
        if not values:
            continue
        fractions = [100 * (i + 1) / len(values) for i in range(len(values))]
        ax.plot(values, fractions, label=f"{result['rate']:g} msg/s (p99 {result['p99_ms']} ms)")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("messages at or below (%)")
    ax.axvline(2, color="grey", linestyle=":", linewidth=1)
    ax.axvline(10, color="grey", linestyle="--", linewidth=1)
    save_plot(fig, ax, path, title=title, legend="lower right")


def save_plot(fig: Any, ax: Any, path: Path, *, title: str, legend: str) -> None:
    """Title, grid and legend on a latency plot, written to `path` as a PNG."""
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc=legend)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


async def bench_main(args: argparse.Namespace) -> None:
    from tidings.webpush import VapidKey

    rates = [float(r) for r in args.rates.split(",")]
    results = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tidings-latency-") as tmp:
        work = Path(tmp)
        port = free_port()
        service = start_service(port, work)
        try:
            vapid = VapidKey.generate()
            for rate in rates:
                result = await run_rate(
                    f"ws://127.0.0.1:{port}/", work / "ua", vapid, rate, args.duration, work
                )
                results.append(result)
                print(
                    f"{rate:>6g} msg/s (achieved {result['achieved_rate']}): "
                    f"p50 {result['p50_ms']} ms, p90 {result['p90_ms']} ms, "
                    f"p99 {result['p99_ms']} ms, max {result['max_ms']} ms; "
                    f"{result['received']}/{result['sent']} received, "
                    f"{result['send_failures']} send failures, "
                    f"{result['duplicates']} duplicate ids, "
                    f"{result['resent_by_sender']} sender retries; "
                    f"POST answered p50 {result['post_p50_ms']} ms, p99 {result['post_p99_ms']} ms",
                    flush=True,
                )
        finally:
            service.send_signal(signal.SIGTERM)
            service.wait(20)
    print()
    print("| rate (msg/s) | achieved | messages | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['rate']:g} | {r['achieved_rate']} | {r['received']}/{r['sent']} | "
            f"{r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | {r['max_ms']} |"
        )
    loop_name = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(
        f"\n{platform.node()}: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}; "
        f"user agent loop: {loop_name}; load average before "
        f"{load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} (1 min)"
    )
    if args.plot:
        plot(results, Path(args.plot))
        print(f"plot: {args.plot}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        bulky = ("latencies_ms", "series_ms")
        summary = [{k: v for k, v in r.items() if k not in bulky} for r in results]
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per rate")
    parser.add_argument("--rates", default="10,100,1000", help="messages/s, comma-separated")
    parser.add_argument("--plot", help="write a latency CDF plot (PNG) here")
    parser.add_argument("--json", help="write the summary figures here")
    parser.add_argument("--uvloop", action="store_true", help="run the user agent on uvloop")
    parser.add_argument("--role", choices=["bench", "sender"], default="bench")
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "sender":
        asyncio.run(sender_main(args))
    elif args.uvloop:
        import uvloop

        uvloop.run(bench_main(args))
    else:
        asyncio.run(bench_main(args))


if __name__ == "__main__":
    main()
