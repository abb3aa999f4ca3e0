"""The contact gate (``Customers/ReserveContacts``) over gRPC and a real
PostgreSQL: one ledger per customer across callers, idempotent contact ids,
bad items named, unknown and merged customers, quiet hours in the customer's
zone, the export and erasure of the ledger, and callers racing for one
customer's cap from two replicas of the service."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from crm.customers.v1 import customers_pb2 as pb
from crm.customers.v1 import customers_pb2_grpc
from services.customers.app import SPEC
from tests.support.customers import register, stub
from tests.support.services import Running, running


def _at(when: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when)
    return ts


def _ask(customer_id: str, purpose: str = "service", *, contact_id: str = "",
         at: datetime | None = None, service: str = "test",
         already_made: bool = False) -> pb.ContactRequest:
    request = pb.ContactRequest(contact_id=contact_id or str(uuid.uuid4()),
                                customer_id=customer_id, purpose=purpose, channel="email",
                                service=service, already_made=already_made)
    if at is not None:
        request.at.CopyFrom(_at(at))
    return request


async def _reserve(svc: Running | customers_pb2_grpc.CustomersStub,
                   *asks: pb.ContactRequest) -> list[pb.ContactDecision]:
    client = stub(svc) if isinstance(svc, Running) else svc
    metadata = [("authorization", "Bearer test-dev-token-0123456789")]
    reply = await client.ReserveContacts(pb.ReserveContactsRequest(contacts=asks),
                                         metadata=metadata)
    return list(reply.decisions)


async def _customer(svc: Running, *consents: str, zone: str = "") -> str:
    reply = await register(svc, profile=pb.Profile(time_zone=zone))
    cid = reply.customer.customer_id
    for purpose in consents:
        await stub(svc).SetConsent(pb.SetConsentRequest(
            customer_id=cid, purpose=purpose, granted=True, source="test"),
            metadata=svc.metadata)
    return cid


def _outcome(d: pb.ContactDecision) -> tuple[bool, str]:
    return d.allowed, d.reason


async def test_one_ledger_every_purpose_and_a_retry_counts_once(svc: Running) -> None:
    cid = await _customer(svc, "surveys", "newsletter")
    survey = _ask(cid, "surveys")
    # Asked twice in one call and once more later: allowed each time, counted once.
    assert [_outcome(d) for d in await _reserve(svc, survey, survey)] == [(True, "")] * 2
    assert [_outcome(d) for d in await _reserve(svc, survey)] == [(True, "")]
    # Another service's contact fills the surveys cap (2 in the window) ...
    [decision] = await _reserve(svc, _ask(cid, "newsletter", service="loyalty"))
    assert decision.allowed
    [refused] = await _reserve(svc, _ask(cid, "surveys"))
    assert _outcome(refused) == (False, "frequency_cap")
    assert refused.not_before.ToDatetime(tzinfo=UTC) == svc.clock.now() + timedelta(days=7)
    # ... but not the newsletter's (4) nor service's (6); promotions need consent.
    decisions = await _reserve(svc, _ask(cid, "newsletter"), _ask(cid, "service"),
                               _ask(cid, "promotional_offers"))
    assert [_outcome(d) for d in decisions] == [
        (True, ""), (True, ""), (False, "no_promotional_offers_consent")]


async def test_bad_items_fail_the_call_naming_the_field(svc: Running) -> None:
    cid = await _customer(svc)
    for bad, field in ((_ask(cid, "marketing"), "contacts[1].purpose"),
                       (_ask("not-a-uuid"), "contacts[1].customer_id"),
                       (pb.ContactRequest(customer_id=cid, purpose="service"),
                        "contacts[1].contact_id"),
                       (_ask(cid, at=datetime(1999, 1, 1, tzinfo=UTC)), "contacts[1].at")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _reserve(svc, _ask(cid), bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _reserve(svc, *[_ask(cid)] * 501)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "contacts" in (err.value.details() or "")


async def test_unknown_merged_and_erased_customers(svc: Running) -> None:
    survivor, merged, erased = [await _customer(svc) for _ in range(3)]
    await stub(svc).MergeCustomers(pb.MergeCustomersRequest(
        survivor_customer_id=survivor, merged_customer_id=merged), metadata=svc.metadata)
    await stub(svc).EraseCustomer(pb.EraseCustomerRequest(customer_id=erased),
                                  metadata=svc.metadata)
    decisions = await _reserve(svc, _ask(str(uuid.uuid4())), _ask(erased),
                               *[_ask(merged) for _ in range(3)],
                               *[_ask(survivor) for _ in range(4)])
    assert [_outcome(d) for d in decisions] == [
        (False, "unknown_customer"), (False, "erased"), *[(True, "")] * 6,
        (False, "frequency_cap")]  # service: 6 in the window, merged id and survivor together


async def test_quiet_hours_in_the_customers_zone(svc: Running) -> None:
    cid = await _customer(svc, zone="Asia/Tokyo")
    night = svc.clock.now().replace(hour=14, minute=0)  # 23:00 in Tokyo
    [decision] = await _reserve(svc, _ask(cid, at=night))
    assert _outcome(decision) == (False, "quiet_hours")
    # 08:00 Tokyo the next morning is 23:00 UTC.
    assert decision.not_before.ToDatetime(tzinfo=UTC) == night.replace(hour=23)
    [made] = await _reserve(svc, _ask(cid, at=night, already_made=True))
    assert _outcome(made) == (True, "quiet_hours")


async def test_the_ledger_is_exported_and_erased(svc: Running) -> None:
    cid = await _customer(svc)
    contact_id = str(uuid.uuid4())
    await _reserve(svc, _ask(cid, contact_id=contact_id, service="loyalty"))
    reply = await stub(svc).ExportCustomer(pb.ExportCustomerRequest(customer_id=cid),
                                           metadata=svc.metadata)
    contacts = json.loads(reply.json)["services"]["customers"]["contacts"]
    assert [(c["contact_id"], c["purpose"], c["channel"], c["service"]) for c in contacts] == [
        (contact_id, "service", "email", "loyalty")]
    await stub(svc).EraseCustomer(pb.EraseCustomerRequest(customer_id=cid),
                                  metadata=svc.metadata)
    pool = svc.runner.pool
    assert pool is not None
    assert await pool.fetchval("SELECT count(*) FROM contact_ledger WHERE customer_id = $1",
                               uuid.UUID(cid)) == 0


@pytest.fixture(scope="module")
async def replica(svc: Running) -> AsyncIterator[Running]:
    """A second process of the service on the same database (as a replica)."""
    async with running(SPEC, svc.runner.settings, clock=svc.clock) as r:
        yield r


async def test_racing_callers_never_exceed_the_cap(svc: Running, replica: Running) -> None:
    """Two callers (one per replica, each its own connection and transaction)
    ask at the same moment for the same customer, each for as many surveys
    as the cap allows: over many rounds, never more than the cap is allowed
    (the second waits for the first's lock, then counts what it recorded)."""
    one, two = stub(svc), stub(replica)
    for _ in range(25):
        cid = await _customer(svc, "surveys")
        first, second = await asyncio.gather(
            _reserve(one, _ask(cid, "surveys"), _ask(cid, "surveys")),
            _reserve(two, _ask(cid, "surveys"), _ask(cid, "surveys")))
        allowed = sum(d.allowed for d in [*first, *second])
        assert allowed == 2, [_outcome(d) for d in [*first, *second]]
