"""JSON log lines carry the service, event, customer and trace ids."""

from __future__ import annotations

import json
import logging

from crm_runtime import logs
from crm_runtime.events import Envelope
from tests.support.ledger import EntryRequested


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


def test_each_gives_every_event_its_own_context_and_restores_the_callers() -> None:
    good = logs.new_traceparent()
    events = [Envelope(data=EntryRequested(customer_id="c-1", amount=1), subject="c-1",
                       source="/t", traceparent=good),
              Envelope(data=EntryRequested(customer_id="c-2", amount=2), subject="c-2",
                       source="/t", traceparent="not a traceparent")]
    record = logging.LogRecord("crm.test", logging.INFO, __file__, 1, "x", (), None)
    with logs.context(event_id="outer", customer_id="c-0", traceparent=good):
        seen = []
        for _env in logs.each(events):
            line = json.loads(logs.JsonFormatter().format(record))
            seen.append((line["event_id"], line["customer_id"], line["trace_id"]))
        after = json.loads(logs.JsonFormatter().format(record))
    assert seen[0] == (events[0].id, "c-1", logs.trace_id(good))
    assert seen[1][:2] == (events[1].id, "c-2")
    assert seen[1][2] and seen[1][2] != logs.trace_id(good)  # a new trace for a bad parent
    assert (after["event_id"], after["customer_id"]) == ("outer", "c-0")
