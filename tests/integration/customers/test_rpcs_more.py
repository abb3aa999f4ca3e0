"""ListCustomers and CloseRelationship over the running customers service, as
other systems call them (gRPC in, events read back from the topic)."""

from __future__ import annotations

import uuid

import grpc
import pytest

from crm.customers.v1 import customers_pb2 as pb
from crm_runtime.convert import MAX_PAGE_SIZE
from tests.support.customers import customer_events, get, register, stub
from tests.support.services import Running


async def _buy(svc: Running, customer_id: str) -> pb.Customer:
    reply: pb.Customer = await stub(svc).RecordPurchase(pb.RecordPurchaseRequest(
        customer_id=customer_id, purchase_id=str(uuid.uuid4()),
        amount=pb.Money(amount_minor=1000, currency="EUR")), metadata=svc.metadata)
    return reply


async def _close(svc: Running, customer_id: str, reason: str = "moved abroad") -> pb.Customer:
    reply: pb.Customer = await stub(svc).CloseRelationship(pb.CloseRelationshipRequest(
        customer_id=customer_id, reason=reason), metadata=svc.metadata)
    return reply


async def _pages(svc: Running, stage: int, page_size: int) -> list[list[pb.Customer]]:
    """Every page of ListCustomers, following the page tokens to the end."""
    pages: list[list[pb.Customer]] = []
    token = ""
    while True:
        page = await stub(svc).ListCustomers(pb.ListCustomersRequest(
            stage=stage, page_size=page_size, page_token=token),  # type: ignore[arg-type]
            metadata=svc.metadata)
        pages.append(list(page.customers))
        token = page.next_page_token
        if not token:
            return pages
        assert len(pages) < 10_000, "page tokens never end"


async def _listable(svc: Running, stage: str | None) -> set[str]:
    """What ListCustomers should return, straight from the service's tables:
    customers neither erased nor merged into another, of ``stage`` if given."""
    pool = svc.runner.pool
    assert pool is not None
    rows = await pool.fetch(
        """SELECT customer_id FROM customers WHERE erased_at IS NULL AND merged_into IS NULL
              AND ($1::text IS NULL OR stage = $1)""", stage)
    return {str(r["customer_id"]) for r in rows}


async def test_list_customers_filters_by_stage_and_pages_through_everyone_once(
        svc: Running) -> None:
    formers = [(await register(svc, display_name=f"f{i}")).customer.customer_id
               for i in range(5)]
    for cid in formers:
        await _close(svc, cid)
    buyer = (await register(svc, display_name="buyer")).customer.customer_id
    await _buy(svc, buyer)
    # A merged customer becomes an alias of the survivor: listed once, as the survivor.
    survivor = (await register(svc, display_name="survivor")).customer.customer_id
    alias = (await register(svc, display_name="alias")).customer.customer_id
    await stub(svc).MergeCustomers(pb.MergeCustomersRequest(
        survivor_customer_id=survivor, merged_customer_id=alias), metadata=svc.metadata)

    pages = await _pages(svc, pb.STAGE_FORMER, page_size=2)
    listed = [c.customer_id for page in pages for c in page]
    assert all(len(page) <= 2 for page in pages)
    assert len(listed) == len(set(listed)), "a customer was listed on two pages"
    assert set(formers) <= set(listed) and buyer not in listed
    assert {c.stage for page in pages for c in page} == {pb.STAGE_FORMER}
    assert set(listed) == await _listable(svc, "former")

    one_time = [c.customer_id for page in await _pages(svc, pb.STAGE_ONE_TIME, 50)
                for c in page]
    assert buyer in one_time and not set(formers) & set(one_time)

    everyone = [c.customer_id for page in await _pages(svc, pb.STAGE_UNSPECIFIED, 7)
                for c in page]
    assert len(everyone) == len(set(everyone)), "a customer was listed on two pages"
    assert set(everyone) == await _listable(svc, None)
    assert {*formers, buyer, survivor} <= set(everyone) and alias not in everyone


async def test_a_page_size_above_the_maximum_is_cut_to_it(svc: Running) -> None:
    reply = await stub(svc).ListCustomers(pb.ListCustomersRequest(page_size=100_000),
                                          metadata=svc.metadata)
    assert len(reply.customers) <= MAX_PAGE_SIZE


@pytest.mark.parametrize(("fields", "field"), [
    ({"page_token": "not a token"}, "page_token"),
    ({"page_token": "AAEC"}, "page_token"),  # valid base64, but not a customer id
    ({"page_size": -1}, "page_size"),
    ({"stage": 99}, "stage"),  # not a Stage: proto3 enums let unknown numbers through
])
async def test_list_customers_bad_page_token_or_filter_is_invalid_argument(
        svc: Running, fields: dict[str, object], field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub(svc).ListCustomers(pb.ListCustomersRequest(**fields),  # type: ignore[arg-type]
                                      metadata=svc.metadata)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(f"{field}:")


async def test_close_relationship_makes_the_customer_former_with_the_cause(
        svc: Running) -> None:
    c = (await register(svc, display_name="Hugo")).customer
    await _buy(svc, c.customer_id)
    closed = await _close(svc, c.customer_id, reason="asked us to stop")
    assert closed.stage == pb.STAGE_FORMER and closed.purchase_count == 1
    assert (await get(svc, c.customer_id)).stage == pb.STAGE_FORMER

    history = await stub(svc).GetStageHistory(pb.GetStageHistoryRequest(
        customer_id=c.customer_id), metadata=svc.metadata)
    last = history.transitions[-1]
    assert [(t.from_stage, t.to_stage, t.cause) for t in history.transitions] == [
        (pb.STAGE_POTENTIAL, pb.STAGE_ONE_TIME, "purchase"),
        (pb.STAGE_ONE_TIME, pb.STAGE_FORMER, "closed")]
    assert last.causing_event_id and last.at.ToDatetime() == svc.clock.now().replace(tzinfo=None)

    # Closing again changes nothing: no second transition, no second event.
    again = await _close(svc, c.customer_id)
    assert again.stage == pb.STAGE_FORMER and again.version == closed.version
    events = await customer_events(svc, c.customer_id, 4)  # registered, purchase, 2 changes
    changes = [d for t, d in events if t == "customer.stage_changed"]
    assert [(d["from_stage"], d["to_stage"], d["cause"]) for d in changes] == [
        ("potential", "one_time", "purchase"), ("one_time", "former", "closed")]
    assert changes[-1]["causing_event_id"] == last.causing_event_id
    assert changes[-1]["customer_id"] == c.customer_id and changes[-1]["purchase_count"] == 1
    history = await stub(svc).GetStageHistory(pb.GetStageHistoryRequest(
        customer_id=c.customer_id), metadata=svc.metadata)
    assert len(history.transitions) == 2


async def test_close_relationship_of_a_potential_customer(svc: Running) -> None:
    c = (await register(svc, display_name="Iris")).customer
    closed = await _close(svc, c.customer_id)
    assert closed.stage == pb.STAGE_FORMER
    events = await customer_events(svc, c.customer_id, 2)
    assert [(t, d.get("from_stage"), d.get("to_stage"), d.get("cause")) for t, d in events] == [
        ("customer.registered", None, None, None),
        ("customer.stage_changed", "potential", "former", "closed")]


async def test_close_relationship_unknown_bad_or_erased_customer(svc: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _close(svc, str(uuid.uuid4()))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _close(svc, "not-a-uuid")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("customer_id:")
    erased = (await register(svc)).customer
    await stub(svc).EraseCustomer(pb.EraseCustomerRequest(customer_id=erased.customer_id),
                                  metadata=svc.metadata)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _close(svc, erased.customer_id)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (await get(svc, erased.customer_id)).stage == pb.STAGE_POTENTIAL
