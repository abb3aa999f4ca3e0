"""Segment filters as pure functions: validation names the path, the
compiler binds every value, the Python evaluator follows the same rules."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from crm_runtime.errors import InvalidArgument
from services.customers.segments import compile_sql, matches, validate

NOW = datetime(2031, 1, 1, tzinfo=UTC)

VIP = {"all": [
    {"field": "stage", "op": "in", "value": ["one_time", "repeat"]},
    {"field": "total_spent.EUR", "op": ">=", "value": 10000},
    {"not": {"field": "consent.newsletter", "op": "=", "value": False}},
]}


@pytest.mark.parametrize(("node", "path"), [
    ({"field": "stage", "op": "=", "value": "vip"}, "filter.value"),
    ({"field": "nope", "op": "=", "value": 1}, "filter.field"),
    ({"field": "purchase_count", "op": "~", "value": 1}, "filter.op"),
    ({"field": "purchase_count", "op": ">", "value": "2"}, "filter.value"),
    ({"all": []}, "filter.all"),
    ({"any": [{"field": "at_risk", "op": "=", "value": 1}]}, "filter.any[0].value"),
    ({"not": {"field": "consent.marketing", "op": "=", "value": True}}, "filter.not.field"),
    ({"field": "stage", "op": "in", "value": "repeat"}, "filter.value"),
    ([], "filter"),
    # A number PostgreSQL's bigint cannot hold would fail every query of the segment.
    ({"field": "total_spent.EUR", "op": ">=", "value": 2**63}, "filter.value"),
    ({"field": "purchase_count", "op": ">", "value": -(2**63) - 1}, "filter.value"),
])
def test_validation_names_the_path_of_the_problem(node: Any, path: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        validate(node)
    assert err.value.field == path


def test_compiled_sql_binds_every_value() -> None:
    compiled = compile_sql(VIP, NOW, params=["already"])
    assert compiled.params[0] == "already" and NOW not in compiled.params  # unused: not bound
    recent = compile_sql({"field": "days_since_last_purchase", "op": "<", "value": 30}, NOW)
    assert recent.params == [NOW, 30]
    assert ["one_time", "repeat"] in compiled.params and 10000 in compiled.params
    assert "EUR" in compiled.params and "newsletter" in compiled.params
    for literal in ("one_time", "EUR", "newsletter", "10000"):
        assert literal not in compiled.sql


def test_python_evaluation() -> None:
    base = {"stage": "repeat", "total_spent.EUR": 20000, "consent.newsletter": True}
    assert matches(VIP, base, NOW)
    assert not matches(VIP, {**base, "stage": "potential"}, NOW)
    assert not matches(VIP, {**base, "total_spent.EUR": None}, NOW)
    # No consent recorded means not granted, as in SQL.
    assert not matches(VIP, {**base, "consent.newsletter": None}, NOW)


def test_numbers_are_bound_as_bigint() -> None:
    """Spend totals pass int32 (30 million euros is 3e9 cents): every number
    is bound as bigint, up to its largest value."""
    compiled = compile_sql({"field": "total_spent.EUR", "op": ">=", "value": 2**63 - 1}, NOW)
    assert compiled.params[-1] == 2**63 - 1 and "::bigint" in compiled.sql
    assert "::int)" not in compiled.sql.replace(" ", "")
