"""The legacy "aesgcm" coding (draft-ietf-webpush-encryption-04), still sent by old senders."""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tidings.webpush.b64 import b64url_decode, b64url_encode
from tidings.webpush.ece import hmac_sha256
from tidings.webpush.errors import DecryptionError, EncryptionError, PayloadTooLarge
from tidings.webpush.keys import (
    PRIVATE_KEY_TYPES,
    load_auth_secret,
    load_p256_private_key,
    load_public,
    public_key_bytes,
)

__all__ = [
    "AESGCM_MAX_PLAINTEXT",
    "AesgcmMessage",
    "aesgcm_decrypt",
    "aesgcm_encrypt",
    "parse_header_params",
]

AESGCM_DEFAULT_RS = 4096
AESGCM_MAX_PLAINTEXT = 4096 - 16 - 2
"""Most plaintext octets in a 4096-octet aesgcm body: one record, 2-octet pad length, tag."""

_CURVE = ec.SECP256R1()
_ECDH = ec.ECDH()
_AUTH_INFO = b"Content-Encoding: auth\x00\x01"
_U16 = struct.Struct(">H")
_SPLIT = re.compile(r"[;,]")


@dataclass(frozen=True)
class AesgcmMessage:
    """An aesgcm body and the request headers that must travel with it."""

    body: bytes
    salt: bytes
    sender_public_key: bytes
    headers: dict[str, str]


def parse_header_params(value: str) -> dict[str, str]:
    """Parse `a=b; c=d, e=f` (Encryption / Crypto-Key) into a dict; the first value wins."""
    params: dict[str, str] = {}
    for item in _SPLIT.split(value):
        name, sep, param = item.partition("=")
        name = name.strip().lower()
        if not sep or not name:
            continue
        param = param.strip()
        if len(param) >= 2 and param[0] == param[-1] == '"':
            param = param[1:-1]
        params.setdefault(name, param)
    return params


def _derive(
    secret: bytes, auth: bytes, salt: bytes, ua_public: bytes, as_public: bytes
) -> tuple[bytes, bytes]:
    """Draft key schedule: auth-mixed PRK, then key and nonce over the "P-256" context."""
    prk_combine = hmac_sha256(hmac_sha256(auth, secret), _AUTH_INFO)
    context = b"P-256\x00" + _U16.pack(65) + ua_public + _U16.pack(65) + as_public
    prk = hmac_sha256(salt, prk_combine)
    cek = hmac_sha256(prk, b"Content-Encoding: aesgcm\x00" + context + b"\x01")[:16]
    nonce = hmac_sha256(prk, b"Content-Encoding: nonce\x00" + context + b"\x01")[:12]
    return cek, nonce


def aesgcm_encrypt(
    data: bytes,
    p256dh: str | bytes,
    auth: str | bytes,
    *,
    salt: bytes | None = None,
    sender_private_key: PRIVATE_KEY_TYPES | None = None,
) -> AesgcmMessage:
    """Encrypt `data` in the legacy aesgcm coding as one record (no padding)."""
    ua_key, ua_public = load_public(p256dh)
    auth_secret = load_auth_secret(auth)
    data = bytes(data)
    if len(data) > AESGCM_MAX_PLAINTEXT:
        raise PayloadTooLarge(
            f"push message plaintext is {len(data)} bytes; at most {AESGCM_MAX_PLAINTEXT} "
            "bytes fit in a 4096-byte aesgcm push body"
        )
    if salt is None:
        salt = os.urandom(16)
    elif len(salt) != 16:
        raise EncryptionError(f"salt must be 16 bytes, got {len(salt)}")
    if sender_private_key is None:
        private_key = ec.generate_private_key(_CURVE)
    else:
        private_key = load_p256_private_key(sender_private_key)
    as_public = public_key_bytes(private_key)
    secret = private_key.exchange(_ECDH, ua_key)
    cek, nonce = _derive(secret, auth_secret, salt, ua_public, as_public)
    body = AESGCM(cek).encrypt(nonce, b"\x00\x00" + data, None)
    headers = {
        "Content-Encoding": "aesgcm",
        "Encryption": f"salt={b64url_encode(salt)}",
        "Crypto-Key": f"dh={b64url_encode(as_public)}",
    }
    return AesgcmMessage(body=body, salt=salt, sender_public_key=as_public, headers=headers)


def _param_bytes(params: dict[str, str], name: str, header: str, size: int) -> bytes:
    """A base64url header parameter of a fixed size, or DecryptionError."""
    if name not in params:
        raise DecryptionError(f"aesgcm {header} header has no {name}= parameter")
    try:
        raw = b64url_decode(params[name])
    except ValueError:
        raise DecryptionError(f"aesgcm {header} {name}= is not base64url") from None
    if len(raw) != size:
        raise DecryptionError(f"aesgcm {header} {name}= must be {size} bytes, got {len(raw)}")
    return raw


def aesgcm_decrypt(
    body: bytes,
    private_key: PRIVATE_KEY_TYPES,
    auth: str | bytes,
    *,
    encryption: str,
    crypto_key: str,
) -> bytes:
    """Decrypt a legacy aesgcm body given the raw `Encryption` and `Crypto-Key` values."""
    ua_private = load_p256_private_key(private_key)
    auth_secret = load_auth_secret(auth)
    if not isinstance(encryption, str) or not isinstance(crypto_key, str):
        raise DecryptionError("aesgcm needs the Encryption and Crypto-Key header values")
    enc = parse_header_params(encryption)
    salt = _param_bytes(enc, "salt", "Encryption", 16)
    rs_text = enc.get("rs", str(AESGCM_DEFAULT_RS))
    if not (rs_text.isascii() and rs_text.isdigit()) or len(rs_text) > 10:
        raise DecryptionError("aesgcm Encryption rs= must be a decimal number")
    rs = int(rs_text)
    if rs < 3:
        raise DecryptionError(f"aesgcm record size {rs} is too small")
    dh = _param_bytes(parse_header_params(crypto_key), "dh", "Crypto-Key", 65)
    try:
        sender_key, as_public = load_public(dh)
    except ValueError:
        raise DecryptionError("aesgcm Crypto-Key dh= is not a P-256 public key") from None
    body = bytes(body)
    chunk = rs + 16
    if len(body) % chunk == 0:
        raise DecryptionError("aesgcm body is empty or truncated (it ends on a full record)")
    secret = ua_private.exchange(_ECDH, sender_key)
    cek, nonce = _derive(secret, auth_secret, salt, public_key_bytes(ua_private), as_public)
    aead = AESGCM(cek)
    base = int.from_bytes(nonce, "big")
    out: list[bytes] = []
    for seq, start in enumerate(range(0, len(body), chunk)):
        record = body[start : start + chunk]
        if len(record) < 18:
            raise DecryptionError(f"aesgcm record {seq} is too short")
        try:
            plain = aead.decrypt((base ^ seq).to_bytes(12, "big"), record, None)
        except InvalidTag:
            raise DecryptionError(
                f"aesgcm record {seq} does not authenticate (wrong key or altered data)"
            ) from None
        pad_length = _U16.unpack_from(plain)[0]
        if 2 + pad_length > len(plain) or plain[2 : 2 + pad_length].strip(b"\x00"):
            raise DecryptionError(f"aesgcm record {seq} has bad padding")
        out.append(plain[2 + pad_length :])
    return b"".join(out)
