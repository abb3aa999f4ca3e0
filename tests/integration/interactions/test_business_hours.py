"""Promises counted in business hours, over the running services, on the
scheduler's clock: calendars and their versions, milestones, pauses, a
transfer between units with different calendars, a VIP customer's shorter
promise (their segment learned from customers' events), and bad input."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest

from crm.customers.v1 import customers_pb2 as cpb
from crm.interactions.v1 import interactions_pb2 as pb
from services.interactions import calendars
from tests.integration.interactions.conftest import Pair
from tests.integration.interactions.test_interactions_service import (
    api,
    customers,
    events_of,
    new_customer,
    record,
)
from tests.support.kafka import wait_for

MADRID = ZoneInfo("Europe/Madrid")
NEW_YORK = ZoneInfo("America/New_York")
WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday"]
H = 3600


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _at(ts: Any) -> datetime:
    at: datetime = ts.ToDatetime(tzinfo=MADRID)
    return at


def _next(pair: Pair, weekday: int, hour: int, minute: int, zone: ZoneInfo = MADRID
          ) -> datetime:
    """The first local ``weekday`` at hour:minute at least two days after the clock."""
    day = (pair.clock.now() + timedelta(days=2)).astimezone(zone).date()
    while day.weekday() != weekday:
        day += timedelta(days=1)
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)


async def _calendar(pair: Pair, name: str, zone: str = "Europe/Madrid", opens: str = "09:00",
                    closes: str = "18:00", closed: tuple[str, ...] = (), unit: str = "",
                    apply: bool = False) -> pb.Calendar:
    cal: pb.Calendar = await api(pair).DefineCalendar(pb.Calendar(
        name=name, time_zone=zone, apply_to_open_cases=apply,
        hours=[pb.OpeningHours(days=WEEKDAYS, opens=opens, closes=closes)],
        closed_dates=[pb.ClosedDate(date=d, name="holiday") for d in closed]),
        metadata=pair.interactions.metadata)
    if unit:
        await api(pair).SetUnitCalendar(pb.SetUnitCalendarRequest(unit=unit, calendar=name),
                                        metadata=pair.interactions.metadata)
    return cal


@pytest.fixture
async def complaint_policy(pair: Pair) -> AsyncIterator[None]:
    """Complaints by phone: a first response within 2 and a resolution
    within 8 business hours (the shipped default comes back afterwards)."""
    await api(pair).SetPromisePolicy(pb.PromisePolicy(
        kind="complaint", channel="phone", min_seconds=H, max_seconds=8 * H,
        warn_before_seconds=2 * H, first_response_seconds=2 * H,
        first_response_warn_before_seconds=H // 2), metadata=pair.interactions.metadata)
    yield
    await api(pair).DeletePromisePolicy(pb.DeletePromisePolicyRequest(
        kind="complaint", channel="phone"), metadata=pair.interactions.metadata)


async def _case(pair: Pair, case_id: str) -> pb.Case:
    found = await api(pair).ListCases(pb.ListCasesRequest(filter="all", customer_id=(
        await _owner(pair, case_id))), metadata=pair.interactions.metadata)
    case: pb.Case = next(c for c in found.cases if c.case_id == case_id)
    return case


async def _owner(pair: Pair, case_id: str) -> str:
    return str(await pair.pool.fetchval("SELECT customer_id FROM cases WHERE case_id = $1",
                                        uuid.UUID(case_id)))


def _milestones(case: pb.Case) -> dict[str, pb.Milestone]:
    return {m.name: m for m in case.milestones}


async def _settled(pair: Pair, case_id: str, milestone: str, state: str) -> pb.Milestone:
    found: list[pb.Milestone] = []

    async def reached() -> bool:
        found[:] = [_milestones(await _case(pair, case_id))[milestone]]
        return found[0].state == state

    await wait_for(reached, timeout=10, what=f"{milestone} of {case_id} {state}")
    return found[0]


async def _breaches(pair: Pair, customer_id: str, expect: int) -> list[dict[str, Any]]:
    found = await events_of(pair, customer_id, expect)
    return [data for kind, data in found if kind == "case.breached"]


async def test_a_friday_evening_complaint_is_due_on_monday_and_not_breached_over_the_weekend(
        pair: Pair, complaint_policy: None) -> None:
    unit = _name("desk")
    await _calendar(pair, _name("office"), unit=unit)
    friday = _next(pair, 4, 17, 30)
    pair.clock.set(friday)
    cid = await new_customer(pair)
    complaint = await record(pair, customer_id=cid, channel="phone", kind="complaint",
                             unit=unit, notes="the delivery never came")
    case = await _case(pair, complaint.case_id)
    monday = friday + timedelta(days=3)
    ms = _milestones(case)
    assert (case.clock, case.policy_reason) == ("business", "policy complaint/phone")
    assert _at(ms["first_response"].due_at) == monday.replace(hour=10, minute=30)
    assert _at(ms["resolution"].due_at) == monday.replace(hour=16, minute=30)
    assert _at(case.promised_by) == monday.replace(hour=16, minute=30)
    assert _at(case.promised_earliest_at) == monday.replace(hour=9, minute=30)

    # The weekend passes; the unit is closed and nothing is due.
    pair.clock.set(monday.replace(hour=8, minute=59))
    await wait_for(lambda: _quiet(pair), timeout=5, what="the scheduler polled")
    assert {m.state for m in (await _case(pair, complaint.case_id)).milestones} == {"pending"}
    await api(pair).AcknowledgeCase(pb.AcknowledgeCaseRequest(case_id=complaint.case_id,
                                                              agent="ana"),
                                    metadata=pair.interactions.metadata)
    first = _milestones(await _case(pair, complaint.case_id))["first_response"]
    assert (first.state, first.took_seconds) == ("hit", 30 * 60)  # Friday 17:30-18:00

    pair.clock.set(monday.replace(hour=16, minute=29))
    await wait_for(lambda: _quiet(pair), timeout=5, what="the scheduler polled")
    assert _milestones(await _case(pair, complaint.case_id))["resolution"].state == "warning"
    pair.clock.set(monday.replace(hour=16, minute=31))
    await _settled(pair, complaint.case_id, "resolution", "missed")
    [breach] = await _breaches(pair, cid, 5)  # recorded, opened, acknowledged, warning, breach
    assert breach["milestone"] == "resolution"
    assert datetime.fromisoformat(breach["due_at"]) == monday.replace(hour=16, minute=30)


async def _quiet(pair: Pair) -> bool:
    """True once no scheduled item is due at the clock's time (the
    scheduler ran what was due)."""
    due = await pair.pool.fetchval("SELECT count(*) FROM scheduled_work WHERE due_at <= $1",
                                   pair.clock.now())
    return bool(due == 0)


async def test_a_holiday_moves_the_promise_and_open_cases_keep_their_version(
        pair: Pair, complaint_policy: None, monkeypatch: pytest.MonkeyPatch) -> None:
    unit, name = _name("desk"), _name("office")
    first = await _calendar(pair, name, unit=unit)
    friday = _next(pair, 4, 17, 30)
    monday = friday + timedelta(days=3)
    pair.clock.set(friday)
    cid = await new_customer(pair)
    before = await record(pair, customer_id=cid, channel="phone", kind="complaint", unit=unit)
    also = await record(pair, customer_id=cid, channel="phone", kind="support", unit=unit)
    # Monday becomes a holiday: version 2. The case opened on version 1 keeps it.
    second = await _calendar(pair, name, closed=(monday.date().isoformat(),))
    assert (first.version, second.version) == (1, 2)
    again = await _calendar(pair, name, closed=(monday.date().isoformat(),))
    assert again.version == 2  # the same definition adds no version
    after = await record(pair, customer_id=cid, channel="phone", kind="complaint", unit=unit)
    old, new = await _case(pair, before.case_id), await _case(pair, after.case_id)
    assert (old.calendar_version, new.calendar_version) == (1, 2)
    assert _at(old.promised_by) == monday.replace(hour=16, minute=30)
    assert _at(new.promised_by) == (monday + timedelta(days=1)).replace(hour=16, minute=30)

    # The operator moves the open cases to the new version, a page at a time
    # (of one case here): the 30 minutes used on Friday are kept.
    monkeypatch.setattr(calendars, "MOVE_PAGE", 1)
    pair.clock.set(friday + timedelta(days=1))
    await _calendar(pair, name, closed=(monday.date().isoformat(), "2099-01-01"), apply=True)

    async def all_moved() -> bool:
        return all([(await _case(pair, c)).calendar_version == 3
                    for c in (before.case_id, after.case_id, also.case_id)])

    await wait_for(all_moved, timeout=10, what="the open cases moved to version 3")
    moved = await _case(pair, before.case_id)
    assert _at(moved.promised_by) == (monday + timedelta(days=1)).replace(hour=16, minute=30)
    events = [(k, d) for k, d in await events_of(pair, cid, 9) if k == "case.promise_moved"]
    assert sorted(d["case_id"] for _, d in events) == sorted(
        [before.case_id, after.case_id, also.case_id])  # each moved once
    versions = await api(pair).GetCalendar(pb.GetCalendarRequest(name=name, version=1),
                                           metadata=pair.interactions.metadata)
    assert (versions.version, list(versions.closed_dates)) == (1, [])
    listed = await api(pair).ListCalendars(pb.ListCalendarsRequest(),
                                           metadata=pair.interactions.metadata)
    mine = next(c for c in listed.calendars if c.name == name)
    assert (mine.version, list(mine.units), mine.open_seconds_per_week) == (3, [unit], 45 * H)
    assert any(c.name == "always" for c in listed.calendars)


async def test_a_paused_case_stops_its_clock_and_a_customer_contact_resumes_it(
        pair: Pair, complaint_policy: None) -> None:
    unit = _name("desk")  # no calendar: always
    start = _next(pair, 0, 9, 0)
    pair.clock.set(start)
    cid = await new_customer(pair)
    complaint = await record(pair, customer_id=cid, channel="phone", kind="complaint",
                             unit=unit)
    pair.clock.set(start + timedelta(hours=3))  # the first response is missed at 2 h
    await _settled(pair, complaint.case_id, "first_response", "missed")
    paused = await api(pair).PauseCase(pb.PauseCaseRequest(
        case_id=complaint.case_id, reason="waiting for the customer's receipt"),
        metadata=pair.interactions.metadata)
    res = _milestones(paused)["resolution"]
    assert paused.paused and paused.pause_reason == "waiting for the customer's receipt"
    assert (res.state, res.remaining_seconds) == ("paused", 5 * H)
    assert _milestones(paused)["first_response"].state == "missed"  # stays missed
    assert not await pair.pool.fetchval(
        "SELECT count(*) FROM scheduled_work WHERE item_key LIKE $1 || '/%'",
        complaint.case_id)
    again = await api(pair).PauseCase(pb.PauseCaseRequest(
        case_id=complaint.case_id, reason="still waiting"), metadata=pair.interactions.metadata)
    assert again.pause_reason == "waiting for the customer's receipt"  # pausing twice: once

    pair.clock.set(start + timedelta(days=3))  # far past the old due time: no breach
    await wait_for(lambda: _quiet(pair), timeout=5, what="the scheduler polled")
    assert _milestones(await _case(pair, complaint.case_id))["resolution"].state == "paused"
    # The customer sends the receipt: their contact on the case resumes it.
    await record(pair, customer_id=cid, channel="email", kind="support",
                 case_id=complaint.case_id)
    resumed = await _case(pair, complaint.case_id)
    due = start + timedelta(days=3, hours=5)
    assert not resumed.paused and _at(resumed.promised_by) == due
    pair.clock.set(due - timedelta(minutes=1))
    await wait_for(lambda: _quiet(pair), timeout=5, what="the scheduler polled")
    assert _milestones(await _case(pair, complaint.case_id))["resolution"].state == "warning"
    pair.clock.set(due + timedelta(minutes=1))
    await _settled(pair, complaint.case_id, "resolution", "missed")
    found = await events_of(pair, cid, 9)
    kinds = [k for k, _ in found]
    assert kinds.count("case.paused") == 1 and kinds.count("case.resumed") == 1
    assert [d["milestone"] for k, d in found if k == "case.breached"] == [
        "first_response", "resolution"]
    assert next(d for k, d in found if k == "case.resumed")["cause"] == "customer_contact"

    resolved = await api(pair).ResolveCase(pb.ResolveCaseRequest(
        case_id=complaint.case_id, resolution="refunded"), metadata=pair.interactions.metadata)
    assert resolved.resolved_late
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api(pair).PauseCase(pb.PauseCaseRequest(case_id=complaint.case_id, reason="x"),
                                  metadata=pair.interactions.metadata)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api(pair).PauseCase(pb.PauseCaseRequest(case_id=complaint.case_id, reason=" "),
                                  metadata=pair.interactions.metadata)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("reason:")


async def test_a_transfer_counts_the_rest_on_the_receiving_units_calendar(
        pair: Pair, complaint_policy: None) -> None:
    madrid, new_york = _name("madrid"), _name("new-york")
    await _calendar(pair, _name("es"), unit=madrid)
    await _calendar(pair, _name("us"), zone="America/New_York", closes="17:00",
                    unit=new_york)
    monday = _next(pair, 0, 10, 0)
    pair.clock.set(monday)
    cid = await new_customer(pair)
    complaint = await record(pair, customer_id=cid, channel="phone", kind="complaint",
                             unit=madrid)
    pair.clock.set(monday + timedelta(hours=2))  # 2 business hours used in Madrid
    moved = await api(pair).TransferCase(pb.TransferCaseRequest(
        case_id=complaint.case_id, to_unit=new_york, reason="billing is in New York"),
        metadata=pair.interactions.metadata)
    # 12:00 in Madrid is 06:00 in New York: 6 hours left from 09:00 there.
    ny_day = monday.astimezone(NEW_YORK).date()
    due = datetime(ny_day.year, ny_day.month, ny_day.day, 15, tzinfo=NEW_YORK)
    assert moved.calendar.startswith("us-") and moved.calendar_version == 1
    assert moved.promised_by.ToDatetime(tzinfo=NEW_YORK) == due
    transferred = [d for k, d in await events_of(pair, cid, 3) if k == "case.transferred"]
    assert datetime.fromisoformat(transferred[0]["promised_by"]) == due


async def test_a_vip_customer_gets_the_shorter_promise_of_their_segment(pair: Pair) -> None:
    band, segment = _name("band"), _name("vip")
    await customers(pair).DefineSegment(cpb.DefineSegmentRequest(
        name=segment, filter_json=json.dumps(
            {"field": "profile.socio_economic_band", "op": "=", "value": band})),
        metadata=pair.customers.metadata)
    await api(pair).SetPromisePolicy(pb.PromisePolicy(
        kind="complaint", channel="*", segment=segment, min_seconds=600, max_seconds=4 * H,
        warn_before_seconds=H, clock="calendar"), metadata=pair.interactions.metadata)
    try:
        cid = await new_customer(pair)
        got = await customers(pair).GetCustomer(cpb.GetCustomerRequest(customer_id=cid),
                                                metadata=pair.customers.metadata)
        await customers(pair).UpdateCustomer(cpb.UpdateCustomerRequest(
            customer_id=cid, expected_version=got.version,
            profile=cpb.Profile(socio_economic_band=band)), metadata=pair.customers.metadata)

        async def entered() -> bool:
            return bool(await pair.pool.fetchval(
                "SELECT member FROM customer_segments WHERE customer_id = $1 AND segment = $2",
                uuid.UUID(cid), segment))

        await wait_for(entered, what="the segment membership reached interactions")
        now = pair.clock.now()
        vip = await record(pair, customer_id=cid, channel="web", kind="complaint")
        case = await _case(pair, vip.case_id)
        assert case.policy_reason == f"entitlement of segment {segment!r}: complaint/*"
        assert case.policy.segment == segment and case.clock == "calendar"
        assert case.promised_by.ToDatetime(tzinfo=MADRID) == now + timedelta(hours=4)
        other = await record(pair, customer_id=await new_customer(pair), channel="web",
                             kind="complaint")
        assert (await _case(pair, other.case_id)).policy.max_seconds == 48 * H
    finally:
        await api(pair).DeletePromisePolicy(pb.DeletePromisePolicyRequest(
            kind="complaint", channel="*", segment=segment), metadata=pair.interactions.metadata)


@pytest.mark.parametrize(("calendar", "field"), [
    (pb.Calendar(name="x", time_zone="Mars/Olympus",
                 hours=[pb.OpeningHours(days=["monday"], opens="09:00", closes="18:00")]),
     "time_zone"),
    (pb.Calendar(name="x", time_zone="UTC",
                 hours=[pb.OpeningHours(days=["monday"], opens="18:00", closes="09:00")]),
     "hours[0].closes"),
    (pb.Calendar(name="x", time_zone="UTC",
                 hours=[pb.OpeningHours(days=["monday"], opens="09:00", closes="13:00"),
                        pb.OpeningHours(days=["monday"], opens="12:00", closes="18:00")]),
     "hours[1]"),
    (pb.Calendar(name="x", time_zone="UTC"), "hours"),
    (pb.Calendar(name="x", time_zone="UTC",
                 hours=[pb.OpeningHours(days=["funday"], opens="09:00", closes="18:00")]),
     "hours[0].days"),
    (pb.Calendar(name="always", time_zone="UTC",
                 hours=[pb.OpeningHours(days=["monday"], opens="09:00", closes="18:00")]),
     "name"),
])
async def test_bad_calendars_are_invalid_argument_naming_the_field(
        pair: Pair, calendar: pb.Calendar, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api(pair).DefineCalendar(calendar, metadata=pair.interactions.metadata)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(f"{field}:")


async def test_unreachable_promises_and_unknown_calendars_are_refused(pair: Pair) -> None:
    await _calendar(pair, _name("office"))
    with pytest.raises(grpc.aio.AioRpcError) as err:  # 10 years of business hours
        await api(pair).SetPromisePolicy(pb.PromisePolicy(
            kind="support", channel="chat", min_seconds=0, max_seconds=315360000,
            warn_before_seconds=0), metadata=pair.interactions.metadata)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("max_seconds:")
    # Counting calendar time, the same promise is allowed.
    await api(pair).SetPromisePolicy(pb.PromisePolicy(
        kind="support", channel="chat", min_seconds=0, max_seconds=315360000,
        warn_before_seconds=0, clock="calendar"), metadata=pair.interactions.metadata)
    # ... and a calendar too sparse for a business-time policy is refused.
    await api(pair).SetPromisePolicy(pb.PromisePolicy(
        kind="support", channel="chat", min_seconds=0, max_seconds=4000 * H,
        warn_before_seconds=0), metadata=pair.interactions.metadata)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api(pair).DefineCalendar(pb.Calendar(
                name=_name("sparse"), time_zone="UTC",
                hours=[pb.OpeningHours(days=["monday"], opens="09:00", closes="10:00")]),
                metadata=pair.interactions.metadata)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith("hours:")
    finally:
        await api(pair).DeletePromisePolicy(pb.DeletePromisePolicyRequest(
            kind="support", channel="chat"), metadata=pair.interactions.metadata)
    for call, request in [
            (api(pair).SetUnitCalendar, pb.SetUnitCalendarRequest(unit="u", calendar="nope")),
            (api(pair).GetCalendar, pb.GetCalendarRequest(name="nope")),
            (api(pair).DeletePromisePolicy, pb.DeletePromisePolicyRequest(
                kind="complaint", channel="web", segment="nobody")),
            (api(pair).PauseCase, pb.PauseCaseRequest(case_id=str(uuid.uuid4()), reason="r"))]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(request, metadata=pair.interactions.metadata)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, request


async def test_a_contact_on_another_customers_case_is_refused(pair: Pair) -> None:
    owner, other = await new_customer(pair), await new_customer(pair)
    complaint = await record(pair, customer_id=owner, channel="phone", kind="complaint")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await record(pair, customer_id=other, channel="phone", kind="support",
                     case_id=complaint.case_id)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("case_id:")
    # A proactive call on the case is its first response.
    await record(pair, customer_id=owner, channel="phone", kind="support",
                 direction="proactive", case_id=complaint.case_id)
    first = _milestones(await _case(pair, complaint.case_id))["first_response"]
    assert first.state == "hit"


async def test_the_report_gives_hit_rates_and_median_business_times_per_group(
        pair: Pair, complaint_policy: None) -> None:
    unit = _name("desk")
    await _calendar(pair, _name("office"), unit=unit)
    monday = _next(pair, 0, 9, 0)
    pair.clock.set(monday)
    ids = []
    for _ in range(3):
        ids.append((await record(pair, customer_id=await new_customer(pair), channel="phone",
                                 kind="complaint", unit=unit)).case_id)
    md = pair.interactions.metadata
    pair.clock.set(monday + timedelta(hours=1))
    for case_id in ids[:2]:  # two first responses in time (1 business hour)
        await api(pair).AcknowledgeCase(pb.AcknowledgeCaseRequest(case_id=case_id), metadata=md)
    pair.clock.set(monday + timedelta(hours=3))  # the third one's first response is missed
    await _settled(pair, ids[2], "first_response", "missed")
    await api(pair).ResolveCase(pb.ResolveCaseRequest(case_id=ids[0], resolution="ok"),
                                metadata=md)  # resolved in 3 business hours
    # Overnight: 18:00 Monday to 09:00 Tuesday does not count.
    pair.clock.set(monday + timedelta(days=1, hours=2))
    await api(pair).ResolveCase(pb.ResolveCaseRequest(case_id=ids[1], resolution="ok"),
                                metadata=md)  # 9 + 2 = 11 business hours: late
    # The third, never resolved, missed its resolution at 17:00 Monday too.
    await _settled(pair, ids[2], "resolution", "missed")
    report = await api(pair).GetSatisfactionReport(pb.GetSatisfactionReportRequest(
        group_by="unit"), metadata=md)
    row = next(r for r in report.rows if r.key == unit)
    assert (row.first_response_hit, row.first_response_missed) == (2, 1)
    assert row.first_response_hit_rate == pytest.approx(2 / 3)
    assert row.first_response_median_seconds == pytest.approx(H)  # 1 h, 1 h (and 2 h late)
    assert (row.resolution_hit, row.resolution_missed) == (1, 2)
    assert row.resolution_hit_rate == pytest.approx(1 / 3)
    assert row.resolution_median_seconds == pytest.approx(7 * H)  # median of 3 h and 11 h
