"""The sender starts a trace for each push and hands it on in `traceparent`."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from click.testing import CliRunner
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from sender.helpers import Keys, ScriptedService
from tidings import tracing
from tidings.cli import main
from tidings.sender import Sender
from tidings.webpush import VapidKey


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.enable("test-sender", exporter=exporter)
    yield exporter
    tracing.disable()


async def test_each_push_is_a_client_span_whose_context_the_request_carries(
    push_service: ScriptedService, vapid_key: VapidKey, spans: InMemorySpanExporter
) -> None:
    push_service.script("a", (201, {"Location": "/m/1"}, b""))
    async with Sender(vapid_key, "mailto:ops@example.com") as sender:
        result = await sender.send(
            Keys.generate().subscription(push_service.endpoint("a")), "hi", ttl=60
        )
    assert result.ok
    (finished,) = spans.get_finished_spans()
    assert finished.name == "webpush send" and finished.kind is SpanKind.CLIENT
    assert finished.attributes is not None
    assert finished.attributes["http.response.status_code"] == 201
    assert finished.attributes["server.address"] == "127.0.0.1"
    # The capability URL itself never goes into the trace.
    assert all("/push/" not in str(value) for value in finished.attributes.values())
    header = push_service.seen("a")[0].headers["traceparent"]
    version, trace_id, span_id, flags = header.split("-")
    context = finished.get_span_context()
    assert version == "00" and int(flags, 16) & 1  # sampled
    assert trace_id == format(context.trace_id, "032x")
    assert span_id == format(context.span_id, "016x")


async def test_a_traced_fan_out_gives_each_request_its_own_traceparent(
    push_service: ScriptedService, vapid_key: VapidKey, spans: InMemorySpanExporter
) -> None:
    """The fan-out's requests share their headers: each span's header goes to a copy."""
    subs = [Keys.generate().subscription(push_service.endpoint(f"f{i}")) for i in range(3)]
    async with Sender(vapid_key, "mailto:ops@example.com") as sender:
        summary = await sender.send_many(subs, "hi", ttl=60)
    assert summary.accepted == 3
    parents = [push_service.seen(f"f{i}")[0].headers["traceparent"] for i in range(3)]
    span_ids = {
        format(span.get_span_context().span_id, "016x") for span in spans.get_finished_spans()
    }
    assert {parent.split("-")[2] for parent in parents} == span_ids
    assert len(span_ids) == 3


async def test_without_tracing_nothing_is_added(
    push_service: ScriptedService, vapid_key: VapidKey
) -> None:
    assert not tracing.enabled()
    push_service.script("b", (201, {}, b""))
    async with Sender(vapid_key, "mailto:ops@example.com") as sender:
        await sender.send(Keys.generate().subscription(push_service.endpoint("b")), "hi", ttl=60)
    assert "traceparent" not in {name.lower() for name in push_service.seen("b")[0].headers}


class _Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP trace collector: keeps each export request's spans."""

    exports: ClassVar[list[ExportTraceServiceRequest]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/traces":
            self.exports.append(ExportTraceServiceRequest.FromString(body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


async def test_tidings_send_exports_its_trace_over_otlp(
    push_service: ScriptedService, vapid_key: VapidKey, tmp_path: Path
) -> None:
    collector = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    _Collector.exports.clear()
    key = tmp_path / "vapid.pem"
    key.write_bytes(vapid_key.to_pem())
    subscription = tmp_path / "sub.json"
    subscription.write_text(json.dumps(Keys.generate().subscription(push_service.endpoint("o"))))
    push_service.script("o", (201, {"Location": "/m/1"}, b""))
    arguments = [
        "send", "--key", str(key), "--subject", "mailto:ops@example.com",
        "--subscription", str(subscription), "hello",
        "--otlp-endpoint", f"http://127.0.0.1:{collector.server_address[1]}",
    ]  # fmt: skip
    try:
        result = await asyncio.to_thread(CliRunner().invoke, main, arguments)
    finally:
        collector.shutdown()
        collector.server_close()
    assert result.exit_code == 0, result.output
    assert not tracing.enabled()  # the command shut its exporter down, flushing it
    exported = [
        span
        for request in _Collector.exports
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    assert [span.name for span in exported] == ["webpush send"]
    trace_id = push_service.seen("o")[0].headers["traceparent"].split("-")[1]
    assert exported[0].trace_id.hex() == trace_id
