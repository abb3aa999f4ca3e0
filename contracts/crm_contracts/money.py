"""Amounts of money the product accepts: integer minor units (cents), inside
documented bounds, so that no sum of them overflows what is stored.

Documented in docs/integration.md (beside ``RecordPurchase``):

* **One amount** (a purchase, an order, a fixed discount, a minimum
  purchase) is ``0`` to :data:`MAX_AMOUNT_MINOR` minor units: 10^13, i.e.
  100,000,000,000.00 in a currency with two decimals. Anything larger is a
  mistake (a unit error, a test value), not a sale.
* **A total** (what a customer spent, per currency) is kept in a 64-bit
  integer (PostgreSQL ``bigint``, protobuf ``int64``): at most
  :data:`MAX_TOTAL_MINOR`. A purchase that would take a total past it is
  refused, never wrapped or widened.
"""

from __future__ import annotations

from crm_contracts.errors import InvalidArgument

#: The largest single amount, in minor units (10^13).
MAX_AMOUNT_MINOR = 10**13
#: The largest total a 64-bit integer holds (PostgreSQL ``bigint``, ``int64``).
MAX_TOTAL_MINOR = 2**63 - 1


class OutOfRange(InvalidArgument):
    """A value outside its documented range: an amount, the total it would
    make (and, where a service raises it, a time outside the event window).
    ``INVALID_ARGUMENT`` over gRPC; a consumer dead-letters the event with
    the reason kind ``out_of_range``."""


def check_amount_minor(value: int, field: str = "amount.amount_minor") -> int:
    """``value`` if it is a whole amount from 0 to :data:`MAX_AMOUNT_MINOR`;
    :class:`OutOfRange` (an ``InvalidArgument``) naming ``field`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(field, f"must be an integer number of minor units, got {value!r}")
    if value < 0:
        raise OutOfRange(field, f"must not be negative, got {value}")
    if value > MAX_AMOUNT_MINOR:
        raise OutOfRange(field, f"{value} is more than the most one amount may be "
                                f"({MAX_AMOUNT_MINOR} minor units)")
    return value


def total_overflow(currency: str, whose: str = "",
                   field: str = "amount.amount_minor") -> OutOfRange:
    """The error for an amount that would take a total in ``currency`` (of
    ``whose``, e.g. ``customer <id>``) past :data:`MAX_TOTAL_MINOR`."""
    owner = f"{whose}'s " if whose else ""
    return OutOfRange(field, f"would take {owner}total in {currency} past the most it can "
                             f"hold ({MAX_TOTAL_MINOR} minor units); refused")
