"""base64url: unpadded output, optional padding on input, strict alphabet."""

from __future__ import annotations

import base64
import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.webpush import b64url_decode, b64url_encode


@given(st.binary(max_size=200))
def test_round_trip_without_padding(data: bytes) -> None:
    text = b64url_encode(data)
    assert "=" not in text and "+" not in text and "/" not in text
    assert b64url_decode(text) == data
    assert b64url_decode(text.encode()) == data
    padded = base64.urlsafe_b64encode(data).decode()
    assert b64url_decode(padded) == data


@pytest.mark.parametrize(
    "bad",
    ["a", "abcde", "ab+c", "ab/c", "ab c", "ab\nc", "ab=c", "abc==", "a===", "ab=", "é", "ab\x00"],
)
def test_rejects_bad_input_with_a_plain_value_error(bad: str) -> None:
    with pytest.raises(ValueError) as info:
        b64url_decode(bad)
    assert type(info.value) is ValueError
    assert "binascii" not in str(info.value).lower()


def test_empty() -> None:
    assert b64url_decode("") == b""
    assert b64url_encode(b"") == ""


@given(st.text(max_size=40))
def test_any_text_decodes_or_raises_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        b64url_decode(text)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_encode_is_the_standard_library_urlsafe_encoding_unpadded(kind: type) -> None:
    for size in range(70):
        data = bytes(range(256))[size : size * 3] + b"\xfb\xff" * size
        expected = base64.urlsafe_b64encode(data).rstrip(b"=").decode()
        assert b64url_encode(kind(data)) == expected
