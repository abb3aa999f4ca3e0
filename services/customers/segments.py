"""Segment filters: a small structured language, validated when a segment is
defined, compiled to parameterised SQL, and evaluable in Python.

A filter is JSON::

    {"all": [ {"field": "stage", "op": "in", "value": ["one_time", "repeat"]},
              {"field": "days_since_last_purchase", "op": "<=", "value": 90},
              {"field": "total_spent.EUR", "op": ">=", "value": 10000},
              {"not": {"field": "consent.newsletter", "op": "=", "value": true}} ]}

Nodes are ``all`` / ``any`` (lists), ``not`` (one node) or a comparison of a
known field. Field names map to fixed SQL expressions; values are always bound
parameters, never spliced into SQL text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from crm_contracts.vocabulary import CONSENT_PURPOSES, PURCHASE_IMPORTANCE, STAGES
from crm_runtime.errors import InvalidArgument

_NUMERIC_OPS = ("=", "!=", "<", "<=", ">", ">=")
_TEXT_OPS = ("=", "!=", "in")
_BOOL_OPS = ("=",)


@dataclass(frozen=True)
class FieldSpec:
    kind: str  # "int", "text", "bool", "list"
    ops: tuple[str, ...]
    sql: str  # SQL over the customers row ``c``; {now} and {arg} become bound parameters
    choices: tuple[str, ...] = ()
    arg: str | None = None  # the currency or consent purpose named in the field


_FIELDS: dict[str, FieldSpec] = {
    "stage": FieldSpec("text", _TEXT_OPS, "c.stage", STAGES),
    "purchase_count": FieldSpec("int", _NUMERIC_OPS, "c.purchase_count"),
    # isfinite: a time stored as -infinity (before event times were checked)
    # is unknown here, not an error of every query that meets it.
    "days_since_last_purchase": FieldSpec(
        "int", _NUMERIC_OPS, "CASE WHEN isfinite(c.last_purchase_at) THEN "
                             "extract(day FROM {now} - c.last_purchase_at)::int END"),
    "days_since_registered": FieldSpec(
        "int", _NUMERIC_OPS, "extract(day FROM {now} - c.created_at)::int"),
    "do_not_contact": FieldSpec("bool", _BOOL_OPS, "c.do_not_contact"),
    "at_risk": FieldSpec("bool", _BOOL_OPS, "c.at_risk"),
    "last_csat": FieldSpec("int", _NUMERIC_OPS, "c.last_csat"),
    "last_nps": FieldSpec("int", _NUMERIC_OPS, "c.last_nps"),
    "profile.birth_year": FieldSpec("int", _NUMERIC_OPS, "(c.profile->>'birth_year')::int"),
    "profile.sex": FieldSpec("text", _TEXT_OPS, "c.profile->>'sex'"),
    "profile.buyer_type": FieldSpec("text", _TEXT_OPS, "c.profile->>'buyer_type'",
                                    ("person", "company")),
    "profile.socio_economic_band": FieldSpec("text", _TEXT_OPS,
                                             "c.profile->>'socio_economic_band'"),
    "profile.product_knowledge": FieldSpec("text", _TEXT_OPS, "c.profile->>'product_knowledge'",
                                           ("novice", "informed", "expert")),
    "profile.preferred_channel": FieldSpec("text", _TEXT_OPS, "c.profile->>'preferred_channel'",
                                           ("in_person", "phone", "email", "web", "chat")),
    "profile.purchase_importance": FieldSpec("text", _TEXT_OPS,
                                             "c.profile->>'purchase_importance'",
                                             PURCHASE_IMPORTANCE),
    "profile.concomitant_needs": FieldSpec("list", ("contains",),
                                           "c.profile->'concomitant_needs'"),
}
_MONEY = re.compile(r"^total_spent\.([A-Z]{3})$")
_CONSENT = re.compile(r"^consent\.([a-z_]+)$")
MAX_NODES = 50
#: The integers a comparison may hold: what PostgreSQL's ``bigint`` holds
#: (spend totals are ``bigint``; every other number is smaller).
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


@dataclass
class Compiled:
    sql: str
    params: list[Any] = field(default_factory=list)


def _spec(name: str, where: str) -> FieldSpec:
    if name in _FIELDS:
        return _FIELDS[name]
    if money := _MONEY.match(name):
        return FieldSpec("int", _NUMERIC_OPS,
                         "coalesce((SELECT s.total_minor FROM customer_spend s WHERE "
                         "s.customer_id = c.customer_id AND s.currency = {arg}), 0)",
                         arg=money.group(1))
    if consent := _CONSENT.match(name):
        if consent.group(1) not in CONSENT_PURPOSES:
            raise InvalidArgument(f"{where}.field",
                                  f"consent purpose must be one of {list(CONSENT_PURPOSES)}")
        return FieldSpec("bool", _BOOL_OPS,
                         "coalesce((SELECT k.granted FROM consents k WHERE k.customer_id = "
                         "c.customer_id AND k.purpose = {arg}), false)", arg=consent.group(1))
    known = [*_FIELDS, "total_spent.<CUR>", "consent.<purpose>"]
    raise InvalidArgument(f"{where}.field", f"{name!r} is not a known field; known: {known}")


def validate(node: Any, where: str = "filter") -> None:
    """Raise InvalidArgument naming the exact path of the first problem."""
    count = [0]

    def walk(n: Any, path: str) -> None:
        count[0] += 1
        if count[0] > MAX_NODES:
            raise InvalidArgument(where, f"more than {MAX_NODES} nodes")
        if not isinstance(n, dict) or len(n) == 0:
            raise InvalidArgument(path, "must be an object with all, any, not or field")
        if "all" in n or "any" in n:
            key = "all" if "all" in n else "any"
            items = n[key]
            if set(n) != {key} or not isinstance(items, list) or not items:
                raise InvalidArgument(f"{path}.{key}", "must be the only key, a non-empty list")
            for i, child in enumerate(items):
                walk(child, f"{path}.{key}[{i}]")
            return
        if "not" in n:
            if set(n) != {"not"}:
                raise InvalidArgument(f"{path}.not", "must be the only key")
            walk(n["not"], f"{path}.not")
            return
        if set(n) != {"field", "op", "value"}:
            raise InvalidArgument(path, "a comparison has exactly field, op and value")
        spec = _spec(str(n["field"]), path)
        op, value = n["op"], n["value"]
        if op not in spec.ops:
            raise InvalidArgument(f"{path}.op", f"{op!r} not allowed for {n['field']}; "
                                                f"use one of {list(spec.ops)}")
        _check_value(spec, op, value, f"{path}.value")

    walk(node, where)


def _check_value(spec: FieldSpec, op: str, value: Any, path: str) -> None:
    if spec.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgument(path, f"must be an integer, got {value!r}")
        if not INT_MIN <= value <= INT_MAX:
            raise InvalidArgument(path, f"{value} is out of range: integers are "
                                        f"{INT_MIN} to {INT_MAX}")
    elif spec.kind == "bool":
        if not isinstance(value, bool):
            raise InvalidArgument(path, f"must be true or false, got {value!r}")
    elif spec.kind == "list":
        if not isinstance(value, str) or not value:
            raise InvalidArgument(path, f"must be a non-empty string, got {value!r}")
    else:
        values = value if op == "in" else [value]
        if op == "in" and (not isinstance(value, list) or not value):
            raise InvalidArgument(path, "must be a non-empty list for 'in'")
        for v in values:
            if not isinstance(v, str):
                raise InvalidArgument(path, f"must be text, got {v!r}")
            if spec.choices and v not in spec.choices:
                raise InvalidArgument(path, f"{v!r} is not one of {list(spec.choices)}")


def compile_sql(node: Any, now: datetime, params: list[Any] | None = None) -> Compiled:
    """SQL boolean expression over ``customers c``; parameters numbered after
    any the caller already has in ``params``."""
    validate(node)
    params = list(params or [])
    now_ref: list[str] = []  # bound on first use: an unused parameter has no type

    def bind(value: Any, cast: str) -> str:
        params.append(value)
        return f"${len(params)}::{cast}"

    def walk(n: dict[str, Any]) -> str:
        if "all" in n:
            return "(" + " AND ".join(walk(c) for c in n["all"]) + ")"
        if "any" in n:
            return "(" + " OR ".join(walk(c) for c in n["any"]) + ")"
        if "not" in n:
            return f"(NOT coalesce({walk(n['not'])}, false))"
        spec = _spec(n["field"], "filter")
        expr = spec.sql
        if "{now}" in expr:
            if not now_ref:
                now_ref.append(bind(now, "timestamptz"))
            expr = expr.replace("{now}", now_ref[0])
        if spec.arg is not None:
            expr = expr.replace("{arg}", bind(spec.arg, "text"))
        op, value = n["op"], n["value"]
        if spec.kind == "list":
            return f"coalesce({expr} ? {bind(value, 'text')}, false)"
        # bigint: totals are (and every other number fits in one).
        cast = {"int": "bigint", "bool": "boolean", "text": "text"}[spec.kind]
        if op == "in":
            return f"({expr} = ANY({bind(value, 'text[]')}))"
        sql_op = "<>" if op == "!=" else op
        return f"({expr} {sql_op} {bind(value, cast)})"

    return Compiled(walk(node), params)


def matches(node: Any, customer: dict[str, Any], now: datetime) -> bool:
    """Evaluate a filter in Python against a flat customer view (the same
    field names as the filter); used for dry runs and to test the SQL."""
    if "all" in node:
        return all(matches(c, customer, now) for c in node["all"])
    if "any" in node:
        return any(matches(c, customer, now) for c in node["any"])
    if "not" in node:
        return not matches(node["not"], customer, now)
    actual = customer.get(node["field"])
    op, value = node["op"], node["value"]
    if node["field"].startswith("total_spent."):
        actual = actual or 0
    if node["field"].startswith("consent."):
        actual = bool(actual)
    if op == "contains":
        return value in (actual or [])
    if actual is None:
        return False  # SQL comparisons with NULL are not true either
    compare: dict[str, Callable[[Any, Any], bool]] = {
        "=": lambda a, b: bool(a == b), "!=": lambda a, b: bool(a != b),
        "<": lambda a, b: bool(a < b), "<=": lambda a, b: bool(a <= b),
        ">": lambda a, b: bool(a > b), ">=": lambda a, b: bool(a >= b),
        "in": lambda a, b: a in b}
    return compare[op](actual, value)
