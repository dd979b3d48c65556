"""`tidings serve`'s start-up banner tells a newcomer where everything is."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from tidings.cli import serve as serve_cli
from tidings.service.config import ServiceConfig


@pytest.fixture
def banner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    # The banner is the subject: the server itself is not started.
    monkeypatch.setattr("tidings.service.run.serve", lambda config: None)
    return CliRunner()


def test_the_banner_says_how_to_get_the_playground_when_it_is_off(banner: CliRunner) -> None:
    result = banner.invoke(serve_cli.serve, ["--port", "18999", "--db", "unused/t.db"])
    assert result.exit_code == 0, result.output
    assert "playground: off (start with --demo, or `make run DEMO=1`)" in result.output


def test_the_banner_gives_the_playground_url_with_demo(banner: CliRunner) -> None:
    result = banner.invoke(serve_cli.serve, ["--port", "18999", "--db", "unused/t.db", "--demo"])
    assert result.exit_code == 0, result.output
    origin = ServiceConfig(port=18999).origin
    assert f"playground: {origin}/playground/" in result.output
    assert "playground: off" not in result.output
