"""Attention on the record: an indirect contact (someone asks or decides for
the customer) names its requester and decision maker, over gRPC and on the
ingest topic, publishes them on interaction.recorded, and shows in their
timelines with their role; a proactive contact (the company reaches out)
passes the contact gate and is recorded, published and reported like any
other; the satisfaction report groups by attention; an erased requester is
forgotten on the contacts of others."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import grpc
import pytest

from crm.customers.v1 import customers_pb2 as cpb
from crm.interactions.v1 import interactions_pb2 as pb
from crm_contracts.interactions import ContactReceived
from crm_contracts.topics import INTERACTIONS_INGEST
from crm_runtime.consumer import dlq_topic
from crm_runtime.events import Envelope
from tests.integration.interactions.conftest import Pair
from tests.integration.interactions.test_interactions_service import (
    _ts,
    api,
    customers,
    events_of,
    new_customer,
    record,
)
from tests.support.kafka import dead_letter, dlq_error, produce_envelopes, wait_for


def _indirect(requester: str, decision_maker: str) -> pb.Attention:
    return pb.Attention(mode="indirect", requester_customer_id=requester,
                        decision_maker_customer_id=decision_maker)


async def _timeline(pair: Pair, customer_id: str, **fields: Any) -> pb.GetTimelineResponse:
    reply: pb.GetTimelineResponse = await api(pair).GetTimeline(pb.GetTimelineRequest(
        customer_id=customer_id, **fields), metadata=pair.interactions.metadata)
    return reply


def _recorded(found: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [d for t, d in found if t == "interaction.recorded"]


async def test_an_indirect_contact_names_who_asked_and_who_decides(pair: Pair) -> None:
    child, parent, school = [await new_customer(pair) for _ in range(3)]
    contact = await record(pair, customer_id=child, kind="purchase", channel="in_person",
                           attention=_indirect(parent, school), notes="size 32, blue",
                           amount=pb.Money(amount_minor=2500, currency="EUR"))
    assert contact.attention == _indirect(parent, school)
    [recorded] = _recorded(await events_of(pair, child, 1))
    assert (recorded["attention"], recorded["requester_customer_id"],
            recorded["decision_maker_customer_id"], recorded["direction"]) == (
        "indirect", parent, school, "reactive")
    for who, role in ((child, "customer"), (parent, "requester"), (school, "decision_maker")):
        [seen] = (await _timeline(pair, who)).interactions
        assert (seen.interaction_id, seen.customer_id, seen.role) == (
            contact.interaction_id, child, role)
        # The notes and the amount are the child's: only their timeline shows them.
        own = who == child
        assert (seen.notes, seen.amount.amount_minor) == (
            ("size 32, blue", 2500) if own else ("", 0)), who


async def test_indirect_attention_needs_its_requester_and_decision_maker(pair: Pair) -> None:
    cid, other = await new_customer(pair), await new_customer(pair)
    for attention in (pb.Attention(mode="indirect", decision_maker_customer_id=other),
                      pb.Attention(mode="indirect", requester_customer_id=other)):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await record(pair, customer_id=cid, attention=attention)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith("attention: indirect attention needs")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await record(pair, customer_id=cid, attention=pb.Attention(mode="sideways"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("attention.mode:")


async def test_a_timeline_pages_through_every_role_newest_first(pair: Pair) -> None:
    """The customer's own contacts and those they asked or decided for, each
    once (in the first role that applies), interleaved by time and paged."""
    me, a, b = [await new_customer(pair) for _ in range(3)]
    base = pair.clock.now() - timedelta(hours=1)
    plan = [  # (minutes after base, whose contact, attention, channel, expected role)
        (0, me, None, "web", "customer"),
        (1, a, _indirect(me, b), "phone", "requester"),
        (2, me, _indirect(me, a), "web", "customer"),  # mine, though I asked too
        (3, b, _indirect(a, me), "web", "decision_maker"),
        (4, a, _indirect(me, me), "phone", "requester"),  # asked and decided: requester
        (5, b, _indirect(a, b), "web", None),  # not mine at all
        (6, me, None, "chat", "customer"),
    ]
    ids = {}
    for minutes, whose, attention, channel, _ in plan:
        fields: dict[str, Any] = {"attention": attention} if attention else {}
        reply = await record(pair, customer_id=whose, channel=channel,
                             occurred_at=_ts(base + timedelta(minutes=minutes)), **fields)
        ids[minutes] = reply.interaction_id
    expected = [(ids[m], role) for m, _, _, _, role in reversed(plan) if role]
    seen: list[tuple[str, str]] = []
    token = ""
    for _ in range(4):
        page = await _timeline(pair, me, page_size=2, page_token=token)
        seen += [(i.interaction_id, i.role) for i in page.interactions]
        token = page.next_page_token
        if not token:
            break
    assert seen == expected
    web = await _timeline(pair, me, channels=["web"])
    assert [(i.interaction_id, i.role) for i in web.interactions] == [
        (ids[3], "decision_maker"), (ids[2], "customer"), (ids[0], "customer")]


async def test_an_indirect_contact_on_the_ingest_topic(pair: Pair) -> None:
    cid, requester, decider = [await new_customer(pair) for _ in range(3)]

    def contact(**fields: Any) -> Envelope[ContactReceived]:
        return Envelope(data=ContactReceived(
            idempotency_key=f"pos-{uuid.uuid4().hex[:10]}", customer_id=cid, channel="phone",
            kind="inquiry", occurred_at=pair.clock.now(), attention="indirect", **fields),
            subject=cid, source="/call-centre")

    good = contact(requester_customer_id=requester, decision_maker_customer_id=decider)
    half = contact(requester_customer_id=requester)
    await produce_envelopes(pair.bootstrap, [half, good])
    kind, reason = dlq_error(await dead_letter(pair.bootstrap, dlq_topic(INTERACTIONS_INGEST),
                                               half.id))
    assert kind == "invalid_contact" and reason.startswith("attention: indirect attention")
    [recorded] = _recorded(await events_of(pair, cid, 1))
    assert (recorded["attention"], recorded["requester_customer_id"],
            recorded["decision_maker_customer_id"]) == ("indirect", requester, decider)
    [seen] = (await _timeline(pair, requester)).interactions
    assert (seen.interaction_id, seen.role, seen.customer_id) == (
        recorded["interaction_id"], "requester", cid)


async def test_a_proactive_contact_passes_the_gate_and_is_recorded(pair: Pair) -> None:
    cid = await new_customer(pair)
    call = await record(pair, customer_id=cid, channel="phone", kind="follow_up",
                        direction="proactive", touchpoint="after-sale")
    assert call.direction == "proactive"
    [recorded] = _recorded(await events_of(pair, cid, 1))
    assert (recorded["interaction_id"], recorded["direction"], recorded["kind"]) == (
        call.interaction_id, "proactive", "follow_up")
    pool = pair.customers.runner.pool
    assert pool is not None
    ledger = await pool.fetch("SELECT purpose, channel, service FROM contact_ledger "
                              "WHERE customer_id = $1", uuid.UUID(cid))
    assert [tuple(r) for r in ledger] == [("service", "phone", "interactions")]


async def test_the_report_by_attention(pair: Pair) -> None:
    """Contacts by their attention, cases by their contact's, survey responses
    by the attention of the contact they rate (directly or through its case);
    a case or response without a contact is left out. Proactive contacts
    count like any other."""
    pair.clock.advance(timedelta(minutes=1))  # a window of this test's own
    since = pair.clock.now()
    cid, requester, decider = [await new_customer(pair) for _ in range(3)]
    direct = await record(pair, customer_id=cid)
    await record(pair, customer_id=cid, outcome="negative", channel="phone",
                 direction="proactive", kind="follow_up")
    complaint = await record(pair, customer_id=cid, kind="complaint", outcome="negative",
                             attention=_indirect(requester, decider))
    await api(pair).OpenCase(pb.OpenCaseRequest(
        customer_id=cid, kind="support", channel="email", idempotency_key=str(uuid.uuid4())),
        metadata=pair.interactions.metadata)  # no contact: no attention
    rates: list[dict[str, Any]] = [{"interaction_id": direct.interaction_id},
                                   {"case_id": complaint.case_id}, {}]
    for rated in rates:
        await api(pair).RecordSurveyResponse(pb.RecordSurveyResponseRequest(
            customer_id=cid, touchpoint="after-sale", channel="web",
            idempotency_key=str(uuid.uuid4()),
            answers=[pb.SurveyAnswer(question="overall", csat=4, nps=-1)], **rated),
            metadata=pair.interactions.metadata)
    pair.clock.advance(timedelta(minutes=1))
    request = pb.GetSatisfactionReportRequest(group_by="attention", to=_ts(pair.clock.now()))
    getattr(request, "from").CopyFrom(_ts(since))
    report = await api(pair).GetSatisfactionReport(request, metadata=pair.interactions.metadata)
    rows = {r.key: (r.contacts, r.negative_contacts, r.cases_opened, r.responses)
            for r in report.rows}
    assert rows == {"direct": (2, 1, 0, 1), "indirect": (1, 1, 1, 1)}


async def test_an_erased_requester_is_forgotten_on_the_contacts_of_others(
        pair: Pair) -> None:
    cid, requester, decider = [await new_customer(pair) for _ in range(3)]
    contact = await record(pair, customer_id=cid, attention=_indirect(requester, decider))
    assert [i.role for i in (await _timeline(pair, requester)).interactions] == ["requester"]
    await customers(pair).EraseCustomer(cpb.EraseCustomerRequest(customer_id=requester),
                                        metadata=pair.customers.metadata)

    async def forgotten() -> bool:
        return not (await _timeline(pair, requester)).interactions

    await wait_for(forgotten, what="the erased requester's id cleared")
    [kept] = (await _timeline(pair, cid)).interactions
    assert kept.interaction_id == contact.interaction_id
    assert kept.attention == pb.Attention(mode="indirect", decision_maker_customer_id=decider)
    assert await pair.pool.fetchval(
        "SELECT count(*) FROM interactions WHERE requester_id = $1 OR decision_maker_id = $1",
        uuid.UUID(requester)) == 0
    [still] = (await _timeline(pair, decider)).interactions
    assert still.role == "decision_maker"


async def test_erasing_a_survivor_forgets_the_ids_merged_into_it_on_others_contacts(
        pair: Pair) -> None:
    cid, survivor, merged, decider = [await new_customer(pair) for _ in range(4)]
    await record(pair, customer_id=cid, attention=_indirect(merged, decider))
    await customers(pair).MergeCustomers(cpb.MergeCustomersRequest(
        survivor_customer_id=survivor, merged_customer_id=merged),
        metadata=pair.customers.metadata)

    async def seen_by_survivor() -> bool:
        return [i.role for i in (await _timeline(pair, survivor)).interactions] == [
            "requester"]

    await wait_for(seen_by_survivor, what="the merged requester's contact in the timeline")
    await customers(pair).EraseCustomer(cpb.EraseCustomerRequest(customer_id=survivor),
                                        metadata=pair.customers.metadata)

    async def forgotten() -> bool:
        return not await pair.pool.fetchval(
            "SELECT count(*) FROM interactions WHERE requester_id = ANY($1::uuid[])",
            [uuid.UUID(survivor), uuid.UUID(merged)])

    await wait_for(forgotten, what="the merged id cleared with the survivor's erasure")
    assert not (await _timeline(pair, survivor)).interactions
