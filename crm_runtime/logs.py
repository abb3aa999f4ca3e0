"""Structured logs and the trace context they carry.

Log lines are JSON objects when stderr is not a terminal (a container, a file,
a pipe) and short human lines when it is, the usual convention;
``CRM_LOG_FORMAT=json`` or ``human`` forces one (``auto``, the default, picks;
``text`` is an old name of ``human``). A JSON line carries the service, and,
when known, the event id, customer id and W3C trace id of the work in
progress; a human line the same ids that are set, after the message. The
context lives in contextvars: the consumer sets it for each event it hands to
a handler (:func:`each`), the gRPC interceptor for each call, and events
written meanwhile carry the same ``traceparent`` (CloudEvents distributed-tracing extension, header
``ce_traceparent``), so one customer's story can be followed across the Kafka
hops and gRPC calls by its trace id.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Protocol, TextIO, TypeVar

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


class HumanFormatter(logging.Formatter):
    """``12:03:04 WARNING customers crm_runtime.consumer: message (customer=...)``:
    local time, then the ids of the work in progress that are set."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        service = _service.get()
        context = [f"{name}={value}" for name, value in (
            ("event", _event_id.get()), ("customer", _customer_id.get()),
            ("trace", trace_id(_traceparent.get()))) if value]
        line = (f"{when} {record.levelname:<7} {service + ' ' if service else ''}"
                f"{record.name}: {record.getMessage()}")
        if context:
            line += f"  ({' '.join(context)})"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


#: ``CRM_LOG_FORMAT`` values: ``auto`` picks by the stream, ``text`` is the
#: old name of ``human``.
FORMATS = ("auto", "json", "human", "text")


def resolve_format(fmt: str, stream: TextIO | None = None) -> str:
    """``json`` or ``human``: the one asked for, or for ``auto`` human when
    ``stream`` (default stderr) is a terminal and JSON otherwise."""
    if fmt == "text":
        return "human"
    if fmt in ("json", "human"):
        return fmt
    if fmt != "auto":
        raise ValueError(f"log format {fmt!r}: expected one of {', '.join(FORMATS)}")
    stream = sys.stderr if stream is None else stream
    try:
        return "human" if stream.isatty() else "json"
    except (AttributeError, ValueError):  # no isatty, or closed
        return "json"


def configure(level: str, fmt: str = "auto", stream: TextIO | None = None) -> str:
    """Send every log record to ``stream`` (default stderr) in ``fmt``;
    returns the format chosen (``json`` or ``human``)."""
    chosen = resolve_format(fmt, stream)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if chosen == "json" else HumanFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    # pgserver logs every initdb/pg_ctl command with its whole output at INFO.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    return chosen
