"""From a delivery to its registration's handler, and the ack when the handler is done.

`Deliveries` takes each delivery the connection hands over: a message for no known
subscription is refused, a duplicate is acked again with the code it got (or ignored
while its handler still runs), a message that does not decrypt is acked with 101, and
a new one becomes a `PushEvent` for its scope's `push` handler, run as a task (at most
`max_concurrent_events` at once) and acked once the handler and all it passed to
`wait_until` are done. Deliveries and `pushsubscriptionchange` events for a scope
whose handlers are not attached yet are held until `register` attaches them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from tidings.useragent.api import Registration
from tidings.useragent.dispatch import DeliveryTracker, Verdict, open_message
from tidings.useragent.events import (
    PushEvent,
    PushMessageData,
    PushSubscriptionChangeEvent,
    SubscriptionChangeHandler,
    run_extendable,
)
from tidings.useragent.protocol import AckCode
from tidings.useragent.state import StateStore
from tidings.useragent.subscriptions import SubscriptionBook
from tidings.useragent.transport import Acknowledgement, Connection, ConnectionClosed, Delivery
from tidings.webpush import DecryptionError

__all__ = ["MAX_HELD_PER_SCOPE", "Deliveries"]

log = logging.getLogger("tidings.useragent")

MAX_HELD_PER_SCOPE = 1000
"""Deliveries kept for a scope whose handler is not attached yet; more wait for a redelivery."""

_Held = Delivery | PushSubscriptionChangeEvent


class Deliveries:
    """Routes deliveries and subscription changes to handlers; acks what was handled.

    `registration_for(scope)` finds a scope's registration (None: not attached yet),
    `connection()` is the open connection (None while offline), and `spawn` runs a
    coroutine as a task the agent waits for when it closes.
    """

    def __init__(
        self,
        state: StateStore,
        subscriptions: SubscriptionBook,
        *,
        registration_for: Callable[[str], Registration | None],
        connection: Callable[[], Connection | None],
        spawn: Callable[[Awaitable[Any]], None],
        max_concurrent_events: int,
    ) -> None:
        self._subscriptions = subscriptions
        self._registration_for = registration_for
        self._connection = connection
        self._spawn = spawn
        self._held: dict[str, list[_Held]] = {}
        self._tracker = DeliveryTracker(state)
        self._slots = asyncio.Semaphore(max_concurrent_events)

    async def on_delivery(self, delivery: Delivery) -> None:
        active = self._subscriptions.lookup(delivery.handle)
        if active is None:
            log.info("message for unknown subscription %s: refused", delivery.handle)
            self._spawn(self._refuse(delivery))
            return
        decision = self._tracker.classify(delivery.message_id)
        if decision.verdict is Verdict.IN_PROGRESS:
            return
        if decision.verdict is Verdict.HANDLED:
            log.debug("duplicate delivery of %s: acked again", delivery.message_id)
            self._spawn(self._ack(delivery, decision.code))
            return
        try:
            plaintext = open_message(delivery, active.private_key, active.stored.auth)
        except DecryptionError as exc:
            log.warning(
                "message %s does not decrypt (%s): acked with 101", delivery.message_id, exc
            )
            self._tracker.finish(delivery.message_id, AckCode.DECRYPTION_FAILED)
            self._spawn(self._ack(delivery, AckCode.DECRYPTION_FAILED))
            return
        scope = active.stored.scope
        registration = self._registration_for(scope)
        if registration is None:
            self._tracker.abandon(delivery.message_id)
            self._hold(scope, delivery)
            return
        event = PushEvent(
            None if plaintext is None else PushMessageData(plaintext),
            scope=scope,
            message_id=delivery.message_id,
            subscription=active.subscription,
        )
        await self._slots.acquire()
        self._spawn(self._dispatch(registration, delivery, event))

    async def _dispatch(
        self, registration: Registration, delivery: Delivery, event: PushEvent
    ) -> None:
        code = AckCode.DELIVERED
        try:
            if registration.on_push is not None:
                await run_extendable(registration.on_push, event)
        except asyncio.CancelledError:
            self._tracker.abandon(delivery.message_id)
            raise
        except Exception:
            log.exception("push handler of %s failed on %s", registration.scope, event.message_id)
            code = AckCode.OTHER_ERROR
        finally:
            self._slots.release()
        self._tracker.finish(delivery.message_id, code)
        await self._ack(delivery, code)

    async def _ack(self, delivery: Delivery, code: int) -> None:
        conn = self._connection()
        if conn is None:
            return  # the service redelivers; the recorded code answers it then
        with contextlib.suppress(ConnectionClosed):
            await conn.acknowledge([Acknowledgement(delivery.handle, delivery.message_id, code)])

    async def _refuse(self, delivery: Delivery) -> None:
        await self._ack(delivery, AckCode.OTHER_ERROR)
        conn = self._connection()
        if conn is not None:
            with contextlib.suppress(ConnectionClosed):
                await conn.unsubscribe(delivery.handle)

    def _hold(self, scope: str, item: _Held) -> None:
        held = self._held.setdefault(scope, [])
        if len(held) < MAX_HELD_PER_SCOPE:
            held.append(item)

    async def release_held(self, registration: Registration) -> None:
        """Hand what arrived for the scope before its handlers were attached."""
        for item in self._held.pop(registration.scope, []):
            if isinstance(item, Delivery):
                await self.on_delivery(item)
            else:
                self.fire_change(item)

    def drop_held(self, scope: str) -> None:
        """Forget what is held for `scope` (it was unregistered)."""
        self._held.pop(scope, None)

    def fire_change(self, event: PushSubscriptionChangeEvent) -> None:
        registration = self._registration_for(event.scope)
        if registration is None:
            self._hold(event.scope, event)
            return
        handler = registration.on_subscription_change
        if handler is not None:
            self._spawn(self._run_change(handler, event))

    async def _run_change(
        self, handler: SubscriptionChangeHandler, event: PushSubscriptionChangeEvent
    ) -> None:
        try:
            await run_extendable(handler, event)
        except Exception:
            log.exception("pushsubscriptionchange handler of %s failed", event.scope)
