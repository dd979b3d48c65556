"""Handler semantics against a real service, over both push protocols: when the
acknowledgement goes out (an `ack` frame, or RFC 8030's DELETE), and with which code."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from support.service import RunningService
from tidings.useragent import PushEvent
from tidings.webpush import encrypt, public_key_bytes

from .helpers import Inbox, send_raw
from .test_end_to_end import agent, protocol, uaid_of

__all__ = ["protocol"]  # the fixture, shared with test_end_to_end


async def pending(service: RunningService, uaid: str) -> int:
    assert service.service is not None
    return len(await service.service.pending(uaid))


async def wait_pending(service: RunningService, uaid: str, count: int) -> None:
    async with asyncio.timeout(5):
        while await pending(service, uaid) != count:
            await asyncio.sleep(0.02)


async def test_wait_until_delays_the_ack(
    service: RunningService, tmp_path: Path, protocol: str
) -> None:
    gate = asyncio.Event()
    started = asyncio.Event()
    finished: list[str] = []

    async def work(event: PushEvent) -> None:
        await gate.wait()
        finished.append(event.message_id)

    def on_push(event: PushEvent) -> None:
        event.wait_until(work(event))
        started.set()

    async with agent(service, tmp_path / "ua", protocol) as ua:
        registration = await ua.register("app", on_push=on_push)
        info = (await registration.push_manager.subscribe()).to_json()
        uaid = uaid_of(service, ua, protocol)
        await send_raw(info, b"slow")
        await asyncio.wait_for(started.wait(), 5)
        await asyncio.sleep(0.2)
        assert await pending(service, uaid) == 1  # handler returned, work still running
        gate.set()
        await wait_pending(service, uaid, 0)
        assert len(finished) == 1


async def test_a_raising_handler_is_acknowledged_and_the_agent_goes_on(
    service: RunningService, tmp_path: Path, caplog: pytest.LogCaptureFixture, protocol: str
) -> None:
    inbox = Inbox()

    def on_push(event: PushEvent) -> None:
        inbox(event)
        if event.data is not None and event.data.text() == "bad":
            raise RuntimeError("handler bug")

    caplog.set_level(logging.INFO, logger="tidings.service")
    async with agent(service, tmp_path / "ua", protocol) as ua:
        registration = await ua.register("app", on_push=on_push)
        info = (await registration.push_manager.subscribe()).to_json()
        await send_raw(info, b"bad")
        await send_raw(info, b"good")
        await inbox.wait_for(2)
        await wait_pending(service, uaid_of(service, ua, protocol), 0)
        assert inbox.texts == ["bad", "good"] and ua.connected
    if protocol == "websocket":  # a code only the WebSocket protocol can carry
        assert "acknowledged with code 102" in caplog.text
    assert "handler bug" in caplog.text


async def test_an_undecryptable_body_is_never_delivered(
    service: RunningService, tmp_path: Path, caplog: pytest.LogCaptureFixture, protocol: str
) -> None:
    inbox = Inbox()
    # (set_level also sets caplog's handler level: the lowest goes last)
    caplog.set_level(logging.WARNING, logger="tidings.useragent")
    caplog.set_level(logging.INFO, logger="tidings.service")
    stranger = public_key_bytes(ec.generate_private_key(ec.SECP256R1()))
    state = tmp_path / "ua"
    async with agent(service, state, protocol) as ua:
        registration = await ua.register("app", on_push=inbox)
        info = (await registration.push_manager.subscribe()).to_json()
        wrong = encrypt(b"for someone else", stranger, b"S" * 16)
        assert (await send_raw(info, b"", body=wrong)).status_code == 201
        await send_raw(info, b"fine")
        await inbox.wait_for(1)
        await wait_pending(service, uaid_of(service, ua, protocol), 0)  # not kept forever
        await asyncio.sleep(0.1)
        assert inbox.texts == ["fine"]
    if protocol == "websocket":
        assert "acknowledged with code 101" in caplog.text
    else:
        assert "does not decrypt" in caplog.text
    async with agent(service, state, protocol) as ua:  # a new connection: nothing again
        await ua.register("app", on_push=inbox)
        await ua.wait_connected(5)
        await asyncio.sleep(0.2)
        assert inbox.texts == ["fine"]


async def test_handlers_per_scope_share_one_connection(
    service: RunningService, tmp_path: Path, protocol: str
) -> None:
    inboxes = {scope: Inbox() for scope in ("a", "b", "c")}
    async with agent(service, tmp_path / "ua", protocol) as ua:
        infos = {}
        for scope, inbox in inboxes.items():
            registration = await ua.register(scope, on_push=inbox)
            infos[scope] = (await registration.push_manager.subscribe()).to_json()
        assert len({i["endpoint"] for i in infos.values()}) == 3
        for scope, info in infos.items():
            await send_raw(info, scope.encode())
        for scope, inbox in inboxes.items():
            assert [e.data.text() for e in await inbox.wait_for(1)] == [scope]  # type: ignore[union-attr]
        assert ua.connections == 1 and service.service is not None
        assert len(service.service.hub) == 1
        assert await ua.registrations[0].unregister() is True
        assert ua.get_registration("a") is None
