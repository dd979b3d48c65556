"""Instructions per push on the whole SQLite push path, counted by callgrind (issue 21, item 2).

Wall-clock CPU per push on this shared 2-core machine moves by more than the 5-10 %
changes it is meant to show; instruction counts do not depend on the load. This runs
`tidings serve` (SQLite store) under `valgrind --tool=callgrind` with instrumentation
off while it starts, user agents (bench/service_load.py's raw WebSocket clients, in
another process, not counted) register one subscription each, then turns it on for
`--pushes` signed aes128gcm pushes sent by `--connections` keep-alive HTTP/1.1
connections, each delivered over WebSocket and acknowledged (so deleted), and off
again once the agents have acknowledged them all and the service has settled. Every
instruction of the service process in that window (HTTP parse, VAPID and token, store
insert and commit, hub, WebSocket frame, ack parse, store delete, the asyncio loop,
the SQLite thread) is divided by the pushes:

    PYTHONPATH=src python bench/push_path_instructions.py [--pushes 2000] [--annotate 25]

Compare two versions with PYTHONPATH (the bench and the agents stay the same).
Needs valgrind. The group commit's batches depend on timing, so counts vary a little
(about 1 %) between runs; a cut worth keeping shows well past that. With the default
8 connections the counts of the same code moved by up to 7 % (how many pushes share a
loop turn and so a commit depends on timing under valgrind); with `--connections 1`
every push has the same shape and runs repeat within about 0.6 %. The share of pushes
answered on their ack without being stored (printed; a stored push costs more) was
94-95 % in both (an ack that misses its wait makes the connection store first for a
while): compare it too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pstats
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from benchkit import free_port, wait_healthy  # noqa: E402
from service_load import start_agents  # noqa: E402
from tidings.webpush import VapidKey, encrypt, sign_vapid  # noqa: E402


def start_service(port: int, workdir: Path, python_calls: bool) -> subprocess.Popen[bytes]:
    config = workdir / "bench.toml"
    config.write_text('rate_push_subscription = "off"\nrate_push_vapid_key = "off"\n')
    valgrind = (
        *("valgrind", "--tool=callgrind", "--instr-atstart=no"),
        f"--callgrind-out-file={workdir / 'callgrind.out'}",
    )
    profiler = ("-m", "cProfile", "-o", str(workdir / "cprofile.out"))
    command = [
        *((sys.executable, *profiler) if python_calls else (*valgrind, sys.executable)),
        *("-m", "tidings", "serve", "--port", str(port)),
        *("--db", str(workdir / "t.db"), "--log-level", "warning", "--config", str(config)),
    ]
    log = (workdir / "valgrind.log").open("wb")
    return subprocess.Popen(command, cwd=REPO, stdout=log, stderr=log)


def callgrind_control(*args: str) -> None:
    if args[-1] == "":
        return  # --python-calls: no valgrind
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True)


async def sender(
    port: int, paths: list[str], headers: bytes, body: bytes, count: int, offset: int
) -> int:
    """Send `count` pushes one after another on one connection; return the 201s."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    created = 0
    for i in range(count):
        path = paths[(offset + i) % len(paths)]
        writer.write(b"POST %s HTTP/1.1\r\n%s\r\n%s" % (path.encode(), headers, body))
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        if length is not None:
            await reader.readexactly(int(length[1]))
        created += head.startswith(b"HTTP/1.1 201")
    writer.close()
    return created


async def push_all(
    port: int, paths: list[str], headers: bytes, body: bytes, pushes: int, connections: int
) -> int:
    share = pushes // connections
    counts = await asyncio.gather(
        *(sender(port, paths, headers, body, share, c * share) for c in range(connections))
    )
    return sum(counts)


def unstored_count(port: int) -> int:
    """The service's pushes answered on their ack without being stored (live_acks.py)."""
    import httpx

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=60).text
    found = re.search(r"^tidings_pushes_acknowledged_unstored_total (\S+)$", text, re.M)
    return 0 if found is None else int(float(found[1]))


def total_instructions(out: Path) -> int:
    for line in reversed(out.read_text(errors="replace").splitlines()):
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {out}")


def annotate(out: Path, top: int, inclusive: bool) -> str:
    command = [
        "callgrind_annotate",
        "--threshold=100",
        f"--inclusive={'yes' if inclusive else 'no'}",
    ]
    text = subprocess.run([*command, str(out)], capture_output=True, text=True).stdout
    rows = [line for line in text.splitlines() if re.match(r"^\s*[\d,]+ \(", line)]
    return "\n".join(rows[1 : top + 1])  # the first row is the program's total


def print_python_calls(out: Path, pushes: int, created: int, top: int) -> None:
    stats = pstats.Stats(str(out))
    table = stats.stats  # type: ignore[attr-defined]
    calls = sum(row[1] for row in table.values())
    print(
        f"pushes {pushes}: 201 {created}; Python calls per push (whole run): {calls / pushes:.1f}"
    )
    rows = sorted(table.items(), key=lambda item: -item[1][1])[:top]
    for (file, line, name), row in rows:
        where = f"{Path(file).name}:{line}" if line else file
        print(f"{row[1] / pushes:8.2f}  {name}  {where}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pushes", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--annotate", type=int, default=25, help="top functions shown")
    parser.add_argument("--keep", help="copy the callgrind output file here")
    parser.add_argument(
        "--python-calls",
        action="store_true",
        help="no valgrind: the service under cProfile, Python calls per push by function "
        "(the whole run, start and registrations included)",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        port = free_port()
        service = start_service(port, workdir, args.python_calls)
        pid = "" if args.python_calls else str(service.pid)
        try:
            wait_healthy(port, service, timeout=180)
            agents, endpoints = start_agents(port, args.agents)
            assert agents.stdout is not None and agents.stdin is not None
            vapid = sign_vapid(VapidKey.generate(), endpoints[0], "mailto:bench@example.com")
            body = encrypt(b"x" * 100, VapidKey.generate().public_key_bytes, os.urandom(16))
            paths = [e.split(str(port), 1)[1] for e in endpoints]
            headers = (
                "Host: 127.0.0.1\r\nTTL: 60\r\nContent-Encoding: aes128gcm\r\n"
                f"Authorization: {vapid.authorization}\r\nContent-Length: {len(body)}\r\n"
            ).encode()
            agents.stdin.write("go\n")
            agents.stdin.flush()
            # A few pushes first, uncounted, so that caches and lazy imports are warm.
            asyncio.run(
                push_all(port, paths, headers, body, 2 * args.connections, args.connections)
            )
            time.sleep(3)
            unstored_before = unstored_count(port)  # read while not counting
            callgrind_control("--zero", pid)
            callgrind_control("--instr=on", pid)
            started = time.monotonic()
            pushes = args.connections * (args.pushes // args.connections)
            created = asyncio.run(push_all(port, paths, headers, body, pushes, args.connections))
            time.sleep(3)  # the last deliveries, acknowledgements and deletes
            callgrind_control("--instr=off", pid)
            callgrind_control("--dump=pushes", pid)
            seconds = time.monotonic() - started
            unstored = unstored_count(port) - unstored_before
            agents.stdin.write("stop\n")
            agents.stdin.flush()
            delivered = json.loads(agents.stdout.readline())["delivered"]
            agents.terminate()
        finally:
            service.send_signal(signal.SIGTERM)
            service.wait(120)
        if args.python_calls:
            print_python_calls(workdir / "cprofile.out", pushes, created, args.annotate)
            return
        dumps = sorted(workdir.glob("callgrind.out*"), key=lambda p: p.stat().st_mtime)
        out = next(p for p in dumps if "pushes" in p.read_text(errors="replace")[:2000])
        instructions = total_instructions(out)
        print(
            f"pushes {pushes}: 201 {created}, delivered {delivered} "
            f"(callgrind window {seconds:.0f} s)"
        )
        # The rest were stored first: an ack missed its wait (a slow turn under
        # valgrind), so the connection is stored-first until an ack is quick again.
        # A stored push costs more: a different share moves the count.
        print(f"acknowledged unstored: {unstored} ({100 * unstored / pushes:.0f} %)")
        print(f"instructions per push: {instructions / pushes:,.0f}")
        if args.annotate:
            print("\ntop inclusive:\n" + annotate(out, args.annotate, inclusive=True))
            print("\ntop self:\n" + annotate(out, args.annotate, inclusive=False))
        if args.keep:
            Path(args.keep).write_bytes(out.read_bytes())


if __name__ == "__main__":
    main()
