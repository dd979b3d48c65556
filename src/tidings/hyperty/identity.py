"""Identity assertions: the JWT in a reTHINK `body.identity.assertion`, checked by the element.

    keys = KeySet.from_jwks(document)                     # an IdP's published keys (JWKS)
    claims = verify_assertion(token, keys, issuer="https://idp.example.com",
                              audience="example.com", now=time.time())
    verifier = IdentityVerifier("https://idp.example.com", "example.com", "jwks.json")
    identity = await verifier.check(message.identity)   # IdentityError when invalid

An assertion is a compact JWS signed with ES256 or RS256 (nothing else: `none` and HMAC
cannot confuse the check), by a key of the identity provider's JWKS (`kid` chooses it),
with `iss` the provider, `aud` the element's audience and an `exp` in the future.
`check` returns the identity with `verified: true` and the user profile taken from the
verified claims; a client-supplied `verified` never survives. Built on `cryptography`
directly, as VAPID is (docs/crypto.md); PyJWT is only the tests' cross-check.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from tidings.hyperty.addresses import AddressError, parse_address
from tidings.webpush.b64 import b64url_decode

__all__ = [
    "ALGORITHMS",
    "IdentityError",
    "IdentityVerifier",
    "KeySet",
    "strip_verified",
    "verify_assertion",
]

ALGORITHMS = ("ES256", "RS256")
MAX_ASSERTION = 8192
MAX_JWKS = 64 * 1024
#: Seconds a JWKS fetched from a URL is trusted before it is fetched again.
JWKS_REFRESH = 300.0
#: The least time between two fetches caused by an unknown `kid`.
JWKS_MIN_INTERVAL = 30.0

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class IdentityError(ValueError):
    """An assertion that does not verify; the message says why (it goes to the sender)."""


@dataclass(frozen=True)
class KeySet:
    """An identity provider's signature keys: `kid` -> (algorithm, public key)."""

    keys: Mapping[str | None, tuple[str, PublicKey]]

    @classmethod
    def from_jwks(cls, document: object) -> KeySet:
        """The usable keys of a JWKS `{"keys": [...]}` (EC P-256 and RSA >= 2048 bits)."""
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise IdentityError('a JWKS is a JSON object {"keys": [...]}')
        keys: dict[str | None, tuple[str, PublicKey]] = {}
        for jwk in document["keys"]:
            loaded = _load_jwk(jwk)
            if loaded is not None:
                keys[jwk.get("kid") if isinstance(jwk.get("kid"), str) else None] = loaded
        return cls(keys)

    def find(self, kid: object, algorithm: str) -> PublicKey | None:
        if isinstance(kid, str):
            found = self.keys.get(kid)
        elif len(self.keys) == 1:  # no kid: only an IdP with one key can be meant
            found = next(iter(self.keys.values()))
        else:
            found = None
        if found is None or found[0] != algorithm:
            return None
        return found[1]


def _b64_int(value: object) -> int:
    if not isinstance(value, str):
        raise ValueError("not base64url")
    return int.from_bytes(b64url_decode(value), "big")


def _load_jwk(jwk: object) -> tuple[str, PublicKey] | None:
    """One JWK as (algorithm, key); None for keys that are not for ES256/RS256 signatures."""
    if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
        return None
    try:
        kty, alg = jwk.get("kty"), jwk.get("alg")
        if kty == "EC" and jwk.get("crv") == "P-256" and alg in (None, "ES256"):
            numbers = ec.EllipticCurvePublicNumbers(
                _b64_int(jwk.get("x")), _b64_int(jwk.get("y")), ec.SECP256R1()
            )
            return "ES256", numbers.public_key()
        if kty == "RSA" and alg in (None, "RS256"):
            key = rsa.RSAPublicNumbers(_b64_int(jwk.get("e")), _b64_int(jwk.get("n"))).public_key()
            return ("RS256", key) if key.key_size >= 2048 else None
    except ValueError:
        return None
    return None


def _segment(segment: str, what: str) -> dict[str, Any]:
    """One JSON object part of the JWT (`what`: header or payload)."""
    problem = "is not base64url JSON"
    try:
        value = json.loads(b64url_decode(segment))
        problem = "is not a JSON object"
        if isinstance(value, dict):
            return value
    except (ValueError, RecursionError):
        pass
    raise IdentityError(f"the assertion's {what} {problem}")


def _check_signature(key: PublicKey, algorithm: str, signed: bytes, signature: bytes) -> None:
    try:
        if algorithm == "ES256":
            assert isinstance(key, ec.EllipticCurvePublicKey)
            if len(signature) != 64:
                raise InvalidSignature
            der = encode_dss_signature(
                int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            )
            key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
        else:
            assert isinstance(key, rsa.RSAPublicKey)
            key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise IdentityError("the assertion's signature does not verify") from None


def _header(token: str) -> tuple[dict[str, Any], list[str]]:
    if not isinstance(token, str) or len(token) > MAX_ASSERTION:
        raise IdentityError(f"an assertion is a JWT string of at most {MAX_ASSERTION} characters")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise IdentityError("an assertion is a JWT: three non-empty dot-separated parts")
    header = _segment(parts[0], "header")
    if header.get("alg") not in ALGORITHMS:
        alg = header.get("alg")
        raise IdentityError(f"the assertion's alg must be ES256 or RS256, got {alg!r}")
    if "crit" in header:
        raise IdentityError("the assertion has critical header parameters this element ignores")
    return header, parts


def verify_assertion(
    token: str,
    keys: KeySet,
    *,
    issuer: str,
    audience: str,
    now: float,
    leeway: float = 30.0,
) -> dict[str, Any]:
    """The claims of a valid assertion; IdentityError naming the first thing wrong."""
    header, parts = _header(token)
    algorithm = str(header["alg"])
    key = keys.find(header.get("kid"), algorithm)
    if key is None:
        raise IdentityError(f"the identity provider has no {algorithm} key {header.get('kid')!r}")
    try:
        signature = b64url_decode(parts[2])
    except ValueError:
        raise IdentityError("the assertion's signature is not base64url") from None
    _check_signature(key, algorithm, f"{parts[0]}.{parts[1]}".encode("ascii"), signature)
    claims = _segment(parts[1], "payload")
    if claims.get("iss") != issuer:
        raise IdentityError(f"the assertion's iss is not {issuer!r}")
    aud = claims.get("aud")
    if not (aud == audience or (isinstance(aud, list) and audience in aud)):
        raise IdentityError(f"the assertion's aud is not {audience!r}")
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise IdentityError("the assertion has no numeric exp")
    if exp <= now - leeway:
        raise IdentityError("the assertion has expired")
    nbf = claims.get("nbf")
    if nbf is not None and (not isinstance(nbf, int | float) or nbf > now + leeway):
        raise IdentityError("the assertion is not valid yet (nbf)")
    return claims


def strip_verified(identity: Mapping[str, Any]) -> dict[str, Any]:
    """The identity without `verified`: only the element may say that."""
    return {k: v for k, v in identity.items() if k != "verified"}


def profile_from(claims: Mapping[str, Any]) -> dict[str, str]:
    """The reTHINK `userProfile` the verified claims vouch for."""
    profile: dict[str, str] = {}
    subject = claims.get("sub")
    if isinstance(subject, str):
        try:
            parse_address(subject)
            profile["userURL"] = subject
        except AddressError:
            profile["username"] = subject
    for claim, name in (
        ("preferred_username", "username"),
        ("email", "username"),
        ("name", "name"),
        ("picture", "picture"),
    ):
        value = claims.get(claim)
        if isinstance(value, str) and name not in profile:
            profile[name] = value
    return profile


class IdentityVerifier:
    """Checks assertions against one identity provider's published keys.

    `jwks` is a file path or an `http(s)://` URL; a URL is fetched again after
    `JWKS_REFRESH` seconds, and sooner (at most every `JWKS_MIN_INTERVAL`) when an
    assertion names a `kid` it does not know (the IdP rotated its key).
    """

    def __init__(
        self,
        issuer: str,
        audience: str,
        jwks: str | Path | KeySet,
        *,
        leeway: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self._clock = clock
        self._source = None if isinstance(jwks, KeySet) else str(jwks)
        self._keys = jwks if isinstance(jwks, KeySet) else None
        self._fetched = float("-inf")

    def _load(self) -> KeySet:
        assert self._source is not None
        if self._source.startswith(("http://", "https://")):
            request = urllib.request.Request(self._source, headers={"accept": "application/json"})  # noqa: S310 - configured by the operator
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                raw = response.read(MAX_JWKS + 1)
        else:
            raw = Path(self._source).read_bytes()
        if len(raw) > MAX_JWKS:
            raise IdentityError(f"the JWKS is over {MAX_JWKS} bytes")
        try:
            return KeySet.from_jwks(json.loads(raw))
        except ValueError as exc:
            raise IdentityError(f"the JWKS is not usable: {exc}") from None

    async def keys(self, *, refresh: bool = False) -> KeySet:
        """The current key set, (re)loaded when stale or when `refresh` is asked."""
        if self._source is None:
            assert self._keys is not None
            return self._keys
        now = time.monotonic()
        age = now - self._fetched
        if self._keys is None or age > JWKS_REFRESH or (refresh and age > JWKS_MIN_INTERVAL):
            self._fetched = now
            try:
                self._keys = await asyncio.to_thread(self._load)
            except (OSError, IdentityError):
                if self._keys is None:
                    raise IdentityError("the identity provider's keys cannot be loaded") from None
        assert self._keys is not None
        return self._keys

    async def verify(self, assertion: str) -> dict[str, Any]:
        """The claims of a valid assertion; IdentityError otherwise."""
        header, _ = _header(assertion)
        keys = await self.keys()
        if keys.find(header.get("kid"), str(header["alg"])) is None:
            keys = await self.keys(refresh=True)
        return verify_assertion(
            assertion,
            keys,
            issuer=self.issuer,
            audience=self.audience,
            now=self._clock(),
            leeway=self.leeway,
        )

    async def check(self, identity: Mapping[str, Any]) -> dict[str, Any]:
        """The identity to pass on: `verified` true with the profile from the claims, or
        false when it carries no assertion; IdentityError when the assertion is invalid."""
        kept = strip_verified(identity)
        assertion = kept.get("assertion")
        if assertion is None:
            return {**kept, "verified": False}
        if not isinstance(assertion, str):
            raise IdentityError("the assertion is not a string")
        claims = await self.verify(assertion)
        return {**kept, "idp": self.issuer, "userProfile": profile_from(claims), "verified": True}
