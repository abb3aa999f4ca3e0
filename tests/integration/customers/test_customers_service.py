"""The customers service end to end: gRPC in, events consumed and published,
over a real PostgreSQL and a real broker."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import grpc
import pytest

from crm.customers.v1 import customers_pb2 as pb
from tests.support.customers import (
    START,
    customer_events,
    get,
    purchase_event,
    register,
    stub,
)
from tests.support.kafka import produce_envelopes, wait_for
from tests.support.services import Running


async def test_registration_is_idempotent_on_any_identifier(svc: Running) -> None:
    first = await register(svc, display_name="Ana", emails=["Ana.Ruiz@Example.com"],
                           phones=["+34 911 234 567"], external_ids=["pos:77"])
    assert first.created and first.customer.stage == pb.STAGE_POTENTIAL
    assert first.customer.emails == ["ana.ruiz@example.com"]
    assert first.customer.phones == ["+34911234567"]
    again = await register(svc, display_name="Ana R.", emails=["ana.ruiz@EXAMPLE.com"])
    assert not again.created and again.customer.customer_id == first.customer.customer_id
    by_pos = await register(svc, external_ids=["POS:77"], emails=[])
    assert by_pos.customer.customer_id == first.customer.customer_id
    found = await stub(svc).FindCustomers(pb.FindCustomersRequest(phone="+34911234567"),
                                          metadata=svc.metadata)
    assert [c.customer_id for c in found.customers] == [first.customer.customer_id]
    events = await customer_events(svc, first.customer.customer_id, 1)
    assert [t for t, _ in events] == ["customer.registered"]


@pytest.mark.parametrize(("request_fields", "field"), [
    ({"emails": ["nope"]}, "emails[0]"),
    ({"emails": ["a@example.com"], "phones": ["12"]}, "phones[0]"),
    ({"emails": [], "phones": [], "external_ids": []}, "emails"),
    ({"emails": ["b@example.com"], "profile": pb.Profile(buyer_type="alien")},
     "profile.buyer_type"),
])
async def test_bad_input_is_invalid_argument_naming_the_field(
        svc: Running, request_fields: dict[str, object], field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub(svc).RegisterCustomer(pb.RegisterCustomerRequest(**request_fields),  # type: ignore[arg-type]
                                         metadata=svc.metadata)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(f"{field}:")


async def test_unknown_ids_and_stale_versions(svc: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await get(svc, str(uuid.uuid4()))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await get(svc, "not-a-uuid")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    c = (await register(svc, display_name="Bea")).customer
    updated = await stub(svc).UpdateCustomer(pb.UpdateCustomerRequest(
        customer_id=c.customer_id, expected_version=c.version, display_name="Beatriz",
        profile=pb.Profile(birth_year=1990, buyer_type="company", company_name="Acme",
                           concomitant_needs=["Credit", "home_delivery"])),
        metadata=svc.metadata)
    assert updated.display_name == "Beatriz" and updated.version == c.version + 1
    assert updated.profile.age_band == "35-44"
    assert list(updated.profile.concomitant_needs) == ["credit", "home_delivery"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub(svc).UpdateCustomer(pb.UpdateCustomerRequest(
            customer_id=c.customer_id, expected_version=c.version, display_name="B."),
            metadata=svc.metadata)
    assert err.value.code() == grpc.StatusCode.ABORTED


async def test_purchases_move_stages_once_each_whatever_the_redelivery(svc: Running) -> None:
    c = (await register(svc, display_name="Carla")).customer
    # At most 15 minutes ahead of the service's clock: both in its past.
    today = svc.clock.now()
    first = purchase_event(c.customer_id, 1999, today - timedelta(days=3))
    second = purchase_event(c.customer_id, 500, today)
    bootstrap = svc.runner.settings.kafka_bootstrap_servers
    assert bootstrap
    # The same purchase event three times, and the second twice.
    await produce_envelopes(bootstrap, [first, first, second, first, second])

    async def counted() -> bool:
        return (await get(svc, c.customer_id)).purchase_count == 2

    await wait_for(counted, what="two purchases counted")
    now = await get(svc, c.customer_id)
    assert now.stage == pb.STAGE_REPEAT
    assert [(m.currency, m.amount_minor) for m in now.total_spent] == [("EUR", 2499)]
    # The gRPC path with the same sale id as an event is a different sale id
    # space; a retried gRPC call with the same purchase id counts once.
    for _ in range(2):
        now = await stub(svc).RecordPurchase(pb.RecordPurchaseRequest(
            customer_id=c.customer_id, purchase_id="pos-sale-1",
            amount=pb.Money(amount_minor=100, currency="eur")), metadata=svc.metadata)
    assert now.purchase_count == 3
    history = await stub(svc).GetStageHistory(pb.GetStageHistoryRequest(
        customer_id=c.customer_id), metadata=svc.metadata)
    assert [(t.from_stage, t.to_stage, t.cause, t.causing_event_id)
            for t in history.transitions] == [
        (pb.STAGE_POTENTIAL, pb.STAGE_ONE_TIME, "purchase", first.id),
        (pb.STAGE_ONE_TIME, pb.STAGE_REPEAT, "purchase", second.id)]
    events = await customer_events(svc, c.customer_id, 6)
    changes = [d for t, d in events if t == "customer.stage_changed"]
    assert [(d["from_stage"], d["to_stage"], d["causing_event_id"]) for d in changes] == [
        ("potential", "one_time", first.id), ("one_time", "repeat", second.id)]


async def test_churn_window_on_the_scheduler_clock_and_win_back(svc: Running) -> None:
    c = (await register(svc, display_name="Dora")).customer
    await stub(svc).RecordPurchase(pb.RecordPurchaseRequest(
        customer_id=c.customer_id, purchase_id="sale-d1",
        amount=pb.Money(amount_minor=1000, currency="EUR")), metadata=svc.metadata)
    svc.clock.advance(timedelta(days=364))

    async def stage_is(stage: int) -> bool:
        return (await get(svc, c.customer_id)).stage == stage

    await wait_for(lambda: stage_is(pb.STAGE_ONE_TIME), what="still one-time")
    svc.clock.advance(timedelta(days=2))
    await wait_for(lambda: stage_is(pb.STAGE_FORMER), what="former after the churn window")
    back = await stub(svc).RecordPurchase(pb.RecordPurchaseRequest(
        customer_id=c.customer_id, purchase_id="sale-d2",
        amount=pb.Money(amount_minor=1000, currency="EUR")), metadata=svc.metadata)
    assert back.stage == pb.STAGE_REPEAT
    events = await customer_events(svc, c.customer_id, 7)
    types = [t for t, _ in events]
    assert "customer.won_back" in types
    changes = [(d["from_stage"], d["to_stage"], d["cause"]) for t, d in events
               if t == "customer.stage_changed"]
    assert changes == [("potential", "one_time", "purchase"),
                       ("one_time", "former", "churn_window"),
                       ("former", "repeat", "purchase")]


async def test_erasure_removes_personal_data_and_is_not_undone(svc: Running) -> None:
    c = (await register(svc, display_name="Eva", emails=["eva@example.com"],
                        phones=["+34911000111"])).customer
    await stub(svc).SetConsent(pb.SetConsentRequest(customer_id=c.customer_id,
                                                    purpose="newsletter", granted=True,
                                                    source="web"), metadata=svc.metadata)
    await stub(svc).EraseCustomer(pb.EraseCustomerRequest(customer_id=c.customer_id),
                                  metadata=svc.metadata)
    bootstrap = svc.runner.settings.kafka_bootstrap_servers
    assert bootstrap
    late = purchase_event(c.customer_id, 100, START)
    await produce_envelopes(bootstrap, [late])
    pool = svc.runner.pool
    assert pool is not None

    async def consumed() -> bool:
        return bool(await pool.fetchval("SELECT count(*) FROM inbox WHERE event_id = $1",
                                        late.id))

    await wait_for(consumed, what="the late purchase consumed")
    export = await stub(svc).ExportCustomer(pb.ExportCustomerRequest(
        customer_id=c.customer_id), metadata=svc.metadata)
    doc = json.loads(export.json)["services"]["customers"]
    assert doc["display_name"] == "" and doc["emails"] == [] and doc["phones"] == []
    assert doc["consents"] == [] and doc["erased_at"]
    events = await customer_events(svc, c.customer_id, 3)
    assert [t for t, _ in events][-1] == "customer.erased"
    after = await get(svc, c.customer_id)
    assert after.erased and after.purchase_count == 0 and not after.emails
    # The same email now registers a new, different customer.
    again = await register(svc, emails=["eva@example.com"])
    assert again.created and again.customer.customer_id != c.customer_id


async def test_registration_names_the_referrer(svc: Running) -> None:
    referrer = (await register(svc, display_name="Fran")).customer
    referred = (await register(svc, display_name="Gil",
                               referred_by_customer_id=referrer.customer_id)).customer
    events = await customer_events(svc, referred.customer_id, 1)
    assert events[0][0] == "customer.registered"
    assert events[0][1]["referred_by"] == referrer.customer_id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await register(svc, referred_by_customer_id=str(uuid.uuid4()))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
