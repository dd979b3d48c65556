"""Subscriptions and user agents: RFC 8030 subscribe, WebSocket register, redelivery."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from dataclasses import dataclass

from tidings.service.errors import Errno, ServiceError
from tidings.service.logs import redact_uaid
from tidings.service.service_base import SET_PATH, SUBSCRIPTION_PATH, ServiceBase, store_unavailable
from tidings.service.store import (
    StoredMessage,
    StoreUnavailable,
    SubscriptionRecord,
    TooManySubscriptions,
)
from tidings.service.store_retry import retry_read
from tidings.service.tokens import EndpointRef, TokenError, vapid_key_hash

__all__ = ["NewSubscription", "RegistrationError", "SubscriptionManagement", "new_uaid"]

log = logging.getLogger("tidings.service")


@dataclass(frozen=True, slots=True)
class NewSubscription:
    """The answer to an RFC 8030 subscribe: the three URLs of section 4."""

    subscription_url: str  # Location: what the user agent monitors and deletes
    push_url: str  # rel urn:ietf:params:push: what application servers post to
    set_url: str  # rel urn:ietf:params:push:set: monitor every subscription of the set


class RegistrationError(Exception):
    """A `register` the service refuses; `status` goes into the reply."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def new_uaid() -> str:
    """A fresh user agent id: 128 random bits, 32 hex digits."""
    return secrets.token_hex(16)


class SubscriptionManagement(ServiceBase):
    """Making, finding and removing subscriptions; what is stored for a user agent."""

    async def subscribe(self, set_token: str | None, vapid_key: bytes | None) -> NewSubscription:
        """Create a subscription, in a new set or in the set `set_token` names."""
        if set_token is None:
            uaid = new_uaid()
        else:
            try:
                uaid = self.sealer.open_set(set_token)
            except TokenError:
                raise ServiceError(
                    400, Errno.BAD_SET, "the Link names no subscription set of this service"
                ) from None
            if not await self.store.has_user_agent(uaid):
                raise ServiceError(400, Errno.BAD_SET, "that subscription set no longer exists")
        channel_id = str(uuid.uuid4())
        try:
            push_url = await self.register(uaid, channel_id, vapid_key)
        except RegistrationError as exc:
            raise ServiceError(exc.status, Errno.TOO_MANY_SUBSCRIPTIONS, str(exc)) from None
        except StoreUnavailable as exc:
            raise store_unavailable(exc) from None
        origin = self.config.origin
        return NewSubscription(
            subscription_url=origin
            + SUBSCRIPTION_PATH
            + self.sealer.seal_subscription(uaid, channel_id),
            push_url=push_url,
            set_url=origin + SET_PATH + self.sealer.seal_set(uaid),
        )

    async def resolve_uaid(self, offered: str | None) -> str:
        """Keep a known user agent id; give anyone else a new one."""
        # A hello is what makes a user agent "seen" (user_agent_expiry).
        if offered is not None and await self.store.touch_user_agent(offered, time.time()):
            return offered
        return new_uaid()

    async def register(self, uaid: str, channel_id: str, key: bytes | None) -> str:
        """Create (or return) a subscription and its push endpoint URL."""
        vapid_hash = None if key is None else vapid_key_hash(key)
        await self.store.add_user_agent(uaid, time.time())
        try:
            # The store counts and inserts atomically: concurrent registers cannot
            # pass the cap.
            record = await self.store.add_subscription(
                SubscriptionRecord(uaid, channel_id, vapid_hash, time.time()),
                max_per_user_agent=self.config.max_subscriptions_per_user_agent,
            )
        except TooManySubscriptions:
            raise RegistrationError(429, "too many subscriptions for this user agent") from None
        if record.vapid_hash != vapid_hash:
            raise RegistrationError(409, "channelID is registered with another key")
        return self.endpoint_url(EndpointRef(uaid, channel_id, vapid_hash))

    async def unregister(self, uaid: str, channel_id: str) -> None:
        """Delete a subscription and its messages; later pushes get 410."""
        await self.store.delete_subscription(uaid, channel_id)

    async def pending(self, uaid: str) -> list[StoredMessage]:
        """What is stored for a user agent, oldest first."""
        return await self.store.pending_messages(
            uaid, time.time(), self.config.max_messages_per_user_agent
        )

    async def redeliver(self, uaid: str, since: float = 0.0) -> None:
        """Offer a connected user agent its stored messages (created at `since` or later)
        again: the cluster bus asks when live deliveries may have been missed."""
        if not self.hub.is_connected(uaid):
            return
        try:
            messages = await self.pending(uaid)
        except StoreUnavailable as exc:
            log.warning("cannot load stored messages for %s: %s", redact_uaid(uaid), exc)
            # Tried again in a task: the bus listener that asked must not wait out an
            # outage, and the messages must not wait for the agent's next hello.
            self._redeliver_later(uaid, since)
            return
        self._offer_since(messages, since)

    def _offer_since(self, messages: list[StoredMessage], since: float) -> None:
        for message in messages:
            if message.created_at >= since:
                self.hub.offer(message)

    def _redeliver_later(self, uaid: str, since: float) -> None:
        """One retry task per user agent at most (so bounded by the connected agents),
        asked for the earliest `since` of the redeliveries that failed meanwhile."""
        wanted = self._redeliveries.get(uaid)
        self._redeliveries[uaid] = since if wanted is None else min(wanted, since)
        if wanted is None:
            task = asyncio.ensure_future(self._redeliver_retry(uaid))
            self._redelivery_tasks.add(task)
            task.add_done_callback(self._redelivery_tasks.discard)

    async def _redeliver_retry(self, uaid: str) -> None:
        async def read() -> list[StoredMessage] | None:
            return await self.pending(uaid) if self.hub.is_connected(uaid) else None

        try:
            messages = await retry_read(read)
        except StoreUnavailable as exc:
            log.warning(
                "store still unavailable for %s: %s; its stored messages wait for its next "
                "connection",
                redact_uaid(uaid),
                exc,
            )
            messages = None
        finally:
            since = self._redeliveries.pop(uaid, 0.0)
        if messages is not None and self.hub.is_connected(uaid):
            self._offer_since(messages, since)
