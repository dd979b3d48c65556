"""The transport seam: a transport says whether it keeps deadlines itself, and Sender asks."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import ClassVar, Literal

import pytest

from sender.helpers import Keys, ScriptedService
from tidings.sender import ResultKind, RetryPolicy, Sender
from tidings.sender.transport import (
    DeadlineTransport,
    HttpxTransport,
    PooledTransport,
    Response,
    TransportError,
)
from tidings.webpush import VapidKey

ENDPOINT = "https://push.example.net/push/abc"
ONCE = RetryPolicy(max_attempts=1)


class PlainTransport:
    """A user's transport: `request` takes no timeout; Sender bounds it."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls = 0

    async def request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes
    ) -> Response:
        self.calls += 1
        await asyncio.sleep(self.delay)
        return Response(201, {"location": "/m/1"}, b"", "HTTP/1.1")

    async def aclose(self) -> None:
        pass


class TimedTransport(PlainTransport):
    """A transport that keeps deadlines: Sender hands it the timeout instead."""

    keeps_deadlines: ClassVar[Literal[True]] = True

    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[float | None] = []

    async def request(  # type: ignore[override]
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        timeout: float | None = None,
    ) -> Response:
        self.timeouts.append(timeout)
        return await super().request(method, url, headers, body)


def test_the_built_in_transports_say_what_they_can_do() -> None:
    assert isinstance(PooledTransport(), DeadlineTransport)
    assert not isinstance(PlainTransport(), DeadlineTransport)
    assert not hasattr(HttpxTransport, "keeps_deadlines")


async def test_a_transport_that_keeps_deadlines_is_given_the_timeout(
    vapid_key: VapidKey,
) -> None:
    transport = TimedTransport()
    async with Sender(vapid_key, "mailto:a@b.c", transport=transport, timeout=7.5) as sender:
        result = await sender.send(Keys.generate().subscription(ENDPOINT), "x", ttl=60)
    assert result.kind is ResultKind.ACCEPTED
    assert transport.timeouts == [7.5]


async def test_any_other_transport_is_bounded_by_the_sender(vapid_key: VapidKey) -> None:
    transport = PlainTransport(delay=30)
    async with Sender(
        vapid_key, "mailto:a@b.c", transport=transport, timeout=0.2, retry=ONCE
    ) as sender:
        result = await sender.send(Keys.generate().subscription(ENDPOINT), "x", ttl=60)
    assert result.kind is ResultKind.FAILED and transport.calls == 1
    assert result.reason == "no answer within 0.2 s"


async def test_pooled_requests_fail_when_awaited_not_when_made(
    push_service: ScriptedService,
) -> None:
    """`PooledTransport.request` hands out a coroutine (a known origin's kept-alive path
    without a frame of its own): every error still comes from awaiting it, none from the
    call, on both the known-origin and the parsing path."""
    transport = PooledTransport()
    url = push_service.endpoint("a")
    for _ in range(3):  # the first opens the connection, the others reuse it
        answer = await transport.request("POST", url, {}, b"", timeout=5.0)
        assert answer.status == 201
    assert len(push_service.peers) == 1
    bad = transport.request("POST", "ftp://push.example.net/x", {}, b"", timeout=5.0)
    with pytest.raises(TransportError, match="http"):
        await bad
    await transport.aclose()
    for made in (
        transport.request("POST", url, {}, b"", timeout=5.0),
        transport.request("POST", url, {}, b""),
    ):
        with pytest.raises(TransportError, match="closed"):
            await made
