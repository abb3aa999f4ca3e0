"""Segments, links, merge and at-risk marking over the running service."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import grpc
import pytest
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary_event

from crm.customers.v1 import customers_pb2 as pb
from crm_contracts.interactions import DissatisfactionSignal, SurveyResponseRecorded
from crm_runtime.events import Envelope
from services.customers.segments import matches
from tests.support.customers import (
    customer_events,
    customer_records,
    get,
    purchase_event,
    register,
    stub,
)
from tests.support.kafka import produce_envelopes, wait_for
from tests.support.services import Running


async def _buy(svc: Running, customer_id: str, amount: int, currency: str = "EUR") -> None:
    await stub(svc).RecordPurchase(pb.RecordPurchaseRequest(
        customer_id=customer_id, purchase_id=str(uuid.uuid4()),
        amount=pb.Money(amount_minor=amount, currency=currency)), metadata=svc.metadata)


async def _members(svc: Running, name: str, page_size: int = 2) -> list[str]:
    ids: list[str] = []
    token = ""
    while True:
        page = await stub(svc).ListSegmentMembers(pb.ListSegmentMembersRequest(
            name=name, page_size=page_size, page_token=token), metadata=svc.metadata)
        ids += [c.customer_id for c in page.customers]
        token = page.next_page_token
        if not token:
            return ids


async def test_segments_are_validated_versioned_and_evaluated_in_sql(svc: Running) -> None:
    tag = uuid.uuid4().hex[:6]
    people = []
    for i, (spend, newsletter, buyer) in enumerate([
            (0, False, "person"), (5000, True, "person"), (15000, True, "company"),
            (25000, False, "person"), (12000, True, "person")]):
        profile = pb.Profile(buyer_type=buyer, company_name="Acme" if buyer == "company" else "",
                             socio_economic_band=tag)
        c = (await register(svc, display_name=f"s{i}", profile=profile)).customer
        if spend:
            await _buy(svc, c.customer_id, spend)
        if newsletter:
            await stub(svc).SetConsent(pb.SetConsentRequest(
                customer_id=c.customer_id, purpose="newsletter", granted=True),
                metadata=svc.metadata)
        people.append(c.customer_id)
    definition = {"all": [
        {"field": "profile.socio_economic_band", "op": "=", "value": tag},
        {"field": "total_spent.EUR", "op": ">=", "value": 10000},
        {"field": "consent.newsletter", "op": "=", "value": True}]}
    seg = await stub(svc).DefineSegment(pb.DefineSegmentRequest(
        name=f"vip-{tag}", filter_json=json.dumps(definition)), metadata=svc.metadata)
    assert seg.version == 1
    assert sorted(await _members(svc, f"vip-{tag}")) == sorted([people[2], people[4]])
    # Edit: a new version, and the members follow the new definition.
    definition["all"][2] = {"field": "profile.buyer_type", "op": "=", "value": "person"}
    seg = await stub(svc).DefineSegment(pb.DefineSegmentRequest(
        name=f"vip-{tag}", filter_json=json.dumps(definition)), metadata=svc.metadata)
    assert seg.version == 2
    members = await _members(svc, f"vip-{tag}")
    assert sorted(members) == sorted([people[3], people[4]])
    # The Python evaluator agrees with SQL on every one of these customers.
    for cid in people:
        c = await get(svc, cid)
        view = {"profile.socio_economic_band": c.profile.socio_economic_band,
                "profile.buyer_type": c.profile.buyer_type,
                "total_spent.EUR": sum(m.amount_minor for m in c.total_spent
                                       if m.currency == "EUR")}
        assert matches(definition, view, svc.clock.now()) == (cid in members)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub(svc).DefineSegment(pb.DefineSegmentRequest(
            name="bad", filter_json='{"field": "stage", "op": "=", "value": "vip"}'),
            metadata=svc.metadata)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("filter_json.value:")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _members(svc, "no-such-segment")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_segment_churn_window_override(svc: Running) -> None:
    tag = uuid.uuid4().hex[:6]
    await stub(svc).DefineSegment(pb.DefineSegmentRequest(
        name=f"fast-{tag}", churn_window_days=30, filter_json=json.dumps(
            {"field": "profile.socio_economic_band", "op": "=", "value": tag})),
        metadata=svc.metadata)
    fast = (await register(svc, profile=pb.Profile(socio_economic_band=tag))).customer
    slow = (await register(svc)).customer
    await _buy(svc, fast.customer_id, 100)
    await _buy(svc, slow.customer_id, 100)
    svc.clock.advance(timedelta(days=31))

    async def fast_is_former() -> bool:
        return (await get(svc, fast.customer_id)).stage == pb.STAGE_FORMER

    await wait_for(fast_is_former, what="the 30-day segment churned")
    assert (await get(svc, slow.customer_id)).stage == pb.STAGE_ONE_TIME
    # Stage changes name the segments the customer is in (loyalty rules match on them).
    changes = [d for t, d in await customer_events(svc, fast.customer_id, 4)
               if t == "customer.stage_changed"]
    assert [c["segment_keys"] for c in changes] == [[f"fast-{tag}"], [f"fast-{tag}"]]
    slow_changes = [d for t, d in await customer_events(svc, slow.customer_id, 3)
                    if t == "customer.stage_changed"]
    assert f"fast-{tag}" not in slow_changes[0]["segment_keys"]


async def test_link_requester_to_decision_maker(svc: Running) -> None:
    employee = (await register(svc, display_name="Employee")).customer
    company = (await register(svc, display_name="Acme", profile=pb.Profile(
        buyer_type="company", company_name="Acme"))).customer
    linked = await stub(svc).LinkCustomers(pb.LinkCustomersRequest(
        requester_customer_id=employee.customer_id,
        decision_maker_customer_id=company.customer_id, role="buys_for"), metadata=svc.metadata)
    assert [(getattr(link, "as"), link.other_customer_id, link.role) for link in linked.links] == [
        ("requester", company.customer_id, "buys_for")]
    other_side = await get(svc, company.customer_id)
    assert [getattr(link, "as") for link in other_side.links] == ["decision_maker"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub(svc).LinkCustomers(pb.LinkCustomersRequest(
            requester_customer_id=employee.customer_id,
            decision_maker_customer_id=str(uuid.uuid4()), role="buys_for"),
            metadata=svc.metadata)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_merge_keeps_both_histories_and_the_event_reads_with_the_sdk(
        svc: Running) -> None:
    a = (await register(svc, display_name="Ana", emails=[f"{uuid.uuid4().hex[:6]}@a.com"])
         ).customer
    b = (await register(svc, display_name="Ana dup", phones=["+34911555000"])).customer
    await _buy(svc, a.customer_id, 1000)
    await _buy(svc, b.customer_id, 2000)
    survivor = await stub(svc).MergeCustomers(pb.MergeCustomersRequest(
        survivor_customer_id=a.customer_id, merged_customer_id=b.customer_id),
        metadata=svc.metadata)
    assert survivor.customer_id == a.customer_id
    assert survivor.purchase_count == 2 and survivor.stage == pb.STAGE_REPEAT
    assert set(survivor.emails) == {*a.emails, *b.emails}
    assert survivor.phones == ["+34911555000"]
    assert [(m.currency, m.amount_minor) for m in survivor.total_spent] == [("EUR", 3000)]
    # The merged id is an alias: lookups and later purchases land on the survivor.
    assert (await get(svc, b.customer_id)).customer_id == a.customer_id
    await produce_envelopes(svc.runner.settings.kafka_bootstrap_servers or "",
                            [purchase_event(b.customer_id, 500, svc.clock.now())])

    async def counted() -> bool:
        return (await get(svc, a.customer_id)).purchase_count == 3

    await wait_for(counted, what="a purchase under the alias counted for the survivor")
    history = await stub(svc).GetStageHistory(pb.GetStageHistoryRequest(
        customer_id=a.customer_id), metadata=svc.metadata)
    assert len(history.transitions) == 3  # a: potential->one_time (+ merge), b's own
    records = await customer_records(svc, a.customer_id, 1)
    merged = [r for r in records if dict(r.headers)["ce_type"] == b"customer.merged"]
    assert len(merged) == 1
    ce = from_binary_event(KafkaMessage(headers=dict(merged[0].headers), key=merged[0].key,
                                        value=merged[0].value))
    assert ce.get_type() == "customer.merged" and ce.get_subject() == a.customer_id
    data = ce.get_data()
    assert isinstance(data, dict) and data["merged_customer_id"] == b.customer_id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub(svc).MergeCustomers(pb.MergeCustomersRequest(
            survivor_customer_id=b.customer_id, merged_customer_id=a.customer_id),
            metadata=svc.metadata)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_erased_event_reads_with_the_sdk(svc: Running) -> None:
    c = (await register(svc)).customer
    await stub(svc).EraseCustomer(pb.EraseCustomerRequest(customer_id=c.customer_id),
                                  metadata=svc.metadata)
    records = await customer_records(svc, c.customer_id, 2)
    ce = from_binary_event(KafkaMessage(headers=dict(records[-1].headers), key=records[-1].key,
                                        value=records[-1].value))
    assert ce.get_type() == "customer.erased" and ce.get_data() == {"customer_id": c.customer_id}


async def test_dissatisfaction_marks_at_risk_and_recovery_clears_it(svc: Running) -> None:
    c = (await register(svc)).customer
    bootstrap = svc.runner.settings.kafka_bootstrap_servers or ""
    now = svc.clock.now()
    signal = Envelope(data=DissatisfactionSignal(
        customer_id=c.customer_id, reason="breached_promise", occurred_at=now),
        subject=c.customer_id, source="/crm/interactions")
    low = Envelope(data=SurveyResponseRecorded(
        survey_response_id="s1", customer_id=c.customer_id, csat=2, occurred_at=now),
        subject=c.customer_id, source="/crm/interactions")
    await produce_envelopes(bootstrap, [signal, signal, low])

    async def at_risk() -> bool:
        return (await get(svc, c.customer_id)).at_risk

    await wait_for(at_risk, what="at risk")
    assert list((await get(svc, c.customer_id)).risk_reasons) == ["breached_promise"]
    good = Envelope(data=SurveyResponseRecorded(
        survey_response_id="s2", customer_id=c.customer_id, csat=5, nps=9,
        occurred_at=now + timedelta(minutes=5)), subject=c.customer_id,
        source="/crm/interactions")
    await produce_envelopes(bootstrap, [good])

    async def cleared() -> bool:
        return not (await get(svc, c.customer_id)).at_risk

    await wait_for(cleared, what="risk cleared by a good survey")
    after = await get(svc, c.customer_id)
    assert after.last_csat == 5 and after.last_nps == 9
    types = [t for t, _ in await customer_events(svc, c.customer_id, 3)]
    assert types.count("customer.at_risk") == 1 and types[-1] == "customer.risk_cleared"


async def test_risk_expires_on_the_scheduler_clock(svc: Running) -> None:
    c = (await register(svc)).customer
    signal = Envelope(data=DissatisfactionSignal(
        customer_id=c.customer_id, reason="low_nps", score=2, occurred_at=svc.clock.now()),
        subject=c.customer_id, source="/crm/interactions")
    await produce_envelopes(svc.runner.settings.kafka_bootstrap_servers or "", [signal])

    async def at_risk(expected: bool) -> bool:
        return (await get(svc, c.customer_id)).at_risk == expected

    await wait_for(lambda: at_risk(True), what="at risk")
    svc.clock.advance(timedelta(days=91))
    await wait_for(lambda: at_risk(False), what="risk expired after 90 days")
