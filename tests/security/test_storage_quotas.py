"""Storage quotas and expiry (issue 16), through the running service.

One site's subscription must not fill the browser's whole quota; a full store answers
507 with Retry-After and keeps every stored message; concurrent registers never pass
the subscription cap; user agents not seen for `user_agent_expiry` are forgotten.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from support.service import Registration, RunningService, TestAgent, running_service
from tidings.service import maintenance
from tidings.service.core import RegistrationError
from tidings.service.errors import Errno
from tidings.webpush import encrypt

DAY = 86400.0


async def push(registration: Registration, text: str) -> httpx.Response:
    keys = registration.subscription_info()["keys"]
    body = encrypt(text.encode(), keys["p256dh"], keys["auth"])
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(
            registration.endpoint,
            content=body,
            headers={"ttl": "600", "content-encoding": "aes128gcm"},
        )


def refused(response: httpx.Response, status: int, errno: Errno) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["retry-after"].isdigit()
    document = response.json()
    assert (document["code"], document["errno"]) == (status, errno)
    assert set(document) == {"code", "errno", "error", "message"}


async def away_with(running: RunningService, sites: int) -> tuple[TestAgent, list[Registration]]:
    """A user agent subscribed to `sites` sites, then disconnected."""
    agent = await running.agent()
    registrations = [await agent.register() for _ in range(sites)]
    await agent.close()
    return agent, registrations


async def collected(running: RunningService, agent: TestAgent, count: int) -> set[bytes]:
    """Connect `agent` again and take (and acknowledge) `count` stored messages."""
    again = await running.agent(agent.uaid)
    again.registrations = dict(agent.registrations)
    texts = set()
    for _ in range(count):
        notification = await again.next_notification(timeout=10)
        assert notification.plaintext is not None
        texts.add(notification.plaintext)
    await again.close()
    return texts


async def test_one_full_site_does_not_block_the_browsers_other_sites(tmp_path: Path) -> None:
    async with running_service(tmp_path, max_messages_per_subscription=2) as running:
        _, (site_a, site_b) = await away_with(running, 2)
        for text in ("a1", "a2"):
            assert (await push(site_a, text)).status_code == 201
        refused(await push(site_a, "a3"), 429, Errno.TOO_MANY_MESSAGES)
        assert (await push(site_b, "b1")).status_code == 201  # before: 429 errno 120


async def test_the_user_agent_ceiling_still_counts_all_its_sites(tmp_path: Path) -> None:
    settings = {"max_messages_per_subscription": 5, "max_messages_per_user_agent": 3}
    async with running_service(tmp_path, **settings) as running:
        _, (site_a, site_b) = await away_with(running, 2)
        for registration in (site_a, site_a, site_b):
            assert (await push(registration, "m")).status_code == 201
        refused(await push(site_b, "m"), 429, Errno.TOO_MANY_MESSAGES)


async def test_the_user_agent_byte_quota_is_429(tmp_path: Path) -> None:
    async with running_service(tmp_path, max_bytes_per_user_agent=4096) as running:
        _, (site_a, site_b) = await away_with(running, 2)
        assert (await push(site_a, "x" * 2500)).status_code == 201
        refused(await push(site_b, "y" * 2500), 429, Errno.TOO_MANY_BYTES)
        assert (await push(site_b, "small")).status_code == 201


async def test_a_full_store_is_507_with_retry_after_and_keeps_every_message(
    tmp_path: Path,
) -> None:
    async with running_service(tmp_path, max_stored_messages=2) as running:
        first, (site_a,) = await away_with(running, 1)
        _, (site_b,) = await away_with(running, 1)
        assert (await push(site_a, "kept 1")).status_code == 201
        assert (await push(site_b, "kept 2")).status_code == 201
        refused(await push(site_a, "no room"), 507, Errno.STORE_FULL)
        refused(await push(site_b, "no room"), 507, Errno.STORE_FULL)
        assert running.service is not None
        assert await running.service.store.count_messages() == 2  # nothing evicted
        assert await collected(running, first, 1) == {b"kept 1"}
        assert (await push(site_a, "room again")).status_code == 201
        async with httpx.AsyncClient() as client:
            document = (await client.get(running.url + "/openapi.json")).json()
        assert "507" in document["paths"]["/push/{token}"]["post"]["responses"]


async def test_racing_registers_never_pass_the_subscription_cap(tmp_path: Path) -> None:
    async with running_service(tmp_path, max_subscriptions_per_user_agent=5) as running:
        service = running.service
        assert service is not None
        results = await asyncio.gather(
            *(service.register("ua1", f"channel-{i}", None) for i in range(30)),
            return_exceptions=True,
        )
        refusals = [r for r in results if isinstance(r, RegistrationError)]
        assert len(refusals) == 25 and {r.status for r in refusals} == {429}
        assert await service.store.count_subscriptions("ua1") == 5  # before: 30


async def test_user_agents_not_seen_for_the_expiry_are_forgotten(tmp_path: Path) -> None:
    async with running_service(tmp_path, user_agent_expiry=30 * DAY) as running:
        service = running.service
        assert service is not None
        gone, (gone_site,) = await away_with(running, 1)
        back, (back_site,) = await away_with(running, 1)
        connected = await running.agent()
        connected_site = await connected.register()
        assert (await push(gone_site, "stored")).status_code == 201
        # All three last seen 31 days ago (written in the store directly).
        long_ago = time.time() - 31 * DAY
        for agent in (gone, back, connected):
            assert agent.uaid is not None
            await service.store.add_user_agent(agent.uaid, long_ago)
        again = await running.agent(back.uaid)  # a hello: seen now
        assert again.uaid == back.uaid
        await again.close()
        assert await service.sweep_user_agents(time.time()) == 1
        assert gone.uaid is not None
        assert not await service.store.has_user_agent(gone.uaid)
        assert await service.store.count_messages() == 0
        assert (await push(gone_site, "late")).status_code == 404  # expired: RFC 8030 7.3
        assert (await push(back_site, "still here")).status_code == 201
        assert (await push(connected_site, "live")).status_code == 201
        assert (await connected.next_notification(timeout=10)).plaintext == b"live"
        await connected.close()
        # A returning forgotten user agent gets a new id, as after an unregister-all.
        returned = await running.agent(gone.uaid)
        assert returned.uaid != gone.uaid
        await returned.close()


async def test_the_background_sweep_forgets_stale_user_agents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maintenance, "RECEIPT_SWEEP_INTERVAL", 0.0)  # every expiry sweep
    settings = {"expiry_sweep_interval": 0.05, "user_agent_expiry": 60}
    async with running_service(tmp_path, **settings) as running:
        service = running.service
        assert service is not None
        stale, (stale_site,) = await away_with(running, 1)
        assert stale.uaid is not None
        await service.store.add_user_agent(stale.uaid, time.time() - 3600)
        deadline = time.monotonic() + 30
        while await service.store.has_user_agent(stale.uaid):
            assert time.monotonic() < deadline, "the sweep never forgot the user agent"
            await asyncio.sleep(0.05)
        assert (await push(stale_site, "late")).status_code == 404  # expired
