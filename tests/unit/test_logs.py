"""JSON log lines carry the service, event, customer and trace ids."""

from __future__ import annotations

import io
import json
import logging

import pytest

from crm_runtime import logs
from crm_runtime.events import Envelope
from crm_runtime.settings import SettingsError, load_settings
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


class _Stream(io.StringIO):
    """A stream that says whether it is a terminal."""

    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


@pytest.mark.parametrize(("fmt", "tty", "chosen"), [
    ("auto", True, "human"), ("auto", False, "json"),
    ("json", True, "json"), ("json", False, "json"),
    ("human", True, "human"), ("human", False, "human"),
    ("text", False, "human"),  # the old name of human
])
def test_the_format_follows_the_terminal_unless_forced(fmt: str, tty: bool,
                                                       chosen: str) -> None:
    assert logs.resolve_format(fmt, _Stream(tty)) == chosen


def test_auto_on_a_closed_or_odd_stream_is_json() -> None:
    closed = io.StringIO()
    closed.close()
    assert logs.resolve_format("auto", closed) == "json"


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="auto, json, human, text"):
        logs.resolve_format("xml", _Stream(True))


@pytest.mark.parametrize(("env", "expected"), [
    ({}, "auto"), ({"CRM_LOG_FORMAT": "json"}, "json"), ({"CRM_LOG_FORMAT": "human"}, "human")])
def test_crm_log_format_is_a_setting(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                     expected: str) -> None:
    monkeypatch.delenv("CRM_LOG_FORMAT", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert load_settings().log_format == expected


def test_a_bad_crm_log_format_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_LOG_FORMAT", "xml")
    with pytest.raises(SettingsError, match="CRM_LOG_FORMAT"):
        load_settings()


@pytest.mark.parametrize("tty", [True, False])
def test_configure_writes_the_chosen_format(tty: bool) -> None:
    stream = _Stream(tty)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        chosen = logs.configure("INFO", "auto", stream)
        logs.set_service("loyalty")
        with logs.context(customer_id="c-9"):
            logging.getLogger("crm.test").info("serving gRPC on %s", "127.0.0.1:50053")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logs.set_service("")
    line = stream.getvalue().strip()
    assert chosen == ("human" if tty else "json")
    if tty:
        assert not line.startswith("{"), line
        assert "INFO" in line and "loyalty crm.test: serving gRPC on 127.0.0.1:50053" in line
        assert "customer=c-9" in line
    else:
        record = json.loads(line)
        assert record["message"] == "serving gRPC on 127.0.0.1:50053"
        assert (record["service"], record["customer_id"]) == ("loyalty", "c-9")
