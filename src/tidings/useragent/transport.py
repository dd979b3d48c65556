"""The seam between the user agent and a push protocol.

A `Transport` opens `Connection`s to a push service; the user agent keeps at most one
open, and opens a new one (with backoff) when it dies. A connection subscribes,
unsubscribes, acknowledges, and hands over what the service sends as `Delivery` and
`SubscriptionLost` events. Everything protocol-specific hides behind these names:

- Firefox's WebSocket protocol (`WebSocketTransport`): the session id is the `uaid`
  of `hello`, a subscription's handle is its `channelID`, an ack is an `ack` frame.
- RFC 8030 over HTTP/2 (`Http2Transport`): the session id is the subscription set
  URL, `subscribe` is a POST to the subscribe resource (into the set), the handle is
  the push message subscription URL (`Location`), connecting means one GET of the set
  whose messages arrive as server pushes, an ack is a DELETE of the message's URL (its
  `message_id`), and a set the service no longer knows is an empty session id. A
  delivery for a subscription the connection did not make names it by its push
  resource URL (its endpoint).

Handles and session ids are opaque strings the user agent stores and gives back.

A connection keeps what it received for the user agent in an `EventQueue`: at most
MAX_QUEUED_EVENTS; past that its reader waits, so the connection stops reading and the
service's writes back up (nothing received is dropped: messages are unacknowledged).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from tidings.http2.limits import ReadPause

__all__ = [
    "MAX_QUEUED_EVENTS",
    "Acknowledgement",
    "Connection",
    "ConnectionClosed",
    "Delivery",
    "EventQueue",
    "SubscribeRefused",
    "SubscriptionLost",
    "SupportsUrgency",
    "Transport",
    "TransportEvent",
    "TransportSubscription",
]


class ConnectionClosed(Exception):
    """The connection is gone (closed by either side, or found dead by a missed ping)."""


class SubscribeRefused(Exception):
    """The service answered a subscribe with an error `status`."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True, slots=True)
class TransportSubscription:
    """A subscription as the service made it: an opaque handle and the push endpoint."""

    handle: str
    endpoint: str


@dataclass(frozen=True, slots=True)
class Delivery:
    """A push message for subscription `handle`, still encrypted."""

    handle: str
    message_id: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SubscriptionLost:
    """The service says subscription `handle` no longer exists."""

    handle: str


TransportEvent = Delivery | SubscriptionLost

# Events received and not yet taken by the user agent, per connection: its handlers run
# max_concurrent_events at a time, so 64 is a burst for them, and a service that pushes
# faster than they run meets a connection that stops reading instead of a growing queue.
MAX_QUEUED_EVENTS = 64


class EventQueue:
    """A connection's events for the user agent, at most `bound` of them.

    `put` waits for room (the reader is paused meanwhile: `reading`); `get` hands
    over what was received, then raises ConnectionClosed once the queue is closed.
    """

    def __init__(self, bound: int = MAX_QUEUED_EVENTS) -> None:
        self.bound = bound
        self.reading = ReadPause()
        self._items: deque[TransportEvent] = deque()
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._closed: str | None = None

    def qsize(self) -> int:
        """How many events wait (as `asyncio.Queue.qsize`)."""
        return len(self._items)

    async def put(self, event: TransportEvent) -> None:
        """Queue `event` once there is room; dropped if the queue is closed (the
        service sends an unacknowledged message again on the next connection)."""
        while len(self._items) >= self.bound and self._closed is None:
            self.reading.pause()
            self._room.clear()
            await self._room.wait()
        if self._closed is None:
            self._items.append(event)
            self._ready.set()

    async def get(self) -> TransportEvent:
        """The next event; ConnectionClosed once closed and all before it were taken."""
        while not self._items:
            if self._closed is not None:
                raise ConnectionClosed(self._closed)
            self._ready.clear()
            await self._ready.wait()
        event = self._items.popleft()
        self._room.set()
        self.reading.resume()
        return event

    def close(self, reason: str) -> None:
        """No more events: `get` raises ConnectionClosed(reason) after those queued."""
        if self._closed is None:
            self._closed = reason or "connection closed"
        self._ready.set()
        self._room.set()
        self.reading.resume()


@dataclass(frozen=True, slots=True)
class Acknowledgement:
    """The user agent is done with a message: code 100 delivered, 101, 102 failures."""

    handle: str
    message_id: str
    code: int


class Connection(Protocol):
    """One open connection to the push service."""

    @property
    def session_id(self) -> str:
        """Who the service thinks this user agent is (the uaid), after connecting."""
        ...

    async def subscribe(
        self, proposed_handle: str, application_server_key: str | None
    ) -> TransportSubscription:
        """Create a subscription; raise SubscribeRefused when the service says no."""
        ...

    async def unsubscribe(self, handle: str) -> None:
        """Delete a subscription at the service."""
        ...

    async def acknowledge(self, acks: Sequence[Acknowledgement]) -> None:
        """Tell the service these messages are done with."""
        ...

    async def next_event(self) -> TransportEvent:
        """The next message or notice from the service; ConnectionClosed when it dies."""
        ...

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        ...


class Transport(Protocol):
    """Opens connections to one push service."""

    async def connect(self, session_id: str | None, handles: Sequence[str]) -> Connection:
        """Open a connection as `session_id` (None when new) monitoring `handles`."""
        ...


@runtime_checkable
class SupportsUrgency(Protocol):
    """A transport whose service can hold back less urgent messages (RFC 8030 5.3)."""

    @property
    def urgency(self) -> str | None:
        """The lowest urgency wanted now, or None for every message."""
        ...

    async def set_urgency(self, level: str | None) -> None:
        """Want messages of at least `level` from now on (None: all of them)."""
        ...
