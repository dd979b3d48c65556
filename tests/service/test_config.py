"""Service settings (service/config.py): defaults, TOML, environment, ranges."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidings.service.config import ServiceConfig, load_config

CHANNEL = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
UAID = "00112233445566778899aabbccddeeff"

CHANNEL = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
UAID = "00112233445566778899aabbccddeeff"


# config ---------------------------------------------------------------------------------


def test_config_defaults() -> None:
    config = ServiceConfig()
    assert config.max_ttl == 30 * 24 * 3600
    assert config.max_body == 5630  # autopush's default max_data_bytes
    assert config.origin == "http://127.0.0.1:8080"
    assert config.websocket_url == "ws://127.0.0.1:8080/"
    assert config.secrets_path == Path("tidings-data/tidings-secrets.json")


def test_config_origin_forms() -> None:
    assert ServiceConfig(host="::1", port=9).origin == "http://[::1]:9"
    public = ServiceConfig(public_url="https://push.example.com/")
    assert public.origin == "https://push.example.com"
    assert public.websocket_url == "wss://push.example.com/"


def test_config_from_toml_then_environment(tmp_path: Path) -> None:
    file = tmp_path / "tidings.toml"
    file.write_text('[serve]\nport = 9000\nmax-ttl = 60\nhello_timeout = 2\ndb = "x.db"\n')
    config = load_config(file, environ={"TIDINGS_PORT": "9100", "TIDINGS_REUSE_PORT": "yes"})
    assert config.port == 9100
    assert config.max_ttl == 60
    assert config.hello_timeout == 2.0
    assert config.db == "x.db"
    assert config.reuse_port is True


def test_config_top_level_toml(tmp_path: Path) -> None:
    file = tmp_path / "tidings.toml"
    file.write_text("port = 9001\n")
    assert load_config(file, environ={}).port == 9001


@pytest.mark.parametrize(
    ("toml", "environ"),
    [
        ("nonsense = 1\n", {}),
        ('port = "many"\n', {}),
        ("", {"TIDINGS_PORT": "eighty"}),
        ("", {"TIDINGS_REUSE_PORT": "maybe"}),
        ("port = 1.5\n", {}),
    ],
)
def test_config_refuses_bad_values(tmp_path: Path, toml: str, environ: dict[str, str]) -> None:
    file = tmp_path / "tidings.toml"
    file.write_text(toml)
    with pytest.raises(ValueError):
        load_config(file, environ=environ)


def test_empty_environment_values_are_ignored() -> None:
    assert load_config(None, environ={"TIDINGS_PORT": ""}).port == 8080


@pytest.mark.parametrize(
    ("setting", "value"),
    [("port", 70000), ("port", True), ("max_ttl", -1), ("max_body", 100), ("workers", 0)],
)
def test_out_of_range_settings_are_refused(setting: str, value: object) -> None:
    with pytest.raises(ValueError, match=setting):
        ServiceConfig().with_overrides({setting: value})
