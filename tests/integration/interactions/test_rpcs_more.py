"""Explicit cases, promise policies, service cycles, surveys after resolution
and merges, over the running interactions service (with the customers
service beside it), called over gRPC as other systems call it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from crm.customers.v1 import customers_pb2 as cpb
from crm.interactions.v1 import interactions_pb2 as pb
from tests.integration.interactions.conftest import Pair
from tests.integration.interactions.test_interactions_service import (
    api,
    consent,
    customers,
    events_of,
    new_customer,
    record,
)
from tests.support.kafka import wait_for


def _at(ts: Any) -> datetime:
    value: datetime = ts.ToDatetime(tzinfo=UTC)
    return value


def _of(events: list[tuple[str, dict[str, Any]]], event_type: str) -> list[dict[str, Any]]:
    return [d for t, d in events if t == event_type]


async def _open(pair: Pair, customer_id: str, **fields: Any) -> pb.Case:
    fields.setdefault("kind", "support")
    fields.setdefault("channel", "email")
    fields.setdefault("idempotency_key", str(uuid.uuid4()))
    reply: pb.Case = await api(pair).OpenCase(pb.OpenCaseRequest(
        customer_id=customer_id, **fields), metadata=pair.interactions.metadata)
    return reply


async def _resolve(pair: Pair, case_id: str, resolution: str = "done") -> pb.Case:
    reply: pb.Case = await api(pair).ResolveCase(pb.ResolveCaseRequest(
        case_id=case_id, resolution=resolution), metadata=pair.interactions.metadata)
    return reply


async def _reopen(pair: Pair, case_id: str, reason: str = "not fixed") -> pb.Case:
    reply: pb.Case = await api(pair).ReopenCase(pb.ReopenCaseRequest(
        case_id=case_id, reason=reason), metadata=pair.interactions.metadata)
    return reply


async def _cases(pair: Pair, customer_id: str, which: str = "all") -> list[pb.Case]:
    reply = await api(pair).ListCases(pb.ListCasesRequest(
        filter=which, customer_id=customer_id), metadata=pair.interactions.metadata)
    return list(reply.cases)


async def _policy(pair: Pair, **fields: Any) -> pb.PromisePolicy:
    reply: pb.PromisePolicy = await api(pair).SetPromisePolicy(
        pb.PromisePolicy(**fields), metadata=pair.interactions.metadata)
    return reply


# --- OpenCase ---------------------------------------------------------------

async def test_open_case_stores_and_returns_the_promise_of_its_policy(pair: Pair) -> None:
    cid = await new_customer(pair)
    contact = await record(pair, customer_id=cid, channel="email", kind="inquiry")
    key = str(uuid.uuid4())
    case = await _open(pair, cid, kind="support", channel="email", unit="returns",
                       summary="the app crashes at checkout",
                       interaction_id=contact.interaction_id, idempotency_key=key)
    # The shipped support policy (any channel): at least 2 hours, at most 72.
    opened = _at(case.opened_at)
    assert opened == pair.clock.now()
    assert _at(case.promised_earliest_at) - opened == timedelta(hours=2)
    assert _at(case.promised_by) - opened == timedelta(hours=72)
    assert (case.customer_id, case.kind, case.channel, case.unit, case.status) == (
        cid, "support", "email", "returns", "open")
    assert case.interaction_id == contact.interaction_id
    assert case.summary == "the app crashes at checkout"

    # Stored: reading the case back gives the same promise.
    [stored] = await _cases(pair, cid)
    assert stored == case
    # The same request again (the same idempotency key) returns the same case,
    # not a second one; the key with another request is refused.
    again = await _open(pair, cid, kind="support", channel="email", unit="returns",
                        summary="the app crashes at checkout",
                        interaction_id=contact.interaction_id, idempotency_key=key)
    assert again.case_id == case.case_id and len(await _cases(pair, cid)) == 1
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _open(pair, cid, kind="support", channel="email", idempotency_key=key)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert err.value.details() == (
        f"idempotency_key {key!r}: already used for a different case of this customer "
        "(unit, summary, interaction_id differ)")
    assert len(await _cases(pair, cid)) == 1

    found = await events_of(pair, cid, 2)  # interaction.recorded, case.opened
    [event] = _of(found, "case.opened")
    assert event["case_id"] == case.case_id and event["interaction_id"] == contact.interaction_id
    assert datetime.fromisoformat(event["promised_by"]) == _at(case.promised_by)
    assert (datetime.fromisoformat(event["promised_earliest_at"])
            == _at(case.promised_earliest_at))


@pytest.mark.parametrize(("fields", "field"), [
    ({"kind": "purchase"}, "kind"),
    ({"kind": "gossip"}, "kind"),
    ({"channel": "fax"}, "channel"),
    ({"idempotency_key": " "}, "idempotency_key"),
    ({"interaction_id": "nope"}, "interaction_id"),
])
async def test_open_case_bad_input_is_invalid_argument_naming_the_field(
        pair: Pair, fields: dict[str, Any], field: str) -> None:
    cid = await new_customer(pair)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _open(pair, cid, **fields)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(f"{field}:")
    assert await _cases(pair, cid) == []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _open(pair, "not-a-customer")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("customer_id:")


# --- ReopenCase -------------------------------------------------------------

async def test_a_resolved_case_reopened_is_open_again_with_its_promise(pair: Pair) -> None:
    cid = await new_customer(pair)
    await consent(pair, cid)
    case = await _open(pair, cid, kind="support", channel="web")
    resolved = await _resolve(pair, case.case_id, "reset the password")
    assert resolved.status == "resolved" and resolved.HasField("resolved_at")
    reopened = await _reopen(pair, case.case_id, "still cannot log in")
    assert reopened.status == "open"
    assert not reopened.HasField("resolved_at") and reopened.resolution == ""
    assert not reopened.resolved_late and not reopened.breached
    assert reopened.promised_by == case.promised_by
    assert [c.case_id for c in await _cases(pair, cid, "open")] == [case.case_id]
    assert await _cases(pair, cid, "resolved") == []
    # Opened, resolved, reopened; the survey request asked for at the
    # resolution, if it went out before the case was reopened (else it is moot).
    found = await events_of(pair, cid, 3)
    if "case.reopened" not in [t for t, _ in found]:
        found = await events_of(pair, cid, 4)
    assert len(_of(found, "survey.requested")) <= 1
    [event] = _of(found, "case.reopened")
    assert event["case_id"] == case.case_id and "reason" not in event  # no free text
    assert datetime.fromisoformat(event["promised_by"]) == _at(case.promised_by)
    # It can be resolved again.
    assert (await _resolve(pair, case.case_id, "unlocked the account")).status == "resolved"


async def test_reopening_a_case_that_is_not_resolved_is_refused(pair: Pair) -> None:
    cid = await new_customer(pair)
    case = await _open(pair, cid)
    for _ in range(2):  # open, then acknowledged
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _reopen(pair, case.case_id)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "not resolved" in (err.value.details() or "")
        await api(pair).AcknowledgeCase(pb.AcknowledgeCaseRequest(
            case_id=case.case_id, agent="ana"), metadata=pair.interactions.metadata)
    [still] = await _cases(pair, cid)
    assert still.status == "acknowledged"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _reopen(pair, str(uuid.uuid4()))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _reopen(pair, "not-a-case")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("case_id:")


# --- SetPromisePolicy -------------------------------------------------------

async def test_a_new_promise_policy_applies_to_the_next_case_of_its_kind_and_channel(
        pair: Pair) -> None:
    cid = await new_customer(pair)
    before = await _open(pair, cid, kind="doubt", channel="chat")
    assert _at(before.promised_by) - _at(before.opened_at) == timedelta(hours=24)  # shipped
    reply = await _policy(pair, kind="doubt", channel="chat", min_seconds=60,
                          max_seconds=3 * 3600, warn_before_seconds=1800)
    assert (reply.kind, reply.channel, reply.max_seconds) == ("doubt", "chat", 3 * 3600)
    after = await _open(pair, cid, kind="doubt", channel="chat")
    assert _at(after.promised_earliest_at) - _at(after.opened_at) == timedelta(minutes=1)
    assert _at(after.promised_by) - _at(after.opened_at) == timedelta(hours=3)
    # Other channels keep the shipped policy, and an open case keeps its promise.
    other = await _open(pair, cid, kind="doubt", channel="web")
    assert _at(other.promised_by) - _at(other.opened_at) == timedelta(hours=24)
    cases = {c.case_id: c for c in await _cases(pair, cid)}
    assert cases[before.case_id].promised_by == before.promised_by
    assert cases[after.case_id].promised_by == after.promised_by
    # Setting it again replaces it.
    await _policy(pair, kind="doubt", channel="chat", min_seconds=0, max_seconds=7200,
                  warn_before_seconds=0)
    latest = await _open(pair, cid, kind="doubt", channel="chat")
    assert _at(latest.promised_earliest_at) == _at(latest.opened_at)
    assert _at(latest.promised_by) - _at(latest.opened_at) == timedelta(hours=2)


async def test_a_promise_policy_for_any_channel(pair: Pair) -> None:
    cid = await new_customer(pair)
    try:
        await _policy(pair, kind="Inquiry", channel="", min_seconds=300,
                      max_seconds=5 * 3600, warn_before_seconds=600)  # empty channel: any
        case = await _open(pair, cid, kind="inquiry", channel="in_person")
        assert _at(case.promised_by) - _at(case.opened_at) == timedelta(hours=5)
    finally:  # back to the shipped values, for the other tests
        await _policy(pair, kind="inquiry", channel="*", min_seconds=600,
                      max_seconds=24 * 3600, warn_before_seconds=4 * 3600)
    case = await _open(pair, cid, kind="inquiry", channel="in_person")
    assert _at(case.promised_by) - _at(case.opened_at) == timedelta(hours=24)


_GOOD = {"kind": "support", "channel": "web", "min_seconds": 60, "max_seconds": 3600,
         "warn_before_seconds": 600}


@pytest.mark.parametrize(("fields", "field"), [
    ({"kind": "purchase"}, "kind"),
    ({"kind": ""}, "kind"),
    ({"channel": "fax"}, "channel"),
    ({"min_seconds": -1}, "min_seconds"),
    ({"max_seconds": 0, "warn_before_seconds": 0, "min_seconds": 0}, "max_seconds"),
    ({"min_seconds": 7200}, "max_seconds"),  # less than the minimum
    ({"warn_before_seconds": 3600}, "warn_before_seconds"),
    ({"warn_before_seconds": -5}, "warn_before_seconds"),
    ({"max_seconds": 10**15}, "max_seconds"),  # more than Python's timedelta holds
    ({"max_seconds": 10**13}, "max_seconds"),  # a deadline past the year 9999
])
async def test_bad_promise_policy_is_invalid_argument_naming_the_field(
        pair: Pair, fields: dict[str, Any], field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _policy(pair, **{**_GOOD, **fields})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(f"{field}:")
    # Nothing was stored: support cases on the web keep the shipped 72 hours.
    cid = await new_customer(pair)
    case = await _open(pair, cid, kind="support", channel="web")
    assert _at(case.promised_by) - _at(case.opened_at) == timedelta(hours=72)


# --- service cycles ---------------------------------------------------------

async def test_service_cycle_round_trip(pair: Pair) -> None:
    name = f"store-visit-{uuid.uuid4().hex[:6]}"
    moments = [
        pb.MomentOfTruth(touchpoint="greeting", weight=2, requirements=[
            pb.Requirement(requirement_id="smile", text="a smile"),
            pb.Requirement(requirement_id="queue", text="no queue", channels=["in_person"],
                           scale="yes_no", weight=5, question="Did you queue?")]),
        pb.MomentOfTruth(touchpoint=" checkout ", name="Paying", requirements=[
            pb.Requirement(requirement_id="fast", text="fast payment", scale="nps")]),
        pb.MomentOfTruth(touchpoint="delivery"),
    ]
    defined = await api(pair).DefineServiceCycle(pb.ServiceCycle(
        name=name, moments=moments, version=42), metadata=pair.interactions.metadata)
    assert defined.name == name and defined.version == 1  # version is output only
    assert defined.HasField("defined_at")
    got = await api(pair).GetServiceCycle(pb.GetServiceCycleRequest(name=name),
                                          metadata=pair.interactions.metadata)
    assert got == defined
    assert [(m.touchpoint, m.name, m.weight) for m in got.moments] == [
        ("greeting", "greeting", 2), ("checkout", "Paying", 1), ("delivery", "delivery", 1)]
    smile, queue = got.moments[0].requirements
    assert (smile.scale, smile.weight, list(smile.channels), smile.question) == (
        "csat", 1, [], "How satisfied were you with: a smile?")
    assert (queue.scale, queue.weight, list(queue.channels), queue.question) == (
        "yes_no", 5, ["in_person"], "Did you queue?")
    ids = {smile.question_id, queue.question_id, got.moments[1].requirements[0].question_id}
    assert len(ids) == 3 and all(uuid.UUID(i) for i in ids)

    # Defining it again differently is a new version that replaces the moments.
    again = await api(pair).DefineServiceCycle(pb.ServiceCycle(
        name=name, moments=[pb.MomentOfTruth(touchpoint="greeting", weight=3)]),
        metadata=pair.interactions.metadata)
    got = await api(pair).GetServiceCycle(pb.GetServiceCycleRequest(name=name),
                                          metadata=pair.interactions.metadata)
    assert again.version == got.version == 2
    assert [(m.touchpoint, m.weight) for m in got.moments] == [("greeting", 3)]


async def test_unknown_service_cycle_is_not_found(pair: Pair) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api(pair).GetServiceCycle(pb.GetServiceCycleRequest(
            name=f"nothing-{uuid.uuid4().hex[:6]}"), metadata=pair.interactions.metadata)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(("cycle", "field"), [
    ({"name": "", "moments": [{"touchpoint": "a"}]}, "name"),
    ({"name": " ", "moments": [{"touchpoint": "a"}]}, "name"),
    ({"moments": []}, "moments"),
    ({"moments": [{"touchpoint": "a"}, {"touchpoint": " "}]}, "moments[1].touchpoint"),
    ({"moments": [{"touchpoint": "a"}, {"touchpoint": " a"}]}, "moments[1].touchpoint"),
    ({"moments": [{"touchpoint": "a", "weight": -1}]}, "moments[0].weight"),
])
async def test_bad_service_cycle_is_invalid_argument_naming_the_field(
        pair: Pair, cycle: dict[str, Any], field: str) -> None:
    name = cycle.get("name", f"bad-{uuid.uuid4().hex[:6]}")
    moments = [pb.MomentOfTruth(**m) for m in cycle["moments"]]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api(pair).DefineServiceCycle(pb.ServiceCycle(name=name, moments=moments),
                                           metadata=pair.interactions.metadata)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(f"{field}:")
    if name.strip():
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api(pair).GetServiceCycle(pb.GetServiceCycleRequest(name=name),
                                            metadata=pair.interactions.metadata)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND  # nothing was stored


# --- surveys after resolution -----------------------------------------------

async def test_a_resolved_case_asks_for_a_survey(pair: Pair) -> None:
    cid = await new_customer(pair)
    await consent(pair, cid)  # to surveys
    case = await _open(pair, cid, kind="support", channel="chat", unit="helpdesk")
    await _resolve(pair, case.case_id)
    found = await events_of(pair, cid, 3)  # opened, resolved, survey.requested
    assert [t for t, _ in found] == ["case.opened", "case.resolved", "survey.requested"]
    [survey] = _of(found, "survey.requested")
    assert (survey["case_id"], survey["channel"], survey["unit"]) == (
        case.case_id, "chat", "helpdesk")
    # Resolving again is a no-op: no second survey.
    await _resolve(pair, case.case_id)
    await _open(pair, cid, kind="inquiry")  # a later event of this customer
    found = await events_of(pair, cid, 4)
    assert len(_of(found, "survey.requested")) == 1 and len(_of(found, "case.resolved")) == 1


async def test_no_survey_while_another_complaint_is_open(pair: Pair) -> None:
    cid = await new_customer(pair)
    await consent(pair, cid)
    first = await record(pair, customer_id=cid, channel="phone", kind="complaint",
                         notes="late delivery")
    second = await record(pair, customer_id=cid, channel="email", kind="complaint",
                          notes="wrong size")
    support = await _open(pair, cid, kind="support", channel="web")
    # Resolving anything while a complaint is open asks for no survey ...
    await _resolve(pair, support.case_id)
    await _resolve(pair, first.case_id)
    # ... resolving the last open complaint does, for that case.
    await _resolve(pair, second.case_id)
    # recorded x2, opened x3, repeated_complaint signal, resolved x3, survey.requested
    found = await events_of(pair, cid, 10)
    assert [d["case_id"] for d in _of(found, "case.resolved")] == [
        support.case_id, first.case_id, second.case_id]
    assert [d["case_id"] for d in _of(found, "survey.requested")] == [second.case_id]
    assert [t for t, _ in found][-2:] == ["case.resolved", "survey.requested"]


async def test_a_reopened_complaint_holds_back_surveys(pair: Pair) -> None:
    cid = await new_customer(pair)
    await consent(pair, cid)
    complaint = await record(pair, customer_id=cid, channel="chat", kind="complaint")
    await _resolve(pair, complaint.case_id)
    await events_of(pair, cid, 4)  # the survey request went out (scheduled work)
    await _reopen(pair, complaint.case_id)
    support = await _open(pair, cid, kind="support", channel="chat")
    await _resolve(pair, support.case_id)
    await _resolve(pair, complaint.case_id, "refunded")
    # recorded, opened, resolved, survey, reopened, opened, resolved, resolved, survey
    found = await events_of(pair, cid, 9)
    assert [d["case_id"] for d in _of(found, "survey.requested")] == [
        complaint.case_id, complaint.case_id]


# --- customer.merged --------------------------------------------------------

async def test_merged_customers_contacts_and_cases_move_to_the_survivor(pair: Pair) -> None:
    survivor = await new_customer(pair)
    other = await new_customer(pair)
    mine = await record(pair, customer_id=survivor, channel="web", kind="inquiry")
    theirs = [await record(pair, customer_id=other, channel="phone", kind="complaint",
                           notes="broken lid"),
              await record(pair, customer_id=other, channel="chat", kind="suggestion")]
    their_case = await _open(pair, other, kind="support", channel="email")
    await api(pair).RecordSurveyResponse(pb.RecordSurveyResponseRequest(
        customer_id=other, touchpoint="checkout", idempotency_key=str(uuid.uuid4()),
        answers=[pb.SurveyAnswer(question="speed", csat=4, nps=-1)]),
        metadata=pair.interactions.metadata)

    await customers(pair).MergeCustomers(cpb.MergeCustomersRequest(
        survivor_customer_id=survivor, merged_customer_id=other),
        metadata=pair.customers.metadata)

    expected = {mine.interaction_id, *(i.interaction_id for i in theirs)}

    async def moved() -> bool:
        timeline = await api(pair).GetTimeline(pb.GetTimelineRequest(customer_id=survivor),
                                               metadata=pair.interactions.metadata)
        return {i.interaction_id for i in timeline.interactions} == expected

    await wait_for(moved, what="the merged customer's contacts on the survivor's timeline")
    timeline = await api(pair).GetTimeline(pb.GetTimelineRequest(customer_id=survivor),
                                           metadata=pair.interactions.metadata)
    assert {i.customer_id for i in timeline.interactions} == {survivor}
    # The merged id is an alias now (as in GetCustomer): reading by it shows
    # the survivor's records, and no record is left under it.
    by_alias = await api(pair).GetTimeline(pb.GetTimelineRequest(customer_id=other),
                                           metadata=pair.interactions.metadata)
    assert list(by_alias.interactions) == list(timeline.interactions)
    cases = await _cases(pair, survivor)
    assert {c.case_id for c in cases} == {theirs[0].case_id, their_case.case_id}
    assert {c.customer_id for c in cases} == {survivor}
    assert await _cases(pair, other) == cases
    pool = pair.interactions.runner.pool
    assert pool is not None
    for table in ("interactions", "cases", "survey_responses"):
        assert await pool.fetchval(
            f"SELECT count(*) FROM {table} WHERE customer_id = $1", uuid.UUID(other)) == 0
    pool = pair.interactions.runner.pool
    assert pool is not None
    owners = await pool.fetch("SELECT DISTINCT customer_id FROM survey_responses"
                              " WHERE customer_id = ANY($1::uuid[])",
                              [uuid.UUID(survivor), uuid.UUID(other)])
    assert [str(r["customer_id"]) for r in owners] == [survivor]
    # Work on a moved case goes on under the survivor.
    await _resolve(pair, their_case.case_id)
    found = await events_of(pair, survivor, 2)  # its own interaction.recorded, case.resolved
    assert [d["case_id"] for d in _of(found, "case.resolved")] == [their_case.case_id]


async def test_a_contact_under_the_merged_id_after_the_merge_lands_on_the_survivor(
        pair: Pair) -> None:
    survivor = await new_customer(pair)
    other = await new_customer(pair)
    before = await record(pair, customer_id=other, channel="web", kind="inquiry")
    await customers(pair).MergeCustomers(cpb.MergeCustomersRequest(
        survivor_customer_id=survivor, merged_customer_id=other),
        metadata=pair.customers.metadata)

    async def timeline_ids() -> set[str]:
        timeline = await api(pair).GetTimeline(pb.GetTimelineRequest(customer_id=survivor),
                                               metadata=pair.interactions.metadata)
        return {i.interaction_id for i in timeline.interactions}

    async def moved() -> bool:
        return before.interaction_id in await timeline_ids()

    await wait_for(moved, what="the merge consumed by the interactions service")
    # The channel still knows the customer by the old id.
    after = await record(pair, customer_id=other, channel="phone", kind="complaint")
    assert await timeline_ids() == {before.interaction_id, after.interaction_id}
    assert [c.case_id for c in await _cases(pair, survivor, "open")] == [after.case_id]


async def test_a_reopened_case_is_warned_again_ahead_of_its_deadline(pair: Pair) -> None:
    cid = await new_customer(pair)
    await consent(pair, cid)
    case = await _open(pair, cid, kind="complaint", channel="phone")  # 1 to 48 hours
    await _resolve(pair, case.case_id, "refunded")
    await events_of(pair, cid, 3)  # the survey request went out (scheduled work)
    await _reopen(pair, case.case_id, "the refund never arrived")
    pair.clock.advance(timedelta(hours=42))  # past the warning, before the deadline
    found = await events_of(pair, cid, 5)  # opened, resolved, survey, reopened, warning
    warnings = _of(found, "case.breach_warning")
    assert [w["case_id"] for w in warnings] == [case.case_id]
    assert _of(found, "case.breached") == []
