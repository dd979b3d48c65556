"""`bench/push_path_instructions.py` reads a callgrind dump's instructions from its
`totals:` line: a dump triggered by `callgrind_control --dump` carries `summary: 0`."""

from __future__ import annotations

from pathlib import Path

from support.bench import load_bench


def test_instructions_come_from_the_totals_line(tmp_path: Path) -> None:
    dump = tmp_path / "callgrind.out.1"
    dump.write_text(
        "version: 1\ncreator: callgrind-3.22.0\ndesc: Trigger: dump pushes\n"
        "events: Ir\nsummary: 0\nfn=(1) main\n0 5\ntotals: 318740354\n"
    )
    assert load_bench("push_path_instructions").total_instructions(dump) == 318740354
