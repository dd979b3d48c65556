"""The systemd units in deploy/systemd: valid for systemd, hardened, and a command line
that `tidings serve` accepts."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from support.ci import require
from tidings.cli.serve import serve

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
INSTALLED_TIDINGS = "/opt/tidings/.venv/bin/tidings"
HARDENING = (
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "DynamicUser=yes",
    "StateDirectory=tidings",
    "CapabilityBoundingSet=",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    "SystemCallFilter=@system-service",
)


def _units() -> list[Path]:
    return sorted(UNITS.glob("*.service"))


def _exec_start(unit: Path) -> list[str]:
    lines = [line for line in unit.read_text().splitlines() if line.startswith("ExecStart=")]
    assert len(lines) == 1, f"{unit.name}: one ExecStart expected"
    return shlex.split(lines[0].removeprefix("ExecStart="))


def test_there_is_a_unit_for_one_node_and_a_template_for_several() -> None:
    assert [unit.name for unit in _units()] == ["tidings.service", "tidings@.service"]


@pytest.mark.parametrize("unit", _units(), ids=lambda unit: unit.name)
def test_each_unit_is_hardened(unit: Path) -> None:
    lines = set(unit.read_text().splitlines())
    assert [option for option in HARDENING if option not in lines] == []


@pytest.mark.parametrize("unit", _units(), ids=lambda unit: unit.name)
def test_the_command_line_is_one_tidings_serve_accepts(unit: Path) -> None:
    command = _exec_start(unit)
    assert command[:2] == [INSTALLED_TIDINGS, "serve"]
    # systemd specifiers (%i: the instance, %H: the host name) as systemd would fill them.
    args = [arg.replace("%i", "8081").replace("%H", "host") for arg in command[2:]]
    with serve.make_context("serve", args) as context:  # raises on an unknown option
        assert context.params["port"] in (None, 8081)


@pytest.mark.parametrize("unit", _units(), ids=lambda unit: unit.name)
def test_systemd_analyze_verify_finds_nothing_to_say(unit: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    require(analyze is not None, "systemd-analyze (Debian package systemd)")
    assert analyze is not None
    # verify checks that ExecStart exists: point it at this checkout's tidings.
    tidings = str(Path(sys.executable).with_name("tidings"))
    name = unit.name.replace("@.", "@8081.")
    rendered = tmp_path / name
    rendered.write_text(unit.read_text().replace(INSTALLED_TIDINGS, tidings))
    result = subprocess.run(
        [analyze, "verify", str(rendered)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    # Unknown or misspelt keys are only warnings: any message at all is a failure here.
    complaints = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if str(rendered) in line or "Unknown" in line or "Invalid" in line
    ]
    assert complaints == []


def test_the_check_above_would_see_a_misspelt_option(tmp_path: Path) -> None:
    """The control for the check above: systemd-analyze reports an unknown key."""
    analyze = shutil.which("systemd-analyze")
    require(analyze is not None, "systemd-analyze (Debian package systemd)")
    assert analyze is not None
    bad = tmp_path / "bad.service"
    bad.write_text("[Service]\nExecStart=/bin/true\nProtectSystm=strict\n")
    result = subprocess.run([analyze, "verify", str(bad)], capture_output=True, text=True)
    assert "Unknown key" in result.stdout + result.stderr


def test_click_is_what_parses_the_unit_command_line() -> None:
    """A misspelt flag in a unit is caught by the command-line check above."""
    with pytest.raises(click.NoSuchOption):
        serve.make_context("serve", ["--prot", "1"])
