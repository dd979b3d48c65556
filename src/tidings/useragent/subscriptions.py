"""The user agent's subscriptions: stored ones with their keys loaded, made and dropped.

`SubscriptionBook` answers "which subscription is this handle?" for every delivery
(keeping each one's private key loaded, as deriving it costs ~0.1 ms), makes new
subscriptions at the service with fresh keys, and remembers the unsubscriptions made
while offline so they reach the service on the next connection. Waiting for a
connection and taking turns belongs to the agent.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

from tidings.useragent.api import PushAgent, PushSubscription
from tidings.useragent.errors import InvalidStateError
from tidings.useragent.state import StateStore, StoredSubscription
from tidings.useragent.transport import Connection, ConnectionClosed
from tidings.webpush import b64url_decode, b64url_encode, load_p256_private_key

__all__ = ["ActiveSubscription", "SubscriptionBook", "padded_key"]


@dataclass(slots=True)
class ActiveSubscription:
    """A subscription with its key objects loaded (deriving a key costs ~0.1 ms)."""

    stored: StoredSubscription
    private_key: ec.EllipticCurvePrivateKey
    subscription: PushSubscription


def padded_key(key: str) -> str:
    """The application server key in base64url with padding, as Firefox sends it."""
    raw = b64url_decode(key)
    text = b64url_encode(raw)
    return text + "=" * (-len(text) % 4)


class SubscriptionBook:
    """The subscriptions of one user agent's state file, as `PushSubscription`s of `agent`."""

    def __init__(self, state: StateStore, agent: PushAgent) -> None:
        self._state = state
        self._agent = agent
        self._active: dict[str, ActiveSubscription] = {}
        self._pending_unsubscribes: set[str] = set()  # handles to unregister once connected

    def activate(self, stored: StoredSubscription) -> ActiveSubscription:
        active = self._active.get(stored.handle)
        if active is None or active.stored != stored:
            active = ActiveSubscription(
                stored,
                load_p256_private_key(stored.private_key),
                PushSubscription(stored, self._agent),
            )
            self._active[stored.handle] = active
        return active

    def lookup(self, handle: str) -> ActiveSubscription | None:
        active = self._active.get(handle)
        if active is not None:
            return active
        # Another process (`tidings agent subscribe`) may have added it to the state; an
        # RFC 8030 connection names a subscription it did not make by its endpoint.
        stored = self._state.subscription_by_handle(handle)
        if stored is None:
            stored = self._state.subscription_by_endpoint(handle)
        return None if stored is None else self.activate(stored)

    def of(self, scope: str) -> PushSubscription | None:
        """The subscription of `scope`, or None."""
        stored = self._state.get_subscription(scope)
        return None if stored is None else self.activate(stored).subscription

    def existing(self, scope: str, key: str | None) -> PushSubscription | None:
        stored = self._state.get_subscription(scope)
        if stored is None:
            return None
        if stored.application_server_key != key:
            raise InvalidStateError(
                f"scope {scope!r} is already subscribed with a different application server "
                "key; unsubscribe first to subscribe with another key"
            )
        return self.activate(stored).subscription

    async def create(
        self, conn: Connection, scope: str, user_visible_only: bool, key: str | None
    ) -> StoredSubscription:
        """Subscribe at the service with fresh keys and store the result."""
        made = await conn.subscribe(str(uuid.uuid4()), None if key is None else padded_key(key))
        private_key = ec.generate_private_key(ec.SECP256R1())
        stored = StoredSubscription(
            scope=scope,
            handle=made.handle,
            endpoint=made.endpoint,
            private_key=private_key.private_numbers().private_value.to_bytes(32, "big"),
            auth=os.urandom(16),
            application_server_key=key,
            user_visible_only=user_visible_only,
            expiration_time=None,
            created_at=time.time(),
        )
        self._state.put_subscription(stored)
        return stored

    def deactivate(self, handle: str) -> None:
        """Drop the loaded keys of `handle` (it was deleted or is being renewed)."""
        self._active.pop(handle, None)

    def forget(self, scope: str, handle: str) -> bool:
        """Delete subscription `handle` of `scope` here; False if it is not the scope's one."""
        stored = self._state.get_subscription(scope)
        if stored is None or stored.handle != handle:
            return False
        self._state.delete_subscription(scope)
        self._active.pop(handle, None)
        return True

    async def unsubscribe_at_service(self, conn: Connection | None, handle: str) -> None:
        """Delete `handle` at the service now, or on the next connection when offline."""
        if conn is None:
            # Not connected now: tell the service as soon as the connection is back.
            self._pending_unsubscribes.add(handle)
            return
        try:
            await conn.unsubscribe(handle)
        except ConnectionClosed:
            self._pending_unsubscribes.add(handle)

    async def send_pending_unsubscribes(self, conn: Connection) -> None:
        """Unsubscriptions made while offline reach the service on the next connection."""
        for handle in list(self._pending_unsubscribes):
            await conn.unsubscribe(handle)
            self._pending_unsubscribes.discard(handle)
