"""The short fuzz run of `make test`: every target, deterministic and bounded.

1. Every file of the seed corpus (tests/fuzz/corpus/TARGET/) replays through its target.
2. A derandomized Hypothesis run mutates the corpus (bytes replaced, inserted, cut) for a
   fixed number of examples.
3. A seeded atheris (libFuzzer) run of a fixed number of inputs, coverage-guided, in a
   subprocess (tests/fuzz/run.py; `make fuzz` runs the same targets for FUZZ_SECONDS).

A corpus file listed in KNOWN_HOLES exposes a hole another branch of issue 16 fixes: its
test is a strict xfail, so merging the fix turns it into a failure until the entry goes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.targets import TARGETS, seeds
from support.ci import require

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
RUN = HERE / "run.py"
ATHERIS_RUNS = 4000  # inputs per target in `make test` (about a second or two each)

KNOWN_HOLES: dict[tuple[str, str], str] = {}
"""(target, corpus file) -> why it still fails on this branch."""


def corpus_files(target: str, *, holes: bool = True) -> list[Path]:
    folder = CORPUS / target
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and (holes or (target, path.name) not in KNOWN_HOLES)
    )


def _cases() -> list[object]:
    cases: list[object] = []
    for target in TARGETS:
        for path in corpus_files(target):
            reason = KNOWN_HOLES.get((target, path.name))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            cases.append(pytest.param(target, path, marks=marks, id=f"{target}/{path.name}"))
    return cases


def test_every_target_has_a_corpus() -> None:
    for target in TARGETS:
        assert len(corpus_files(target)) >= 5, target
    assert {p.name for p in CORPUS.iterdir()} == set(TARGETS)
    for target, name in KNOWN_HOLES:
        assert (CORPUS / target / name).is_file(), (target, name)


@pytest.mark.parametrize(("target", "path"), _cases())
def test_corpus_replays(target: str, path: Path) -> None:
    TARGETS[target](path.read_bytes())


@pytest.mark.parametrize("target", sorted(seeds()))
def test_fresh_valid_inputs(target: str) -> None:
    for data in seeds()[target].values():
        TARGETS[target](data)


def _mutations(target: str) -> st.SearchStrategy[bytes]:
    """A corpus file with a few bytes replaced, inserted or cut (or any bytes at all)."""
    files = [path.read_bytes() for path in corpus_files(target, holes=False)]

    @st.composite
    def mutated(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(files)))
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(data)))
            edit = draw(st.sampled_from(["replace", "insert", "cut"]))
            chunk = draw(st.binary(min_size=1, max_size=8))
            if edit == "insert":
                data[at:at] = chunk
            elif edit == "replace":
                data[at : at + len(chunk)] = chunk
            else:
                del data[at : at + len(chunk)]
        return bytes(data)

    return mutated() | st.binary(max_size=512)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_hypothesis_mutates_the_corpus(target: str) -> None:
    @settings(
        max_examples=150,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(_mutations(target))
    def run(data: bytes) -> None:
        TARGETS[target](data)

    run()


def _atheris_available() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_atheris_short_run(target: str, tmp_path: Path) -> None:
    require(_atheris_available(), "atheris (pip install -e '.[dev]' on Linux x86_64)")
    env = {**os.environ, "TIDINGS_FUZZ_WORK": str(tmp_path)}
    result = subprocess.run(
        [
            sys.executable,
            str(RUN),
            target,
            "--corpus-only",
            f"-runs={ATHERIS_RUNS}",
            "-seed=1",
            "-max_len=4096",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    summary = [line for line in result.stderr.splitlines() if not line.startswith("INFO: Instr")]
    assert result.returncode == 0, "\n".join(summary[-40:])
    assert f"Done {ATHERIS_RUNS} runs" in result.stderr
