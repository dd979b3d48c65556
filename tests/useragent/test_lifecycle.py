"""Offline and back, restarts, a service that forgets, pings and reconnection, over both
push protocols (Firefox's WebSocket protocol and RFC 8030); then what only RFC 8030 has:
the urgency filter, a forgotten subscription set, 307 redirects, TLS."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import httpx
import pytest
import websockets

from support.ci import free_port
from support.service import RunningService, running_service
from tidings.service.tls import self_signed
from tidings.useragent import (
    NotConnectedError,
    NotSupportedError,
    PushSubscriptionChangeEvent,
    UserAgent,
)
from tidings.webpush import encrypt

from .helpers import Inbox, make_agent, send_raw
from .test_end_to_end import agent, h2_agent, protocol, service_uaid, uaid_of

__all__ = ["protocol"]  # the fixture, shared with test_end_to_end


def agent_at(port: int, state: Path, protocol: str, **kwargs: Any) -> UserAgent:
    """A user agent speaking `protocol` to whatever listens on `port` (h2c for RFC 8030)."""
    if protocol == "rfc8030":
        return make_agent(f"h2c://127.0.0.1:{port}", state, **kwargs)
    return make_agent(f"ws://127.0.0.1:{port}/", state, **kwargs)


def h2_agent_at(port: int, state: Path, **kwargs: Any) -> UserAgent:
    return agent_at(port, state, "rfc8030", **kwargs)


async def test_offline_messages_arrive_once_in_order_ttl_respected(
    service: RunningService, tmp_path: Path, protocol: str
) -> None:
    state = tmp_path / "ua"
    async with agent(service, state, protocol) as ua:
        registration = await ua.register("app")
        subscription = await registration.push_manager.subscribe()
        info = subscription.to_json()
        session = ua.uaid  # the uaid, or over RFC 8030 the set URL
    # The user agent is stopped: the service stores what is sent meanwhile.
    assert (await send_raw(info, b"expires soon", ttl=1)).status_code == 201
    for n in range(5):
        assert (await send_raw(info, f"m{n}".encode(), ttl=60)).status_code == 201
    await asyncio.sleep(1.2)  # past the first message's TTL
    inbox = Inbox()
    async with agent(service, state, protocol) as ua:
        assert ua.uaid == session
        registration = await ua.register("app", on_push=inbox)
        again = await registration.push_manager.get_subscription()
        assert again is not None and again.to_json() == info  # same endpoint and keys
        await inbox.wait_for(5)
        await asyncio.sleep(0.3)  # over RFC 8030 the long GET pushes unacknowledged ones again
        assert inbox.texts == ["m0", "m1", "m2", "m3", "m4"]
        uaid = uaid_of(service, ua, protocol)
    assert service.service is not None
    assert await service.service.pending(uaid) == []  # all acknowledged (RFC 8030: deleted)
    for path in state.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


async def test_messages_before_the_handler_attaches_are_held(
    service: RunningService, tmp_path: Path, protocol: str
) -> None:
    state = tmp_path / "ua"
    async with agent(service, state, protocol) as ua:
        info = (await (await ua.register("app")).push_manager.subscribe()).to_json()
    await send_raw(info, b"early")
    inbox = Inbox()
    async with agent(service, state, protocol) as ua:
        await ua.wait_connected(5)
        await asyncio.sleep(0.2)  # delivered now, with no handler attached yet
        assert inbox.events == []
        await ua.register("app", on_push=inbox)
        assert (await inbox.wait_for(1))[0].data.text() == "early"  # type: ignore[union-attr]


async def test_reconnects_after_a_service_restart(tmp_path: Path, protocol: str) -> None:
    port = free_port()
    inbox = Inbox()
    changes: list[object] = []
    async with agent_at(port, tmp_path / "ua", protocol) as ua:
        async with running_service(tmp_path / "svc", port=port):
            registration = await ua.register(
                "app", on_push=inbox, on_subscription_change=changes.append
            )
            info = (await registration.push_manager.subscribe()).to_json()
            session = ua.uaid
        await asyncio.sleep(0.3)  # the user agent retries with backoff meanwhile
        async with running_service(tmp_path / "svc", port=port):  # same database and keys
            assert (await send_raw(info, b"back")).status_code == 201
            assert (await inbox.wait_for(1, timeout=10))[0].data.text() == "back"  # type: ignore[union-attr]
            assert ua.uaid == session and changes == []
            assert ua.connections >= 2


async def test_pings_keep_a_live_connection(
    service: RunningService, tmp_path: Path, protocol: str
) -> None:
    async with agent(service, tmp_path / "ua", protocol, ping_interval=0.05) as ua:
        await ua.wait_connected(5)
        # Subscribed, so that over RFC 8030 the pings go over the monitor's connection.
        await (await ua.register("app")).push_manager.subscribe()
        await asyncio.sleep(0.5)
        assert ua.connected and ua.connections == 1


@contextlib.asynccontextmanager
async def silent_service(protocol: str) -> AsyncIterator[tuple[int, list[int]]]:
    """A server that never answers a ping: (its port, [connections it has seen]).

    For the WebSocket protocol it answers `hello` and then ignores `{}`; for RFC 8030 it
    accepts the TCP connection and then says nothing at all.
    """
    seen = [0]

    async def silent_websocket(ws: websockets.ServerConnection) -> None:
        async for text in ws:
            message = json.loads(text)
            if message.get("messageType") == "hello":
                seen[0] += 1
                await ws.send(json.dumps({"messageType": "hello", "uaid": "a" * 32, "status": 200}))

    async def silent_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen[0] += 1
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
        writer.close()

    if protocol == "rfc8030":
        server = await asyncio.start_server(silent_tcp, "127.0.0.1", 0)
        async with server:
            yield server.sockets[0].getsockname()[1], seen
    else:
        async with websockets.serve(silent_websocket, "127.0.0.1", 0) as ws_server:
            yield ws_server.sockets[0].getsockname()[1], seen


async def test_an_unanswered_ping_means_a_dead_connection(tmp_path: Path, protocol: str) -> None:
    """A server that never answers a ping: the agent reconnects."""
    async with silent_service(protocol) as (port, seen):
        async with agent_at(
            port, tmp_path / "ua", protocol, ping_interval=0.05, ping_timeout=0.1
        ) as ua:
            async with asyncio.timeout(5):
                while ua.connections < 3:
                    await asyncio.sleep(0.02)
        assert seen[0] >= 3


# A service that forgets: each protocol has its own way ---------------------------------------


async def test_service_forgets_the_user_agent(tmp_path: Path) -> None:
    port = free_port()
    changes: asyncio.Queue[PushSubscriptionChangeEvent] = asyncio.Queue()
    inbox = Inbox()
    async with agent_at(port, tmp_path / "ua", "websocket") as ua:
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


async def test_a_forgotten_set_renews_every_subscription(tmp_path: Path) -> None:
    port = free_port()
    changes: asyncio.Queue[PushSubscriptionChangeEvent] = asyncio.Queue()
    inbox = Inbox()
    async with h2_agent_at(port, tmp_path / "ua") as ua:
        async with running_service(tmp_path / "first", port=port):
            registrations = [
                await ua.register(scope, on_push=inbox, on_subscription_change=changes.put_nowait)
                for scope in ("a", "b")
            ]
            old = [await r.push_manager.subscribe() for r in registrations]
            old_set = ua.uaid
        # A new service on the same address, with its own database and keys: the set
        # URL means nothing to it (404).
        async with running_service(tmp_path / "second", port=port) as second:
            events = [await asyncio.wait_for(changes.get(), 10) for _ in range(2)]
            assert {e.scope for e in events} == {"a", "b"}
            for event in events:
                assert event.old_subscription in old
                new = event.new_subscription
                assert new is not None and new.endpoint.startswith(second.url + "/push/")
            assert ua.uaid is not None and ua.uaid != old_set
            assert second.service is not None
            uaid = service_uaid(second, ua)
            assert await second.service.store.count_subscriptions(uaid) == 2  # one new set
            for registration in registrations:
                subscription = await registration.push_manager.get_subscription()
                assert subscription is not None
                assert (await send_raw(subscription.to_json(), b"renewed")).status_code == 201
            await inbox.wait_for(2, timeout=10)
            assert inbox.texts == ["renewed", "renewed"]
        assert changes.empty()


# WebSocket only ------------------------------------------------------------------------------


async def test_an_unsubscribe_made_offline_reaches_the_service_later(tmp_path: Path) -> None:
    """W3C unsubscribe() while the push service is unreachable: the service is told on
    the next connection, so pushes to the old endpoint then get 410."""
    port = free_port()
    async with agent_at(port, tmp_path / "ua", "websocket") as ua:
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


# RFC 8030 only: the urgency filter -----------------------------------------------------------


async def push(
    info: dict[str, Any], text: str, *, verify: ssl.SSLContext | bool = True, **headers: str
) -> int:
    """An unsigned aes128gcm push with extra headers (Urgency...); the status."""
    body = encrypt(text.encode(), info["keys"]["p256dh"], info["keys"]["auth"])
    async with httpx.AsyncClient(verify=verify) as client:
        response = await client.post(
            info["endpoint"],
            content=body,
            headers={"TTL": "60", "Content-Encoding": "aes128gcm", **headers},
        )
    return response.status_code


async def test_set_urgency_needs_rfc8030(tmp_path: Path) -> None:
    ua = UserAgent("ws://127.0.0.1:1/", tmp_path / "ua")
    try:
        assert ua.urgency is None
        with pytest.raises(NotSupportedError):
            await ua.set_urgency("high")
    finally:
        await ua.close()


async def test_urgency_filter_holds_back_less_urgent_messages(
    service: RunningService, tmp_path: Path
) -> None:
    inbox = Inbox()
    async with h2_agent(service, tmp_path / "ua") as ua:
        assert ua.urgency is None
        registration = await ua.register("app", on_push=inbox)
        info = (await registration.push_manager.subscribe()).to_json()
        await ua.set_urgency("high")  # on battery
        assert ua.urgency == "high"
        with pytest.raises(ValueError):
            await ua.set_urgency("urgent")
        assert await push(info, "low", Urgency="low") == 201
        assert await push(info, "call", Urgency="high") == 201
        assert await push(info, "normal") == 201
        await inbox.wait_for(1)
        await asyncio.sleep(0.3)
        assert inbox.texts == ["call"]
        assert service.service is not None
        uaid = service_uaid(service, ua)
        assert len(await service.service.pending(uaid)) == 2  # held back, still stored
        assert len(service.service.hub.agents(uaid)) == 1  # the old GET was reset
        await ua.set_urgency(None)  # charging again: the held ones come
        await inbox.wait_for(3)
        assert inbox.texts == ["call", "low", "normal"]
        assert ua.connections == 1


async def test_urgency_survives_a_reconnect(tmp_path: Path) -> None:
    port = free_port()
    inbox = Inbox()
    async with h2_agent_at(port, tmp_path / "ua") as ua:
        await ua.set_urgency("high")  # before any connection: used by the first GET
        async with running_service(tmp_path / "svc", port=port):
            registration = await ua.register("app", on_push=inbox)
            info = (await registration.push_manager.subscribe()).to_json()
        async with running_service(tmp_path / "svc", port=port):
            assert await push(info, "quiet", Urgency="low") == 201
            assert await push(info, "loud", Urgency="high") == 201
            await inbox.wait_for(1, timeout=10)
            await asyncio.sleep(0.3)
            assert inbox.texts == ["loud"]


# 307: a front that redirects every request to the service ----------------------------------


class Redirector:
    """A tiny cleartext HTTP/2 server answering every request 307 to `target` + path."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.seen: list[tuple[str, str]] = []
        self.server: asyncio.Server | None = None

    async def start(self, port: int) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        requests: dict[int, tuple[str, str]] = {}
        try:
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        headers = {k.decode(): v.decode() for k, v in event.headers or ()}
                        requests[event.stream_id] = (headers[":method"], headers[":path"])
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    elif isinstance(event, h2.events.StreamEnded):
                        method, path = requests.pop(event.stream_id)
                        self.seen.append((method, path))
                        conn.send_headers(
                            event.stream_id,
                            [(":status", "307"), ("location", self.target + path)],
                            end_stream=True,
                        )
                writer.write(conn.data_to_send())
                await writer.drain()
        except (ConnectionError, h2.exceptions.ProtocolError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def redirected_service(tmp_path: Path) -> AsyncIterator[tuple[RunningService, Redirector]]:
    """A service whose public URLs all name a front that answers 307 to the service."""
    front = free_port()
    service_port = free_port()
    redirector = Redirector(f"http://127.0.0.1:{service_port}")
    await redirector.start(front)
    try:
        async with running_service(
            tmp_path / "svc", port=service_port, public_url=f"http://127.0.0.1:{front}"
        ) as service:
            yield service, redirector
    finally:
        await redirector.stop()


async def test_307_is_followed_on_subscribe_and_monitor(tmp_path: Path) -> None:
    inbox = Inbox()
    state = tmp_path / "ua"
    async with redirected_service(tmp_path) as (service, redirector):
        real = redirector.target
        async with make_agent(service.url, state, transport="rfc8030") as ua:
            registration = await ua.register("app", on_push=inbox)
            info = (await registration.push_manager.subscribe()).to_json()
            assert info["endpoint"].startswith(service.url + "/push/")  # the public URL
            assert ua.uaid is not None and ua.uaid.startswith(service.url + "/set/")
            direct = {**info, "endpoint": info["endpoint"].replace(service.url, real)}
            assert (await send_raw(direct, b"through the redirect")).status_code == 201
            (event,) = await inbox.wait_for(1)
            assert event.data is not None and event.data.text() == "through the redirect"
            assert event.message_id.startswith(real + "/m/")
            methods = [(method, path.split("/")[1]) for method, path in redirector.seen]
            assert ("POST", "subscribe") in methods and ("GET", "set") in methods
            assert service.service is not None
            uaid = service_uaid(service, ua)
            async with asyncio.timeout(5):
                while await service.service.pending(uaid):
                    await asyncio.sleep(0.02)  # the DELETE reached the service
        # Back with the same state: the stored set URL is redirected again.
        redirector.seen.clear()
        async with make_agent(service.url, state, transport="rfc8030") as ua:
            await ua.register("app", on_push=inbox)
            assert (await send_raw(direct, b"again")).status_code == 201
            await inbox.wait_for(2)
            assert inbox.texts == ["through the redirect", "again"]
            assert {method for method, _ in redirector.seen} == {"GET"}


# TLS ------------------------------------------------------------------------------------------


async def test_tls_with_a_private_ca(tmp_path: Path) -> None:
    cert, key = self_signed(["127.0.0.1"])
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    context = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    inbox = Inbox()
    async with running_service(
        tmp_path / "svc", tls_cert=str(tmp_path / "cert.pem"), tls_key=str(tmp_path / "key.pem")
    ) as service:
        assert service.url.startswith("https://")
        h2_url = service.url.replace("https://", "h2://")
        async with make_agent(h2_url, tmp_path / "ua", ssl_context=context) as ua:
            registration = await ua.register("app", on_push=inbox)
            info = (await registration.push_manager.subscribe()).to_json()
            assert info["endpoint"].startswith(service.url + "/push/")
            assert await push(info, "over TLS ✓", verify=context) == 201
            (event,) = await inbox.wait_for(1)
            assert event.data is not None and event.data.text() == "over TLS ✓"
        # Without the CA the certificate is refused: no connection, no subscription.
        async with make_agent(h2_url, tmp_path / "other", connect_timeout=1.0) as ua:
            registration = await ua.register("app")
            with pytest.raises(NotConnectedError):
                await registration.push_manager.subscribe()
