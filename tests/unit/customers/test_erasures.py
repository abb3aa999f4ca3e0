"""An erasure's status as pure values: complete only when every service
acknowledged, parts in a fixed order, overdue only past the due time, and
the gauge's query built from the awaited services."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.customers import erasures
from services.customers.erasures import AWAITED, SELF, Part, status_of

CID = uuid.UUID("1b4e28ba-2fa1-11d2-883f-0016d3cca427")
T0 = datetime(2031, 3, 3, 12, tzinfo=UTC)
DUE = T0 + timedelta(hours=1)


def part(service: str, completed_at: datetime | None = None) -> Part:
    return Part(service=service, requested_at=T0, due_at=DUE, completed_at=completed_at)


def test_an_erasure_is_pending_until_every_service_acknowledged() -> None:
    pending = status_of(CID, T0, [part("loyalty"), part(SELF, T0),
                                  part("interactions", T0 + timedelta(minutes=1))])
    assert pending.erased and not pending.complete
    assert pending.requested_at == T0
    assert pending.pending() == ["loyalty"]
    done = status_of(CID, T0, [*pending.parts[:2], part("loyalty", T0 + timedelta(minutes=2))])
    assert done.complete and done.pending() == []


def test_parts_come_customers_first_then_the_awaited_services_then_others() -> None:
    status = status_of(CID, T0, [part("zeta"), part("loyalty"), part("alpha"),
                                 part("interactions"), part(SELF, T0)])
    assert [p.service for p in status.parts] == [SELF, *AWAITED, "alpha", "zeta"]


def test_a_customer_never_erased_is_not_erased_and_not_complete() -> None:
    status = status_of(CID, None, [])
    assert not status.erased and not status.complete
    assert status.requested_at is None and status.parts == ()


def test_an_erasure_from_before_acknowledgements_is_erased_but_never_complete() -> None:
    """Nobody acknowledged it, so nobody can say it is complete."""
    status = status_of(CID, T0, [])
    assert status.erased and not status.complete
    assert status.requested_at == T0


def test_recorded_parts_mean_erased_even_when_the_record_says_otherwise() -> None:
    """An alias erased through its survivor: the parts are the alias's."""
    assert status_of(CID, None, [part(SELF, T0)]).erased


@pytest.mark.parametrize(("now", "completed_at", "overdue"), [
    (DUE - timedelta(seconds=1), None, False),
    (DUE, None, True),
    (DUE + timedelta(days=3), None, True),
    (DUE + timedelta(days=3), T0 + timedelta(hours=5), False),
])
def test_a_part_is_overdue_only_while_pending_past_its_due_time(
        now: datetime, completed_at: datetime | None, overdue: bool) -> None:
    assert part("loyalty", completed_at).overdue(now) is overdue


def test_the_gauge_reports_every_awaited_service() -> None:
    for name in AWAITED:
        assert f"('{name}')" in erasures.OVERDUE_SQL
    assert f"('{SELF}')" not in erasures.OVERDUE_SQL


def test_the_gauge_refuses_a_name_that_is_no_identifier() -> None:
    with pytest.raises(ValueError, match="identifiers"):
        erasures._overdue_sql(["loyalty", "x'); DROP TABLE erasures; --"])
