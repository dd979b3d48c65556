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
    "TracingUnavailable",
    "disable",
    "enable",
    "enabled",
    "extract",
    "inject",
    "span",
    "trace_id_of",
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
