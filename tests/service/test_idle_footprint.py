"""What an idle Firefox-protocol connection keeps (issue 21: kB per idle connection).

A node holds hundreds of thousands of connections that said hello and wait: each one's
own Python objects are counted here, so an empty container created per connection
(an empty deque alone is 760 bytes) shows up as a failure, not in a benchmark later.
"""

from __future__ import annotations

import sys

import httpx

from security.test_ws_logs import session_of
from support.service import RunningService
from tidings.service.ws_session import WebSocketSession

# The session, its WebSocket and frame parser, and what they own; 3,800 bytes traced
# per connection before (1,850 after), ~1,000 of it uvloop's transport. Here: 3,104 bytes
# before, 600 after (Python 3.11).
MAX_OWN_BYTES = 800


def own_bytes(session: WebSocketSession) -> int:
    """Bytes of the objects that belong to this connection alone."""
    connection = session.channel
    withdrawn = session._withdrawn  # type: ignore[attr-defined]
    owned: list[object] = [session, connection, connection.parser, withdrawn]  # type: ignore[attr-defined]
    for holder in (session, connection, withdrawn):
        names = [*getattr(type(holder), "__slots__", ()), *getattr(holder, "__dict__", ())]
        for name in names:
            value = getattr(holder, name, None)
            if isinstance(value, (set, dict, list)) or type(value).__name__ in ("deque", "Lock"):
                owned.append(value)
        owned.append(getattr(holder, "__dict__", None))
    return sum(sys.getsizeof(item) for item in owned if item is not None)


async def test_an_idle_connection_keeps_no_empty_containers(service: RunningService) -> None:
    agent = await service.agent()
    try:
        await agent.register()
        assert agent.uaid is not None
        session = session_of(service, agent.uaid)
        assert own_bytes(session) <= MAX_OWN_BYTES, own_bytes(session)
    finally:
        await agent.close()


async def test_containers_go_once_a_message_is_delivered_and_acked(
    service: RunningService,
) -> None:
    """They are created while needed (the send lock, the queued frames) and dropped after,
    except the bounded ids of what was sent and acknowledged."""
    agent = await service.agent()
    try:
        registration = await agent.register()
        assert agent.uaid is not None
        session = session_of(service, agent.uaid)
        async with httpx.AsyncClient() as client:
            response = await client.post(registration.endpoint, headers={"ttl": "60"})
            assert response.status_code == 201
        frame = await agent.expect("notification")
        await agent.ack(frame)
        await agent.send({"messageType": "ping"})
        await agent.receive()  # the ping's answer: the ack before it was handled
        assert session._send_lock is None  # type: ignore[attr-defined]
        assert session._tasks is None  # type: ignore[attr-defined]
        assert session.channel._inbox is None  # type: ignore[attr-defined]
        assert frame["version"] in session._acked  # type: ignore[attr-defined]
    finally:
        await agent.close()
