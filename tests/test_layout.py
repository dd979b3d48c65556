"""The layout's rule of thumb: a module is one idea, and one over 500 lines says why at its
top (a line of its docstring saying "Over 500 lines:" or "About 500 lines:")."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tidings"
LONG = 500


def test_every_long_module_says_why() -> None:
    unexplained = []
    for module in sorted(PACKAGE.rglob("*.py")):
        text = module.read_text(encoding="utf-8")
        if text.count("\n") <= LONG:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if "Over 500 lines:" not in doc and "About 500 lines:" not in doc:
            unexplained.append(f"{module.relative_to(PACKAGE)} ({text.count(chr(10))} lines)")
    assert not unexplained, (
        f"modules over {LONG} lines without a reason at their top: {unexplained}"
    )
