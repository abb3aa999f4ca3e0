"""The limits of every request field, checked before a method does any work.

The limits are written once: a field's own ``(crm.common.v1.limits)`` option in
its proto, or else its type's default below. :func:`violations` walks a
request by its descriptor and names every field out of bounds, so every
method of every service refuses the same inputs the same way (INVALID_ARGUMENT
with ``BadRequest`` field violations) and a client reading the contracts
through reflection sees the limits too. docs/integration.md ("Limits") lists
the defaults and every field that has its own.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

from google.protobuf import descriptor as _d
from google.protobuf.message import Message

from crm.common.v1 import options_pb2
from crm_contracts import times
from crm_contracts.errors import quote

#: Defaults for a field without its own limits.
MAX_STRING = 200
MAX_ITEMS = 100
INT_MIN, INT_MAX = 0, 2**31 - 1
#: A protobuf Timestamp's bounds: the documented window, in Unix seconds.
TIME_MIN = int(times.EARLIEST.timestamp())
TIME_MAX = int(times.LATEST.timestamp())

_INTEGERS = {_d.FieldDescriptor.TYPE_INT32, _d.FieldDescriptor.TYPE_INT64,
             _d.FieldDescriptor.TYPE_UINT32, _d.FieldDescriptor.TYPE_UINT64,
             _d.FieldDescriptor.TYPE_SINT32, _d.FieldDescriptor.TYPE_SINT64,
             _d.FieldDescriptor.TYPE_FIXED32, _d.FieldDescriptor.TYPE_FIXED64,
             _d.FieldDescriptor.TYPE_SFIXED32, _d.FieldDescriptor.TYPE_SFIXED64}
_FLOATS = {_d.FieldDescriptor.TYPE_DOUBLE, _d.FieldDescriptor.TYPE_FLOAT}
_TIMESTAMP = "google.protobuf.Timestamp"


@dataclass(frozen=True)
class Limits:
    """One field's bounds: its own option over its type's default."""

    max_length: int = MAX_STRING
    min: int = INT_MIN
    max: int = INT_MAX
    max_items: int = MAX_ITEMS
    #: Only the count is checked with the request: the method checks each item.
    items_checked_alone: bool = False


@cache
def limits_of(field: _d.FieldDescriptor) -> Limits:
    options = field.GetOptions()
    if not options.HasExtension(options_pb2.limits):
        return Limits()
    own = options.Extensions[options_pb2.limits]
    default = Limits()
    return Limits(
        max_length=own.max_length if own.HasField("max_length") else default.max_length,
        min=own.min if own.HasField("min") else default.min,
        max=own.max if own.HasField("max") else default.max,
        max_items=own.max_items if own.HasField("max_items") else default.max_items,
        items_checked_alone=own.items_checked_alone)


def violations(message: Message, prefix: str = "") -> list[tuple[str, str]]:
    """Every field of ``message`` (nested messages and list items too) outside
    its limits, as ``(field path, problem)``; empty when the request is fine."""
    return list(_walk(message, prefix))


def _walk(message: Message, prefix: str) -> Iterator[tuple[str, str]]:
    if message.DESCRIPTOR.full_name == _TIMESTAMP:
        yield from _timestamp(message, prefix.rstrip(".") or "timestamp")
        return
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        limits = limits_of(field)
        if _is_map(field):
            if len(value) > limits.max_items:
                yield path, f"at most {limits.max_items} entries, got {len(value)}"
            continue  # no map field is part of a request today
        if field.is_repeated:
            if len(value) > limits.max_items:
                yield path, f"at most {limits.max_items} items, got {len(value)}"
                continue
            if limits.items_checked_alone:
                continue
            for i, item in enumerate(value):
                yield from _value(field, limits, item, f"{path}[{i}]")
        else:
            yield from _value(field, limits, value, path)


def _value(field: _d.FieldDescriptor, limits: Limits, value: Any,
           path: str) -> Iterator[tuple[str, str]]:
    kind = field.type
    if kind == _d.FieldDescriptor.TYPE_STRING:
        if len(value) > limits.max_length:
            yield path, f"at most {limits.max_length} characters, got {len(value)}"
        elif "\x00" in value:
            yield path, f"must not contain NUL characters: {quote(value)}"
    elif kind == _d.FieldDescriptor.TYPE_BYTES:
        if len(value) > limits.max_length:
            yield path, f"at most {limits.max_length} bytes, got {len(value)}"
    elif kind in _INTEGERS:
        if not limits.min <= value <= limits.max:
            yield path, f"must be between {limits.min} and {limits.max}, got {value}"
    elif kind in _FLOATS:
        if not math.isfinite(value):
            yield path, f"must be a finite number, got {value}"
    elif kind == _d.FieldDescriptor.TYPE_ENUM:
        enum = field.enum_type
        if enum is not None and enum.values_by_number.get(value) is None:
            known = ", ".join(v.name for v in enum.values)
            yield path, f"{value} is not one of {known}"
    elif kind == _d.FieldDescriptor.TYPE_MESSAGE:
        yield from _walk(value, f"{path}.")


def _timestamp(ts: Any, path: str) -> Iterator[tuple[str, str]]:
    if not 0 <= ts.nanos <= 999_999_999:
        yield path, f"nanos must be between 0 and 999999999, got {ts.nanos}"
    elif not TIME_MIN <= ts.seconds < TIME_MAX:
        yield path, (f"must be from {times.EARLIEST:%Y-%m-%d} to before "
                     f"{times.LATEST:%Y-%m-%d} (UTC), got {ts.seconds} seconds since 1970")


def _is_map(field: _d.FieldDescriptor) -> bool:
    entry = field.message_type
    return entry is not None and entry.GetOptions().map_entry
