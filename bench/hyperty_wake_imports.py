"""What a woken runtime's process costs before it runs a line of ours: the interpreter's
start and the imports of the wake path (`python -c "import tidings.hyperty.wake"`).

Source trees are measured side by side, interleaved round by round (on a shared
machine the load moves too much for runs one after the other to compare). Each tree is
copied to a temporary directory twice: with its bytecode compiled (as an installed
package has it) and without (a source checkout run with PYTHONDONTWRITEBYTECODE set: each
process compiles every module it imports). Give older trees to compare, e.g. one made
with `git archive main src | tar -x -C /tmp/main-tree`.

Run: .venv/bin/python bench/hyperty_wake_imports.py [--rounds 40] [--tree LABEL=SRC_DIR ...]
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hyperty_wakeup import machine, percentile, summary

REPO = Path(__file__).resolve().parents[1]
WAKE_IMPORT = "import tidings.hyperty.wake"
#: The floors, measured in the same rounds: the bare interpreter, and asyncio (which
#: the runtime is written in) with nothing of ours.
FLOORS = {"python -c pass": "pass", "python -c 'import asyncio'": "import asyncio"}


def copies(label: str, src: Path, work: Path) -> dict[str, Path]:
    """The tree without bytecode and with it, as two copies under `work`."""
    made: dict[str, Path] = {}
    for variant in ("source", "compiled"):
        target = work / f"{label}-{variant}"
        shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__"))
        if variant == "compiled":
            compileall.compile_dir(target, quiet=1)
        made[f"{label}, {variant}"] = target
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--tree", action="append", default=[], help="LABEL=SRC_DIR (repeatable)")
    args = parser.parse_args()
    trees = [item.split("=", 1) for item in args.tree] or [["this tree", str(REPO / "src")]]
    info = machine()
    with tempfile.TemporaryDirectory(prefix="tidings-bench-imports-") as work:
        variants: dict[str, Path] = {}
        for label, src in trees:
            variants.update(copies(label, Path(src), Path(work)))
        runs = {name: (WAKE_IMPORT, str(path)) for name, path in variants.items()}
        runs.update({name: (code, "") for name, code in FLOORS.items()})
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, (code, path) in runs.items():
                env = {**os.environ, "PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1"}
                started = time.perf_counter()
                subprocess.run([sys.executable, "-c", code], env=env, check=True)
                times[name].append((time.perf_counter() - started) * 1000)
    print(f"machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}")
    print(f"load average before {info['load_before']}, after {os.getloadavg()}")
    print(f"{args.rounds} rounds: start + `{WAKE_IMPORT}` (ms)")
    print(f"{'tree (or floor)':<28} {'p50':>7} {'p95':>7} {'min':>7}")
    for name, series in times.items():
        p50 = summary(series)["p50"]
        print(f"{name:<28} {p50:>7.1f} {percentile(series, 95):>7.1f} {min(series):>7.1f}")


if __name__ == "__main__":
    main()
