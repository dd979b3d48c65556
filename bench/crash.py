"""Crash safety under load: many SIGKILL/restart cycles of `tidings serve`.

    .venv/bin/python bench/crash.py --cycles 200 [--senders 6] [--seed 1]

Each cycle starts the service, pushes numbered messages from concurrent senders to a
connected user agent for a random moment, then kills the process with SIGKILL. At the
end every message that got a 201 with TTL > 0 must have been delivered, and nothing
else may appear. The CI test (tests/reliability/test_crash.py) runs 20 cycles.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from reliability.crashload import run_crash_cycles  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--senders", type=int, default=6)
    parser.add_argument("--subscriptions", type=int, default=4)
    parser.add_argument("--seed", type=int)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tidings-crash-") as work:
        report = asyncio.run(
            run_crash_cycles(
                Path(work),
                args.cycles,
                senders=args.senders,
                subscriptions=args.subscriptions,
                seed=args.seed,
            )
        )
    print(report.summary())
    for text in report.missing[:20]:
        print("missing:", text)
    for text in report.unexpected[:20]:
        print("unexpected:", text)
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
