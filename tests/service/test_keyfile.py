"""The token key file (service/keyfile.py): made once with mode 0600, reused, and never
replaced or lost silently."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tidings.service.keyfile import KeyFileError, load_sealer, read_keys, write_keys
from tidings.service.store.sqlite import SQLiteStore
from tidings.service.tokens import (
    EndpointRef,
    TokenSealer,
)

CHANNEL = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
UAID = "00112233445566778899aabbccddeeff"

CHANNEL = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
UAID = "00112233445566778899aabbccddeeff"


# keyfile --------------------------------------------------------------------------------


async def _store(path: Path) -> SQLiteStore:
    store = SQLiteStore(path / "tidings.db")
    await store.open()
    return store


async def test_key_file_is_created_0600_then_reused(tmp_path: Path) -> None:
    key_file = tmp_path / "keys.json"
    store = await _store(tmp_path)
    try:
        first = await load_sealer(key_file, store)
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        ref = EndpointRef(UAID, CHANNEL, None)
        token = first.seal_endpoint(ref)
        second = await load_sealer(key_file, store)
        assert second.open_endpoint(token) == ref
    finally:
        await store.close()


async def test_missing_key_file_with_a_used_database_is_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "keys.json"
    store = await _store(tmp_path)
    try:
        await load_sealer(key_file, store)
        key_file.unlink()
        with pytest.raises(KeyFileError, match="missing"):
            await load_sealer(key_file, store)
        assert not key_file.exists()
    finally:
        await store.close()


async def test_replaced_key_file_is_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "keys.json"
    store = await _store(tmp_path)
    try:
        await load_sealer(key_file, store)
        write_keys(key_file, {1: TokenSealer.new_key()}, 1)
        with pytest.raises(KeyFileError, match="another service"):
            await load_sealer(key_file, store)
    finally:
        await store.close()


async def test_added_key_is_accepted_and_recorded(tmp_path: Path) -> None:
    key_file = tmp_path / "keys.json"
    store = await _store(tmp_path)
    try:
        await load_sealer(key_file, store)
        keys, _ = read_keys(key_file)
        keys[2] = TokenSealer.new_key()
        write_keys(key_file, keys, 2)
        await load_sealer(key_file, store)
        # The new key is now known too: a file holding only it is accepted.
        write_keys(key_file, {2: keys[2]}, 2)
        await load_sealer(key_file, store)
    finally:
        await store.close()


@pytest.mark.parametrize(
    "content",
    ["", "not json", "[]", '{"keys": {}}', '{"current": 1, "keys": {"1": "c2hvcnQ"}}'],
)
def test_malformed_key_file_is_refused(tmp_path: Path, content: str) -> None:
    key_file = tmp_path / "keys.json"
    key_file.write_text(content)
    with pytest.raises(KeyFileError):
        read_keys(key_file)
