"""Megaphone broadcasts, without I/O: which ids exist, at which version, who hears what.

Firefox sends `broadcasts` ({id: version}) in `hello` and in `broadcast_subscribe`; the
service answers with the ids whose version differs from the client's, and with unknown
ids under `"errors": {id: "Broadcast not found"}`, as autopush does. A connection then
follows those ids and is told when an operator changes one. `BroadcastSet` holds the
current versions; the store (or Mozilla's Megaphone service) is the source of truth.
"""

from __future__ import annotations

import re
from typing import Any

MAX_BROADCASTS = 256  # broadcasts the service keeps at most
MAX_ID_LENGTH = 128
MAX_VERSION_LENGTH = 256
MAX_FOLLOWED = 64  # broadcast ids one connection may follow (Firefox follows one or two)
NOT_FOUND = "Broadcast not found"

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]*")
_VERSION = re.compile(r"[\x20-\x7e]+")  # printable ASCII (Firefox's are quoted numbers)


def id_problem(broadcast_id: object) -> str | None:
    """Why `broadcast_id` cannot name a broadcast, or None when it can."""
    if not isinstance(broadcast_id, str) or not _ID.fullmatch(broadcast_id):
        return "a broadcast id is letters, digits and _ . : / - (not first)"
    if len(broadcast_id) > MAX_ID_LENGTH:
        return f"a broadcast id has at most {MAX_ID_LENGTH} characters"
    return None


def version_problem(version: object) -> str | None:
    """Why `version` cannot be a broadcast version, or None when it can."""
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        return "a broadcast version is a non-empty string of printable ASCII"
    if len(version) > MAX_VERSION_LENGTH:
        return f"a broadcast version has at most {MAX_VERSION_LENGTH} characters"
    return None


def client_broadcasts(raw: dict[str, Any]) -> dict[str, str]:
    """The {id: version} a client sent, cut to MAX_FOLLOWED entries of plain strings."""
    result: dict[str, str] = {}
    for key, value in raw.items():
        if len(result) >= MAX_FOLLOWED:
            break
        if isinstance(key, str) and len(key) <= MAX_ID_LENGTH and isinstance(value, str):
            result[key] = value[:MAX_VERSION_LENGTH]
    return result


def parse_megaphone(document: object) -> dict[str, str]:
    """The broadcasts of a Megaphone `/v1/broadcasts` document ({"broadcasts": {...}}).

    Entries that are not valid ids and versions are left out; ValueError when the
    document has no `broadcasts` object at all.
    """
    if not isinstance(document, dict) or not isinstance(document.get("broadcasts"), dict):
        raise ValueError('a Megaphone document is {"broadcasts": {id: version}}')
    result: dict[str, str] = {}
    for key, value in document["broadcasts"].items():
        if len(result) >= MAX_BROADCASTS:
            break
        if id_problem(key) is None and version_problem(value) is None:
            result[key] = value
    return result


class BroadcastSet:
    """The broadcasts this node knows, and the answers they give to clients."""

    def __init__(self, versions: dict[str, str] | None = None) -> None:
        self.versions: dict[str, str] = dict(versions or {})

    def answer(self, client: dict[str, str], followed: set[str]) -> dict[str, Any]:
        """The `broadcasts` of a hello or broadcast answer to `client`'s {id: version}.

        Known ids whose version differs get the current version; unknown ids go under
        `errors`. Known ids are added to `followed` (up to MAX_FOLLOWED).
        """
        answer: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for broadcast_id, version in client.items():
            current = self.versions.get(broadcast_id)
            if current is None:
                errors[broadcast_id] = NOT_FOUND
                continue
            if current != version:
                answer[broadcast_id] = current
            if len(followed) < MAX_FOLLOWED:
                followed.add(broadcast_id)
        if errors:
            answer["errors"] = errors
        return answer

    def replace(self, versions: dict[str, str]) -> dict[str, str]:
        """Take a new full set; return the ids that are new or changed, with versions."""
        changed = {k: v for k, v in versions.items() if self.versions.get(k) != v}
        self.versions = dict(versions)
        return changed

    def set(self, broadcast_id: str, version: str) -> dict[str, str]:
        """One id changed here; return it as `replace` would (empty when unchanged)."""
        if self.versions.get(broadcast_id) == version:
            return {}
        self.versions[broadcast_id] = version
        return {broadcast_id: version}

    def delete(self, broadcast_id: str) -> None:
        """Forget an id (clients following it hear nothing more of it)."""
        self.versions.pop(broadcast_id, None)


def changes_for(changed: dict[str, str], followed: set[str]) -> dict[str, str]:
    """The part of a change that a connection following `followed` must hear."""
    return {k: v for k, v in changed.items() if k in followed}
