"""crm_contracts.money: the bounds of one amount and of a total, in one place."""

from __future__ import annotations

import pytest

from crm_contracts.errors import InvalidArgument
from crm_contracts.money import (
    MAX_AMOUNT_MINOR,
    MAX_TOTAL_MINOR,
    OutOfRange,
    check_amount_minor,
    total_overflow,
)


def test_the_bounds() -> None:
    assert MAX_AMOUNT_MINOR == 10**13
    assert MAX_TOTAL_MINOR == 2**63 - 1
    # A total holds over 900,000 purchases of the most one may be.
    assert 900_000 * MAX_AMOUNT_MINOR < MAX_TOTAL_MINOR < 1_000_000 * MAX_AMOUNT_MINOR


@pytest.mark.parametrize("value", [0, 1, MAX_AMOUNT_MINOR])
def test_amounts_in_range_pass(value: int) -> None:
    assert check_amount_minor(value) == value


@pytest.mark.parametrize("value", [-1, MAX_AMOUNT_MINOR + 1, 2**63 - 1, 2**64, -(2**63)])
def test_amounts_out_of_range_are_refused_naming_the_field(value: int) -> None:
    with pytest.raises(OutOfRange) as err:
        check_amount_minor(value, "order_amount.amount_minor")
    assert err.value.field == "order_amount.amount_minor"
    assert isinstance(err.value, InvalidArgument)


@pytest.mark.parametrize("value", [True, 1.5, "100"])
def test_non_integers_are_invalid(value: object) -> None:
    with pytest.raises(InvalidArgument) as err:
        check_amount_minor(value)  # type: ignore[arg-type]
    assert not isinstance(err.value, OutOfRange)


def test_a_total_overflow_names_the_amount_and_the_currency() -> None:
    err = total_overflow("EUR", "customer 42")
    assert err.field == "amount.amount_minor"
    assert "customer 42's total in EUR" in err.problem and str(MAX_TOTAL_MINOR) in err.problem
