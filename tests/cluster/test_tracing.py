"""One trace follows a push from the sender to the user agent's acknowledgement, across
two cluster nodes (real PostgreSQL and Redis), with the SDK's in-memory exporter: the
sender's client span, the accepting node's server span with its store and route
children, the delivering node's delivery, and the acknowledgement under it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cluster.conftest import in_process_nodes
from support.service import running_service
from tidings import tracing
from tidings.sender import Sender
from tidings.service.logs import JsonFormatter
from tidings.webpush import VapidKey

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(120)]


@pytest.fixture
def spans() -> AsyncIterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.enable("tidings-test", exporter=exporter)
    yield exporter  # type: ignore[misc]
    tracing.disable()


def _only(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, [span.name for span in spans]
    return found[0]


def _parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_one_trace_from_the_sender_to_the_ack_across_two_nodes(
    tmp_path: Path, spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tidings.access")
    async with in_process_nodes(tmp_path) as (node_a, node_b):
        agent = await node_b.agent()  # the user agent is connected to node b
        registration = await agent.register()
        subscription = registration.subscription_info()
        # The sender pushes through node a, which routes over Redis to node b.
        subscription["endpoint"] = node_a.url + urlsplit(registration.endpoint).path
        async with Sender(VapidKey.generate(), "mailto:ops@example.com") as sender:
            result = await sender.send(subscription, "traced", ttl=60)
        assert result.status == 201, result
        notification = await agent.next_notification(timeout=10)  # acknowledges it
        assert notification.plaintext == b"traced"
        deadline = time.monotonic() + 10
        while not any(span.name == "push ack" for span in spans.get_finished_spans()):
            assert time.monotonic() < deadline, [s.name for s in spans.get_finished_spans()]
            await asyncio.sleep(0.05)
        await agent.close()

    finished = list(spans.get_finished_spans())
    send = _only(finished, "webpush send")
    accept = _only(finished, "push accept")
    store = _only(finished, "push store")
    route = _only(finished, "push route")
    deliver = _only(finished, "push deliver")
    ack = _only(finished, "push ack")
    trace_id = send.context.trace_id
    assert {span.context.trace_id for span in (accept, store, route, deliver, ack)} == {trace_id}
    assert _parent_of(accept) == send.context.span_id
    assert _parent_of(store) == accept.context.span_id
    assert _parent_of(route) == accept.context.span_id
    assert _parent_of(deliver) == accept.context.span_id
    assert _parent_of(ack) == deliver.context.span_id
    assert accept.attributes is not None and accept.attributes["tidings.node"] == "node-a"
    assert accept.attributes["http.response.status_code"] == 201
    assert deliver.attributes is not None and deliver.attributes["tidings.node"] == "node-b"
    assert deliver.attributes["tidings.via"] == "websocket"
    assert ack.attributes is not None and ack.attributes["tidings.ack_code"] == 100
    # The push's access line carries the trace id, so logs and traces join.
    access = [r for r in caplog.records if '"POST /push/' in r.getMessage()]
    assert access and getattr(access[0], "trace_id", None) == format(trace_id, "032x")
    assert f'"trace_id": "{format(trace_id, "032x")}"' in JsonFormatter().format(access[0])


async def test_without_tracing_no_trace_is_kept(tmp_path: Path) -> None:
    assert not tracing.enabled()
    async with running_service(tmp_path) as service:
        agent = await service.agent()
        registration = await agent.register()
        async with Sender(VapidKey.generate(), "mailto:ops@example.com") as sender:
            assert (await sender.send(registration.subscription_info(), "x", ttl=60)).ok
        await agent.next_notification()
        assert service.service is not None and len(service.service.trace_book) == 0
        await agent.close()


def test_the_trace_book_is_bounded() -> None:
    book = tracing.TraceBook(capacity=3)
    for n in range(5):
        book.remember(f"m{n}", f"00-{n:032x}-{n:016x}-01")
    assert len(book) == 3
    assert book.take("m0") is None and book.take("m4") == f"00-{4:032x}-{4:016x}-01"
    book.remember("untraced", None)
    assert len(book) == 2
