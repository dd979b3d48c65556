"""Every published vector (RFC 8291 App. A, RFC 8188 §3.1/3.2, RFC 8292 §2.4) through Tidings."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tidings.webpush import (
    VapidError,
    b64url_decode,
    b64url_encode,
    decrypt,
    ece_decode,
    ece_encode,
    encrypt,
    verify_vapid,
)
from tidings.webpush.ece import derive_key_and_nonce
from tidings.webpush.encryption import derive_ikm
from webpush.helpers import VECTORS_COPY, VECTORS_SHARED

Vectors = dict[str, Any]


def test_copy_matches_shared_reference() -> None:
    if not VECTORS_SHARED.exists():
        pytest.skip("shared/reference is not beside the repository; the copy is used alone")
    assert json.loads(VECTORS_COPY.read_text()) == json.loads(VECTORS_SHARED.read_text())


class TestRfc8291:
    def test_encrypt_gives_the_exact_body(self, vectors: Vectors) -> None:
        v = vectors["rfc8291_appendix_a"]
        body = encrypt(
            v["plaintext_utf8"].encode(),
            v["ua_public"],
            v["auth_secret"],
            salt=b64url_decode(v["salt"]),
            sender_private_key=v["as_private"],
            record_size=v["record_size"],
        )
        assert b64url_encode(body) == v["body"]
        assert len(body) == 144

    def test_encrypt_with_raw_bytes_arguments(self, vectors: Vectors) -> None:
        v = vectors["rfc8291_appendix_a"]
        body = encrypt(
            v["plaintext_utf8"].encode(),
            b64url_decode(v["ua_public"]),
            b64url_decode(v["auth_secret"]),
            salt=b64url_decode(v["salt"]),
            sender_private_key=b64url_decode(v["as_private"]),
        )
        assert b64url_encode(body) == v["body"]

    def test_decrypt_gives_the_plaintext(self, vectors: Vectors) -> None:
        v = vectors["rfc8291_appendix_a"]
        plain = decrypt(b64url_decode(v["body"]), v["ua_private"], v["auth_secret"])
        assert plain == v["plaintext_utf8"].encode()

    def test_intermediate_values(self, vectors: Vectors) -> None:
        v = vectors["rfc8291_appendix_a"]
        ikm = derive_ikm(
            b64url_decode(v["ecdh_secret"]),
            b64url_decode(v["auth_secret"]),
            b64url_decode(v["ua_public"]),
            b64url_decode(v["as_public"]),
        )
        assert b64url_encode(ikm) == v["ikm"]
        cek, nonce = derive_key_and_nonce(ikm, b64url_decode(v["salt"]))
        assert b64url_encode(cek) == v["cek"]
        assert b64url_encode(nonce) == v["nonce"]

    def test_padded_base64_keys_are_accepted(self, vectors: Vectors) -> None:
        v = vectors["rfc8291_appendix_a"]
        pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
        plain = decrypt(b64url_decode(v["body"]), pad(v["ua_private"]), pad(v["auth_secret"]))
        assert plain == v["plaintext_utf8"].encode()


class TestRfc8188:
    def test_single_record_encodes_exactly(self, vectors: Vectors) -> None:
        v = vectors["rfc8188_3_1_single_record"]
        body = ece_encode(
            v["plaintext_utf8"].encode(),
            b64url_decode(v["ikm"]),
            salt=b64url_decode(v["salt"]),
            keyid=v["keyid"].encode(),
            record_size=v["record_size"],
        )
        assert b64url_encode(body) == v["body"]

    def test_single_record_decodes(self, vectors: Vectors) -> None:
        v = vectors["rfc8188_3_1_single_record"]
        plain = ece_decode(b64url_decode(v["body"]), b64url_decode(v["ikm"]))
        assert plain == v["plaintext_utf8"].encode()

    def test_single_record_key_schedule(self, vectors: Vectors) -> None:
        v = vectors["rfc8188_3_1_single_record"]
        cek, nonce = derive_key_and_nonce(b64url_decode(v["ikm"]), b64url_decode(v["salt"]))
        assert (b64url_encode(cek), b64url_encode(nonce)) == (v["cek"], v["nonce"])

    def test_multiple_records_decode_with_a_keyid_callback(self, vectors: Vectors) -> None:
        v = vectors["rfc8188_3_2_multiple_records"]
        seen: list[bytes] = []

        def lookup(keyid: bytes) -> bytes:
            seen.append(keyid)
            return b64url_decode(v["ikm"])

        assert ece_decode(b64url_decode(v["body"]), lookup) == v["plaintext_utf8"].encode()
        assert seen == [v["keyid_utf8"].encode()]


class TestRfc8292:
    def test_example_verifies_before_its_expiry(self, vectors: Vectors) -> None:
        v = vectors["rfc8292_example"]
        exp = v["jwt_claims"]["exp"]
        result = verify_vapid(v["authorization"], audience="https://push.example.net", now=exp - 1)
        assert result.claims == v["jwt_claims"]
        assert b64url_encode(result.public_key) == v["public_key"]
        assert result.expires_at == exp

    def test_example_verifies_with_the_push_resource_url_as_audience(
        self, vectors: Vectors
    ) -> None:
        v = vectors["rfc8292_example"]
        now = v["jwt_claims"]["exp"] - 3600
        verify_vapid(v["authorization"], audience="https://push.example.net/p/JzLQ3raZ", now=now)

    @pytest.mark.parametrize("delta", [60, 61, 3600, 10**9])
    def test_example_fails_after_its_expiry(self, vectors: Vectors, delta: int) -> None:
        v = vectors["rfc8292_example"]
        with pytest.raises(VapidError, match="expired"):
            verify_vapid(
                v["authorization"],
                audience="https://push.example.net",
                now=v["jwt_claims"]["exp"] + delta,
            )

    def test_example_within_the_leeway_still_verifies(self, vectors: Vectors) -> None:
        v = vectors["rfc8292_example"]
        exp = v["jwt_claims"]["exp"]
        verify_vapid(v["authorization"], audience="https://push.example.net", now=exp + 59)
        with pytest.raises(VapidError):
            verify_vapid(
                v["authorization"], audience="https://push.example.net", now=exp + 1, leeway=0
            )

    def test_example_fails_for_another_audience(self, vectors: Vectors) -> None:
        v = vectors["rfc8292_example"]
        with pytest.raises(VapidError, match="aud"):
            verify_vapid(
                v["authorization"],
                audience="https://push.example.com",
                now=v["jwt_claims"]["exp"] - 1,
            )
