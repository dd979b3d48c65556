"""The service's token keys: created on first start, reused afterwards, never lost silently.

The keys live in a JSON file (mode 0600) next to the database. The database records a
fingerprint of every key that sealed an endpoint, so starting with the key file missing
or replaced, which would turn every handed-out endpoint into a 404, is refused with a
message saying what happened instead of being discovered by users.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tidings.service.store import Store
from tidings.service.tokens import TokenSealer
from tidings.webpush import b64url_decode, b64url_encode

_META_FINGERPRINTS = "token_key_fingerprints"


class KeyFileError(RuntimeError):
    """The key file is missing, unreadable or does not match the database."""


def fingerprint(key: bytes) -> str:
    """A short, non-secret name for a key."""
    return hashlib.sha256(b"tidings token key" + key).hexdigest()[:16]


def write_private_file(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically with mode 0600 (never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_keys(path: Path) -> tuple[dict[int, bytes], int]:
    """The keys in a key file and the id of the current one."""
    try:
        data = json.loads(path.read_text())
        keys = {int(k): b64url_decode(v) for k, v in data["keys"].items()}
        current = int(data["current"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeyFileError(f"cannot read the token key file {path}: {exc}") from exc
    if current not in keys or any(len(k) != 32 for k in keys.values()):
        raise KeyFileError(f"the token key file {path} is malformed")
    return keys, current


def write_keys(path: Path, keys: dict[int, bytes], current: int) -> None:
    """Save the keys (mode 0600)."""
    document = {
        "format": 1,
        "current": current,
        "keys": {str(k): b64url_encode(v) for k, v in sorted(keys.items())},
    }
    write_private_file(path, (json.dumps(document, indent=2) + "\n").encode())


def held_fingerprints(path: Path, keys: dict[int, bytes], recorded: set[str]) -> set[str]:
    """The fingerprints of `keys`, once they open the endpoints a database `recorded`
    (none recorded yet: any keys do); KeyFileError for another service's key file."""
    held = {fingerprint(k) for k in keys.values()}
    if recorded and not recorded & held:
        raise KeyFileError(
            f"the token key file {path} does not hold any key this database's endpoints "
            "were sealed with: it belongs to another service or was replaced. Restore the "
            "right file."
        )
    return held


async def load_sealer(path: Path, store: Store, *, create: bool = True) -> TokenSealer:
    """The token sealer for this service, creating the key file on first start.

    With `create` false (nodes sharing a store), a missing file is refused instead:
    nodes starting together would each make a different key.
    """
    recorded = await store.get_meta(_META_FINGERPRINTS)
    recorded_set = set(recorded.split(",")) if recorded else set()
    if path.exists():  # noqa: ASYNC240 - once at start-up, before serving
        keys, current = read_keys(path)
    elif recorded_set:
        raise KeyFileError(
            f"the token key file {path} is missing, but this database holds subscriptions "
            "whose endpoints were sealed with it. Restore the file from a backup; starting "
            "with a new key would make every existing push endpoint fail. To start over on "
            "purpose, delete the database too."
        )
    elif not create:
        raise KeyFileError(
            f"the token key file {path} is missing. Nodes sharing a store must share one "
            f"key file: create it once with `tidings keys token --out {path}` and give every "
            "node that same file (--secrets)."
        )
    else:
        keys, current = {1: TokenSealer.new_key()}, 1
        write_keys(path, keys, current)
    held = held_fingerprints(path, keys, recorded_set)
    if not recorded_set >= held:
        await store.set_meta(_META_FINGERPRINTS, ",".join(sorted(recorded_set | held)))
    return TokenSealer(keys, current)
