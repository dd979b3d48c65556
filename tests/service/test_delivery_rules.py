"""What the service keeps and delivers: TTL 0, expiry, Topic replacement, cancel, limits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from support.service import Registration, RunningService, TestAgent, running_service
from tidings.service.errors import Errno
from tidings.webpush import encrypt


def encrypted(registration: Registration, text: str) -> bytes:
    keys = registration.subscription_info()["keys"]
    return encrypt(text.encode(), keys["p256dh"], keys["auth"])


async def push(
    registration: Registration,
    text: str,
    *,
    ttl: str = "60",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    sent = {"ttl": ttl, "content-encoding": "aes128gcm", **(headers or {})}
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(
            registration.endpoint, content=encrypted(registration, text), headers=sent
        )


async def delete(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.delete(url)


async def settle(agent: TestAgent) -> None:
    """A ping round trip: every frame sent before it has been handled by the service."""
    await agent.send("{}")
    assert await agent.receive() == {}


async def away(service: RunningService) -> tuple[TestAgent, Registration]:
    """A user agent that registered and then disconnected."""
    agent = await service.agent()
    registration = await agent.register()
    await agent.close()
    return agent, registration


async def back(service: RunningService, agent: TestAgent) -> TestAgent:
    """The same user agent connected again, with its registrations."""
    again = await service.agent(agent.uaid)
    assert again.uaid == agent.uaid
    again.registrations = dict(agent.registrations)
    return again


async def received(agent: TestAgent) -> list[bytes | None]:
    """Everything delivered until the connection goes quiet (acknowledged)."""
    texts: list[bytes | None] = []
    while True:
        try:
            notification = await agent.next_notification(timeout=0.4)
        except TimeoutError:
            return texts
        texts.append(notification.plaintext)


# TTL ------------------------------------------------------------------------------------


async def test_ttl_0_is_delivered_to_a_connected_agent(service: RunningService) -> None:
    agent = await service.agent()
    registration = await agent.register()
    response = await push(registration, "now or never", ttl="0")
    assert response.status_code == 201
    assert response.headers["ttl"] == "0"
    assert (await agent.next_notification()).plaintext == b"now or never"
    await settle(agent)
    assert await service.service.store.count_messages() == 0
    await agent.close()


async def test_ttl_0_is_dropped_when_the_agent_is_away(service: RunningService) -> None:
    agent, registration = await away(service)
    response = await push(registration, "nobody home", ttl="0")
    assert response.status_code == 201
    assert response.headers["ttl"] == "0"
    assert await service.service.store.count_messages() == 0
    again = await back(service, agent)
    await again.no_frame(0.5)
    await again.close()


async def test_message_is_never_delivered_after_its_ttl(service: RunningService) -> None:
    agent, registration = await away(service)
    assert (await push(registration, "short-lived", ttl="1")).status_code == 201
    assert (await push(registration, "long-lived", ttl="60")).status_code == 201
    await asyncio.sleep(1.6)
    again = await back(service, agent)
    assert await received(again) == [b"long-lived"]
    await again.close()


async def test_expired_messages_are_swept(tmp_path: Path) -> None:
    async with running_service(tmp_path, expiry_sweep_interval=0.2) as running:
        _, registration = await away(running)
        assert (await push(registration, "short-lived", ttl="1")).status_code == 201
        assert await running.service.store.count_messages() == 1
        deadline = asyncio.get_running_loop().time() + 5
        while await running.service.store.count_messages():
            assert asyncio.get_running_loop().time() < deadline, "never swept"
            await asyncio.sleep(0.1)


# Topic ----------------------------------------------------------------------------------


async def test_topic_replaces_the_stored_message(service: RunningService) -> None:
    agent, registration = await away(service)
    first = await push(registration, "one", headers={"topic": "A"})
    assert (await push(registration, "other topic", headers={"topic": "B"})).status_code == 201
    second = await push(registration, "two", headers={"topic": "A"})
    assert first.status_code == second.status_code == 201
    assert first.headers["location"] != second.headers["location"]
    again = await back(service, agent)
    assert await received(again) == [b"other topic", b"two"]
    # The replaced message's resource is gone: cancelling it is a 404.
    assert (await delete(first.headers["location"])).status_code == 404
    await again.close()


async def test_a_ttl0_push_replaces_the_stored_message_of_its_topic(
    service: RunningService,
) -> None:
    """RFC 8030 section 5.4: a push with a Topic replaces any pending message of that
    Topic. A TTL-0 one with the user agent away is dropped at once, so it replaced the
    stored one and left nothing: the older message used to be delivered on return."""
    agent, registration = await away(service)
    first = await push(registration, "old news", headers={"topic": "A"})
    assert (await push(registration, "gone", ttl="0", headers={"topic": "A"})).status_code == 201
    assert (await push(registration, "other topic", headers={"topic": "B"})).status_code == 201
    again = await back(service, agent)
    assert await received(again) == [b"other topic"]
    assert (await delete(first.headers["location"])).status_code == 404
    await again.close()


async def test_topic_is_per_subscription(service: RunningService) -> None:
    agent = await service.agent()
    one = await agent.register()
    two = await agent.register()
    await agent.close()
    assert (await push(one, "one", headers={"topic": "same"})).status_code == 201
    assert (await push(two, "two", headers={"topic": "same"})).status_code == 201
    again = await back(service, agent)
    assert await received(again) == [b"one", b"two"]
    await again.close()


# Cancelling a message (DELETE Location) -------------------------------------------------


async def test_delete_cancels_an_undelivered_message(service: RunningService) -> None:
    agent, registration = await away(service)
    cancelled = await push(registration, "cancelled")
    assert (await push(registration, "kept")).status_code == 201
    response = await delete(cancelled.headers["location"])
    assert response.status_code == 204
    assert response.content == b""
    again = await back(service, agent)
    assert await received(again) == [b"kept"]
    await again.close()


async def test_delete_after_delivery_and_ack_is_404(service: RunningService) -> None:
    agent = await service.agent()
    registration = await agent.register()
    accepted = await push(registration, "delivered")
    await agent.next_notification()
    await settle(agent)
    response = await delete(accepted.headers["location"])
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json()["errno"] == Errno.NOT_FOUND
    await agent.close()


async def test_delete_twice_is_404(service: RunningService) -> None:
    _, registration = await away(service)
    accepted = await push(registration, "once")
    assert (await delete(accepted.headers["location"])).status_code == 204
    assert (await delete(accepted.headers["location"])).status_code == 404


async def test_delete_of_ttl_0_message_is_404(service: RunningService) -> None:
    _, registration = await away(service)
    accepted = await push(registration, "never stored", ttl="0")
    assert (await delete(accepted.headers["location"])).status_code == 404


# Acknowledgement and connection end -----------------------------------------------------


async def test_ack_right_before_close_is_kept(service: RunningService) -> None:
    agent = await service.agent()
    registration = await agent.register()
    assert (await push(registration, "acked")).status_code == 201
    notification = await agent.next_notification(ack=False)
    # Firefox may acknowledge and close at once: the ack must still count.
    await agent.ack(notification.frame)
    await agent.close()
    again = await back(service, agent)
    await again.no_frame(0.5)
    await again.close()


async def test_frames_sent_together_are_all_handled(service: RunningService) -> None:
    agent = await service.agent()
    registration = await agent.register()
    for text in ("a", "b", "c"):
        assert (await push(registration, text)).status_code == 201
    frames = [await agent.next_notification(ack=False) for _ in range(3)]
    for notification in frames:
        await agent.ack(notification.frame)
    await settle(agent)
    assert await service.service.store.count_messages() == 0
    await agent.close()


async def test_live_and_stored_messages_are_not_duplicated(service: RunningService) -> None:
    agent, registration = await away(service)
    for index in range(5):
        assert (await push(registration, f"stored {index}")).status_code == 201
    again = await back(service, agent)
    for index in range(5):
        assert (await push(registration, f"live {index}")).status_code == 201
    texts = await received(again)
    assert texts == [f"stored {i}".encode() for i in range(5)] + [
        f"live {i}".encode() for i in range(5)
    ]
    await again.close()


# Limits ---------------------------------------------------------------------------------


async def test_too_many_stored_messages_is_429_and_nothing_is_lost(tmp_path: Path) -> None:
    async with running_service(tmp_path, max_messages_per_user_agent=3) as running:
        agent, registration = await away(running)
        for text in ("m1", "m2", "m3"):
            assert (await push(registration, text)).status_code == 201
        refused = await push(registration, "m4")
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/json"
        assert refused.headers["retry-after"].isdigit()
        assert refused.json()["errno"] == Errno.TOO_MANY_MESSAGES
        # A message that replaces one by Topic does not add to the count.
        assert (await push(registration, "t1", headers={"topic": "t"})).status_code == 429
        again = await back(running, agent)
        assert await received(again) == [b"m1", b"m2", b"m3"]
        # Once collected, there is room again.
        assert (await push(registration, "m5")).status_code == 201
        assert (await again.next_notification()).plaintext == b"m5"
        await again.close()


async def test_topic_replacement_at_the_limit_is_accepted(tmp_path: Path) -> None:
    async with running_service(tmp_path, max_messages_per_user_agent=2) as running:
        agent, registration = await away(running)
        assert (await push(registration, "m1")).status_code == 201
        assert (await push(registration, "t1", headers={"topic": "t"})).status_code == 201
        assert (await push(registration, "t2", headers={"topic": "t"})).status_code == 201
        again = await back(running, agent)
        assert await received(again) == [b"m1", b"t2"]
        await again.close()


async def test_ttl_0_is_not_counted_against_the_limit(tmp_path: Path) -> None:
    async with running_service(tmp_path, max_messages_per_user_agent=1) as running:
        agent, registration = await away(running)
        assert (await push(registration, "stored")).status_code == 201
        again = await back(running, agent)
        assert (await again.next_notification(ack=False)).plaintext == b"stored"
        assert (await push(registration, "live", ttl="0")).status_code == 201
        assert (await again.next_notification()).plaintext == b"live"
        await again.close()
