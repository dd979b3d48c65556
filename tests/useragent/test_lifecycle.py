"""Offline and back, restarts, a service that forgets, pings and reconnection."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import websockets

from support.ci import free_port
from support.service import RunningService, running_service
from tidings.useragent import PushSubscriptionChangeEvent

from .helpers import Inbox, make_agent, send_raw


async def test_offline_messages_arrive_once_in_order_ttl_respected(
    service: RunningService, tmp_path: Path
) -> None:
    state = tmp_path / "ua"
    async with make_agent(service.ws_url, state) as ua:
        registration = await ua.register("app")
        subscription = await registration.push_manager.subscribe()
        info = subscription.to_json()
        uaid = ua.uaid
    # The user agent is stopped: the service stores what is sent meanwhile.
    assert (await send_raw(info, b"expires soon", ttl=1)).status_code == 201
    for n in range(5):
        assert (await send_raw(info, f"m{n}".encode(), ttl=60)).status_code == 201
    await asyncio.sleep(1.2)  # past the first message's TTL
    inbox = Inbox()
    async with make_agent(service.ws_url, state) as ua:
        assert ua.uaid == uaid
        registration = await ua.register("app", on_push=inbox)
        again = await registration.push_manager.get_subscription()
        assert again is not None and again.to_json() == info  # same endpoint and keys
        await inbox.wait_for(5)
        await asyncio.sleep(0.3)
        assert inbox.texts == ["m0", "m1", "m2", "m3", "m4"]
    assert service.service is not None
    assert await service.service.pending(uaid or "") == []  # all acknowledged
    for path in state.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


async def test_messages_before_the_handler_attaches_are_held(
    service: RunningService, tmp_path: Path
) -> None:
    state = tmp_path / "ua"
    async with make_agent(service.ws_url, state) as ua:
        info = (await (await ua.register("app")).push_manager.subscribe()).to_json()
    await send_raw(info, b"early")
    inbox = Inbox()
    async with make_agent(service.ws_url, state) as ua:
        await ua.wait_connected(5)
        await asyncio.sleep(0.2)  # delivered now, with no handler attached yet
        assert inbox.events == []
        await ua.register("app", on_push=inbox)
        assert (await inbox.wait_for(1))[0].data.text() == "early"  # type: ignore[union-attr]


async def test_service_forgets_the_user_agent(tmp_path: Path) -> None:
    port = free_port()
    changes: asyncio.Queue[PushSubscriptionChangeEvent] = asyncio.Queue()
    inbox = Inbox()
    async with make_agent(f"ws://127.0.0.1:{port}/", tmp_path / "ua") as ua:
        async with running_service(tmp_path / "first", port=port):
            registration = await ua.register(
                "app", on_push=inbox, on_subscription_change=changes.put_nowait
            )
            old = await registration.push_manager.subscribe()
            old_uaid = ua.uaid
        # A new service on the same address, with an empty database: it forgot us.
        async with running_service(tmp_path / "second", port=port):
            event = await asyncio.wait_for(changes.get(), 10)
            assert event.old_subscription == old
            new = event.new_subscription
            assert new is not None and new.endpoint != old.endpoint
            assert new.get_key("p256dh") != old.get_key("p256dh")
            assert ua.uaid != old_uaid
            assert await registration.push_manager.get_subscription() == new
            assert (await send_raw(new.to_json(), b"after renewal")).status_code == 201
            assert (await inbox.wait_for(1))[0].data.text() == "after renewal"  # type: ignore[union-attr]
        assert changes.empty()


async def test_reconnects_after_a_service_restart(tmp_path: Path) -> None:
    port = free_port()
    inbox = Inbox()
    changes: list[object] = []
    async with make_agent(f"ws://127.0.0.1:{port}/", tmp_path / "ua") as ua:
        async with running_service(tmp_path / "svc", port=port):
            registration = await ua.register(
                "app", on_push=inbox, on_subscription_change=changes.append
            )
            info = (await registration.push_manager.subscribe()).to_json()
            uaid = ua.uaid
        await asyncio.sleep(0.3)  # the user agent retries with backoff meanwhile
        async with running_service(tmp_path / "svc", port=port):  # same database
            await send_raw(info, b"back")
            assert (await inbox.wait_for(1, timeout=10))[0].data.text() == "back"  # type: ignore[union-attr]
            assert ua.uaid == uaid and changes == []
            assert ua.connections >= 2


async def test_pings_keep_a_live_connection(service: RunningService, tmp_path: Path) -> None:
    async with make_agent(service.ws_url, tmp_path / "ua", ping_interval=0.05) as ua:
        await ua.wait_connected(5)
        await asyncio.sleep(0.5)
        assert ua.connected and ua.connections == 1


async def test_an_unanswered_ping_means_a_dead_connection(tmp_path: Path) -> None:
    """A server that says hello but never answers `{}`: the agent reconnects."""
    hellos = 0

    async def silent(ws: websockets.ServerConnection) -> None:
        nonlocal hellos
        async for text in ws:
            message = json.loads(text)
            if message.get("messageType") == "hello":
                hellos += 1
                await ws.send(json.dumps({"messageType": "hello", "uaid": "a" * 32, "status": 200}))

    async with websockets.serve(silent, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with make_agent(
            f"ws://127.0.0.1:{port}/", tmp_path / "ua", ping_interval=0.05, ping_timeout=0.1
        ) as ua:
            async with asyncio.timeout(5):
                while ua.connections < 3:
                    await asyncio.sleep(0.02)
        assert hellos >= 3


async def test_an_unsubscribe_made_offline_reaches_the_service_later(tmp_path: Path) -> None:
    """W3C unsubscribe() while the push service is unreachable: the service is told on
    the next connection, so pushes to the old endpoint then get 410."""
    port = free_port()
    async with make_agent(f"ws://127.0.0.1:{port}/", tmp_path / "ua") as ua:
        async with running_service(tmp_path / "svc", port=port):
            registration = await ua.register("app", on_push=Inbox())
            subscription = await registration.push_manager.subscribe()
            info = subscription.to_json()
        assert await subscription.unsubscribe()  # offline now
        async with running_service(tmp_path / "svc", port=port):  # same database
            await ua.wait_connected()
            status = 0
            for _ in range(50):  # the unregister follows the hello
                status = (await send_raw(info, b"too late")).status_code
                if status == 410:
                    break
                await asyncio.sleep(0.1)
            assert status == 410
