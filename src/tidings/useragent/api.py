"""The W3C Push API objects: registration, push manager, subscription.

They mirror what a web page sees (`registration.pushManager.subscribe(...)`,
`subscription.toJSON()`), with Python names; the work is done by the `UserAgent` that
made them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

from tidings.useragent.dispatch import SUPPORTED_CONTENT_ENCODINGS
from tidings.useragent.errors import InvalidStateError
from tidings.useragent.events import PushHandler, SubscriptionChangeHandler
from tidings.useragent.state import StoredSubscription
from tidings.webpush import (
    InvalidKeyError,
    Subscription,
    b64url_decode,
    b64url_encode,
    load_p256_private_key,
    load_p256_public_key,
    public_key_bytes,
)

__all__ = [
    "PermissionState",
    "PushAgent",
    "PushManager",
    "PushSubscription",
    "PushSubscriptionOptions",
    "Registration",
    "normalize_application_server_key",
]

PermissionState = Literal["granted", "denied", "prompt"]


class PushAgent(Protocol):
    """What the Push API objects ask of the user agent that made them (`UserAgent`).

    The objects hold the agent through this protocol, so this module does not depend on
    the agent's module, and the calls they make are the agent's public ones.
    """

    async def subscribe_scope(
        self, scope: str, user_visible_only: bool, application_server_key: str | None
    ) -> PushSubscription:
        """The scope's subscription, made at the service when there is none."""
        ...

    def subscription_of(self, scope: str) -> PushSubscription | None:
        """The scope's subscription, or None."""
        ...

    async def unsubscribe_scope(self, scope: str, handle: str) -> bool:
        """Delete the subscription `handle` of `scope`; False if it was already gone."""
        ...

    async def unregister_scope(self, scope: str) -> bool:
        """Unsubscribe and forget `scope`; False if it was not registered."""
        ...


def normalize_application_server_key(key: str | bytes | None) -> str | None:
    """A VAPID public key as unpadded base64url, checked to be a P-256 point."""
    if key is None:
        return None
    if isinstance(key, str):
        text = key.strip().replace("+", "-").replace("/", "_")
        try:
            raw = b64url_decode(text)
        except ValueError as exc:
            raise InvalidKeyError(f"application_server_key is not base64url: {exc}") from None
    else:
        raw = bytes(key)
    load_p256_public_key(raw)  # raises InvalidKeyError
    return b64url_encode(raw)


@dataclass(frozen=True, slots=True)
class PushSubscriptionOptions:
    """The options a subscription was made with."""

    user_visible_only: bool
    application_server_key: bytes | None
    """The raw 65-byte key, or None for an unrestricted subscription."""


class PushSubscription:
    """A push subscription (the W3C `PushSubscription`): hand `to_json()` to a sender."""

    def __init__(self, stored: StoredSubscription, agent: PushAgent | None = None) -> None:
        self._stored = stored
        self._agent = agent
        self._public_key = public_key_bytes(load_p256_private_key(stored.private_key))

    @property
    def scope(self) -> str:
        """The registration this subscription belongs to."""
        return self._stored.scope

    @property
    def endpoint(self) -> str:
        """The push resource URL an application server POSTs to."""
        return self._stored.endpoint

    @property
    def expiration_time(self) -> float | None:
        """When the subscription expires (ms since the epoch), or None (never)."""
        return self._stored.expiration_time

    @property
    def options(self) -> PushSubscriptionOptions:
        """The options given to `subscribe`."""
        key = self._stored.application_server_key
        return PushSubscriptionOptions(
            self._stored.user_visible_only, None if key is None else b64url_decode(key)
        )

    def get_key(self, name: Literal["p256dh", "auth"]) -> bytes | None:
        """The user agent's public key (65 bytes) or auth secret (16 bytes)."""
        if name == "p256dh":
            return self._public_key
        if name == "auth":
            return self._stored.auth
        return None

    def to_json(self) -> dict[str, Any]:
        """Exactly the browser's `toJSON()`: endpoint, expirationTime, keys in base64url."""
        return {
            "endpoint": self.endpoint,
            "expirationTime": self.expiration_time,
            "keys": {
                "p256dh": b64url_encode(self._public_key),
                "auth": b64url_encode(self._stored.auth),
            },
        }

    def to_subscription(self) -> Subscription:
        """The same subscription as `tidings.webpush.Subscription`, for Tidings' sender."""
        return Subscription(
            self.endpoint, self._public_key, self._stored.auth, self.expiration_time
        )

    async def unsubscribe(self) -> bool:
        """Delete the subscription at the service and here; False if it was already gone."""
        if self._agent is None:
            raise InvalidStateError("this subscription is not attached to a user agent")
        return await self._agent.unsubscribe_scope(self.scope, self._stored.handle)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PushSubscription):
            return NotImplemented
        return self._stored.handle == other._stored.handle and self.endpoint == other.endpoint

    def __hash__(self) -> int:
        return hash((self._stored.handle, self.endpoint))

    def __repr__(self) -> str:
        return f"PushSubscription(scope={self.scope!r}, endpoint={self.endpoint[:48]!r}...)"


class PushManager:
    """Subscribing a registration to push (the W3C `PushManager`)."""

    supported_content_encodings: tuple[str, ...] = SUPPORTED_CONTENT_ENCODINGS
    """The content codings this user agent decrypts."""

    def __init__(self, registration: Registration) -> None:
        self._registration = registration

    async def subscribe(
        self,
        *,
        user_visible_only: bool = True,
        application_server_key: str | bytes | None = None,
    ) -> PushSubscription:
        """The registration's subscription, created at the service if there is none.

        With the same key as the existing subscription it is returned as is; with a
        different key this raises `InvalidStateError`, as browsers do. Waits for a
        connection to the service when a new subscription is needed.
        """
        key = normalize_application_server_key(application_server_key)
        agent = self._registration._agent
        return await agent.subscribe_scope(self._registration.scope, user_visible_only, key)

    async def get_subscription(self) -> PushSubscription | None:
        """The registration's subscription, or None."""
        return self._registration._agent.subscription_of(self._registration.scope)

    async def permission_state(
        self,
        *,
        user_visible_only: bool = True,
        application_server_key: str | bytes | None = None,
    ) -> PermissionState:
        """Always "granted": a program that runs a user agent has already consented."""
        normalize_application_server_key(application_server_key)
        return "granted"


class Registration:
    """A scope served by the user agent: the role of a service worker registration."""

    def __init__(
        self,
        agent: PushAgent,
        scope: str,
        on_push: PushHandler | None = None,
        on_subscription_change: SubscriptionChangeHandler | None = None,
    ) -> None:
        self._agent = agent
        self.scope = scope
        self.on_push = on_push
        """Called with a `PushEvent` for each message (may be a coroutine function)."""
        self.on_subscription_change = on_subscription_change
        """Called with a `PushSubscriptionChangeEvent` when the service drops the subscription."""
        self.push_manager = PushManager(self)

    async def unregister(self) -> bool:
        """Unsubscribe and forget this scope; False if it was not registered."""
        return await self._agent.unregister_scope(self.scope)

    def __repr__(self) -> str:
        return f"Registration(scope={self.scope!r})"
