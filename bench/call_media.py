"""A call with media to a sleeping callee: from the invitation to the first media frame.

Everything runs on this machine through `tidings.cli.demo_call.CallDemo(media=True)`:
the push service, the push element and the caller runtime in this process; the callee
asleep (no process: `tidings agent` starts `python -m tidings.hyperty.wake` on the
push). Each call: the invitation is pushed, the woken process rings, loads the media
stack (aiortc) and takes its message connection, answers 200; the caller offers; the
signals go through the element as reTHINK updates; ICE on 127.0.0.1; each side decodes
the other's tone and test pattern for `--seconds`; the caller hangs up and the callee's
process exits before the next call. One clock (`time.time()`), one machine.

Measured per call (ms from just before the invitation is posted):
  wake         the callee Connector's handler runs (logged by the woken process)
  process      the woken process's first log line
  answer       the caller has the 200
  ice          the caller's ICE is connected
  first media  the caller decoded its first frame (audio or video)

Run: .venv/bin/python bench/call_media.py [--calls 20] [--seconds 0.3]
     [--bytecode compiled|source] [--json FILE]     (--bytecode: see hyperty_wakeup.py)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hyperty_wakeup import machine, prepare_bytecode, summary

WARMUP = 2  # calls made and dropped first (the caller's first media import, page cache)
KEYS = {
    "wake": "wake_ms",
    "process": "process_started_ms",
    "answer": "answer_ms",
    "ice": "ice_connected_ms",
    "first media": "first_media_ms",
}


async def run(calls: int, seconds: float) -> dict[str, Any]:
    from tidings.cli.demo_call import CallDemo

    values: dict[str, list[float]] = {name: [] for name in KEYS}
    frames: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tidings-bench-media-") as work:
        async with CallDemo(Path(work), media=True, seconds=seconds) as demo:
            for _ in range(WARMUP):
                await demo.call(timeout=60)
            for number in range(calls):
                report = (await demo.call(timeout=60)).report()
                if report["code"] != 200 or report.get("first_media_ms") is None:
                    raise RuntimeError(f"call {number} got no media: {report}")
                if not report.get("callee_exited"):
                    raise RuntimeError(f"call {number}: the callee's process did not exit")
                for name, key in KEYS.items():
                    if report.get(key) is not None:
                        values[name].append(report[key])
                frames.append(report["frames_received"])
    result: dict[str, Any] = {"calls": calls, "seconds": seconds, "frames": frames}
    for name, series in values.items():
        result[name] = summary(series)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=0.3, help="media time per call")
    parser.add_argument("--bytecode", choices=("compiled", "source"), default="compiled")
    parser.add_argument("--json", type=Path, default=None, help="write the results here too")
    args = parser.parse_args()
    prepare_bytecode(args.bytecode)
    info = {**machine(), "bytecode": args.bytecode}
    result = asyncio.run(run(args.calls, args.seconds))
    info["load_after"] = os.getloadavg()
    print(f"machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}")
    print(f"load average before {info['load_before']}, after {info['load_after']}")
    print(f"bytecode: {args.bytecode}")
    print(f"{args.calls} calls, callee asleep, {args.seconds} s of media each")
    print(f"{'ms from the invitation':<24} {'p50':>8} {'p95':>8} {'min':>8} {'max':>8}")
    for name in KEYS:
        r = result[name]
        print(f"{name:<24} {r['p50']:>8.1f} {r['p95']:>8.1f} {r['min']:>8.1f} {r['max']:>8.1f}")
    fewest = {
        side: {kind: min(f[side][kind] for f in result["frames"]) for kind in ("audio", "video")}
        for side in ("caller", "callee")
    }
    print(f"fewest frames received in a call: {fewest}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "result": result}, indent=2))


if __name__ == "__main__":
    main()
