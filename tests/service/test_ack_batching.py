"""Acknowledgements: handled as they arrive, their deletes written together."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from support.service import RunningService
from tidings.service.ws_session import WebSocketSession


async def _pushed(service: RunningService, count: int) -> tuple[Any, list[dict[str, Any]]]:
    agent = await service.agent()
    registration = await agent.register()
    async with httpx.AsyncClient() as client:
        for n in range(count):
            response = await client.post(registration.endpoint, headers={"ttl": "60"})
            assert response.status_code == 201, n
    frames = [await agent.expect("notification") for _ in range(count)]
    return agent, frames


async def test_acks_arriving_together_are_deleted_in_one_store_call(
    service: RunningService,
) -> None:
    assert service.service is not None
    push_service = service.service
    agent, frames = await _pushed(service, 5)
    assert await push_service.store.count_messages() == 5
    calls: list[int] = []
    delete_messages = push_service.store.delete_messages

    async def counted(keys: Any) -> Any:
        calls.append(len(keys))
        return await delete_messages(keys)

    push_service.store.delete_messages = counted  # type: ignore[method-assign]
    # One ack frame acknowledging all five (as Firefox does after a reconnection).
    updates = [{"channelID": f["channelID"], "version": f["version"]} for f in frames]
    await agent.send({"messageType": "ack", "updates": updates})
    for _ in range(100):
        if await push_service.store.count_messages() == 0:
            break
        await asyncio.sleep(0.02)
    assert await push_service.store.count_messages() == 0
    assert calls == [5]
    await agent.close()


async def test_an_ack_is_handled_without_a_task(
    service: RunningService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The frame a user agent sends most is handled as it is read."""
    assert service.service is not None
    agent, (frame,) = await _pushed(service, 1)
    handled: list[str] = []
    handle_now = WebSocketSession.handle_now

    def spy(session: WebSocketSession, text: str) -> bool:
        done = handle_now(session, text)
        handled.append("now" if done else "queued")
        return done

    # On the class: sessions have __slots__ (no instance attribute to replace).
    monkeypatch.setattr(WebSocketSession, "handle_now", spy)
    await agent.ack(frame)
    await agent.send({"messageType": "ping"})
    await agent.receive()  # the ping's answer: the ack before it was read
    assert handled == ["now", "queued"]
    for _ in range(100):
        if await service.service.store.count_messages() == 0:
            break
        await asyncio.sleep(0.02)
    assert await service.service.store.count_messages() == 0
    await agent.close()


async def test_a_store_failure_leaves_the_acknowledged_message_stored(
    service: RunningService,
) -> None:
    """At-least-once: the delete failed, so the message comes again on reconnection."""
    from tidings.service.store import StoreUnavailable

    assert service.service is not None
    push_service = service.service
    agent, (frame,) = await _pushed(service, 1)
    delete_messages = push_service.store.delete_messages

    async def failing(keys: Any) -> Any:
        raise StoreUnavailable("disk gone")

    push_service.store.delete_messages = failing  # type: ignore[method-assign]
    await agent.ack(frame)
    await asyncio.sleep(0.1)
    push_service.store.delete_messages = delete_messages  # type: ignore[method-assign]
    await agent.close()
    again = await service.agent(agent.uaid)
    again.registrations = agent.registrations
    redelivered = await again.expect("notification")
    assert redelivered["version"] == frame["version"]
    await again.close()
