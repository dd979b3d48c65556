"""An in-memory transport for unit tests of the user agent's logic (no sockets).

The end-to-end tests use the real service; this one lets a test deliver the same
message twice or watch every ack, which a real service does not do on demand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from tidings.useragent.transport import (
    Acknowledgement,
    ConnectionClosed,
    Delivery,
    SubscriptionLost,
    TransportEvent,
    TransportSubscription,
)


class FakeConnection:
    def __init__(self, transport: FakeTransport, session_id: str) -> None:
        self.transport = transport
        self._session_id = session_id
        self.events: asyncio.Queue[TransportEvent | None] = asyncio.Queue()
        self.closed = False

    @property
    def session_id(self) -> str:
        return self._session_id

    async def subscribe(self, proposed_handle: str, key: str | None) -> TransportSubscription:
        self.transport.subscribed.append((proposed_handle, key))
        return TransportSubscription(proposed_handle, f"http://push.test/{proposed_handle}")

    async def unsubscribe(self, handle: str) -> None:
        self.transport.unsubscribed.append(handle)

    async def acknowledge(self, acks: Sequence[Acknowledgement]) -> None:
        self.transport.acks.extend(acks)
        self.transport.acked.set()

    async def next_event(self) -> TransportEvent:
        event = await self.events.get()
        if event is None:
            self.events.put_nowait(None)
            raise ConnectionClosed("fake closed")
        return event

    async def close(self) -> None:
        self.closed = True
        self.events.put_nowait(None)

    def deliver(self, event: Delivery | SubscriptionLost) -> None:
        self.events.put_nowait(event)


class FakeTransport:
    def __init__(self, session_ids: list[str] | None = None) -> None:
        self.session_ids = session_ids or ["u1"]
        self.connections: list[FakeConnection] = []
        self.subscribed: list[tuple[str, str | None]] = []
        self.unsubscribed: list[str] = []
        self.acks: list[Acknowledgement] = []
        self.acked = asyncio.Event()
        self.connected = asyncio.Event()

    async def connect(self, session_id: str | None, handles: Sequence[str]) -> FakeConnection:
        index = min(len(self.connections), len(self.session_ids) - 1)
        connection = FakeConnection(self, self.session_ids[index])
        self.connections.append(connection)
        self.connected.set()
        return connection

    @property
    def current(self) -> FakeConnection:
        return self.connections[-1]

    async def wait_acks(self, count: int, timeout: float = 5) -> list[Acknowledgement]:
        async with asyncio.timeout(timeout):
            while len(self.acks) < count:
                self.acked.clear()
                await self.acked.wait()
        return self.acks
