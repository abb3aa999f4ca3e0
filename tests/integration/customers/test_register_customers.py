"""RegisterCustomers: many registrations in one call, each as RegisterCustomer
would make it, with a result (or an error) per item in the request's order."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from crm.customers.v1 import customers_pb2 as pb
from crm.customers.v1 import customers_pb2_grpc
from crm_contracts.contact_points import normalise_phone
from crm_contracts.errors import InvalidArgument
from crm_contracts.topics import CUSTOMERS
from crm_runtime import limits
from crm_runtime.grpc_server import ServiceRegistration, build_server
from crm_runtime.settings import ApiToken
from services.customers import commands, exports
from services.customers.api import CustomersServicer
from tests.support.customers import register, stub
from tests.support.kafka import sent_records
from tests.support.services import Running

MAX_REGISTRATIONS = limits.limits_of(
    pb.RegisterCustomersRequest.DESCRIPTOR.fields_by_name["customers"]).max_items
READ_TOKEN = "read-only-token-0123456789"
WRITE_TOKEN = "write-token-0123456789abc"


def _item(**fields: object) -> pb.RegisterCustomerRequest:
    return pb.RegisterCustomerRequest(**fields)  # type: ignore[arg-type]


async def _register_many(svc: Running, items: list[pb.RegisterCustomerRequest]
                         ) -> list[pb.RegisterCustomersResult]:
    reply = await stub(svc).RegisterCustomers(pb.RegisterCustomersRequest(customers=items),
                                              metadata=svc.metadata)
    return list(reply.results)


def _problem(value: str) -> str:
    """What the contact-point rules say about a bad phone."""
    with pytest.raises(InvalidArgument) as err:
        normalise_phone(value, "phone")
    return err.value.problem


async def _registered_events(svc: Running, customer_id: str) -> int:
    """The customer.registered events of this customer on the topic, once
    everything written for the customer was sent."""
    pool = svc.runner.pool
    assert pool is not None and svc.runner.settings.kafka_bootstrap_servers
    return len(await sent_records(pool, svc.runner.settings.kafka_bootstrap_servers, CUSTOMERS,
                                  customer_id.encode(), "customer.registered"))


async def test_each_item_gets_its_own_result_in_order(svc: Running) -> None:
    run = uuid.uuid4().hex[:8]
    known = await register(svc, emails=[f"known-{run}@example.com"])
    new, other, refused = (f"{name}-{run}@example.com" for name in ("new", "other", "late"))
    results = await _register_many(svc, [
        _item(emails=[new], source="batch"),
        _item(emails=[f"KNOWN-{run}@example.com"]),
        _item(emails=[f"ok-{run}@example.com"], phones=["123"]),
        _item(emails=[new.upper()], display_name="the same one again"),
        _item(emails=[refused], profile=pb.Profile(birth_year=1200)),
        _item(emails=[other], phones=["+34 600 000 001"]),
        _item(emails=[f"nul-{run}@example.com"], display_name="Ana\x00"),
        _item(emails=["x" * 300 + "@example.com"]),
    ])
    assert [r.WhichOneof("result") for r in results] == [
        "customer", "customer", "error", "customer", "error", "customer", "error", "error"]
    first, again_known, bad_phone, same, bad_profile, last, nul, long_email = results
    # Limits of the contract, per item: the other items are not refused with them.
    assert nul.error.field == "customers[6].display_name"
    assert "NUL" in nul.error.description
    assert long_email.error.field == "customers[7].emails[0]"
    assert "at most 200 characters" in long_email.error.description
    assert first.created and list(first.customer.emails) == [new]
    assert first.customer.stage == pb.STAGE_POTENTIAL
    assert not again_known.created
    assert again_known.customer.customer_id == known.customer.customer_id
    # The same email twice in one call: one customer, found the second time.
    assert same.customer.customer_id == first.customer.customer_id and not same.created
    assert (bad_phone.error.field, bad_phone.error.description) == (
        "customers[2].phones[0]", _problem("123"))
    assert bad_profile.error.field == "customers[4].profile.birth_year"
    assert "1200" in bad_profile.error.description
    assert last.created and list(last.customer.phones) == ["+34600000001"]
    # The refused items left nothing; the others are stored and announced once.
    for email in (f"ok-{run}@example.com", refused):
        found = await stub(svc).FindCustomers(pb.FindCustomersRequest(email=email),
                                              metadata=svc.metadata)
        assert not found.customers, email
    for result in (first, last):
        got = await stub(svc).GetCustomer(pb.GetCustomerRequest(
            customer_id=result.customer.customer_id), metadata=svc.metadata)
        assert got.customer_id == result.customer.customer_id
        assert await _registered_events(svc, result.customer.customer_id) == 1


async def test_a_repeated_call_returns_the_same_customers(svc: Running) -> None:
    run = uuid.uuid4().hex[:8]
    items = [_item(emails=[f"again-{run}-{i}@example.com"]) for i in range(3)]
    first = await _register_many(svc, items)
    again = await _register_many(svc, items)
    assert all(r.created for r in first) and not any(r.created for r in again)
    assert ([r.customer.customer_id for r in again]
            == [r.customer.customer_id for r in first])
    assert len({r.customer.customer_id for r in first}) == 3


async def test_an_empty_call_registers_nothing(svc: Running) -> None:
    assert await _register_many(svc, []) == []


async def test_more_than_the_maximum_fails_the_whole_call(svc: Running) -> None:
    run = uuid.uuid4().hex[:8]
    items = [_item(emails=[f"many-{run}-{i}@example.com"])
             for i in range(MAX_REGISTRATIONS + 1)]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _register_many(svc, items)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(
        f"customers: at most {MAX_REGISTRATIONS} items, got {MAX_REGISTRATIONS + 1}")
    found = await stub(svc).FindCustomers(
        pb.FindCustomersRequest(email=f"many-{run}-0@example.com"), metadata=svc.metadata)
    assert not found.customers


@pytest.fixture
async def scoped(svc: Running) -> AsyncIterator[customers_pb2_grpc.CustomersStub]:
    """The customers API on a server of its own that knows a read-only and a
    read-write token (the service's database, its real interceptor)."""
    assert svc.runner.pool is not None
    tokens = [ApiToken(system="reports", scopes=["customers:read"], token=READ_TOKEN),
              ApiToken(system="crm", scopes=["customers:write"], token=WRITE_TOKEN)]
    ctx = commands.Context(clock=svc.clock, lanes=svc.runner.settings.relay_lanes)
    server, _, port = build_server(
        service="customers-scoped", tokens={t.digest(): t for t in tokens},
        address="127.0.0.1:0", registrations=[ServiceRegistration(
            customers_pb2_grpc.add_CustomersServicer_to_server,
            CustomersServicer(svc.runner.pool, ctx, exports.Peers(svc.runner.settings)),
            pb.DESCRIPTOR.services_by_name["Customers"])])
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield customers_pb2_grpc.CustomersStub(channel)
    finally:
        await server.stop(None)


async def test_it_needs_the_write_scope(scoped: customers_pb2_grpc.CustomersStub) -> None:
    email = f"scoped-{uuid.uuid4().hex[:8]}@example.com"
    request = pb.RegisterCustomersRequest(customers=[_item(emails=[email])])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await scoped.RegisterCustomers(request, metadata=[("authorization",
                                                           f"Bearer {READ_TOKEN}")])
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "customers:write" in (err.value.details() or "")
    reply = await scoped.RegisterCustomers(request, metadata=[("authorization",
                                                               f"Bearer {WRITE_TOKEN}")])
    assert [r.created for r in reply.results] == [True]
