"""Run one fuzz target under atheris (libFuzzer, coverage-guided on tidings' bytecode).

    python tests/fuzz/run.py TARGET [--corpus-only] [libFuzzer flags...]
    python tests/fuzz/run.py --list

The seed corpus is tests/fuzz/corpus/TARGET (read only); it is copied to fuzz-work/TARGET
(or $TIDINGS_FUZZ_WORK/TARGET), where the fuzzer adds what it learns, and a crashing
input goes to fuzz-work/crashes/TARGET-*. Valid inputs made with fresh keys and times
(targets.seeds()) join them unless --corpus-only is given. `make fuzz` runs every
target for FUZZ_SECONDS; tests/fuzz/test_targets.py runs each for a bounded, seeded number
of inputs. A crash is a bug: fix the parser, then add the input to the seed corpus.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
JSON_TARGETS = {"firefox_json", "useragent_frames", "bus_messages", "rethink_messages"}


def main(argv: list[str]) -> None:
    import atheris

    sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]
    with atheris.instrument_imports(include=["tidings"]):
        from fuzz.targets import TARGETS, seeds
    from fuzz.test_targets import KNOWN_HOLES

    if len(argv) < 2 or argv[1] not in TARGETS:
        print("targets:", " ".join(TARGETS), file=sys.stderr)
        raise SystemExit(0 if argv[1:] == ["--list"] else 2)
    name, flags = argv[1], [flag for flag in argv[2:] if flag != "--corpus-only"]
    fresh = "--corpus-only" not in argv[2:]  # the test's seeded run: the same inputs each time
    base = Path(os.environ.get("TIDINGS_FUZZ_WORK") or REPO / "fuzz-work")
    work = base / name
    crashes = base / "crashes"
    work.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    # The seed corpus (less the inputs of holes still open on other branches, which would
    # stop the run at once) and valid inputs made with this process's keys.
    for path in sorted((HERE / "corpus" / name).iterdir()):
        if (name, path.name) not in KNOWN_HOLES:
            (work / f"corpus-{path.name}").write_bytes(path.read_bytes())
    for label, data in seeds().get(name, {}).items() if fresh else ():
        (work / f"seed-{label}").write_bytes(data)
    dirs = [str(work)]
    if any(not flag.startswith("-") for flag in flags):
        dirs = []  # files or directories given: run exactly those (replaying a crash)
    if name in JSON_TARGETS and not any(flag.startswith("-dict=") for flag in flags):
        flags = [f"-dict={HERE / 'json.dict'}", *flags]
    target = TARGETS[name]
    atheris.Setup(
        [argv[0], f"-artifact_prefix={crashes}/{name}-", *flags, *dirs],
        target,
    )
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
