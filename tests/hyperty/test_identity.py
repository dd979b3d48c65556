"""Identity assertions without I/O: the JWT check, the JWKS, the profile, key rotation."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tidings.hyperty.identity import (
    MAX_ASSERTION,
    IdentityError,
    IdentityVerifier,
    KeySet,
    profile_from,
    verify_assertion,
)
from tidings.hyperty.idp import IdentityProvider
from tidings.webpush.b64 import b64url_encode

ISSUER = "https://idp.example.com"
AUD = "example.com"
SUBJECT = "user://idp.example.com/alice"


def check(token: str, keys: KeySet, now: float | None = None) -> dict[str, object]:
    return verify_assertion(
        token, keys, issuer=ISSUER, audience=AUD, now=time.time() if now is None else now
    )


def test_claims_of_a_valid_assertion() -> None:
    idp = IdentityProvider(ISSUER)
    keys = KeySet.from_jwks(idp.jwks())
    claims = check(idp.assertion(SUBJECT, audience=AUD, name="Alice"), keys)
    assert (claims["sub"], claims["name"], claims["iss"]) == (SUBJECT, "Alice", ISSUER)
    # aud may be a list; nbf within the leeway is fine.
    now = time.time()
    listed = idp.sign({"iss": ISSUER, "aud": ["x", AUD], "exp": now + 60, "nbf": now + 10})
    assert check(listed, keys)["aud"] == ["x", AUD]
    # A token made by PyJWT with the provider's key is accepted too.
    private = idp._key
    made = jwt.encode(
        {"iss": ISSUER, "aud": AUD, "exp": int(now) + 60}, private, "ES256", {"kid": idp.kid}
    )
    assert check(made, keys)["iss"] == ISSUER


@pytest.mark.parametrize(
    ("claims", "text"),
    [
        ({"aud": AUD, "exp": 2**40}, "iss is not"),
        ({"iss": ISSUER, "aud": "other", "exp": 2**40}, "aud is not"),
        ({"iss": ISSUER, "aud": AUD, "exp": "tomorrow"}, "no numeric exp"),
        ({"iss": ISSUER, "aud": AUD, "exp": True}, "no numeric exp"),
        ({"iss": ISSUER, "aud": AUD, "exp": 1000}, "has expired"),
        ({"iss": ISSUER, "aud": AUD, "exp": 2**40, "nbf": 2**39}, "not valid yet"),
    ],
)
def test_claims_that_are_refused(claims: dict[str, object], text: str) -> None:
    idp = IdentityProvider(ISSUER)
    with pytest.raises(IdentityError, match=text):
        check(idp.sign(claims), KeySet.from_jwks(idp.jwks()))


def test_tokens_that_are_refused() -> None:
    idp = IdentityProvider(ISSUER)
    keys = KeySet.from_jwks(idp.jwks())
    claims = {"iss": ISSUER, "aud": AUD, "exp": 2**40}
    with pytest.raises(IdentityError, match="at most"):
        check("a." + "b" * MAX_ASSERTION + ".c", keys)
    with pytest.raises(IdentityError, match="three non-empty"):
        check("a..c", keys)
    with pytest.raises(IdentityError, match="header is not base64url JSON"):
        check("%%%.e30.e30", keys)
    with pytest.raises(IdentityError, match="header is not a JSON object"):
        check("WzFd.e30.e30", keys)  # [1]
    with pytest.raises(IdentityError, match="critical header"):
        check(idp.sign(claims, header={"crit": ["exp"]}), keys)
    with pytest.raises(IdentityError, match="no ES256 key"):
        check(idp.sign(claims, header={"kid": "other"}), keys)
    # An RS256 header on an EC key: the algorithm must match the key's.
    rs = IdentityProvider(ISSUER, algorithm="RS256", kid=idp.kid)
    with pytest.raises(IdentityError, match="no RS256 key"):
        check(rs.sign(claims), keys)
    token = idp.sign(claims)
    with pytest.raises(IdentityError, match="signature does not verify"):
        check(token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"), keys)


def test_the_jwks_keeps_only_signature_keys_it_can_use() -> None:
    es = IdentityProvider(ISSUER)
    weak = (
        rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key().public_numbers()
    )

    def b64(value: int) -> str:
        return b64url_encode(value.to_bytes((value.bit_length() + 7) // 8, "big"))

    document = {
        "keys": [
            es.jwk(),
            {**es.jwk(), "kid": "enc", "use": "enc"},
            {"kty": "RSA", "kid": "weak", "n": b64(weak.n), "e": b64(weak.e)},
            {"kty": "EC", "crv": "P-384", "kid": "p384", "x": "AA", "y": "AA"},
            {"kty": "EC", "crv": "P-256", "kid": "off-curve", "x": "AQ", "y": "AQ"},
            "not a key",
        ]
    }
    assert list(KeySet.from_jwks(document).keys) == [es.kid]
    with pytest.raises(IdentityError, match="a JWKS is"):
        KeySet.from_jwks({"keys": "none"})
    # One key and no kid in the token: that key is meant.
    only = KeySet.from_jwks({"keys": [{k: v for k, v in es.jwk().items() if k != "kid"}]})
    claims = {"iss": ISSUER, "aud": AUD, "exp": 2**40}
    assert check(es.sign(claims, header={"kid": None}), only)["iss"] == ISSUER


def test_the_profile_comes_from_the_claims() -> None:
    assert profile_from(
        {"sub": SUBJECT, "preferred_username": "alice@x", "name": "Alice", "picture": "p"}
    ) == {"userURL": SUBJECT, "username": "alice@x", "name": "Alice", "picture": "p"}
    assert profile_from({"sub": "12345", "email": "a@x"}) == {"username": "12345"}
    assert profile_from({"name": 5}) == {}


async def test_a_rotated_key_is_fetched_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tidings.hyperty.identity as identity

    old, new = IdentityProvider(ISSUER), IdentityProvider(ISSUER)
    path = old.write_jwks(tmp_path / "jwks.json")
    verifier = IdentityVerifier(ISSUER, AUD, path)
    assert await verifier.verify(old.assertion(SUBJECT, audience=AUD))
    new.write_jwks(path)  # the provider rotates its key
    token = new.assertion(SUBJECT, audience=AUD)
    with pytest.raises(IdentityError, match="has no ES256 key"):
        await verifier.verify(token)  # fetched less than JWKS_MIN_INTERVAL ago: not again
    monkeypatch.setattr(identity, "JWKS_MIN_INTERVAL", 0.0)
    assert (await verifier.verify(token))["sub"] == SUBJECT
    # A JWKS that cannot be read keeps the keys already known.
    path.write_text("{not json")
    monkeypatch.setattr(identity, "JWKS_REFRESH", 0.0)
    assert (await verifier.verify(token))["sub"] == SUBJECT
    broken = IdentityVerifier(ISSUER, AUD, path)
    with pytest.raises(IdentityError, match="cannot be loaded"):
        await broken.verify(token)
