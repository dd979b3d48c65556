"""Interop with the Python peers: pywebpush, http_ece, py-vapid and PyJWT, both directions."""

from __future__ import annotations

import time

import http_ece
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid01, Vapid02
from py_vapid import jwt as vapid_jwt
from pywebpush import WebPusher

from tidings.webpush import (
    MAX_PLAINTEXT,
    VapidKey,
    aesgcm_decrypt,
    aesgcm_encrypt,
    b64url_decode,
    decrypt,
    encrypt,
    sign_vapid,
    verify_vapid,
)
from webpush.helpers import UserAgentKeys

ENDPOINT = "https://updates.push.services.mozilla.com/wpush/v2/gAAAAABk"
AUD = "https://updates.push.services.mozilla.com"
PAYLOADS = [b"x", b'{"title": "hello"}', bytes(range(256)) * 3, b"m" * 3000]


def subscription_info(ua: UserAgentKeys) -> dict[str, object]:
    return {"endpoint": ENDPOINT, "keys": {"p256dh": ua.public_b64, "auth": ua.auth_b64}}


class TestPywebpushToTidings:
    @pytest.mark.parametrize("payload", PAYLOADS)
    def test_aes128gcm(self, ua: UserAgentKeys, payload: bytes) -> None:
        encoded = WebPusher(subscription_info(ua)).encode(payload, "aes128gcm")
        assert decrypt(encoded["body"], ua.private_key, ua.auth) == payload

    @pytest.mark.parametrize("payload", PAYLOADS)
    def test_aesgcm(self, ua: UserAgentKeys, payload: bytes) -> None:
        encoded = WebPusher(subscription_info(ua)).encode(payload, "aesgcm")
        plain = aesgcm_decrypt(
            encoded["body"],
            ua.private_key,
            ua.auth,
            encryption="salt=" + encoded["salt"].decode(),
            crypto_key="dh=" + encoded["crypto_key"].decode(),
        )
        assert plain == payload


class TestHttpEce:
    @pytest.mark.parametrize("payload", [*PAYLOADS, b"", b"z" * MAX_PLAINTEXT])
    def test_tidings_aes128gcm_decrypts_with_http_ece(
        self, ua: UserAgentKeys, payload: bytes
    ) -> None:
        body = encrypt(payload, ua.public_b64, ua.auth_b64)
        plain = http_ece.decrypt(
            body, private_key=ua.private_key, auth_secret=ua.auth, version="aes128gcm"
        )
        assert plain == payload

    def test_tidings_padded_body_decrypts_with_http_ece(self, ua: UserAgentKeys) -> None:
        body = encrypt(b"padded", ua.public, ua.auth, pad=100)
        plain = http_ece.decrypt(
            body, private_key=ua.private_key, auth_secret=ua.auth, version="aes128gcm"
        )
        assert plain == b"padded"

    @pytest.mark.parametrize("payload", [*PAYLOADS, b""])
    def test_tidings_aesgcm_decrypts_with_http_ece(self, ua: UserAgentKeys, payload: bytes) -> None:
        msg = aesgcm_encrypt(payload, ua.public, ua.auth)
        plain = http_ece.decrypt(
            msg.body,
            salt=msg.salt,
            dh=msg.sender_public_key,
            private_key=ua.private_key,
            auth_secret=ua.auth,
            version="aesgcm",
        )
        assert plain == payload

    @pytest.mark.parametrize("rs", [18, 25, 100, 4096])
    def test_http_ece_multi_record_bodies_decode(self, ua: UserAgentKeys, rs: int) -> None:
        sender = ec.generate_private_key(ec.SECP256R1())
        payload = bytes(range(200))
        body = http_ece.encrypt(
            payload,
            private_key=sender,
            dh=ua.public,
            auth_secret=ua.auth,
            rs=rs,
            version="aes128gcm",
        )
        assert decrypt(body, ua.private_key, ua.auth) == payload

    def test_http_ece_aesgcm_multi_record_bodies_decode(self, ua: UserAgentKeys) -> None:
        import os

        from tidings.webpush import b64url_encode

        sender = ec.generate_private_key(ec.SECP256R1())
        salt = os.urandom(16)
        payload = bytes(range(100))
        body = http_ece.encrypt(
            payload,
            salt=salt,
            private_key=sender,
            dh=ua.public,
            auth_secret=ua.auth,
            rs=30,
            version="aesgcm",
        )
        sender_public = sender.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        plain = aesgcm_decrypt(
            body,
            ua.private_key,
            ua.auth,
            encryption=f"salt={b64url_encode(salt)};rs=30",
            crypto_key=f"dh={b64url_encode(sender_public)}",
        )
        assert plain == payload


class TestPyVapidToTidings:
    def test_vapid02_header_verifies(self) -> None:
        signer = Vapid02()
        signer.generate_keys()
        claims = {"aud": AUD, "sub": "mailto:ops@example.com", "exp": int(time.time()) + 3600}
        headers = signer.sign(claims)
        result = verify_vapid(headers["Authorization"], audience=ENDPOINT)
        assert result.claims["sub"] == "mailto:ops@example.com"
        public = signer.public_key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        assert result.public_key == public

    def test_vapid01_webpush_form_verifies(self) -> None:
        signer = Vapid01()
        signer.generate_keys()
        claims = {"aud": AUD, "sub": "mailto:ops@example.com", "exp": int(time.time()) + 3600}
        headers = signer.sign(claims, crypto_key="dh=BAAAA")
        assert headers["Authorization"].startswith("WebPush ")
        verify_vapid(headers["Authorization"], audience=AUD, crypto_key=headers["Crypto-Key"])

    def test_py_vapid_default_expiry_of_24h_verifies(self) -> None:
        signer = Vapid02()
        signer.generate_keys()
        headers = signer.sign({"aud": AUD, "sub": "mailto:ops@example.com"})
        verify_vapid(headers["Authorization"], audience=AUD)

    def test_py_vapid_key_files_load(self, tmp_path: object) -> None:
        from pathlib import Path

        assert isinstance(tmp_path, Path)
        signer = Vapid02()
        signer.generate_keys()
        signer.save_key(str(tmp_path / "private.pem"))
        expected = signer.public_key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        assert VapidKey.from_file(tmp_path / "private.pem").public_key_bytes == expected
        der = signer.private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        from tidings.webpush import b64url_encode

        assert VapidKey.from_string(b64url_encode(der)).public_key_bytes == expected
        loaded = Vapid02.from_string(b64url_encode(der))
        assert loaded.public_key.public_numbers() == signer.public_key.public_numbers()


class TestTidingsToPyVapidAndPyJwt:
    def test_py_vapid_verifies_the_signature(self) -> None:
        key = VapidKey.generate()
        headers = sign_vapid(key, ENDPOINT, "mailto:ops@example.com")
        # py-vapid's Vapid02.verify splits on the last space, so it cannot read the RFC
        # 8292 spelling "t=..., k=..." (with a space); its JWT and Vapid01 checks can.
        claims = vapid_jwt.decode(headers.token, headers.public_key)
        assert claims["aud"] == AUD
        assert Vapid01.verify(headers.public_key, headers.legacy_authorization)
        compact = f"vapid t={headers.token},k={headers.public_key}"
        assert Vapid02.verify(compact)

    def test_pyjwt_verifies_the_token(self) -> None:
        key = VapidKey.generate()
        headers = sign_vapid(key, ENDPOINT, "https://example.com/contact", expires_in=600)
        public_pem = key.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        claims = jwt.decode(headers.token, public_pem, algorithms=["ES256"], audience=AUD)
        assert claims == {
            "aud": AUD,
            "exp": headers.expires_at,
            "sub": "https://example.com/contact",
        }
        assert jwt.get_unverified_header(headers.token) == {"typ": "JWT", "alg": "ES256"}

    def test_pyjwt_tokens_verify_with_tidings(self) -> None:
        key = VapidKey.generate()
        claims = {"aud": AUD, "exp": int(time.time()) + 600, "sub": "mailto:a@b.c"}
        token = jwt.encode(claims, key.private_key, algorithm="ES256")
        result = verify_vapid(f"vapid t={token}, k={key.public_key_b64}", audience=AUD)
        assert result.claims == claims
        assert b64url_decode(key.public_key_b64) == result.public_key
