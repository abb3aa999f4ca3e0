"""OpenTelemetry spans continue the trace an event or call arrived with, and
events written inside carry the span as their parent."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from crm_runtime import logs, tracing
from crm_runtime.events import Envelope
from tests.unit.sample_events import SomethingHappened


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.configure("none", "unit", span_exporter=exporter)
    yield exporter
    tracing.configure("none", "unit")


def test_a_consumed_event_is_a_span_of_its_trace(spans: InMemorySpanExporter) -> None:
    incoming = Envelope(data=SomethingHappened(customer_id="c-9", points=1), subject="c-9",
                        source="/shop", traceparent=logs.new_traceparent())
    for env in logs.each([incoming]):
        written = Envelope(data=SomethingHappened(customer_id="c-9", points=2),
                           subject="c-9", source="/crm/unit")
        assert env is incoming
    [span] = spans.get_finished_spans()
    assert span.name == "process unit.something_happened"
    assert format(span.context.trace_id, "032x") == logs.trace_id(incoming.traceparent)
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == incoming.traceparent.split("-")[2]
    assert span.attributes is not None and span.attributes["crm.customer_id"] == "c-9"
    # The event written inside names this span as its parent.
    assert written.traceparent.split("-")[2] == format(span.context.span_id, "016x")


def test_off_by_default_no_spans_but_the_trace_still_flows() -> None:
    tracing.configure("none", "unit")
    parent = logs.new_traceparent()
    with logs.context(traceparent=parent, span="GetCustomer", kind="server"):
        child = logs.current_traceparent()
    assert not tracing.enabled()
    assert logs.trace_id(child) == logs.trace_id(parent)
