"""A real push service, a push element on HTTP, and runtimes to call each other."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.service import RunningService, running_service
from tidings.hyperty import ElementEvent, HypertyRuntime, Message, PushElement
from tidings.hyperty.connector import Connector
from tidings.hyperty.http import ElementApp, ElementServer
from tidings.sender import RetryPolicy, Sender
from tidings.webpush import VapidKey

DOMAIN = "example.com"


@dataclass
class Stack:
    """Service + element, and helpers to make runtimes against them."""

    tmp_path: Path
    service: RunningService
    element: PushElement
    server: ElementServer
    key: VapidKey
    events: list[ElementEvent] = field(default_factory=list)
    runtimes: list[HypertyRuntime] = field(default_factory=list)

    @property
    def element_url(self) -> str:
        return self.server.url + "/hyperty"

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [e.detail for e in self.events if e.kind == kind]

    async def runtime(self, name: str, **kwargs: Any) -> HypertyRuntime:
        """A started runtime with state in tmp_path/<name> (closed at teardown)."""
        kwargs.setdefault("domain", DOMAIN)
        kwargs.setdefault("element", self.element_url)
        runtime = HypertyRuntime(None, self.tmp_path / name, **kwargs)
        await runtime.start()
        self.runtimes.append(runtime)
        return runtime

    async def callee(
        self, name: str = "callee", *, options: dict[str, Any] | None = None, **kwargs: Any
    ) -> tuple[HypertyRuntime, str]:
        """A runtime woken in-process by its own user agent, with a subscribed Connector."""
        runtime = await self.runtime(name, service=self.service.ws_url, **kwargs)
        url = await runtime.create_hyperty("connector", options={"name": "Bob", **(options or {})})
        answer = await runtime.subscribe()
        assert answer.code == 200, answer
        return runtime, url

    async def caller(self, name: str = "caller") -> tuple[HypertyRuntime, Connector]:
        """A listening runtime (it holds its message connection) with a Connector."""
        runtime = await self.runtime(name, listen=True)
        url = await runtime.create_hyperty("connector", options={"name": "Alice"})
        await runtime.wait_listening()
        connector = runtime.running(url)
        assert isinstance(connector, Connector)
        return runtime, connector

    async def post(self, document: Any, credential: str | None = None) -> httpx.Response:
        """POST a message to the element (with `Authorization: Bearer credential`)."""
        headers = {} if credential is None else {"authorization": f"Bearer {credential}"}
        async with httpx.AsyncClient(timeout=5) as client:
            return await client.post(self.element_url + "/messages", json=document, headers=headers)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    key = VapidKey.generate()
    sender = Sender(key, "mailto:test@example.com", retry=RetryPolicy.none())
    async with running_service(tmp_path / "service") as service, sender:
        events: list[ElementEvent] = []
        element = PushElement(
            DOMAIN,
            sender,
            application_server_key=key.public_key_b64,
            on_event=events.append,
            push_origins=[service.url],
        )
        async with ElementServer(ElementApp(element)) as server:
            result = Stack(tmp_path, service, element, server, key, events)
            try:
                yield result
            finally:
                for runtime in reversed(result.runtimes):
                    await runtime.close()


async def wait_for(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll `predicate` until it returns something true; its value."""
    async with asyncio.timeout(timeout):
        while not (value := predicate()):
            await asyncio.sleep(0.02)
    return value


def events_of(runtime: HypertyRuntime, kind: str) -> list[dict[str, Any]]:
    return [e for e in runtime.events() if e["event"] == kind]


def answers(collected: list[Message]) -> list[int | None]:
    return [m.code for m in collected]
