"""Hypothesis strategies for any protobuf request, built from its descriptor.

Each field type draws from plausible values (so calls get past the first
check and reach the database) and from the classes of input that used to
reach INTERNAL: out-of-range timestamps and nanos, NUL characters, very long
strings, integer extremes, unknown enum numbers, NaN and infinity, long lists.
Fields that name a customer or a vocabulary word draw real ones too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from google.protobuf import descriptor as _d
from google.protobuf import message_factory
from google.protobuf.message import Message
from hypothesis import strategies as st

from crm_contracts import vocabulary

_INT32 = (_d.FieldDescriptor.TYPE_INT32, _d.FieldDescriptor.TYPE_SINT32,
          _d.FieldDescriptor.TYPE_SFIXED32)
_INT64 = (_d.FieldDescriptor.TYPE_INT64, _d.FieldDescriptor.TYPE_SINT64,
          _d.FieldDescriptor.TYPE_SFIXED64)
_UINT = (_d.FieldDescriptor.TYPE_UINT32, _d.FieldDescriptor.TYPE_UINT64,
         _d.FieldDescriptor.TYPE_FIXED32, _d.FieldDescriptor.TYPE_FIXED64)

#: Words the services know, so some requests pass the vocabulary checks.
WORDS = sorted({*vocabulary.CONTACT_CHANNELS, *vocabulary.KINDS, *vocabulary.DIRECTIONS,
                *vocabulary.OUTCOMES, *vocabulary.CONSENT_PURPOSES, "EUR", "USD", "direct",
                "indirect", "touchpoint", "all", "open", "newsletter", "welcome", "*"})

_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)
_EDGE_TEXT = st.sampled_from(["", " ", "\x00", "a\x00b", "x" * 201, "y" * 10_001, "é" * 300,
                              "'; DROP TABLE customers; --", "{}", "[]", "null", "🙂" * 50,
                              "1970-01-01T00:00:00Z", "-1", "9" * 40])
_INT32_EDGES = st.sampled_from([0, 1, -1, 2**31 - 1, -(2**31), 100, 1000, 36_500])
_INT64_EDGES = st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63), 2**31, 10**13, 10**13 + 1,
                                315_360_000, 315_360_001, 9_223_372_036_854_775])
#: Protobuf Timestamp seconds: its whole range, the product's window, and past both.
_SECONDS = st.one_of(st.integers(-62_135_596_800, 253_402_300_799),
                     st.sampled_from([0, -1, 946_684_800, 1_700_000_000, 4_102_444_800,
                                      253_402_300_800, -62_135_596_801, 2**62]))
_NANOS = st.one_of(st.integers(0, 999_999_999), st.sampled_from([-1, 1_000_000_000, -(2**31)]))


def requests(message: type[Message], customer_ids: Sequence[str]) -> st.SearchStrategy[Message]:
    """Requests of type ``message``: every field plausible for its name (so
    calls reach the database), each one adversarial now and then (one in
    :data:`ADVERSARIAL_ONE_IN`); fields ending in ``customer_id`` often name
    one of ``customer_ids``."""
    desc: Any = message.DESCRIPTOR
    return _message(desc, message, customer_ids, depth=0)


#: How often a field's value is drawn from the adversarial classes.
ADVERSARIAL_ONE_IN = 12


def _mix(plausible: st.SearchStrategy[Any], adversarial: st.SearchStrategy[Any]
         ) -> st.SearchStrategy[Any]:
    return st.integers(0, ADVERSARIAL_ONE_IN - 1).flatmap(
        lambda i: adversarial if i == 0 else plausible)


def _message(desc: _d.Descriptor, cls: Any, ids: Sequence[str],
             depth: int) -> st.SearchStrategy[Any]:
    if desc.full_name == "google.protobuf.Timestamp":
        return _mix(st.builds(lambda s, n: cls(seconds=s, nanos=n), _RECENT, st.integers(
            0, 999_999_999)), st.builds(lambda s, n: cls(seconds=s, nanos=n), _SECONDS, _NANOS))
    # A oneof gets one of its members at most.
    oneof_members = {f.name for o in desc.oneofs for f in o.fields}
    fields = {f.name: _field(f, ids, depth) for f in desc.fields
              if f.name not in oneof_members}
    optional = {f.name: _field(f, ids, depth) for f in desc.fields if f.name in oneof_members}

    def build(values: dict[str, Any]) -> Any:
        msg = cls()
        for name, value in values.items():
            _set(msg, desc.fields_by_name[name], value)
        return msg

    if not optional:
        return st.fixed_dictionaries(fields).map(build)
    member = st.sampled_from(sorted(optional)).flatmap(
        lambda name: optional[name].map(lambda v: {name: v}))
    return st.builds(lambda a, b: {**a, **b}, st.fixed_dictionaries(fields), member).map(build)


def _set(msg: Any, field: _d.FieldDescriptor, value: Any) -> None:
    if field.is_repeated:
        target = getattr(msg, field.name)
        if field.type == _d.FieldDescriptor.TYPE_MESSAGE:
            for item in value:
                target.add().CopyFrom(item)
        else:
            target.extend(value)
    elif field.type == _d.FieldDescriptor.TYPE_MESSAGE:
        getattr(msg, field.name).CopyFrom(value)
    else:
        setattr(msg, field.name, value)


def _field(field: _d.FieldDescriptor, ids: Sequence[str], depth: int) -> st.SearchStrategy[Any]:
    one = _scalar(field, ids, depth)
    if not field.is_repeated:
        return one
    long_list = (st.lists(one, min_size=101, max_size=101)
                 if field.type != _d.FieldDescriptor.TYPE_MESSAGE else st.just([]))
    return _mix(st.lists(one, max_size=3), long_list)


def _scalar(field: _d.FieldDescriptor, ids: Sequence[str], depth: int) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == _d.FieldDescriptor.TYPE_STRING:
        return _mix(_plausible_string(field.name, ids), st.one_of(_TEXT, _EDGE_TEXT))
    if kind == _d.FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=50)
    if kind == _d.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in _INT32:
        return _mix(_plausible_int(field.name), st.one_of(
            _INT32_EDGES, st.integers(-(2**31), 2**31 - 1)))
    if kind in _INT64:
        return _mix(_plausible_int(field.name), st.one_of(
            _INT64_EDGES, st.integers(-(2**63), 2**63 - 1)))
    if kind in _UINT:
        return st.integers(0, 2**32 - 1)
    if kind in (_d.FieldDescriptor.TYPE_DOUBLE, _d.FieldDescriptor.TYPE_FLOAT):
        return _mix(st.floats(0, 100), st.sampled_from([math.nan, math.inf, -math.inf, -1.0]))
    if kind == _d.FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        return _mix(st.sampled_from([v.number for v in field.enum_type.values]),
                    st.integers(-(2**31), 2**31 - 1))
    assert field.message_type is not None
    cls = message_factory.GetMessageClass(field.message_type)
    if depth >= 3:
        return st.just(cls())
    return _message(field.message_type, cls, ids, depth + 1)


#: Timestamps around now (protobuf seconds): the last year and the next hour.
_NOW = int(time.time())
_RECENT = st.integers(_NOW - 365 * 86_400, _NOW + 3_600)

#: Plausible values by field name (the name's last word), so requests pass
#: the services' vocabulary checks and reach their use cases.
_BY_NAME: dict[str, st.SearchStrategy[str]] = {
    "channel": st.sampled_from(sorted(vocabulary.CONTACT_CHANNELS)),
    "channels": st.sampled_from(sorted(vocabulary.CONTACT_CHANNELS)),
    "kind": st.sampled_from(sorted(vocabulary.KINDS)),
    "kinds": st.sampled_from(sorted(vocabulary.KINDS)),
    "direction": st.sampled_from(sorted(vocabulary.DIRECTIONS)),
    "outcome": st.sampled_from(sorted(vocabulary.OUTCOMES)),
    "purpose": st.sampled_from(sorted({*vocabulary.CONSENT_PURPOSES, "do_not_contact"})),
    "currency": st.sampled_from(["EUR", "USD"]),
    "mode": st.sampled_from(["direct", "indirect", ""]),
    "filter": st.sampled_from(["open", "all", "breached", "breaching", "paused", "resolved",
                               ""]),
    "days": st.sampled_from(["monday", "friday", "sunday", "funday", ""]),
    "opens": st.sampled_from(["09:00", "14:00", "00:00", "24:00", "9", ""]),
    "closes": st.sampled_from(["13:00", "18:00", "24:00", "08:00", "25:61", ""]),
    "date": st.sampled_from(["2026-12-25", "2027-01-01", "2026-02-30", ""]),
    "clock": st.sampled_from(["business", "calendar", "lunar", ""]),
    "calendar": st.sampled_from(["always", "office", "nope", ""]),
    "segment": st.sampled_from(["", "vip", "no spaces"]),
    "group_by": st.sampled_from(["touchpoint", "channel", "unit", ""]),
    "list": st.sampled_from(["newsletter", ""]),
    "emails": st.integers(0, 5).map(lambda n: f"fuzz-{n}@example.com"),
    "email": st.integers(0, 5).map(lambda n: f"fuzz-{n}@example.com"),
    "phones": st.integers(0, 5).map(lambda n: f"+3491123456{n}"),
    "phone": st.integers(0, 5).map(lambda n: f"+3491123456{n}"),
    "external_ids": st.integers(0, 5).map(lambda n: f"pos:{n}"),
    "idempotency_key": st.integers(0, 5).map(lambda n: f"key-{n}"),
    "purchase_id": st.integers(0, 5).map(lambda n: f"sale-{n}"),
    "order_id": st.integers(0, 5).map(lambda n: f"order-{n}"),
    "time_zone": st.sampled_from(["Europe/Madrid", "UTC", "Mars/Olympus"]),
    "name": st.sampled_from(["vip", "phone-support", "in-store", "office", "always"]),
    "filter_json": st.sampled_from(['{"stage": "repeat"}', "{}", '{"min_purchases": 2}']),
    "trigger_facts_json": st.sampled_from(['{"to_stage": "repeat"}', "{}"]),
    "definition": st.sampled_from([
        "id: fuzz\ntrigger: customer.stage_changed\nactions: []",
        '{"id": "fuzz", "trigger": "customer.registered", "actions": [{"type": "follow_up"}]}']),
}


def _plausible_string(name: str, ids: Sequence[str]) -> st.SearchStrategy[str]:
    if name.endswith("customer_id") and ids:
        return st.one_of(st.sampled_from(list(ids)), st.uuids().map(str))
    if name.endswith("_id"):
        return st.uuids().map(str)
    if name in _BY_NAME:
        return _BY_NAME[name]
    return st.one_of(st.just(""), st.sampled_from(WORDS), _TEXT)


def _plausible_int(name: str) -> st.SearchStrategy[int]:
    if name == "amount_minor":
        return st.one_of(st.integers(0, 100_000), st.just(10**13))
    if name.endswith("seconds"):
        return st.integers(0, 30 * 86_400)
    if name == "nps":
        return st.integers(-1, 10)
    return st.integers(0, 10)
