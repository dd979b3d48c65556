"""Legacy aesgcm coding: round trips, header parsing, and DecryptionError for any defect."""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.webpush import (
    DecryptionError,
    InvalidKeyError,
    PayloadTooLarge,
    aesgcm_decrypt,
    aesgcm_encrypt,
    b64url_encode,
    parse_header_params,
)
from tidings.webpush.aesgcm import AESGCM_MAX_PLAINTEXT
from webpush.helpers import UserAgentKeys, make_ua

UA = make_ua()


def open_message(body: bytes, encryption: str, crypto_key: str, ua: UserAgentKeys = UA) -> bytes:
    return aesgcm_decrypt(
        body, ua.private_key, ua.auth, encryption=encryption, crypto_key=crypto_key
    )


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=AESGCM_MAX_PLAINTEXT))
def test_round_trip(data: bytes) -> None:
    msg = aesgcm_encrypt(data, UA.public_b64, UA.auth_b64)
    assert len(msg.body) == len(data) + 18
    plain = open_message(msg.body, msg.headers["Encryption"], msg.headers["Crypto-Key"])
    assert plain == data


def test_headers(ua: UserAgentKeys) -> None:
    salt = os.urandom(16)
    msg = aesgcm_encrypt(b"x", ua.public, ua.auth, salt=salt)
    assert msg.salt == salt
    assert msg.headers == {
        "Content-Encoding": "aesgcm",
        "Encryption": f"salt={b64url_encode(salt)}",
        "Crypto-Key": f"dh={b64url_encode(msg.sender_public_key)}",
    }


def test_header_values_with_other_parameters(ua: UserAgentKeys) -> None:
    msg = aesgcm_encrypt(b"hello", ua.public, ua.auth)
    salt = msg.headers["Encryption"].split("=", 1)[1]
    dh = msg.headers["Crypto-Key"].split("=", 1)[1]
    enc = f'keyid=p256dh; salt="{salt}"; rs=4096'
    ck = f"keyid=p256dh;dh={dh},p256ecdsa=BA1Hxzyi1RUM1b5wjxsn7nGxAszw2u61m164i3MrAIxH"
    assert open_message(msg.body, enc, ck, ua) == b"hello"
    ck2 = f"p256ecdsa=BA1Hxzyi; dh={dh}"
    assert open_message(msg.body, enc, ck2, ua) == b"hello"


def test_too_large(ua: UserAgentKeys) -> None:
    aesgcm_encrypt(b"x" * AESGCM_MAX_PLAINTEXT, ua.public, ua.auth)
    with pytest.raises(PayloadTooLarge):
        aesgcm_encrypt(b"x" * (AESGCM_MAX_PLAINTEXT + 1), ua.public, ua.auth)


def test_bad_keys_are_invalid_key_error() -> None:
    with pytest.raises(InvalidKeyError):
        aesgcm_encrypt(b"x", b"\x04" + bytes(64), os.urandom(16))


def test_parse_header_params() -> None:
    assert parse_header_params('a=b; C=d, e = "f" ;;') == {"a": "b", "c": "d", "e": "f"}
    assert parse_header_params("dh=one,dh=two") == {"dh": "one"}
    assert parse_header_params("") == {}
    assert parse_header_params("novalue; =x; k=") == {"k": ""}


class TestMalformed:
    msg = aesgcm_encrypt(b"payload", UA.public, UA.auth)
    enc = msg.headers["Encryption"]
    ck = msg.headers["Crypto-Key"]

    @pytest.mark.parametrize(
        ("encryption", "crypto_key", "match"),
        [
            ("", "dh=x", "salt"),
            ("salt=!!", "dh=x", "base64url"),
            ("salt=AAAA", "dh=x", "16 bytes"),
            (None, "", "dh"),
            (None, "dh=AAAA", "65 bytes"),
            (None, "dh=" + b64url_encode(b"\x04" + bytes(64)), "P-256"),
            ("rs=abc", None, "rs"),
            ("rs=-5", None, "rs"),
            ("rs=2", None, "record size"),
            ("rs=99999999999999", None, "rs"),
            ("rs=5", None, "authenticate"),
        ],
    )
    def test_bad_headers(self, encryption: str | None, crypto_key: str | None, match: str) -> None:
        if encryption is not None and encryption.startswith("rs="):
            encryption = f"{self.enc}; {encryption}"
        with pytest.raises(DecryptionError, match=match):
            open_message(
                self.msg.body,
                self.enc if encryption is None else encryption,
                self.ck if crypto_key is None else crypto_key,
            )

    def test_empty_and_truncated_bodies(self) -> None:
        with pytest.raises(DecryptionError, match="truncated"):
            open_message(b"", self.enc, self.ck)
        with pytest.raises(DecryptionError, match="too short"):
            open_message(self.msg.body[:10], self.enc, self.ck)
        full = aesgcm_encrypt(b"y" * 10, UA.public, UA.auth)  # 2 + 10 = 12 = rs exactly
        with pytest.raises(DecryptionError, match="truncated"):
            open_message(
                full.body, full.headers["Encryption"] + "; rs=12", full.headers["Crypto-Key"]
            )

    def test_bad_padding(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        from tidings.webpush.aesgcm import _derive
        from tidings.webpush.keys import public_key_bytes

        sender = ec.generate_private_key(ec.SECP256R1())
        salt = os.urandom(16)
        secret = sender.exchange(ec.ECDH(), UA.private_key.public_key())
        cek, nonce = _derive(secret, UA.auth, salt, UA.public, public_key_bytes(sender))
        enc, ck = f"salt={b64url_encode(salt)}", f"dh={b64url_encode(public_key_bytes(sender))}"
        for plain in (b"\x00\x05abc", b"\x00\x02\x00\x01abc"):
            body = AESGCM(cek).encrypt(nonce, plain, None)
            with pytest.raises(DecryptionError, match="padding"):
                open_message(body, enc, ck)
        body = AESGCM(cek).encrypt(nonce, b"\x00\x02\x00\x00abc", None)
        assert open_message(body, enc, ck) == b"abc"

    @settings(max_examples=200, deadline=None)
    @given(
        body=st.binary(max_size=200),
        encryption=st.text(max_size=60),
        crypto_key=st.text(max_size=120),
    )
    def test_random_input_only_raises_decryption_error(
        self, body: bytes, encryption: str, crypto_key: str
    ) -> None:
        with contextlib.suppress(DecryptionError):
            open_message(body, encryption, crypto_key)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=200))
    def test_random_body_with_valid_headers(self, body: bytes) -> None:
        with pytest.raises(DecryptionError):
            open_message(body, self.enc, self.ck)
