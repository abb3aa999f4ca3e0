"""Structured logs and the trace context they carry.

Every log line is one JSON object (``CRM_LOG_FORMAT=json``, the default; ``text``
for a terminal) with the service, and, when known, the event id, customer id
and W3C trace id of the work in progress. The context lives in contextvars:
the consumer sets it for each event it hands to a handler (:func:`each`), the
gRPC interceptor for each call, and events written meanwhile carry the same
``traceparent`` (CloudEvents distributed-tracing extension, header
``ce_traceparent``), so one customer's story can be followed across the Kafka
hops and gRPC calls by its trace id.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from crm_runtime import ids, tracing

_service: ContextVar[str] = ContextVar("crm_service", default="")
_event_id: ContextVar[str] = ContextVar("crm_event_id", default="")
_customer_id: ContextVar[str] = ContextVar("crm_customer_id", default="")
_traceparent: ContextVar[str] = ContextVar("crm_traceparent", default="")

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def new_traceparent(trace_id: str | None = None) -> str:
    """A W3C ``traceparent`` with a fresh span id (and trace id unless given)."""
    return f"00-{trace_id or ids.random_hex(16)}-{ids.random_hex(8)}-01"


def valid_traceparent(value: str) -> bool:
    return bool(_TRACEPARENT.match(value))


def trace_id(traceparent: str) -> str:
    match = _TRACEPARENT.match(traceparent)
    return match.group(1) if match else ""


def current_traceparent() -> str:
    """The traceparent for a new event: the current span when tracing is on
    (the event's consumer continues it), else a child of the current trace,
    else a new trace."""
    parent = _traceparent.get()
    if not parent:
        return new_traceparent()
    if tracing.enabled():
        return parent
    # The context holds only valid traceparents (context() and each() check
    # them), so the trace id is characters 3-34; no regex on this hot path.
    return new_traceparent(parent[3:35])


def set_service(name: str) -> None:
    _service.set(name)


@contextlib.contextmanager
def context(*, event_id: str = "", customer_id: str = "", traceparent: str = "",
            span: str = "", kind: str = "internal") -> Iterator[None]:
    """Set the log and trace context; with ``span`` named and tracing on, the
    work inside is an OpenTelemetry span continuing ``traceparent``."""
    parent = traceparent if valid_traceparent(traceparent) else new_traceparent()
    attributes = {k: v for k, v in (("crm.event_id", event_id),
                                    ("crm.customer_id", customer_id)) if v}
    spanned = (tracing.span(span, parent, kind, attributes) if span
               else contextlib.nullcontext(parent))
    with spanned as current:
        tokens = [_event_id.set(event_id), _customer_id.set(customer_id),
                  _traceparent.set(current)]
        try:
            yield
        finally:
            _traceparent.reset(tokens[2])
            _customer_id.reset(tokens[1])
            _event_id.reset(tokens[0])


class TracedEvent(Protocol):
    """What :func:`each` reads of an event (an :class:`crm_runtime.events.Envelope`)."""

    @property
    def id(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def traceparent(self) -> str: ...
    @property
    def type(self) -> str: ...


#: Events of one payload class (the envelopes a typed handler gets).
E = TypeVar("E", bound=TracedEvent)


def each(events: Iterable[E]) -> Iterator[E]:
    """Iterate events with the log and trace context (and span) of each one."""
    if tracing.enabled():
        for env in events:
            with context(event_id=env.id, customer_id=env.subject,
                         traceparent=env.traceparent, span=f"process {env.type}",
                         kind="consumer"):
                yield env
        return
    # No spans: the same context as :func:`context` gives, set without a
    # context manager per event (a consumed batch has hundreds).
    tokens = (_event_id.set(""), _customer_id.set(""), _traceparent.set(""))
    try:
        for env in events:
            parent = env.traceparent
            _event_id.set(env.id)
            _customer_id.set(env.subject)
            _traceparent.set(parent if _TRACEPARENT.match(parent) else new_traceparent())
            yield env
    finally:
        _traceparent.reset(tokens[2])
        _customer_id.reset(tokens[1])
        _event_id.reset(tokens[0])


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
            "service": _service.get(), "event_id": _event_id.get(),
            "customer_id": _customer_id.get(), "trace_id": trace_id(_traceparent.get()),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
