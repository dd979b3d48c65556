"""RFC 8291 message encryption for Web Push: ECDH + auth secret keying of aes128gcm."""

from __future__ import annotations

import os
import struct

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tidings.webpush.ece import (
    MAX_PLAINTEXT,
    TAG_LENGTH,
    decode_records,
    derive_key_and_nonce,
    hmac_sha256,
    parse_ece_header,
)
from tidings.webpush.errors import DecryptionError, EncryptionError, PayloadTooLarge
from tidings.webpush.keys import (
    PRIVATE_KEY_TYPES,
    load_auth_secret,
    load_p256_private_key,
    load_public,
    public_key_bytes,
)

__all__ = ["MAX_BODY", "MAX_PLAINTEXT", "decrypt", "derive_ikm", "encrypt"]

MAX_BODY = 4096
"""RFC 8030 §7.2: a push service must accept bodies up to 4096 octets, and may refuse more."""

_CURVE = ec.SECP256R1()
_ECDH = ec.ECDH()
_X962 = serialization.Encoding.X962
_UNCOMPRESSED = serialization.PublicFormat.UncompressedPoint
_INFO = b"WebPush: info\x00"
_HEADER_LENGTH = 16 + 4 + 1 + 65
_RS_IDLEN = struct.Struct(">IB")


def derive_ikm(ecdh_secret: bytes, auth: bytes, ua_public: bytes, as_public: bytes) -> bytes:
    """RFC 8291 §3.3-3.4: the aes128gcm IKM from the ECDH secret and the auth secret."""
    prk_key = hmac_sha256(auth, ecdh_secret)
    return hmac_sha256(prk_key, _INFO + ua_public + as_public + b"\x01")


def encrypt(
    data: bytes,
    p256dh: str | bytes,
    auth: str | bytes,
    *,
    salt: bytes | None = None,
    sender_private_key: PRIVATE_KEY_TYPES | None = None,
    record_size: int = 4096,
    pad: int = 0,
) -> bytes:
    """Encrypt `data` for one subscription as an RFC 8291 aes128gcm body (a single record)."""
    ua_key, ua_public = load_public(p256dh)
    return encrypt_for_key(
        data,
        ua_key,
        ua_public,
        auth,
        salt=salt,
        sender_private_key=sender_private_key,
        record_size=record_size,
        pad=pad,
    )


def encrypt_for_key(
    data: bytes,
    ua_key: ec.EllipticCurvePublicKey,
    ua_public: bytes,
    auth: str | bytes,
    *,
    salt: bytes | None = None,
    sender_private_key: PRIVATE_KEY_TYPES | None = None,
    record_size: int = 4096,
    pad: int = 0,
) -> bytes:
    """`encrypt` for a user agent key already decoded (`ua_public` its 65 raw bytes)."""
    auth_secret = auth if type(auth) is bytes and len(auth) == 16 else load_auth_secret(auth)
    if not isinstance(data, bytes):
        if not isinstance(data, (bytearray, memoryview)):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        data = bytes(data)
    size = len(data) + pad
    if pad < 0:
        raise EncryptionError("pad must not be negative")
    if size > MAX_PLAINTEXT:
        raise PayloadTooLarge(
            f"push message plaintext is {len(data)} bytes"
            + (f" plus {pad} bytes of padding" if pad else "")
            + f"; at most {MAX_PLAINTEXT} bytes fit in a {MAX_BODY}-byte push body"
        )
    if size + TAG_LENGTH + 1 >= record_size:
        # RFC 8291 §4: one record, and rs greater than plaintext + delimiter + padding + tag.
        raise PayloadTooLarge(
            f"record_size {record_size} is too small for {size} bytes of plaintext and padding "
            f"in one record (RFC 8291 needs record_size > {size + TAG_LENGTH + 1})"
        )
    if record_size > 0xFFFFFFFF:
        raise EncryptionError("record_size must fit in 32 bits")
    if salt is None:
        salt = os.urandom(16)
    elif len(salt) != 16:
        raise EncryptionError(f"salt must be 16 bytes, got {len(salt)}")
    if sender_private_key is None:
        private_key = ec.generate_private_key(_CURVE)
    else:
        private_key = load_p256_private_key(sender_private_key)
    as_public = private_key.public_key().public_bytes(_X962, _UNCOMPRESSED)
    secret = private_key.exchange(_ECDH, ua_key)
    # RFC 8291 §3.4 and RFC 8188 §2.2-2.3, each HKDF being a single HMAC-SHA-256 block.
    cek, nonce = derive_key_and_nonce(derive_ikm(secret, auth_secret, ua_public, as_public), salt)
    record = data + b"\x02" if not pad else data + b"\x02" + b"\x00" * pad
    return (
        salt
        + _RS_IDLEN.pack(record_size, 65)
        + as_public
        + AESGCM(cek).encrypt(nonce, record, None)
    )


def decrypt(body: bytes, private_key: PRIVATE_KEY_TYPES, auth: str | bytes) -> bytes:
    """Decrypt an RFC 8291 body with the user agent's private key and auth secret."""
    ua_private = load_p256_private_key(private_key)
    auth_secret = load_auth_secret(auth)
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise TypeError(f"body must be bytes, not {type(body).__name__}")
    header = parse_ece_header(body)
    if len(header.keyid) != 65:
        raise DecryptionError(
            f"RFC 8291 keyid must be the sender's 65-byte public key, got {len(header.keyid)} bytes"
        )
    try:
        sender_key, as_public = load_public(header.keyid)
    except ValueError:
        raise DecryptionError("RFC 8291 keyid is not a P-256 public key") from None
    secret = ua_private.exchange(_ECDH, sender_key)
    ikm = derive_ikm(secret, auth_secret, public_key_bytes(ua_private), as_public)
    return decode_records(body, header, ikm)
