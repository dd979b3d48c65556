"""The docs cite only files that exist: every `path/to/file.ext` named in a Markdown page
of the repository is a file in it (cited from the root or from any package directory, as
`service/core.py` for `src/tidings/service/core.py`)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CITED = re.compile(
    r"`([A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*\.(?:py|md|toml|json|js|html|conf|service|ya?ml|sh|png|svg|lua))(?:[:#][^`]*)?`"
)
# Files of other repositories, named where the docs describe them.
ELSEWHERE = {
    "tests/integration/test_integration_all_rust.py",  # autopush-rs's integration suite
    "shared/reference/rethink.md",  # the project's shared reference, beside the checkout
}


def tracked_files() -> list[str]:
    listing = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    return listing.splitlines()


def pages() -> list[Path]:
    return sorted(REPO / name for name in tracked_files() if name.endswith(".md"))


@pytest.mark.parametrize("page", pages(), ids=lambda page: str(page.relative_to(REPO)))
def test_every_cited_file_exists(page: Path) -> None:
    files = tracked_files()
    missing = []
    for cited in sorted(set(CITED.findall(page.read_text(encoding="utf-8")))):
        if cited in ELSEWHERE:
            continue
        if "/" not in cited and not cited.endswith(".py"):
            continue  # a bare `README.md` or `config.toml` names a kind of file, not a path
        if not any(name == cited or name.endswith("/" + cited) for name in files):
            missing.append(cited)
    assert not missing, f"{page.relative_to(REPO)} cites files that do not exist: {missing}"


def test_the_architecture_names_every_module() -> None:
    """docs/architecture.md has a line for every module of the package (by its path under
    src/tidings, or by its file name in its package's row)."""
    page = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    package = REPO / "src" / "tidings"
    unnamed = [
        str(module.relative_to(package))
        for module in sorted(package.rglob("*.py"))
        if module.name not in ("__init__.py", "__main__.py")
        and str(module.relative_to(package)) not in page
        and f"`{module.name}`" not in page
    ]
    assert not unnamed, f"docs/architecture.md does not name: {unnamed}"
