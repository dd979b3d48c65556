"""Hyperty wake-up latency: from the caller's invitation to the callee Connector's handler.

Everything runs on this machine through `tidings.cli.demo_call.CallDemo`:
  - the push service and the push element, in this process (one event loop), with the
    caller runtime (it sends the invitation and long-polls for the answer);
  - the callee, in one of two states:
      asleep: no runtime process. `tidings agent` (its own process) holds the push
              connection and starts `python -m tidings.hyperty.wake` per push, which
              re-creates the Connector at its old address and hands it the invitation;
      awake:  `tidings hyperty runtime run` (its own process) holds the push connection
              and wakes the Connector in-process (no process start).
The latency is `time.time()` when the Connector's handler runs (logged by the callee
process) minus `time.time()` just before the caller posts the invitation: one clock,
one machine. "Answer" is the whole set-up as the caller sees it, up to the final 200.
For a woken process: "imports done" is its main() starting (the interpreter started and
the wake path imported), "first line" its first log line (its state loaded).

Bytecode: a woken process imports the hyperty modules anew. An installed package has
their bytecode; a source checkout run with PYTHONDONTWRITEBYTECODE set (as on the shared
VM) has none, and every woken process then compiles each module from source (~30 ms at
load 5). `--bytecode compiled` (the default) compiles the package once first, as an
install does; `--bytecode source` removes it, to measure that cost.

Run: .venv/bin/python bench/hyperty_wakeup.py [--calls 100] [--modes asleep,awake]
     [--bytecode compiled|source] [--json bench/results/hyperty_wakeup.json]
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

WARMUP = 3  # calls made and dropped before each run (first connections, page cache)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    rank = max(1, round(p / 100 * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


async def run_mode(mode: str, calls: int) -> dict[str, Any]:
    from tidings.cli.demo_call import CallDemo

    with tempfile.TemporaryDirectory(prefix=f"tidings-bench-{mode}-") as work:
        async with CallDemo(Path(work), mode=mode) as demo:  # type: ignore[arg-type]
            for _ in range(WARMUP):
                await demo.call()
            wake: list[float] = []
            answer: list[float] = []
            process: list[float] = []
            imported: list[float] = []
            pids: set[int] = set()
            for number in range(calls):
                started = time.time()
                result = await demo.call()
                if result.answer.code != 200 or result.wake_latency is None:
                    raise RuntimeError(f"call {number} failed: {result.answer.to_json()}")
                wake.append(result.wake_latency * 1000)
                answer.append((time.time() - started) * 1000)
                if (at := result.callee_at("runtime-started")) is not None:
                    process.append(at * 1000)
                    first = next(e for e in result.callee_events if e["event"] == "runtime-started")
                    if first.get("process_start") is not None:  # main() ran: imports done
                        imported.append((first["process_start"] - result.started) * 1000)
                if result.callee_pid is not None:
                    pids.add(result.callee_pid)
    return {
        "mode": mode,
        "calls": calls,
        "callee_processes": len(pids),
        "wake_ms": summary(wake),
        "answer_ms": summary(answer),
        "process_started_ms": summary(process) if process else None,
        "imports_done_ms": summary(imported) if imported else None,
    }


def prepare_bytecode(mode: str) -> None:
    """`compiled`: write the tidings package's bytecode; `source`: remove it."""
    import tidings

    package = Path(tidings.__file__).parent
    if mode == "compiled":
        compileall.compile_dir(package, quiet=1)
    else:
        for cache in package.rglob("__pycache__"):
            shutil.rmtree(cache, ignore_errors=True)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 50), 1),
        "p95": round(percentile(values, 95), 1),
        "p99": round(percentile(values, 99), 1),
        "min": round(min(values), 1),
        "max": round(max(values), 1),
        "mean": round(statistics.fmean(values), 1),
    }


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_before": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--modes", default="asleep,awake")
    parser.add_argument("--bytecode", choices=("compiled", "source"), default="compiled")
    parser.add_argument("--json", type=Path, default=None, help="write the results here too")
    args = parser.parse_args()
    prepare_bytecode(args.bytecode)
    info = {**machine(), "bytecode": args.bytecode}
    results = [asyncio.run(run_mode(mode, args.calls)) for mode in args.modes.split(",")]
    info["load_after"] = os.getloadavg()
    print(f"machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}")
    print(f"load average before {info['load_before']}, after {info['load_after']}")
    print(f"bytecode: {args.bytecode}")
    print(f"{'callee':<8} {'calls':>5}  {'wake p50':>9} {'wake p95':>9} {'wake p99':>9}  "
          f"{'answer p50':>10} {'answer p99':>10}  processes")  # fmt: skip
    for r in results:
        w, a = r["wake_ms"], r["answer_ms"]
        print(
            f"{r['mode']:<8} {r['calls']:>5}  "
            f"{w['p50']:>7.1f}ms {w['p95']:>7.1f}ms {w['p99']:>7.1f}ms  "
            f"{a['p50']:>8.1f}ms {a['p99']:>8.1f}ms  {r['callee_processes']}"
        )
        if r["process_started_ms"]:
            p = r["process_started_ms"]
            i = r["imports_done_ms"] or p
            print(
                f"         woken process's imports done: p50 {i['p50']:.1f}ms "
                f"p95 {i['p95']:.1f}ms; its first line: p50 {p['p50']:.1f}ms "
                f"p95 {p['p95']:.1f}ms p99 {p['p99']:.1f}ms"
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "results": results}, indent=2))


if __name__ == "__main__":
    main()
