"""RFC 8292 VAPID: ES256 JWTs that bind a push to an application server's key.

The JWS is built and checked directly on `cryptography` (no PyJWT): VAPID needs one
algorithm, raw 65-byte keys and its own claim rules, and this keeps verification lean.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from tidings.webpush.aesgcm import parse_header_params
from tidings.webpush.b64 import b64url_decode, b64url_encode
from tidings.webpush.errors import InvalidKeyError, VapidError
from tidings.webpush.keys import load_p256_private_key, load_public, public_key_bytes

__all__ = [
    "MAX_EXPIRY",
    "VapidHeaders",
    "VapidKey",
    "VerifiedVapid",
    "sign_vapid",
    "vapid_audience",
    "verify_vapid",
]

MAX_EXPIRY = 24 * 3600
"""RFC 8292 §2: `exp` must be no more than 24 hours after the request is made."""
MAX_TOKEN_LENGTH = 8192

_ES256 = ec.ECDSA(hashes.SHA256())
_JWT_HEADER = b64url_encode(b'{"typ":"JWT","alg":"ES256"}')
_DEFAULT_PORTS = {"http": 80, "https": 443}


class VapidKey:
    """An application server's P-256 signing key; its public half is the applicationServerKey."""

    __slots__ = ("private_key", "public_key_b64", "public_key_bytes")

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        self.private_key = load_p256_private_key(private_key)
        self.public_key_bytes: bytes = public_key_bytes(self.private_key)
        self.public_key_b64: str = b64url_encode(self.public_key_bytes)

    def __repr__(self) -> str:
        return f"VapidKey(public_key={self.public_key_b64!r})"

    @classmethod
    def generate(cls) -> VapidKey:
        """A new random key."""
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> VapidKey:
        """From the raw 32-byte private scalar."""
        return cls(load_p256_private_key(bytes(raw)))

    @classmethod
    def from_pem(cls, data: bytes | str) -> VapidKey:
        """From PEM (PKCS#8 "PRIVATE KEY" or SEC 1 "EC PRIVATE KEY")."""
        raw = data.encode("ascii", "replace") if isinstance(data, str) else bytes(data)
        if b"-----BEGIN" not in raw:
            raise InvalidKeyError("not a PEM private key (no -----BEGIN line)")
        return cls(load_p256_private_key(raw[raw.index(b"-----BEGIN") :]))

    @classmethod
    def from_der(cls, data: bytes) -> VapidKey:
        """From DER (PKCS#8 or SEC 1)."""
        try:
            key = serialization.load_der_private_key(bytes(data), password=None)
        except (ValueError, TypeError) as exc:
            raise InvalidKeyError(f"private key DER cannot be read: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InvalidKeyError("private key DER does not hold an EC key")
        return cls(load_p256_private_key(key))

    @classmethod
    def from_string(cls, text: str | bytes) -> VapidKey:
        """From PEM text, a base64url raw scalar (web-push) or base64url DER (py-vapid)."""
        if isinstance(text, bytes):
            try:
                text = text.decode("ascii")
            except UnicodeDecodeError:
                raise InvalidKeyError("key text is not ASCII") from None
        if "-----BEGIN" in text:
            return cls.from_pem(text)
        compact = "".join(text.split())
        try:
            raw = b64url_decode(compact)
        except ValueError as exc:
            raise InvalidKeyError(f"key text is neither PEM nor base64url: {exc}") from None
        if len(raw) == 32:
            return cls.from_private_bytes(raw)
        return cls.from_der(raw)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> VapidKey:
        """From a file holding any format `from_string` accepts."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise InvalidKeyError(f"cannot read key file {os.fspath(path)!r}: {exc}") from None
        if b"-----BEGIN" in data:
            return cls.from_pem(data)
        if data and data[0] == 0x30 and not data.strip().isascii():
            return cls.from_der(data)  # binary DER
        return cls.from_string(data)

    def to_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM (readable by py-vapid and OpenSSL)."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def private_bytes(self) -> bytes:
        """The raw 32-byte private scalar (what the npm web-push package calls privateKey)."""
        return self.private_key.private_numbers().private_value.to_bytes(32, "big")


@dataclass(frozen=True)
class VapidHeaders:
    """A signed VAPID token and the `Authorization` value carrying it."""

    authorization: str
    token: str
    public_key: str
    expires_at: int
    audience: str

    @property
    def legacy_authorization(self) -> str:
        """The pre-RFC form `WebPush <jwt>`, sent together with `crypto_key`."""
        return f"WebPush {self.token}"

    @property
    def crypto_key(self) -> str:
        """The pre-RFC `Crypto-Key: p256ecdsa=<key>` value that goes with `WebPush <jwt>`."""
        return f"p256ecdsa={self.public_key}"


@dataclass(frozen=True)
class VerifiedVapid:
    """What a valid VAPID token asserts: the signer's key, the claims and the expiry."""

    public_key: bytes
    claims: dict[str, Any]
    expires_at: int

    @property
    def public_key_b64(self) -> str:
        """The signer's key as base64url, as subscriptions store the applicationServerKey."""
        return b64url_encode(self.public_key)

    @property
    def subject(self) -> str | None:
        """The `sub` contact (mailto: or https:), if the sender gave one."""
        sub = self.claims.get("sub")
        return sub if isinstance(sub, str) else None


def vapid_audience(endpoint: str) -> str:
    """The origin of a push resource URL (`scheme://host[:port]`, default port left out)."""
    if not isinstance(endpoint, str):
        raise ValueError(f"not a URL string: {endpoint!r}")
    return _audience(endpoint)


@lru_cache(maxsize=512)
def _audience(endpoint: str) -> str:
    """vapid_audience, cached: services verify against a handful of origins all day."""
    try:
        parts = urlsplit(endpoint.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {endpoint!r} ({exc})") from None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in _DEFAULT_PORTS or not host:
        raise ValueError(f"not an http(s) URL with a host: {endpoint!r}")
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def sign_vapid(
    key: VapidKey,
    endpoint: str,
    subject: str,
    *,
    expires_in: int = 12 * 3600,
    now: float | None = None,
) -> VapidHeaders:
    """Sign a VAPID JWT for the origin of `endpoint`, valid for `expires_in` seconds."""
    if not isinstance(subject, str) or not subject.startswith(("mailto:", "https:")):
        raise ValueError(f"VAPID subject must start with 'mailto:' or 'https:', got {subject!r}")
    if expires_in > MAX_EXPIRY:
        raise ValueError(f"VAPID expires_in must be at most 24 hours (86400 s), got {expires_in}")
    if expires_in <= 0:
        raise ValueError(f"VAPID expires_in must be positive, got {expires_in}")
    audience = vapid_audience(endpoint)
    expires_at = int((time.time() if now is None else now) + expires_in)
    claims = json.dumps(
        {"aud": audience, "exp": expires_at, "sub": subject},
        separators=(",", ":"),
        sort_keys=True,
    )
    signing_input = f"{_JWT_HEADER}.{b64url_encode(claims.encode('utf-8'))}"
    der = key.private_key.sign(signing_input.encode("ascii"), _ES256)
    r, s = decode_dss_signature(der)
    token = f"{signing_input}.{b64url_encode(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
    return VapidHeaders(
        authorization=f"vapid t={token}, k={key.public_key_b64}",
        token=token,
        public_key=key.public_key_b64,
        expires_at=expires_at,
        audience=audience,
    )


def _auth_params(value: str) -> dict[str, str]:
    """`t=..., k=...` into a dict; duplicate or nameless parameters are rejected."""
    params: dict[str, str] = {}
    for item in value.split(","):
        if not item.strip():
            continue
        name, sep, param = item.partition("=")
        name = name.strip().lower()
        if not sep or not name:
            raise VapidError(
                "malformed parameter in the vapid Authorization header", unreadable=True
            )
        if name in params:
            raise VapidError(f"the vapid Authorization header repeats {name}=", unreadable=True)
        param = param.strip()
        if len(param) >= 2 and param[0] == param[-1] == '"':
            param = param[1:-1]
        params[name] = param
    return params


LEGACY_SCHEMES = ("webpush", "bearer")
"""Draft forms (draft-ietf-webpush-vapid-01/02): `WebPush <jwt>` or `Bearer <jwt>`, with
the key in `Crypto-Key: p256ecdsa=<key>` (which may also carry aesgcm's `dh=`)."""


def _split_authorization(authorization: str, crypto_key: str | None) -> tuple[str, str]:
    """The JWT and the base64url key from the RFC form or a draft form."""
    if not isinstance(authorization, str):
        raise VapidError("Authorization header is missing", unreadable=True)
    scheme, _, rest = authorization.strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "vapid":
        params = _auth_params(rest)
        if "t" not in params:
            raise VapidError("vapid Authorization header has no t= token", unreadable=True)
        if "k" not in params:
            raise VapidError("vapid Authorization header has no k= public key", unreadable=True)
        return params["t"], params["k"]
    if scheme in LEGACY_SCHEMES:
        if not rest.strip():
            raise VapidError(f"{scheme} Authorization header has no token", unreadable=True)
        if not crypto_key:
            raise VapidError(
                f"{scheme} Authorization needs a Crypto-Key header with p256ecdsa=",
                unreadable=True,
            )
        key = parse_header_params(crypto_key).get("p256ecdsa")
        if not key:
            raise VapidError("Crypto-Key header has no p256ecdsa= public key", unreadable=True)
        return rest.strip(), key
    raise VapidError(
        "Authorization scheme is not vapid (or the draft WebPush or Bearer)", unreadable=True
    )


def _json_segment(segment: str, what: str) -> dict[str, Any]:
    """Decode one base64url JSON object segment of a JWT."""
    try:
        value = json.loads(b64url_decode(segment))
    except (ValueError, RecursionError):
        raise VapidError(f"JWT {what} is not base64url JSON") from None
    if not isinstance(value, dict):
        raise VapidError(f"JWT {what} is not a JSON object")
    return value


def _origin_of(aud: str) -> str | None:
    """`aud` normalised as an origin, or None when it is not one (path, query, user...)."""
    try:
        parts = urlsplit(aud)
        if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
            return None
        return vapid_audience(aud)
    except ValueError:
        return None


def verify_vapid(
    authorization: str,
    *,
    audience: str,
    crypto_key: str | None = None,
    now: float | None = None,
    leeway: int = 60,
) -> VerifiedVapid:
    """Check a VAPID `Authorization` value for the push service at origin `audience`."""
    expected_audience = vapid_audience(audience)
    token, key_text = _split_authorization(authorization, crypto_key)
    if len(token) > MAX_TOKEN_LENGTH:
        raise VapidError("JWT is too long")
    try:
        public_key, raw_key = load_public(key_text)
    except ValueError:
        raise VapidError("k is not a base64url uncompressed P-256 public key") from None
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise VapidError("JWT must have three non-empty dot-separated parts")
    header = _json_segment(parts[0], "header")
    if header.get("alg") != "ES256":
        raise VapidError(f"JWT alg must be ES256, got {header.get('alg')!r}")
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT"):
        raise VapidError("JWT typ must be JWT")
    if "crit" in header:
        raise VapidError("JWT crit header extensions are not supported")
    try:
        signature = b64url_decode(parts[2])
    except ValueError:
        raise VapidError("JWT signature is not base64url") from None
    if len(signature) != 64:
        raise VapidError("JWT signature must be 64 bytes (ES256 r||s)")
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    claims = _json_segment(parts[1], "claims")  # also proves parts[1] is ASCII base64url
    try:
        public_key.verify(der, f"{parts[0]}.{parts[1]}".encode("ascii"), _ES256)
    except InvalidSignature:
        raise VapidError("JWT signature does not verify against k") from None
    aud = claims.get("aud")
    if not isinstance(aud, str):
        raise VapidError("JWT has no aud claim")
    if aud != expected_audience and _origin_of(aud) != expected_audience:
        raise VapidError(f"JWT aud {aud!r} is not this push service ({expected_audience})")
    exp = claims.get("exp")
    if type(exp) is not int:
        raise VapidError("JWT exp claim must be an integer")
    current = time.time() if now is None else now
    if not math.isfinite(current):
        raise ValueError("now must be a finite number")
    if exp <= current - leeway:
        raise VapidError("JWT has expired")
    if exp > current + MAX_EXPIRY + leeway:
        raise VapidError("JWT exp is more than 24 hours ahead")
    sub = claims.get("sub")
    if sub is not None and not isinstance(sub, str):
        raise VapidError("JWT sub claim must be a string")
    return VerifiedVapid(public_key=raw_key, claims=claims, expires_at=exp)
