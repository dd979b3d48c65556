"""RFC 8291 encrypt/decrypt: key forms, size limits and the exception contract."""

from __future__ import annotations

import contextlib
import os

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.webpush import (
    MAX_PLAINTEXT,
    DecryptionError,
    EncryptionError,
    InvalidKeyError,
    PayloadTooLarge,
    b64url_encode,
    decrypt,
    encrypt,
    parse_ece_header,
)
from webpush.helpers import UserAgentKeys, make_ua

UA = make_ua()


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=MAX_PLAINTEXT), pad=st.integers(0, 64))
def test_round_trip(data: bytes, pad: int) -> None:
    if len(data) + pad > MAX_PLAINTEXT:
        pad = MAX_PLAINTEXT - len(data)
    body = encrypt(data, UA.public, UA.auth, pad=pad)
    assert len(body) == 86 + len(data) + pad + 17
    assert decrypt(body, UA.private_key, UA.auth) == data


def test_body_layout(ua: UserAgentKeys) -> None:
    body = encrypt(b"hello", ua.public_b64, ua.auth_b64)
    header = parse_ece_header(body)
    assert header.record_size == 4096
    assert len(header.keyid) == 65 and header.keyid[0] == 4
    assert len(body) == 86 + 5 + 17


def test_each_message_has_a_fresh_key_and_salt(ua: UserAgentKeys) -> None:
    a, b = encrypt(b"x", ua.public, ua.auth), encrypt(b"x", ua.public, ua.auth)
    assert a[:16] != b[:16]
    assert a[21:86] != b[21:86]


@pytest.mark.parametrize(
    "private_form",
    ["object", "raw", "b64", "pem"],
)
def test_private_key_forms(ua: UserAgentKeys, private_form: str) -> None:
    from cryptography.hazmat.primitives import serialization

    forms: dict[str, object] = {
        "object": ua.private_key,
        "raw": ua.private_raw,
        "b64": b64url_encode(ua.private_raw),
        "pem": ua.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    }
    body = encrypt(b"forms", ua.public, ua.auth)
    assert decrypt(body, forms[private_form], ua.auth) == b"forms"  # type: ignore[arg-type]


def test_maximum_plaintext_fits_4096_bytes(ua: UserAgentKeys) -> None:
    body = encrypt(b"m" * MAX_PLAINTEXT, ua.public, ua.auth)
    assert len(body) == 4096
    assert decrypt(body, ua.private_key, ua.auth) == b"m" * MAX_PLAINTEXT


def test_one_byte_too_many_is_payload_too_large(ua: UserAgentKeys) -> None:
    with pytest.raises(PayloadTooLarge, match=r"3994 bytes.*at most 3993") as info:
        encrypt(b"m" * (MAX_PLAINTEXT + 1), ua.public, ua.auth)
    assert isinstance(info.value, EncryptionError)
    assert isinstance(info.value, ValueError)


def test_padding_counts_towards_the_limit(ua: UserAgentKeys) -> None:
    with pytest.raises(PayloadTooLarge, match="padding"):
        encrypt(b"m" * 3000, ua.public, ua.auth, pad=1000)


def test_record_size_must_hold_one_record(ua: UserAgentKeys) -> None:
    assert decrypt(encrypt(b"abc", ua.public, ua.auth, record_size=21), ua.private_key, ua.auth)
    with pytest.raises(PayloadTooLarge, match="record_size"):
        encrypt(b"abcd", ua.public, ua.auth, record_size=21)


def test_bad_salt_and_pad(ua: UserAgentKeys) -> None:
    with pytest.raises(EncryptionError, match="salt"):
        encrypt(b"x", ua.public, ua.auth, salt=b"short")
    with pytest.raises(EncryptionError, match="pad"):
        encrypt(b"x", ua.public, ua.auth, pad=-1)


@pytest.mark.parametrize(
    ("p256dh", "message"),
    [
        (b"\x04" + bytes(64), "not a point"),
        (os.urandom(33), "65 bytes"),
        ("not base64!", "base64url"),
        ("BA", "65 bytes"),
    ],
)
def test_bad_recipient_key_is_invalid_key_error(p256dh: str | bytes, message: str) -> None:
    with pytest.raises(InvalidKeyError, match=message):
        encrypt(b"x", p256dh, os.urandom(16))


@pytest.mark.parametrize("auth", [b"", os.urandom(15), os.urandom(17), "AAAA"])
def test_auth_must_be_16_bytes(ua: UserAgentKeys, auth: str | bytes) -> None:
    with pytest.raises(InvalidKeyError, match="16 bytes"):
        encrypt(b"x", ua.public, auth)


def test_private_key_on_another_curve_is_refused(ua: UserAgentKeys) -> None:
    body = encrypt(b"x", ua.public, ua.auth)
    with pytest.raises(InvalidKeyError, match="P-256"):
        decrypt(body, ec.generate_private_key(ec.SECP384R1()), ua.auth)
    with pytest.raises(InvalidKeyError, match="32-byte"):
        decrypt(body, b"\x01" * 31, ua.auth)
    with pytest.raises(InvalidKeyError, match="range"):
        decrypt(body, b"\x00" * 32, ua.auth)


def test_wrong_auth_or_key_is_decryption_error(ua: UserAgentKeys) -> None:
    body = encrypt(b"secret", ua.public, ua.auth)
    with pytest.raises(DecryptionError):
        decrypt(body, ua.private_key, os.urandom(16))
    with pytest.raises(DecryptionError):
        decrypt(body, make_ua().private_key, ua.auth)


def test_keyid_that_is_not_a_sender_key(ua: UserAgentKeys) -> None:
    from tidings.webpush import ece_encode

    with pytest.raises(DecryptionError, match="65-byte"):
        decrypt(ece_encode(b"x", bytes(32), keyid=b"short"), ua.private_key, ua.auth)
    with pytest.raises(DecryptionError, match="not a P-256"):
        decrypt(ece_encode(b"x", bytes(32), keyid=b"\x04" + bytes(64)), ua.private_key, ua.auth)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bodies_only_raise_decryption_error(data: bytes) -> None:
    with contextlib.suppress(DecryptionError):
        decrypt(data, UA.private_key, UA.auth)


BODY = encrypt(b"mutate me", UA.public, UA.auth)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(BODY) - 1), st.integers(1, 255), st.integers(0, len(BODY) + 5))
def test_mutated_bodies_only_raise_decryption_error(index: int, mask: int, cut: int) -> None:
    body = bytearray(BODY)
    body[index] ^= mask
    mutated = bytes(body[:cut]) + bytes(max(0, cut - len(body)))
    try:
        plain = decrypt(mutated, UA.private_key, UA.auth)
    except DecryptionError:
        return
    # The rs field is not authenticated: raising it still reads the one record.
    assert 16 <= index < 20 and cut == len(BODY)
    assert plain == b"mutate me"


def test_non_bytes_data_is_a_type_error(ua: UserAgentKeys) -> None:
    with pytest.raises(TypeError):
        encrypt("text", ua.public, ua.auth)  # type: ignore[arg-type]
    assert decrypt(encrypt(bytearray(b"ba"), ua.public, ua.auth), ua.private_key, ua.auth) == b"ba"
