"""A small identity provider for tests and the demo: a key, its JWKS, signed assertions.

    idp = IdentityProvider("https://idp.example.com")          # ES256 (or algorithm="RS256")
    idp.write_jwks("jwks.json")                                 # or: with idp.serve() as url
    token = idp.assertion("user://example.com/alice", audience="example.com", name="Alice")
    identity = idp.identity("Alice", "alice", audience="example.com")   # a reTHINK body.identity

Not a real IdP (no login, no consent): it signs what it is asked to. The push element
checks its assertions exactly as it would a real provider's (`identity.py`).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tidings.hyperty.addresses import parse_address, user_url
from tidings.webpush.b64 import b64url_encode

__all__ = ["IdentityProvider"]


def _b64_int(value: int) -> str:
    return b64url_encode(value.to_bytes((value.bit_length() + 7) // 8, "big"))


class IdentityProvider:
    """Makes a signing key and issues assertions (JWTs) with it."""

    def __init__(self, issuer: str, *, algorithm: str = "ES256", kid: str | None = None) -> None:
        if algorithm not in ("ES256", "RS256"):
            raise ValueError("algorithm is ES256 or RS256")
        self.issuer = issuer
        self.algorithm = algorithm
        self.kid = kid or secrets.token_hex(8)
        self._key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = (
            ec.generate_private_key(ec.SECP256R1())
            if algorithm == "ES256"
            else rsa.generate_private_key(public_exponent=65537, key_size=2048)
        )

    @property
    def domain(self) -> str:
        """The issuer's host, the domain of the `user://` URLs it vouches for."""
        return parse_address(self.issuer).domain

    def jwk(self) -> dict[str, Any]:
        """The public key as a JWK."""
        public = self._key.public_key()
        if isinstance(public, ec.EllipticCurvePublicKey):
            numbers = public.public_numbers()
            return {
                "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
                "x": b64url_encode(numbers.x.to_bytes(32, "big")),
                "y": b64url_encode(numbers.y.to_bytes(32, "big")),
            }  # fmt: skip
        rsa_numbers = public.public_numbers()
        return {
            "kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid,
            "n": _b64_int(rsa_numbers.n), "e": _b64_int(rsa_numbers.e),
        }  # fmt: skip

    def jwks(self) -> dict[str, Any]:
        """The provider's published keys: `{"keys": [jwk]}`."""
        return {"keys": [self.jwk()]}

    def write_jwks(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.jwks()))
        return path

    def sign(self, claims: dict[str, Any], *, header: dict[str, Any] | None = None) -> str:
        """A compact JWS over `claims` (tests pass odd headers to make bad assertions)."""
        head = {"alg": self.algorithm, "typ": "JWT", "kid": self.kid, **(header or {})}
        signed = ".".join(
            b64url_encode(json.dumps(part, separators=(",", ":")).encode())
            for part in (head, claims)
        )
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            r, s = decode_dss_signature(self._key.sign(signed.encode(), ec.ECDSA(hashes.SHA256())))
            signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        else:
            signature = self._key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signed}.{b64url_encode(signature)}"

    def assertion(
        self,
        subject: str,
        *,
        audience: str,
        name: str | None = None,
        username: str | None = None,
        ttl: float = 300,
        now: float | None = None,
        **claims: Any,
    ) -> str:
        """An assertion that `subject` (a `user://` URL) logged in, for `audience`."""
        issued = int(time.time() if now is None else now)
        body: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "iat": issued,
            "exp": int(issued + ttl),
        }
        if name is not None:
            body["name"] = name
        if username is not None:
            body["preferred_username"] = username
        return self.sign({**body, **claims})

    def identity(self, name: str, login: str, *, audience: str, ttl: float = 300) -> dict[str, Any]:
        """A reTHINK `body.identity` with a fresh assertion for `login` at this provider."""
        subject = user_url(self.domain, login)
        username = f"{login}@{self.domain}"
        return {
            "idp": self.issuer,
            "assertion": self.assertion(
                subject, audience=audience, name=name, username=username, ttl=ttl
            ),
            "userProfile": {"username": username, "userURL": subject, "name": name},
        }

    @contextlib.contextmanager
    def serve(self, host: str = "127.0.0.1") -> Iterator[str]:
        """Serve the JWKS over HTTP on a free port; yields its URL."""
        body = json.dumps(self.jwks()).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        server = ThreadingHTTPServer((host, 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://{host}:{server.server_address[1]}/jwks.json"
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)
