"""Reading an application server's VAPID key from any form people keep it in."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeAlias

from cryptography.hazmat.primitives.asymmetric import ec

from tidings.webpush import InvalidKeyError, VapidKey

__all__ = ["VapidKeyLike", "load_vapid_key"]

VapidKeyLike: TypeAlias = VapidKey | ec.EllipticCurvePrivateKey | str | bytes | os.PathLike[str]


def load_vapid_key(value: VapidKeyLike) -> VapidKey:
    """A VapidKey from a key object, a PEM/DER file path, PEM text, or base64url raw/DER.

    These are the forms pywebpush (py-vapid) and the npm web-push accept: a path to a PEM
    file, the PEM text itself, base64url of the DER key, or base64url of the 32-byte scalar.
    py-vapid `Vapid` objects are accepted too (their `private_key` is used).
    """
    if isinstance(value, VapidKey):
        return value
    if isinstance(value, ec.EllipticCurvePrivateKey):
        return VapidKey(value)
    inner = getattr(value, "private_key", None)  # a py_vapid.Vapid01/02 instance
    if isinstance(inner, ec.EllipticCurvePrivateKey):
        return VapidKey(inner)
    if isinstance(value, os.PathLike):
        return VapidKey.from_file(value)
    if isinstance(value, bytes):
        if b"-----BEGIN" in value:
            return VapidKey.from_pem(value)
        try:
            text = value.decode("ascii")
        except UnicodeDecodeError:
            return VapidKey.from_der(value)
        return VapidKey.from_string(text)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise InvalidKeyError("VAPID private key is empty")
        if "-----BEGIN" in text:
            return VapidKey.from_pem(text)
        if len(text) < 4096 and "\n" not in text and _is_file(text):
            return VapidKey.from_file(text)
        try:
            return VapidKey.from_string(text)
        except InvalidKeyError as exc:
            raise InvalidKeyError(
                f"VAPID private key is not a readable file, PEM text, or base64url key: {exc}"
            ) from None
    raise InvalidKeyError(
        f"VAPID private key must be a VapidKey, a path, PEM text or base64url, "
        f"not {type(value).__name__}"
    )


def _is_file(text: str) -> bool:
    """True when `text` names an existing file (and is not obviously key material)."""
    try:
        return Path(text).expanduser().is_file()
    except (OSError, ValueError):
        return False
