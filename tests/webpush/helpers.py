"""Shared helpers of the tidings.webpush tests: vectors and user-agent keys."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from tidings.webpush import b64url_encode, public_key_bytes

HERE = Path(__file__).resolve().parent
VECTORS_COPY = HERE / "vectors.json"
# tests/webpush -> parents[1] is the repository root; shared/ sits beside it.
VECTORS_SHARED = HERE.parents[1] / ".." / "shared" / "reference" / "vectors.json"


def load_vectors() -> dict[str, Any]:
    """The vectors from the copy kept in the repository (always present)."""
    return json.loads(VECTORS_COPY.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


@dataclass
class UserAgentKeys:
    """A user agent's subscription keys, as objects, raw bytes and base64url."""

    private_key: ec.EllipticCurvePrivateKey
    public: bytes
    auth: bytes

    @property
    def public_b64(self) -> str:
        return b64url_encode(self.public)

    @property
    def auth_b64(self) -> str:
        return b64url_encode(self.auth)

    @property
    def private_raw(self) -> bytes:
        return self.private_key.private_numbers().private_value.to_bytes(32, "big")


def make_ua() -> UserAgentKeys:
    """Fresh random user agent keys."""
    key = ec.generate_private_key(ec.SECP256R1())
    return UserAgentKeys(key, public_key_bytes(key), os.urandom(16))
