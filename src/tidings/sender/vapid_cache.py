"""One VAPID token per push-service origin, signed once and renewed before it expires."""

from __future__ import annotations

import time
from collections.abc import Callable

from tidings.webpush import VapidHeaders, VapidKey, sign_vapid, vapid_audience

__all__ = ["VapidTokenCache"]


class VapidTokenCache:
    """Signs a VAPID JWT per origin and reuses it until `renew_before` seconds before expiry.

    Signing costs an ECDSA signature; pywebpush and web-push pay it on every message.
    A push service verifies the same token over and over, and may cache that too.
    """

    def __init__(
        self,
        key: VapidKey,
        subject: str,
        *,
        expires_in: int = 12 * 3600,
        renew_before: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(subject, str) or not subject.startswith(("mailto:", "https:")):
            raise ValueError(
                f"VAPID subject must be a mailto: or https: URL (a contact for the push "
                f"service operator), got {subject!r}"
            )
        if not 60 <= expires_in <= 24 * 3600:
            raise ValueError(f"VAPID expires_in must be 60..86400 seconds, got {expires_in}")
        self.key = key
        self.subject = subject
        self.expires_in = expires_in
        self.renew_before = renew_before if renew_before is not None else min(3600, expires_in // 4)
        self._clock = clock
        self._tokens: dict[str, VapidHeaders] = {}
        self.signatures = 0
        """How many tokens were signed (for tests and metrics)."""

    def for_origin(self, origin: str) -> VapidHeaders:
        """The current token for an origin (`scheme://host[:port]`), signing when needed."""
        token = self._tokens.get(origin)
        now = self._clock()
        if token is None or now >= token.expires_at - self.renew_before:
            token = sign_vapid(self.key, origin, self.subject, expires_in=self.expires_in, now=now)
            self._tokens[origin] = token
            self.signatures += 1
        return token

    def for_endpoint(self, endpoint: str) -> VapidHeaders:
        """The current token for the origin of a push endpoint URL."""
        return self.for_origin(vapid_audience(endpoint))
