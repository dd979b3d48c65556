"""OpenTelemetry tracing, off unless asked for.

One trace follows a push from the application server (`tidings.sender` starts it and
sends the W3C `traceparent` header) through the service (accept, store, route over the
cluster bus, deliver, acknowledge). The OpenTelemetry packages are an optional extra
(`pip install 'tidings[tracing]'`); without them, or until `enable()` is called, every
helper here is a no-op that costs one check, so the hot paths pay nothing.

Tidings keeps its own tracer provider instead of installing a global one, so that an
application using Tidings as a library keeps control of its own tracing set-up.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

__all__ = [
    "TRACEPARENT",
    "TraceBook",
    "TracingUnavailable",
    "current_trace_id",
    "disable",
    "enable",
    "enabled",
    "extract",
    "inject",
    "parent_from",
    "span",
    "trace_id_of",
    "traceparent_of",
]

TRACEPARENT = "traceparent"


class TracingUnavailable(RuntimeError):
    """Tracing was asked for, but the OpenTelemetry SDK is not installed."""


class _State:
    provider: TracerProvider | None = None
    tracer: Tracer | None = None


def enabled() -> bool:
    """True once `enable()` has set up a tracer."""
    return _State.tracer is not None


def enable(
    service_name: str,
    *,
    endpoint: str | None = None,
    exporter: SpanExporter | None = None,
) -> None:
    """Export spans of this process: to an OTLP/HTTP `endpoint`, or to `exporter`.

    `exporter` is for tests (the SDK's in-memory exporter) and is exported synchronously;
    an OTLP endpoint gets a batching processor so a push never waits on the collector.
    """
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise TracingUnavailable(
            "tracing needs the OpenTelemetry SDK: pip install 'tidings[tracing]'"
        ) from exc
    disable()
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    if endpoint is not None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        url = endpoint.rstrip("/")
        if not url.endswith("/v1/traces"):
            url += "/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
    _State.provider = provider
    _State.tracer = provider.get_tracer("tidings")


def disable() -> None:
    """Stop tracing; spans still queued are exported first."""
    provider, _State.provider, _State.tracer = _State.provider, None, None
    if provider is not None:
        provider.shutdown()


@contextmanager
def span(
    name: str,
    *,
    kind: str = "internal",
    parent: Context | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[Span | None]:
    """A span as a context manager, or None (and no cost) when tracing is off.

    `kind` is client, server, producer, consumer or internal; `parent` a context from
    `extract()` (a remote parent), else the current span is the parent.
    """
    tracer = _State.tracer
    if tracer is None:
        yield None
        return
    from opentelemetry.trace import SpanKind

    with tracer.start_as_current_span(
        name, context=parent, kind=SpanKind[kind.upper()], attributes=attributes
    ) as current:
        yield current


def inject(carrier: MutableMapping[str, str], current: Span | None = None) -> None:
    """Add `traceparent` (and `tracestate`) for `current`, or the current span, to carrier."""
    if _State.tracer is None:
        return
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    context = trace.set_span_in_context(current) if current is not None else None
    TraceContextTextMapPropagator().inject(carrier, context=context)


def extract(carrier: Mapping[str, str]) -> Context | None:
    """The remote parent a `traceparent` in carrier names, or None (also when off)."""
    if _State.tracer is None or TRACEPARENT not in carrier:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract(carrier)


def trace_id_of(current: Span | None) -> str | None:
    """The 32-hex trace id of a recording span, for log lines; None when off."""
    if current is None:
        return None
    context = current.get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def traceparent_of(current: Span | None) -> str | None:
    """The `traceparent` value naming `current` as a parent, to carry with a message."""
    if current is None:
        return None
    carrier: dict[str, str] = {}
    inject(carrier, current)
    return carrier.get(TRACEPARENT)


def parent_from(traceparent: str | None) -> Context | None:
    """The remote parent a carried `traceparent` names (None when off or absent)."""
    if traceparent is None:
        return None
    return extract({TRACEPARENT: traceparent})


def current_trace_id() -> str | None:
    """The trace id of the span running now, for log lines; None when off or outside one."""
    if _State.tracer is None:
        return None
    from opentelemetry import trace

    return trace_id_of(trace.get_current_span())


class TraceBook:
    """Which span delivered a message, until its acknowledgement names it (bounded).

    An acknowledgement carries only the message id; the book turns it back into the
    delivery's context so the ack span joins the message's trace. The oldest entries
    go first: a message never acknowledged costs a slot only until it is pushed out.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._parents: OrderedDict[str, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._parents)

    def remember(self, message_id: str, traceparent: str | None) -> None:
        if traceparent is None:
            return
        self._parents[message_id] = traceparent
        if len(self._parents) > self.capacity:
            self._parents.popitem(last=False)

    def take(self, message_id: str) -> str | None:
        return self._parents.pop(message_id, None)
