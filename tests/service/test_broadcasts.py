"""Megaphone broadcasts: hello and broadcast_subscribe answers, live changes, the admin
API, the store table, and polling a Megaphone service (a small local HTTP server)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import httpx
import pytest

from support.ci import free_port
from support.service import RunningService, TestAgent, put_broadcast, running_service
from tidings.service import broadcasts as bc
from tidings.service.broadcasts import BroadcastSet, client_broadcasts, parse_megaphone

TOKEN = "admin-secret"
RS = "remote-settings/monitor_changes"


@pytest.fixture
async def admin_service(tmp_path: Path) -> AsyncIterator[RunningService]:
    async with running_service(tmp_path, dashboard_token=TOKEN) as running:
        yield running


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def put(service: RunningService, broadcast_id: str, version: str) -> httpx.Response:
    return await put_broadcast(service.url, broadcast_id, version, TOKEN)


async def hello(agent: TestAgent, broadcasts: dict[str, Any]) -> dict[str, Any]:
    await agent.send({"messageType": "hello", "broadcasts": broadcasts, "use_webpush": True})
    return await agent.expect("hello")


# Pure rules ------------------------------------------------------------------------------


def test_answer_gives_changed_versions_errors_and_follows_known_ids() -> None:
    current = BroadcastSet({"a": "2", "b": "1"})
    followed: set[str] = set()
    answer = current.answer({"a": "1", "b": "1", "zz": "0"}, followed)
    assert answer == {"a": "2", "errors": {"zz": bc.NOT_FOUND}}
    assert followed == {"a", "b"}
    assert current.answer({"b": "1"}, set()) == {}


def test_a_client_follows_a_bounded_number_of_ids() -> None:
    many = {f"id{i}": "v" for i in range(bc.MAX_FOLLOWED * 3)}
    current = BroadcastSet(many)
    followed: set[str] = set()
    current.answer(client_broadcasts(many), followed)
    assert len(followed) == bc.MAX_FOLLOWED
    assert len(client_broadcasts(many)) == bc.MAX_FOLLOWED


def test_replace_reports_new_and_changed_ids() -> None:
    current = BroadcastSet({"a": "1", "b": "1"})
    assert current.replace({"a": "1", "b": "2", "c": "1"}) == {"b": "2", "c": "1"}
    assert current.versions == {"a": "1", "b": "2", "c": "1"}


def test_parse_megaphone_keeps_valid_entries_only() -> None:
    document = {"broadcasts": {"kinto:123": "v1", "bad id": "v", "x": 3, "y": "\n"}}
    assert parse_megaphone(document) == {"kinto:123": "v1"}
    with pytest.raises(ValueError):
        parse_megaphone({"nothing": {}})
    big = {"broadcasts": {f"id{i}": "v" for i in range(bc.MAX_BROADCASTS + 10)}}
    assert len(parse_megaphone(big)) == bc.MAX_BROADCASTS


# Over the WebSocket ------------------------------------------------------------------------


async def test_hello_answers_differing_versions_and_unknown_ids(
    admin_service: RunningService,
) -> None:
    assert (await put(admin_service, RS, '"100"')).status_code == 200
    assert (await put(admin_service, "kinto:1", "v1")).status_code == 200
    agent = TestAgent(admin_service.ws_url)
    await agent.connect(hello=False)
    reply = await hello(agent, {RS: '"90"', "kinto:1": "v1", "other": "x"})
    assert reply["broadcasts"] == {RS: '"100"', "errors": {"other": "Broadcast not found"}}
    # Hello subscribed the connection: a change reaches it.
    assert (await put(admin_service, RS, '"101"')).status_code == 200
    changed = await agent.expect("broadcast", timeout=10)
    assert changed == {"messageType": "broadcast", "broadcasts": {RS: '"101"'}}
    # A change to an id it does not follow does not.
    assert (await put(admin_service, "kinto:2", "v1")).status_code == 200
    await agent.no_frame()
    await agent.close()


async def test_broadcast_subscribe_answers_only_when_something_to_say(
    admin_service: RunningService,
) -> None:
    assert (await put(admin_service, "kinto:123", "ver1")).status_code == 200
    agent = await admin_service.agent()
    await agent.send({"messageType": "broadcast_subscribe", "broadcasts": {"kinto:123": "ver1"}})
    await agent.send("{}")
    assert await agent.receive() == {}  # nothing differed, nothing was said
    await agent.send(
        {"messageType": "broadcast_subscribe", "broadcasts": {"kinto:123": "v0", "k:4": "v"}}
    )
    reply = await agent.expect("broadcast")
    assert reply["broadcasts"] == {"kinto:123": "ver1", "errors": {"k:4": "Broadcast not found"}}
    assert (await put(admin_service, "kinto:123", "ver2")).status_code == 200
    assert (await agent.expect("broadcast", timeout=10))["broadcasts"] == {"kinto:123": "ver2"}
    await agent.close()


async def test_a_change_on_one_node_reaches_a_client_of_another(tmp_path: Path) -> None:
    # Two services on one SQLite file: the second hears of the change through the store.
    async with (
        running_service(tmp_path, dashboard_token=TOKEN, broadcast_poll=0.2) as first,
        running_service(tmp_path, dashboard_token=TOKEN, broadcast_poll=0.2) as second,
    ):
        assert (await put(first, "kinto:9", "v1")).status_code == 200
        agent = TestAgent(second.ws_url)
        await agent.connect(hello=False)
        for _ in range(200):  # the second node reads the store within its poll interval
            reply = await hello(agent, {"kinto:9": "v0"})
            if "kinto:9" in reply["broadcasts"]:
                break
            await agent.close()
            await asyncio.sleep(0.05)
            agent = TestAgent(second.ws_url)
            await agent.connect(hello=False)
        assert reply["broadcasts"] == {"kinto:9": "v1"}
        assert (await put(first, "kinto:9", "v2")).status_code == 200
        changed = await agent.expect("broadcast", timeout=30)
        assert changed["broadcasts"] == {"kinto:9": "v2"}
        await agent.close()


# The admin API -----------------------------------------------------------------------------


async def test_admin_api_needs_the_token(admin_service: RunningService) -> None:
    url = f"{admin_service.url}/api/broadcasts/kinto:1"
    async with httpx.AsyncClient(timeout=10) as client:
        missing = await client.put(url, json={"version": "v"})
        wrong = await client.put(url, json={"version": "v"}, headers=auth("nope"))
        listed = await client.get(f"{admin_service.url}/api/broadcasts", headers=auth())
    assert missing.status_code == 401
    assert missing.json()["errno"] == 130
    assert wrong.status_code == 403
    assert listed.json() == {"broadcasts": {}}


async def test_admin_api_refuses_everyone_without_a_configured_token(
    service: RunningService,
) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.put(f"{service.url}/api/broadcasts/kinto:1", json={"version": "v"})
    assert answer.status_code == 403
    assert set(answer.json()) == {"code", "errno", "error", "message"}
    assert await service.service.store.list_broadcasts() == {}  # type: ignore[union-attr]


async def test_admin_api_round_trip_and_errors(admin_service: RunningService) -> None:
    base = f"{admin_service.url}/api/broadcasts"
    async with httpx.AsyncClient(timeout=10, headers=auth()) as client:
        assert (await client.put(f"{base}/{RS}", json={"version": "1"})).status_code == 200
        assert (await client.get(f"{base}/{RS}")).json() == {"id": RS, "version": "1"}
        assert (await client.get(base)).json() == {"broadcasts": {RS: "1"}}
        bad_json = await client.put(f"{base}/k", content=b"{")
        bad_version = await client.put(f"{base}/k", json={"version": "x" * 1000})
        bad_id = await client.put(f"{base}/-bad", json={"version": "1"})
        post = await client.post(f"{base}/k", json={"version": "1"})
        assert (await client.delete(f"{base}/{RS}")).status_code == 204
        gone = await client.delete(f"{base}/{RS}")
        unknown = await client.get(f"{base}/{RS}")
    for answer, status in (
        (bad_json, 400),
        (bad_version, 400),
        (bad_id, 400),
        (post, 405),
        (gone, 404),
        (unknown, 404),
    ):
        assert answer.status_code == status, answer.text
        assert set(answer.json()) == {"code", "errno", "error", "message"}


async def test_the_number_of_broadcasts_is_bounded(admin_service: RunningService) -> None:
    store = admin_service.service.store  # type: ignore[union-attr]
    for i in range(bc.MAX_BROADCASTS):
        assert await store.set_broadcast(f"id{i}", "v", max_broadcasts=bc.MAX_BROADCASTS)
    full = await put(admin_service, "one-more", "v")
    assert full.status_code == 409
    assert full.json()["errno"] == 131
    assert (await put(admin_service, "id0", "v2")).status_code == 200  # changes still work
    assert len(await store.list_broadcasts()) == bc.MAX_BROADCASTS


# Polling Megaphone -------------------------------------------------------------------------


class FakeMegaphone:
    """Mozilla's Megaphone /v1/broadcasts document, served on 127.0.0.1."""

    def __init__(self, token: str) -> None:
        self.broadcasts: dict[str, str] = {}
        self.requests: list[str | None] = []
        self.asked = threading.Event()  # a request came in
        self.release = threading.Event()  # answer it (set: answer at once)
        self.release.set()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.endswith("/"):  # as FastAPI (the autopush suite's mock) does
                    self.send_response(307)
                    self.send_header("location", self.path.rstrip("/"))
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                owner.requests.append(self.headers.get("authorization"))
                owner.asked.set()
                owner.release.wait(30)
                if self.headers.get("authorization") != f"Bearer {token}":
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps({"code": 200, "broadcasts": owner.broadcasts}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/broadcasts"
        self.thread = Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_megaphone_is_polled_and_changes_reach_clients(tmp_path: Path) -> None:
    megaphone = FakeMegaphone("mp-token")
    megaphone.broadcasts = {"kinto:123": "ver1"}
    try:
        async with running_service(
            tmp_path,
            dashboard_token=TOKEN,
            megaphone_url=megaphone.url + "/",  # redirected, as autopush's suite configures it
            megaphone_token="mp-token",
            megaphone_poll=0.2,
        ) as running:
            agent = TestAgent(running.ws_url)
            await agent.connect(hello=False)
            reply = await hello(agent, {"kinto:123": "ver0"})
            assert reply["broadcasts"] == {"kinto:123": "ver1"}
            megaphone.broadcasts = {"kinto:123": "ver2"}
            changed = await agent.expect("broadcast", timeout=30)
            assert changed["broadcasts"] == {"kinto:123": "ver2"}
            refused = await put(running, "kinto:123", "ver3")  # Megaphone owns them
            assert refused.status_code == 409
            await agent.close()
    finally:
        megaphone.close()
    assert megaphone.requests and set(megaphone.requests) == {"Bearer mp-token"}


async def test_a_hello_during_a_megaphone_read_gets_what_was_read(tmp_path: Path) -> None:
    # The autopush suite changes Megaphone, waits until it is asked, then says hello at
    # once: the hello must be answered with the versions of the read then in flight.
    megaphone = FakeMegaphone("t")
    megaphone.broadcasts = {"kinto:123": "ver0"}
    try:
        async with running_service(
            tmp_path, megaphone_url=megaphone.url, megaphone_token="t", megaphone_poll=0.2
        ) as running:
            megaphone.broadcasts = {"kinto:123": "ver1"}
            megaphone.release.clear()
            megaphone.asked.clear()
            assert await asyncio.to_thread(megaphone.asked.wait, 30)  # a read is in flight
            agent = TestAgent(running.ws_url)
            await agent.connect(hello=False)
            await agent.send(
                {"messageType": "hello", "broadcasts": {"kinto:123": "ver0"}, "use_webpush": True}
            )
            await agent.no_frame(0.2)  # the hello waits for the read
            megaphone.release.set()
            reply = await agent.expect("hello", timeout=10)
            assert reply["broadcasts"] == {"kinto:123": "ver1"}
            await agent.close()
    finally:
        megaphone.release.set()
        megaphone.close()


async def test_a_change_to_many_followers_holds_no_task_per_connection(
    admin_service: RunningService,
) -> None:
    assert (await put(admin_service, "kinto:7", "v1")).status_code == 200
    agents = []
    for _ in range(20):
        agent = TestAgent(admin_service.ws_url)
        await agent.connect(hello=False)
        await hello(agent, {"kinto:7": "v1"})
        agents.append(agent)
    service = admin_service.service
    assert service is not None
    sessions = [a for a in service.hub.each_agent() if hasattr(a, "broadcasts_changed")]
    assert len(sessions) == 20
    service.broadcasts._announce({"kinto:7": "v2"})  # what a change does, synchronously
    assert sum(len(session._tasks or ()) for session in sessions) == 0  # type: ignore[attr-defined]
    for agent in agents:
        assert (await agent.expect("broadcast", timeout=10))["broadcasts"] == {"kinto:7": "v2"}
        await agent.close()
