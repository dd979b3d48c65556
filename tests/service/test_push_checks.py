"""A push's headers and body checked without I/O (service/push_request.py) and the JSON
error body with its stable errno numbers (service/errors.py)."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.service.errors import Errno, ServiceError
from tidings.service.push_request import check_push
from tidings.webpush import encrypt
from tidings.webpush.keys import public_key_bytes

CHANNEL = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
UAID = "00112233445566778899aabbccddeeff"

CHANNEL = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
UAID = "00112233445566778899aabbccddeeff"


# push_request ---------------------------------------------------------------------------


def _aes128gcm_body() -> bytes:
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    return encrypt(b"x", public_key_bytes(key.public_key()), os.urandom(16))


def test_check_push_facts() -> None:
    facts = check_push(
        {"ttl": "30", "urgency": "low", "topic": "t1", "content-encoding": "aes128gcm"},
        _aes128gcm_body(),
        max_body=4096,
    )
    assert facts.ttl == 30
    assert str(facts.urgency) == "low"
    assert facts.topic == "t1"
    assert facts.delivery_headers == {"encoding": "aes128gcm"}


def test_empty_body_needs_no_encoding() -> None:
    facts = check_push({"ttl": "0"}, b"", max_body=4096)
    assert facts.delivery_headers == {}


@pytest.mark.parametrize(
    ("crypto_key", "forwarded"),
    [
        ("dh=AAA;p256ecdsa=BBB", "dh=AAA"),
        ("p256ecdsa=BBB;dh=AAA", "dh=AAA"),
        ("dh=AAA, p256ecdsa=BBB", "dh=AAA"),
        ("P256ECDSA=BBB; dh=AAA", "dh=AAA"),
        ("keyid=p256dh;dh=AAA", "keyid=p256dh;dh=AAA"),
    ],
)
def test_aesgcm_crypto_key_loses_the_vapid_key(crypto_key: str, forwarded: str) -> None:
    headers = {
        "ttl": "5",
        "content-encoding": "aesgcm",
        "encryption": "salt=SSS",
        "crypto-key": crypto_key,
    }
    facts = check_push(headers, b"\x00" * 40, max_body=4096)
    assert facts.delivery_headers == {
        "encoding": "aesgcm",
        "encryption": "salt=SSS",
        "crypto_key": forwarded,
    }


@pytest.mark.parametrize(
    ("headers", "errno"),
    [
        ({}, Errno.BAD_TTL),
        ({"ttl": "-1"}, Errno.BAD_TTL),
        ({"ttl": "1", "urgency": "soon"}, Errno.BAD_URGENCY),
        ({"ttl": "1", "topic": "a" * 33}, Errno.BAD_TOPIC),
        ({"ttl": "1", "content-encoding": "br"}, Errno.BAD_ENCODING),
        ({"ttl": "1"}, Errno.BAD_ENCODING),
        ({"ttl": "1", "content-encoding": "aesgcm", "crypto-key": "dh=A"}, Errno.BAD_ENCODING),
        ({"ttl": "1", "content-encoding": "aesgcm", "encryption": "salt=A"}, Errno.BAD_ENCODING),
        ({"ttl": "1", "content-encoding": "aes128gcm"}, Errno.BAD_BODY),
    ],
)
def test_check_push_refusals(headers: dict[str, str], errno: Errno) -> None:
    with pytest.raises(ServiceError) as raised:
        check_push(headers, b"\x00" * 30, max_body=4096)
    assert raised.value.status == 400
    assert raised.value.errno == errno


def test_check_push_413_only_above_the_limit() -> None:
    with pytest.raises(ServiceError) as raised:
        check_push({"ttl": "1"}, b"\x00" * 4097, max_body=4096)
    assert raised.value.status == 413


HEADER_VALUES = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=60)


@given(
    st.dictionaries(
        st.sampled_from(
            ["ttl", "urgency", "topic", "content-encoding", "encryption", "crypto-key"]
        ),
        HEADER_VALUES,
    ),
    st.binary(max_size=200),
)
def test_check_push_raises_only_service_errors(headers: dict[str, str], body: bytes) -> None:
    try:
        check_push(headers, body, max_body=4096)
    except ServiceError as error:
        assert error.status in (400, 413)
        json.loads(error.body())


def test_error_body_is_the_documented_document() -> None:
    error = ServiceError(410, Errno.SUBSCRIPTION_GONE, "gone")
    assert json.loads(error.body()) == {
        "code": 410,
        "errno": 103,
        "error": "Gone",
        "message": "gone",
    }


def test_errno_values_are_unique() -> None:
    values = [int(member) for member in Errno]
    assert len(values) == len(set(values))
