"""RFC 8188 aes128gcm: round trips, record layout, and DecryptionError for every defect."""

from __future__ import annotations

import contextlib
import os
import struct

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tidings.webpush import DecryptionError, EncryptionError, ece_decode, ece_encode
from tidings.webpush.ece import parse_ece_header

IKM = bytes(range(16))
SALT = bytes(range(100, 116))


def body_with_header(rs: int, keyid: bytes = b"", records: bytes = b"") -> bytes:
    return SALT + struct.pack(">IB", rs, len(keyid)) + keyid + records


@settings(max_examples=150, deadline=None)
@given(
    plaintext=st.binary(max_size=600),
    record_size=st.integers(min_value=18, max_value=300),
    pad=st.integers(min_value=0, max_value=200),
    keyid=st.binary(max_size=255),
)
def test_round_trip(plaintext: bytes, record_size: int, pad: int, keyid: bytes) -> None:
    body = ece_encode(plaintext, IKM, keyid=keyid, record_size=record_size, pad=pad)
    header = parse_ece_header(body)
    assert header.keyid == keyid
    assert header.record_size == record_size
    per_record = record_size - 17
    records = max(1, -(-(len(plaintext) + pad) // per_record))
    assert len(body) == header.length + len(plaintext) + pad + records * 17
    assert ece_decode(body, IKM) == plaintext
    assert ece_decode(body, lambda kid: IKM) == plaintext


def test_empty_plaintext_is_one_record() -> None:
    body = ece_encode(b"", IKM, salt=SALT)
    assert len(body) == 21 + 17
    assert ece_decode(body, IKM) == b""


def test_record_sequence_ending_on_a_full_record() -> None:
    body = ece_encode(b"x" * 16, IKM, record_size=25)  # 2 records of exactly 8 + delimiter
    assert len(body) == 21 + 2 * 25
    assert ece_decode(body, IKM) == b"x" * 16


def test_salt_is_random_by_default() -> None:
    assert ece_encode(b"a", IKM)[:16] != ece_encode(b"a", IKM)[:16]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"record_size": 17}, "record_size"),
        ({"record_size": 2**32}, "record_size"),
        ({"keyid": b"k" * 256}, "keyid"),
        ({"salt": b"short"}, "salt"),
        ({"pad": -1}, "pad"),
    ],
)
def test_encode_rejects_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(EncryptionError, match=message):
        ece_encode(b"data", IKM, **kwargs)  # type: ignore[arg-type]


class TestMalformedBodies:
    """Each defect RFC 8188 names gives DecryptionError, never a lower-level exception."""

    def test_empty(self) -> None:
        with pytest.raises(DecryptionError, match="header"):
            ece_decode(b"", IKM)

    @pytest.mark.parametrize("length", [1, 16, 20])
    def test_truncated_fixed_header(self, length: int) -> None:
        with pytest.raises(DecryptionError):
            ece_decode(ece_encode(b"hello", IKM)[:length], IKM)

    def test_truncated_keyid(self) -> None:
        with pytest.raises(DecryptionError, match="keyid"):
            ece_decode(body_with_header(4096, b"abc")[:-1], IKM)

    @pytest.mark.parametrize("rs", [0, 1, 17])
    def test_record_size_below_18(self, rs: int) -> None:
        body = bytearray(ece_encode(b"hello", IKM, record_size=4096))
        body[16:20] = struct.pack(">I", rs)
        with pytest.raises(DecryptionError, match="record size"):
            ece_decode(bytes(body), IKM)

    def test_header_without_records(self) -> None:
        with pytest.raises(DecryptionError, match="no record"):
            ece_decode(body_with_header(4096), IKM)

    def test_record_shorter_than_a_tag(self) -> None:
        with pytest.raises(DecryptionError, match="too short"):
            ece_decode(body_with_header(4096, records=b"\x00" * 16), IKM)

    def test_wrong_key(self) -> None:
        with pytest.raises(DecryptionError, match="authenticate"):
            ece_decode(ece_encode(b"hello", IKM), bytes(16))

    def test_flipped_ciphertext_bit(self) -> None:
        body = bytearray(ece_encode(b"hello", IKM))
        body[-20] ^= 1
        with pytest.raises(DecryptionError):
            ece_decode(bytes(body), IKM)

    def test_trailing_data_after_the_tag(self) -> None:
        with pytest.raises(DecryptionError):
            ece_decode(ece_encode(b"hello", IKM) + b"\x00", IKM)

    def test_truncated_record_sequence(self) -> None:
        body = ece_encode(b"x" * 30, IKM, record_size=25)  # 4 records
        with pytest.raises(DecryptionError, match="truncated"):
            ece_decode(body[: 21 + 25], IKM)

    def test_data_after_the_final_record(self) -> None:
        one = ece_encode(b"x" * 8, IKM, salt=SALT, record_size=25)  # one full final record
        two = ece_encode(b"x" * 16, IKM, salt=SALT, record_size=25)
        # First record of `one` (delimiter 2) followed by the second record of `two`.
        with pytest.raises(DecryptionError, match="after its final record"):
            ece_decode(one + two[21 + 25 :], IKM)

    def test_all_zero_record(self) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        from tidings.webpush.ece import derive_key_and_nonce

        cek, nonce = derive_key_and_nonce(IKM, SALT)
        record = AESGCM(cek).encrypt(nonce, b"\x00" * 5, None)
        with pytest.raises(DecryptionError, match="delimiter"):
            ece_decode(body_with_header(4096, records=record), IKM)

    def test_wrong_delimiter_in_a_middle_record(self) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        from tidings.webpush.ece import _record_nonce, derive_key_and_nonce

        cek, nonce = derive_key_and_nonce(IKM, SALT)
        aead = AESGCM(cek)
        first = aead.encrypt(_record_nonce(nonce, 0), b"abcdefg\x03\x00", None)
        last = aead.encrypt(_record_nonce(nonce, 1), b"xyz\x02", None)
        with pytest.raises(DecryptionError, match="delimiter"):
            ece_decode(body_with_header(25, records=first + last), IKM)

    def test_callback_returning_none_means_unknown_keyid(self) -> None:
        with pytest.raises(DecryptionError, match="no known key"):
            ece_decode(ece_encode(b"x", IKM, keyid=b"k1"), lambda keyid: None)

    def test_callback_value_error_becomes_decryption_error(self) -> None:
        def refuse(keyid: bytes) -> bytes:
            raise ValueError("unknown key")

        with pytest.raises(DecryptionError, match="keyid"):
            ece_decode(ece_encode(b"x", IKM, keyid=b"k1"), refuse)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_decryption_error(data: bytes) -> None:
    with contextlib.suppress(DecryptionError):
        ece_decode(data, IKM)


VALID = ece_encode(b"the quick brown fox jumps over the lazy dog", IKM, record_size=30, pad=7)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=len(VALID) - 1), st.integers(1, 255)),
        min_size=1,
        max_size=4,
    ),
    st.integers(min_value=0, max_value=len(VALID) + 10),
)
def test_mutated_bodies_only_raise_decryption_error(flips: list[tuple[int, int]], cut: int) -> None:
    body = bytearray(VALID)
    for index, mask in flips:
        body[index] ^= mask
    mutated = bytes(body[:cut]) + os.urandom(max(0, cut - len(body)))
    assume(mutated != VALID)
    try:
        result = ece_decode(mutated, IKM)
    except DecryptionError:
        return
    # Only a change to the rs field can leave the records intact and readable.
    assert result == b"the quick brown fox jumps over the lazy dog"
