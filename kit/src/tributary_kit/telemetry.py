"""Tracing set-up and the W3C trace context that travels inside every Kafka event.

The trace context is carried in :attr:`schemas.envelope.Envelope.traceparent`; a producer
puts the current span's context there and a consumer starts its span as a child of it, so
one trace follows an event from ingest to inference.
"""

from __future__ import annotations

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()


def build_tracer_provider(
    service: str,
    version: str,
    *,
    otlp_endpoint: str | None = None,
    exporter: SpanExporter | None = None,
) -> TracerProvider:
    """A tracer provider for ``service``; spans go to OTLP/HTTP when an endpoint is given.

    The caller owns it (shut it down in the lifespan); nothing global is set here.
    """
    provider = TracerProvider(resource=Resource.create({"service.name": service, "service.version": version}))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the active span, or None outside any span."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def context_from(traceparent: str | None) -> otel_context.Context:
    """A context whose parent is the span named by ``traceparent`` (empty when None or invalid)."""
    if not traceparent:
        return otel_context.Context()
    return _PROPAGATOR.extract({"traceparent": traceparent})


def tracer(provider: trace.TracerProvider, name: str) -> trace.Tracer:
    """A tracer from ``provider`` (kept explicit so tests can give their own provider)."""
    return provider.get_tracer(name)
