"""How important the purchase is to the customer (``Profile.purchase_importance``:
low, medium, high, '' unknown): set where the profile is set, validated,
returned, carried on customer.registered, a segment filter's attribute (a
change re-evaluates the customer's segments) and part of the data-subject
export."""

from __future__ import annotations

import json
import uuid

import grpc
import pytest

from crm.customers.v1 import customers_pb2 as pb
from tests.integration.customers.test_segment_membership import _define, _members, _pass_done
from tests.support.customers import customer_events, get, register, stub
from tests.support.kafka import wait_for
from tests.support.services import Running


async def _update(svc: Running, customer_id: str, profile: pb.Profile) -> pb.Customer:
    version = (await get(svc, customer_id)).version
    reply: pb.Customer = await stub(svc).UpdateCustomer(pb.UpdateCustomerRequest(
        customer_id=customer_id, expected_version=version, profile=profile),
        metadata=svc.metadata)
    return reply


async def test_registered_with_it_returned_and_published(svc: Running) -> None:
    reply = await register(svc, profile=pb.Profile(purchase_importance=" High "))
    cid = reply.customer.customer_id
    assert reply.customer.profile.purchase_importance == "high"
    assert (await get(svc, cid)).profile.purchase_importance == "high"
    events = await customer_events(svc, cid, 1)
    [registered] = [d for t, d in events if t == "customer.registered"]
    assert registered["purchase_importance"] == "high"
    unknown = await register(svc)
    assert unknown.customer.profile.purchase_importance == ""
    [plain] = [d for t, d in await customer_events(svc, unknown.customer.customer_id, 1)
               if t == "customer.registered"]
    assert plain["purchase_importance"] == ""


async def test_a_value_outside_the_vocabulary_is_invalid_argument(svc: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await register(svc, profile=pb.Profile(purchase_importance="urgent"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("profile.purchase_importance: 'urgent'")
    cid = (await register(svc)).customer.customer_id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _update(svc, cid, pb.Profile(purchase_importance="vital"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("profile.purchase_importance:")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub(svc).DefineSegment(pb.DefineSegmentRequest(
            name=f"imp-{uuid.uuid4().hex[:8]}", filter_json=json.dumps(
                {"field": "profile.purchase_importance", "op": "=", "value": "vital"})),
            metadata=svc.metadata)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("filter_json.value: 'vital' is not one of")


async def test_a_segment_filters_on_it_and_a_change_reevaluates(svc: Running) -> None:
    band = f"imp-{uuid.uuid4().hex[:8]}"  # this test's customers only
    segment = f"high-importance-{band}"
    high = (await register(svc, profile=pb.Profile(socio_economic_band=band,
                                                   purchase_importance="high"))).customer
    low = (await register(svc, profile=pb.Profile(socio_economic_band=band,
                                                  purchase_importance="low"))).customer
    await _define(svc, segment, {"all": [
        {"field": "profile.socio_economic_band", "op": "=", "value": band},
        {"field": "profile.purchase_importance", "op": "in", "value": ["high"]}]})
    await _pass_done(svc, segment)
    assert set(await _members(svc, segment)) == {high.customer_id}
    # The profile changes: the low one becomes high, the high one unknown.
    await _update(svc, low.customer_id, pb.Profile(socio_economic_band=band,
                                                   purchase_importance="high"))
    cleared = await _update(svc, high.customer_id, pb.Profile(socio_economic_band=band))
    assert cleared.profile.purchase_importance == ""

    async def swapped() -> bool:
        return set(await _members(svc, segment)) == {low.customer_id}

    await wait_for(swapped, what="the segment re-evaluated after the profile changes")
    entered = [d for t, d in await customer_events(svc, low.customer_id, 3)
               if t == "customer.segment_entered"]
    assert [(d["segment"], d["cause"]) for d in entered] == [(segment, "profile")]


async def test_it_is_part_of_the_data_subject_export(svc: Running) -> None:
    reply = await register(svc, profile=pb.Profile(purchase_importance="medium"))
    cid = reply.customer.customer_id
    export = await stub(svc).ExportCustomer(pb.ExportCustomerRequest(customer_id=cid),
                                            metadata=svc.metadata)
    part = json.loads(export.json)["services"]["customers"]
    assert part["profile"]["purchase_importance"] == "medium"
