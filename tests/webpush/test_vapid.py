"""VAPID signing and verification: keys, header forms, every claim rule, fuzzed input."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.webpush import (
    InvalidKeyError,
    VapidError,
    VapidKey,
    b64url_decode,
    b64url_encode,
    sign_vapid,
    vapid_audience,
    verify_vapid,
)

KEY = VapidKey.generate()
ENDPOINT = "https://push.example.net/wpush/v2/abc"
AUD = "https://push.example.net"
NOW = 1_700_000_000


def forge(
    claims: dict[str, object], header: dict[str, object] | None = None, key: VapidKey = KEY
) -> str:
    """A token over arbitrary header/claims, correctly signed with `key`."""
    head = b64url_encode(json.dumps(header or {"typ": "JWT", "alg": "ES256"}).encode())
    body = b64url_encode(json.dumps(claims).encode())
    der = key.private_key.sign(f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return f"{head}.{body}.{b64url_encode(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def header_for(token: str, key: VapidKey = KEY) -> str:
    return f"vapid t={token}, k={key.public_key_b64}"


def good_claims(**changes: object) -> dict[str, object]:
    claims: dict[str, object] = {"aud": AUD, "exp": NOW + 3600, "sub": "mailto:ops@example.com"}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


class TestKeys:
    def test_public_key_forms(self) -> None:
        assert len(KEY.public_key_bytes) == 65 and KEY.public_key_bytes[0] == 4
        assert b64url_decode(KEY.public_key_b64) == KEY.public_key_bytes
        assert "=" not in KEY.public_key_b64

    def test_pem_round_trip(self, tmp_path: Path) -> None:
        pem = KEY.to_pem()
        assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
        assert VapidKey.from_pem(pem).public_key_bytes == KEY.public_key_bytes
        assert VapidKey.from_pem(pem.decode()).public_key_bytes == KEY.public_key_bytes
        path = tmp_path / "k.pem"
        path.write_bytes(pem)
        assert VapidKey.from_file(path).public_key_bytes == KEY.public_key_bytes
        assert VapidKey.from_file(str(path)).public_key_bytes == KEY.public_key_bytes

    def test_sec1_pem(self) -> None:
        pem = KEY.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        assert pem.startswith(b"-----BEGIN EC PRIVATE KEY-----")
        assert VapidKey.from_string(pem.decode()).public_key_b64 == KEY.public_key_b64

    def test_raw_and_der_strings(self, tmp_path: Path) -> None:
        raw = KEY.private_bytes()
        assert VapidKey.from_private_bytes(raw).public_key_b64 == KEY.public_key_b64
        assert VapidKey.from_string(b64url_encode(raw)).public_key_b64 == KEY.public_key_b64
        der = KEY.private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        assert VapidKey.from_string(b64url_encode(der)).public_key_b64 == KEY.public_key_b64
        (tmp_path / "der.txt").write_text(b64url_encode(der) + "\n")
        assert VapidKey.from_file(tmp_path / "der.txt").public_key_b64 == KEY.public_key_b64
        (tmp_path / "der.bin").write_bytes(der)
        assert VapidKey.from_file(tmp_path / "der.bin").public_key_b64 == KEY.public_key_b64

    @pytest.mark.parametrize(
        "bad", ["", "!!!", "AAAA", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"]
    )
    def test_bad_key_text(self, bad: str) -> None:
        with pytest.raises(InvalidKeyError):
            VapidKey.from_string(bad)

    def test_other_curves_and_missing_files(self, tmp_path: Path) -> None:
        other = ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with pytest.raises(InvalidKeyError, match="P-256"):
            VapidKey.from_pem(other)
        with pytest.raises(InvalidKeyError, match="cannot read"):
            VapidKey.from_file(tmp_path / "missing.pem")


class TestAudience:
    @pytest.mark.parametrize(
        ("endpoint", "origin"),
        [
            ("https://push.example.net/wpush/v1/x", "https://push.example.net"),
            ("https://push.example.net:443/x", "https://push.example.net"),
            ("https://Push.Example.NET:8443/x?y#z", "https://push.example.net:8443"),
            ("HTTP://localhost:80/x", "http://localhost"),
            ("http://127.0.0.1:8080/push", "http://127.0.0.1:8080"),
            ("http://[::1]:8080/push", "http://[::1]:8080"),
            ("https://user:pw@host.example/x", "https://host.example"),
        ],
    )
    def test_origin(self, endpoint: str, origin: str) -> None:
        assert vapid_audience(endpoint) == origin

    @pytest.mark.parametrize(
        "bad", ["", "push.example.net", "ftp://x/", "https://", "http://x:99999/"]
    )
    def test_not_a_url(self, bad: str) -> None:
        with pytest.raises(ValueError):
            vapid_audience(bad)


class TestSign:
    def test_sign_then_verify(self) -> None:
        headers = sign_vapid(KEY, ENDPOINT, "mailto:ops@example.com", now=NOW)
        assert headers.audience == AUD
        assert headers.expires_at == NOW + 12 * 3600
        assert headers.authorization == f"vapid t={headers.token}, k={KEY.public_key_b64}"
        assert headers.public_key == KEY.public_key_b64
        result = verify_vapid(headers.authorization, audience=ENDPOINT, now=NOW)
        assert result.public_key == KEY.public_key_bytes
        assert result.public_key_b64 == KEY.public_key_b64
        assert result.claims == {"aud": AUD, "exp": NOW + 43200, "sub": "mailto:ops@example.com"}
        assert result.subject == "mailto:ops@example.com"
        header = json.loads(b64url_decode(headers.token.split(".")[0]))
        assert header == {"typ": "JWT", "alg": "ES256"}

    def test_default_clock(self) -> None:
        headers = sign_vapid(KEY, ENDPOINT, "https://example.com/contact")
        assert abs(headers.expires_at - (time.time() + 12 * 3600)) < 5
        verify_vapid(headers.authorization, audience=AUD)

    def test_legacy_form(self) -> None:
        headers = sign_vapid(KEY, ENDPOINT, "mailto:a@b.c", now=NOW)
        assert headers.legacy_authorization == f"WebPush {headers.token}"
        assert headers.crypto_key == f"p256ecdsa={KEY.public_key_b64}"
        verify_vapid(
            headers.legacy_authorization, audience=AUD, crypto_key=headers.crypto_key, now=NOW
        )

    @pytest.mark.parametrize("subject", ["ops@example.com", "http://example.com", "", "MAILTO:x"])
    def test_subject_must_be_mailto_or_https(self, subject: str) -> None:
        with pytest.raises(ValueError, match="subject"):
            sign_vapid(KEY, ENDPOINT, subject)

    @pytest.mark.parametrize("expires_in", [24 * 3600 + 1, 0, -5])
    def test_expiry_bounds(self, expires_in: int) -> None:
        with pytest.raises(ValueError, match="expires_in"):
            sign_vapid(KEY, ENDPOINT, "mailto:a@b.c", expires_in=expires_in)
        sign_vapid(KEY, ENDPOINT, "mailto:a@b.c", expires_in=24 * 3600)


class TestVerifyHeaderForms:
    token = forge(good_claims())

    @pytest.mark.parametrize(
        "template",
        [
            "vapid t={t}, k={k}",
            "vapid t={t},k={k}",
            "VAPID t={t}, k={k}",
            "Vapid   k={k} ,  t={t}  ",
            '  vapid t="{t}", k="{k}"',
            "vapid T={t}, K={k}",
        ],
    )
    def test_accepted_spellings(self, template: str) -> None:
        value = template.format(t=self.token, k=KEY.public_key_b64)
        assert verify_vapid(value, audience=AUD, now=NOW).public_key == KEY.public_key_bytes

    @pytest.mark.parametrize(
        "crypto_key",
        [
            "p256ecdsa={k}",
            "dh=BAAA;p256ecdsa={k}",
            "dh=BAAA, p256ecdsa={k}",
            "keyid=p256dh;dh=BAAA,keyid=vapid;p256ecdsa={k}",
        ],
    )
    @pytest.mark.parametrize("scheme", ["WebPush", "webpush", "Bearer", "bearer"])
    def test_draft_schemes_with_crypto_key(self, crypto_key: str, scheme: str) -> None:
        """Both draft forms: `WebPush <jwt>` (draft-01) and `Bearer <jwt>` (draft-00)."""
        verified = verify_vapid(
            f"{scheme} {self.token}",
            audience=AUD,
            crypto_key=crypto_key.format(k=KEY.public_key_b64),
            now=NOW,
        )
        assert verified.public_key == KEY.public_key_bytes

    def test_draft_tokens_may_lack_sub(self) -> None:
        token = forge(good_claims(sub=None))
        verified = verify_vapid(
            f"Bearer {token}", audience=AUD, crypto_key=f"p256ecdsa={KEY.public_key_b64}", now=NOW
        )
        assert verified.subject is None

    @pytest.mark.parametrize(
        ("value", "crypto_key", "reason"),
        [
            ("", None, "scheme"),
            ("Basic {t}", None, "scheme"),
            ("Bearer {t}", None, "Crypto-Key"),
            ("Bearer", "p256ecdsa={k}", "no token"),
            ("vapid", None, "t="),
            ("vapid k={k}", None, "t="),
            ("vapid t={t}", None, "k="),
            ("vapid t={t}, t={t}, k={k}", None, "repeats"),
            ("vapid t={t}, junk, k={k}", None, "malformed"),
            ("WebPush {t}", None, "Crypto-Key"),
            ("WebPush {t}", "dh=BAAA", "p256ecdsa"),
            ("vapid t={t}, k=BAAA", None, "P-256"),
            ("vapid t={t}, k=" + b64url_encode(b"\x04" + bytes(64)), None, "P-256"),
            ("vapid t={t}, k=" + VapidKey.generate().public_key_b64, None, "signature"),
        ],
    )
    def test_rejected(self, value: str, crypto_key: str | None, reason: str) -> None:
        with pytest.raises(VapidError, match=reason) as info:
            verify_vapid(
                value.format(t=self.token, k=KEY.public_key_b64),
                audience=AUD,
                crypto_key=crypto_key,
                now=NOW,
            )
        assert reason.lower() in info.value.reason.lower()
        readable = reason in ("P-256", "signature")
        assert info.value.unreadable is not readable  # 401 rather than 403 at the service


class TestVerifyClaims:
    def check(self, token: str, **kwargs: object) -> None:
        verify_vapid(header_for(token), audience=AUD, now=NOW, **kwargs)  # type: ignore[arg-type]

    def test_good(self) -> None:
        self.check(forge(good_claims()))
        self.check(forge(good_claims(sub=None)))  # sub is optional for a verifier
        self.check(forge(good_claims(), {"alg": "ES256"}))  # typ is optional
        self.check(forge(good_claims(), {"alg": "ES256", "typ": "jwt"}))

    @pytest.mark.parametrize(
        ("header", "reason"),
        [
            ({"alg": "none"}, "alg"),
            ({"alg": "HS256", "typ": "JWT"}, "alg"),
            ({"alg": "ES384"}, "alg"),
            ({"alg": "es256"}, "alg"),
            ({"typ": "JWT"}, "alg"),
            ({"alg": "ES256", "typ": "JOSE+JSON"}, "typ"),
            ({"alg": "ES256", "typ": 5}, "typ"),
            ({"alg": "ES256", "crit": ["exp"]}, "crit"),
        ],
    )
    def test_bad_jwt_header(self, header: dict[str, object], reason: str) -> None:
        with pytest.raises(VapidError, match=reason):
            self.check(forge(good_claims(), header))

    @pytest.mark.parametrize(
        ("claims", "reason"),
        [
            (good_claims(aud=None), "aud"),
            (good_claims(aud="https://other.example"), "aud"),
            (good_claims(aud="http://push.example.net"), "aud"),
            (good_claims(aud="https://push.example.net/path"), "aud"),
            (good_claims(aud="https://push.example.net:8443"), "aud"),
            (good_claims(aud=["https://push.example.net"]), "aud"),
            (good_claims(exp=None), "exp"),
            (good_claims(exp="1700003600"), "exp"),
            (good_claims(exp=NOW + 3600.5), "exp"),
            (good_claims(exp=True), "exp"),
            (good_claims(exp=NOW - 61), "expired"),
            (good_claims(exp=NOW - 60), "expired"),
            (good_claims(exp=NOW + 24 * 3600 + 61), "24 hours"),
            (good_claims(sub=42), "sub"),
        ],
    )
    def test_bad_claims(self, claims: dict[str, object], reason: str) -> None:
        with pytest.raises(VapidError, match=reason):
            self.check(forge(claims))

    @pytest.mark.parametrize(
        "aud",
        ["https://push.example.net/", "https://PUSH.example.net", "https://push.example.net:443"],
    )
    def test_equivalent_origin_spellings(self, aud: str) -> None:
        self.check(forge(good_claims(aud=aud)))

    def test_expiry_edges(self) -> None:
        self.check(forge(good_claims(exp=NOW - 59)))
        self.check(forge(good_claims(exp=NOW + 24 * 3600 + 60)))
        with pytest.raises(VapidError):
            self.check(forge(good_claims(exp=NOW)), leeway=0)

    @pytest.mark.parametrize(
        ("token", "reason"),
        [
            ("a.b", "three"),
            ("a.b.c.d", "three"),
            ("..", "three"),
            ("!!.e30.AAAA", "header"),
            ("W10.e30.AAAA", "object"),  # header "[]"
            ("eyJhbGciOiJFUzI1NiJ9.e30.AAAA", "64 bytes"),
            ("eyJhbGciOiJFUzI1NiJ9.e30.!!", "base64url"),
            ("eyJhbGciOiJFUzI1NiJ9.bm90IGpzb24." + "A" * 86, "claims"),
            ("eyJhbGciOiJFUzI1NiJ9.e30." + "A" * 86, "signature"),
            ("eyJhbGciOiJFUzI1NiJ9.é." + "A" * 86, "claims"),
        ],
    )
    def test_broken_tokens(self, token: str, reason: str) -> None:
        with pytest.raises(VapidError, match=reason):
            self.check(token)

    def test_tampered_claims_fail_the_signature(self) -> None:
        head, _, sig = forge(good_claims()).split(".")
        other = b64url_encode(json.dumps(good_claims(sub="mailto:evil@example.com")).encode())
        with pytest.raises(VapidError, match="signature"):
            self.check(f"{head}.{other}.{sig}")

    def test_deeply_nested_json_is_a_vapid_error(self) -> None:
        deep = b64url_encode(b"[" * 100000)
        with pytest.raises(VapidError):
            self.check(f"{deep}.{deep}." + "A" * 86)

    def test_huge_token(self) -> None:
        with pytest.raises(VapidError, match="long"):
            self.check("a" * 10000 + ".b.c")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200), st.one_of(st.none(), st.text(max_size=100)))
def test_random_strings_only_raise_vapid_error(authorization: str, crypto_key: str | None) -> None:
    with contextlib.suppress(VapidError):
        verify_vapid(authorization, audience=AUD, crypto_key=crypto_key, now=NOW)


VALID = header_for(forge(good_claims()))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(VALID) - 1), st.characters(codec="utf-8"))
def test_mutated_headers_only_raise_vapid_error(index: int, char: str) -> None:
    mutated = VALID[:index] + char + VALID[index + 1 :]
    with contextlib.suppress(VapidError):
        verify_vapid(mutated, audience=AUD, now=NOW)


@settings(max_examples=100, deadline=None)
@given(
    st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=,", max_size=300
    )
)
def test_random_token_shapes_only_raise_vapid_error(token: str) -> None:
    with contextlib.suppress(VapidError):
        verify_vapid(f"vapid t={token}, k={KEY.public_key_b64}", audience=AUD, now=NOW)
