"""VAPID checks for pushes (RFC 8292 section 4), with verified tokens cached.

An application server reuses one token for many pushes, and an ECDSA verification
costs far more than the rest of a push; a verified token is therefore remembered until
it expires, keyed by the exact header values.
"""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict
from collections.abc import Mapping

from tidings.service.errors import Errno, ServiceError
from tidings.service.tokens import vapid_key_hash
from tidings.webpush import VapidError, VerifiedVapid, verify_vapid
from tidings.webpush.aesgcm import parse_header_params

_VAPID_SCHEMES = ("vapid", "webpush", "bearer")  # RFC 8292, then the draft forms
_SIGN_HINT = "sign the request with VAPID (Authorization: vapid t=..., k=...)"


class VapidChecker:
    """Verifies push authorization against this service's origin, with a bounded cache."""

    def __init__(self, audience: str, *, cache_size: int = 10_000) -> None:
        self.audience = audience
        # A verified token with the hash of its key (what restricted endpoints carry).
        self._cache: OrderedDict[tuple[str, str], tuple[VerifiedVapid, bytes]] = OrderedDict()
        self._cache_size = cache_size

    def _verify(
        self, authorization: str, crypto_key: str, now: float
    ) -> tuple[VerifiedVapid, bytes]:
        # The draft forms put the key in Crypto-Key next to aesgcm's dh=, which changes
        # with every message: only the p256ecdsa= part names the token.
        key_part = parse_header_params(crypto_key).get("p256ecdsa", "") if crypto_key else ""
        cache_key = (authorization, key_part)
        cached = self._cache.get(cache_key)
        if cached is not None and cached[0].expires_at > now:
            return cached
        verified = verify_vapid(
            authorization, audience=self.audience, crypto_key=crypto_key or None, now=now
        )
        entry = self._cache[cache_key] = (verified, vapid_key_hash(verified.public_key))
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return entry

    def check(
        self, headers: Mapping[str, str], restricted_to: bytes | None
    ) -> VerifiedVapid | None:
        """`check_signed`, without the key's hash."""
        checked = self.check_signed(headers, restricted_to)
        return None if checked is None else checked[0]

    def check_signed(
        self, headers: Mapping[str, str], restricted_to: bytes | None
    ) -> tuple[VerifiedVapid, bytes] | None:
        """Check a push's VAPID headers; `restricted_to` is the subscription's key hash.

        A restricted subscription needs a valid token signed by its key: 401 when none is
        given, 403 when it is invalid or signed by another key. An unrestricted one
        checks a token only when one is given. An `Authorization` header that cannot be
        read (an unknown scheme, a token or key missing or not a JWT) is a 401 on any
        subscription, so a sender learns that its VAPID set-up is broken. Returns the
        verified token and the hash of its key (what a message status remembers), or
        None for an unsigned push.
        """
        authorization = headers.get("authorization", "").strip()
        if not authorization:
            if restricted_to is None:
                return None
            raise ServiceError(
                401,
                Errno.VAPID_MISSING,
                f"this subscription is restricted to an application server key: {_SIGN_HINT}",
                headers={"www-authenticate": "vapid"},
            )
        scheme = authorization.split(None, 1)[0].lower()
        if scheme not in _VAPID_SCHEMES:
            raise ServiceError(
                401,
                Errno.VAPID_MISSING,
                f"the Authorization scheme {scheme[:20]!r} is not VAPID: {_SIGN_HINT}, "
                "or send no Authorization header",
                headers={"www-authenticate": "vapid"},
            )
        try:
            verified, key_hash = self._verify(
                authorization, headers.get("crypto-key", ""), time.time()
            )
        except VapidError as exc:
            if exc.unreadable:
                raise ServiceError(
                    401,
                    Errno.VAPID_MISSING,
                    f"the Authorization header cannot be read: {exc}",
                    headers={"www-authenticate": "vapid"},
                ) from None
            raise ServiceError(403, Errno.VAPID_INVALID, f"invalid VAPID token: {exc}") from None
        # Constant time, like every comparison with a value taken from a token.
        if restricted_to is not None and not hmac.compare_digest(key_hash, restricted_to):
            raise ServiceError(
                403,
                Errno.VAPID_KEY_MISMATCH,
                "the VAPID key does not match the application server key of this subscription",
            )
        return verified, key_hash
