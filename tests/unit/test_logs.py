"""JSON log lines carry the service, event, customer and trace ids."""

from __future__ import annotations

import json
import logging

from crm_runtime import logs


def test_json_lines_carry_the_context() -> None:
    record = logging.LogRecord("crm.test", logging.WARNING, __file__, 1, "late %s", ("case",),
                               None)
    parent = logs.new_traceparent()
    logs.set_service("interactions")
    with logs.context(event_id="e-1", customer_id="c-1", traceparent=parent):
        line = json.loads(logs.JsonFormatter().format(record))
        child = logs.current_traceparent()
    assert line["message"] == "late case" and line["level"] == "WARNING"
    assert (line["service"], line["event_id"], line["customer_id"]) == (
        "interactions", "e-1", "c-1")
    assert line["trace_id"] == logs.trace_id(parent)
    assert logs.trace_id(child) == logs.trace_id(parent) and child != parent


def test_a_bad_traceparent_starts_a_new_trace() -> None:
    with logs.context(traceparent="garbage"):
        assert logs.valid_traceparent(logs.current_traceparent())
