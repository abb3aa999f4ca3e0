"""OpenTelemetry traces, off by default.

``CRM_OTEL_EXPORTER=otlp`` sends spans to an OpenTelemetry collector (the
standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
variables say where), ``console`` prints them, ``none`` (the default) makes
none. Spans are opened where work enters a service: a gRPC call (parent: the
caller's ``traceparent`` metadata) and a consumed event (parent: its
``ce_traceparent`` header). Events written inside carry that span as their
parent, so one customer's story is one trace across the Kafka hops and gRPC
calls. Without an exporter the same W3C trace context still flows and is in
every log line (:mod:`crm_runtime.logs`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from crm_runtime.version import VERSION

_PROPAGATOR = TraceContextTextMapPropagator()
_tracer: trace.Tracer | None = None

KINDS = {"server": trace.SpanKind.SERVER, "consumer": trace.SpanKind.CONSUMER,
         "internal": trace.SpanKind.INTERNAL}


def configure(exporter: str, service: str, *, span_exporter: SpanExporter | None = None) -> None:
    """Turn tracing on for this process (``span_exporter`` is for tests)."""
    global _tracer
    if exporter == "none" and span_exporter is None:
        _tracer = None
        return
    provider = TracerProvider(resource=Resource.create(
        {"service.name": f"crm-{service}", "service.version": VERSION}))
    if span_exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    elif exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _tracer = provider.get_tracer("crm_runtime")


def enabled() -> bool:
    return _tracer is not None


@contextlib.contextmanager
def span(name: str, traceparent: str, kind: str = "internal",
         attributes: dict[str, Any] | None = None) -> Iterator[str]:
    """A span continuing ``traceparent``; yields the traceparent of the new
    span (what events written inside should carry), or ``traceparent``
    unchanged when tracing is off."""
    if _tracer is None:
        yield traceparent
        return
    parent = _PROPAGATOR.extract({"traceparent": traceparent}) if traceparent else None
    with _tracer.start_as_current_span(name, context=parent, kind=KINDS[kind],
                                       attributes=attributes or {}):
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        yield carrier.get("traceparent", traceparent)
