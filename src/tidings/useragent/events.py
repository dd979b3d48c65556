"""The service worker events: `push` and `pushsubscriptionchange`, and their data.

Both are extendable events: a handler may call `wait_until(awaitable)` and the user
agent treats the event as finished only once the handler returned and every awaitable
it was given completed. For a push event that is when the message is acknowledged.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from tidings.useragent.errors import InvalidStateError
from tidings.useragent.state import StoredRegistration

if TYPE_CHECKING:
    from tidings.useragent.api import PushSubscription

__all__ = [
    "ExtendableEvent",
    "Handlers",
    "HandlersFor",
    "PushEvent",
    "PushHandler",
    "PushMessageData",
    "PushSubscriptionChangeEvent",
    "SubscriptionChangeHandler",
    "run_extendable",
]


class PushMessageData:
    """The decrypted payload of a push message (the W3C `PushMessageData`)."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)

    def bytes(self) -> bytes:
        """The payload as bytes."""
        return self._data

    def array_buffer(self) -> memoryview:
        """The payload as a read-only buffer (the `ArrayBuffer` of the Push API)."""
        return memoryview(self._data)

    def text(self) -> str:
        """The payload decoded as UTF-8 (invalid sequences become U+FFFD, as in browsers).

        WHATWG "UTF-8 decode", which the Push API names, drops one leading byte order
        mark: "utf-8-sig" does exactly that.
        """
        return self._data.decode("utf-8-sig", errors="replace")

    def json(self) -> Any:
        """The payload parsed as JSON (a leading BOM skipped); ValueError when it is not JSON."""
        return json.loads(self.text())

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"PushMessageData({len(self._data)} bytes)"


class ExtendableEvent:
    """An event whose end a handler can push back with `wait_until`."""

    def __init__(self) -> None:
        self._extensions: list[asyncio.Future[Any]] = []
        self._finished = False

    def wait_until(self, awaitable: Awaitable[Any]) -> None:
        """Keep the event alive until `awaitable` completes; it starts running now.

        Call it while the handler runs (or from something it already waits on). If the
        awaitable raises, the event counts as failed (a push is acked with code 102).
        """
        if self._finished:
            if inspect.iscoroutine(awaitable):
                awaitable.close()  # never started: no "never awaited" warning
            raise InvalidStateError("wait_until() called after the event finished")
        self._extensions.append(asyncio.ensure_future(awaitable))


class PushEvent(ExtendableEvent):
    """A push message for a registration's scope (the W3C `PushEvent`)."""

    def __init__(
        self,
        data: PushMessageData | None,
        *,
        scope: str,
        message_id: str,
        subscription: PushSubscription,
    ) -> None:
        super().__init__()
        self.data = data
        """The payload, or None for a push without a body."""
        self.scope = scope
        self.message_id = message_id
        """The service's id of this message (the same on a redelivery)."""
        self.subscription = subscription

    def __repr__(self) -> str:
        return f"PushEvent(scope={self.scope!r}, message_id={self.message_id!r}, {self.data!r})"


class PushSubscriptionChangeEvent(ExtendableEvent):
    """The push service dropped a subscription; `new_subscription` replaces it if not None."""

    def __init__(
        self,
        old_subscription: PushSubscription | None,
        new_subscription: PushSubscription | None,
        *,
        scope: str,
    ) -> None:
        super().__init__()
        self.old_subscription = old_subscription
        self.new_subscription = new_subscription
        self.scope = scope

    def __repr__(self) -> str:
        return f"PushSubscriptionChangeEvent(scope={self.scope!r})"


PushHandler = Callable[[PushEvent], Awaitable[None] | None]
"""A `push` handler: a function or coroutine function taking the event."""

SubscriptionChangeHandler = Callable[[PushSubscriptionChangeEvent], Awaitable[None] | None]
"""A `pushsubscriptionchange` handler."""


@dataclass(frozen=True, slots=True)
class Handlers:
    """The handlers of a registration, as supplied by a `handlers_for` callback."""

    on_push: PushHandler | None = None
    on_subscription_change: SubscriptionChangeHandler | None = None


HandlersFor = Callable[[StoredRegistration], Handlers | None]
"""Given a stored registration nobody attached in this process, its handlers (or None)."""


E = TypeVar("E", bound=ExtendableEvent)


async def run_extendable(handler: Callable[[E], Awaitable[None] | None], event: E) -> None:
    """Run `handler(event)` and everything it passed to `wait_until`; re-raise a failure.

    Every extension is awaited even when one fails, so none is left running unseen.
    """
    failure: BaseException | None = None
    try:
        result = handler(event)
        if result is not None and hasattr(result, "__await__"):
            await result
    except Exception as exc:
        failure = exc
    done = 0
    # Extensions may add extensions, so loop until none is left.
    while done < len(event._extensions):
        batch = event._extensions[done:]
        done = len(event._extensions)
        for outcome in await asyncio.gather(*batch, return_exceptions=True):
            if isinstance(outcome, BaseException) and failure is None:
                failure = outcome
    event._finished = True
    if failure is not None:
        raise failure
