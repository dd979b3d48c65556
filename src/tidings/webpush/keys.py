"""P-256 key and auth-secret loading shared by encryption, VAPID and subscriptions."""

from __future__ import annotations

from functools import lru_cache

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tidings.webpush.b64 import b64url_decode
from tidings.webpush.errors import InvalidKeyError

__all__ = [
    "PRIVATE_KEY_TYPES",
    "load_auth_secret",
    "load_p256_private_key",
    "load_p256_public_key",
    "public_key_bytes",
]

_CURVE = ec.SECP256R1()
_X962 = serialization.Encoding.X962
_UNCOMPRESSED = serialization.PublicFormat.UncompressedPoint

PRIVATE_KEY_TYPES = ec.EllipticCurvePrivateKey | bytes | str
"""What a private-key argument may be: a key object, a raw 32-byte scalar or its base64url."""


def _to_bytes(value: str | bytes, what: str) -> bytes:
    """Raw bytes of a key argument given as base64url text or as bytes."""
    if isinstance(value, str):
        try:
            return b64url_decode(value.strip())
        except ValueError as exc:
            raise InvalidKeyError(f"{what} is not valid base64url: {exc}") from None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise InvalidKeyError(f"{what} must be base64url text or bytes, not {type(value).__name__}")


@lru_cache(maxsize=1024)
def _load_public(value: str | bytes) -> tuple[ec.EllipticCurvePublicKey, bytes]:
    """Key object and raw 65 bytes for a public key; cached because points repeat a lot."""
    raw = _to_bytes(value, "P-256 public key")
    if len(raw) != 65 or raw[0] != 4:
        raise InvalidKeyError(
            f"P-256 public key must be 65 bytes in uncompressed form (0x04||X||Y), "
            f"got {len(raw)} bytes"
        )
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(_CURVE, raw)
    except ValueError:
        raise InvalidKeyError("P-256 public key is not a point on the curve") from None
    return key, raw


def load_public(value: str | bytes) -> tuple[ec.EllipticCurvePublicKey, bytes]:
    """Key object and raw uncompressed bytes of a P-256 public key (cached)."""
    if isinstance(value, (bytearray, memoryview)):
        value = bytes(value)
    elif not isinstance(value, (str, bytes)):
        raise InvalidKeyError(
            f"P-256 public key must be base64url text or bytes, not {type(value).__name__}"
        )
    return _load_public(value)


def load_p256_public_key(value: str | bytes) -> ec.EllipticCurvePublicKey:
    """A P-256 public key from base64url text or 65 raw uncompressed bytes."""
    return load_public(value)[0]


def public_key_bytes(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> bytes:
    """The 65-byte uncompressed encoding of a P-256 public key (or of a private key's)."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        key = key.public_key()
    return key.public_bytes(_X962, _UNCOMPRESSED)


def load_p256_private_key(value: PRIVATE_KEY_TYPES) -> ec.EllipticCurvePrivateKey:
    """A P-256 private key from a key object, a raw 32-byte scalar, its base64url, or PEM."""
    if isinstance(value, ec.EllipticCurvePrivateKey):
        if not isinstance(value.curve, ec.SECP256R1):
            raise InvalidKeyError(f"private key is on {value.curve.name}, not P-256")
        return value
    if isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        value = value.encode("ascii", "replace")
    if isinstance(value, (bytes, bytearray)) and bytes(value).lstrip().startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(bytes(value), password=None)
        except (ValueError, TypeError) as exc:
            raise InvalidKeyError(f"private key PEM cannot be read: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InvalidKeyError("private key PEM does not hold an EC key")
        return load_p256_private_key(key)
    raw = _to_bytes(value, "P-256 private key")
    if len(raw) != 32:
        raise InvalidKeyError(f"P-256 private key must be a 32-byte scalar, got {len(raw)} bytes")
    try:
        return ec.derive_private_key(int.from_bytes(raw, "big"), _CURVE)
    except ValueError:
        raise InvalidKeyError("P-256 private key scalar is out of range") from None


def load_auth_secret(value: str | bytes) -> bytes:
    """The 16-byte RFC 8291 authentication secret from base64url text or raw bytes."""
    raw = _to_bytes(value, "auth secret")
    if len(raw) != 16:
        raise InvalidKeyError(f"auth secret must be 16 bytes, got {len(raw)}")
    return raw
