"""Run Mozilla's autopush integration suite against Tidings (`make peers AUTOPUSH=...`).

    python tests/peers/run_autopush_suite.py CHECKOUT [--suite-python PY] [-- PYTEST-ARGS]

CHECKOUT is a checkout of mozilla-services/autopush-rs (only its tests/ folder is
used). The suite runs in its own Python (`--suite-python`, default
/tmp/autopush-venv/bin/python, made and filled with the suite's test dependencies by
`make peers` when missing); Tidings runs from this repository in this Python. The
start-up is adapted by autopush_plugin.py; the suite's code and assertions are used as
they are, with its own default selection (no stub, sentry or reliable_report tests).
Never collected by this project's pytest: CI cannot download the suite.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SUITE_FILE = "integration/test_integration_all_rust.py"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", type=Path, help="a checkout of mozilla-services/autopush-rs")
    parser.add_argument("--suite-python", default="/tmp/autopush-venv/bin/python")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    options = parser.parse_args()
    tests = options.checkout.resolve() / "tests"
    if not (tests / SUITE_FILE).is_file():
        parser.error(f"{tests / SUITE_FILE} not found: give an autopush-rs checkout")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "TIDINGS_PYTHON": sys.executable,  # Tidings runs here, the suite in its own venv
    }
    env["PYTHONPATH"] = env["PYTHONPATH"].rstrip(os.pathsep)
    tidings_src = str(REPO / "src")
    env["PYTHONPATH"] += os.pathsep + tidings_src  # for `python -m tidings` (TIDINGS_PYTHON)
    command = [options.suite_python, "-m", "pytest", "-p", "autopush_plugin", SUITE_FILE]
    command += ["-p", "no:cacheprovider", "-o", "log_cli=false", "-rA", *options.pytest_args]
    return subprocess.run(command, cwd=tests, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
