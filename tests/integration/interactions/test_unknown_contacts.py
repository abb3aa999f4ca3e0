"""Contacts of someone unknown (an email or a phone, no customer id): the
ingest consumer registers a batch's worth with the customers service in one
RegisterCustomers call, before the batch's transaction opens. Calls are
counted with the customers gRPC server's own request counter."""

from __future__ import annotations

import asyncio
import gc
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import asyncpg
import grpc
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY

from crm.customers.v1 import customers_pb2 as cpb
from crm.customers.v1 import customers_pb2_grpc
from crm_contracts.contact_points import normalise_phone
from crm_contracts.errors import InvalidArgument
from crm_contracts.interactions import ContactReceived
from crm_contracts.topics import INTERACTIONS_INGEST
from crm_runtime.consumer import dlq_topic
from crm_runtime.events import Envelope
from crm_runtime.grpc_server import ServiceRegistration, build_server
from crm_runtime.stack import TansuBroker
from services.customers.api import CustomersServicer
from services.customers.commands import Context as CustomersContext
from services.customers.exports import Peers
from services.interactions.directory import CustomerDirectory
from tests.integration.interactions.conftest import Pair, customers_behind_a_proxy
from tests.integration.interactions.test_interactions_service import customers, record
from tests.support.customers import START
from tests.support.kafka import read_topic, wait_for
from tests.support.services import DEV_TOKEN


def calls(method: str) -> float:
    """Calls of a customers method the customers gRPC server answered, any code."""
    total = 0.0
    for family in REGISTRY.collect():
        for s in family.samples:
            if (s.name == "crm_grpc_requests_total" and s.labels["service"] == "customers"
                    and s.labels["method"] == method):
                total += s.value
    return total


class Calls:
    """RegisterCustomer and RegisterCustomers calls since it was made."""

    def __init__(self) -> None:
        self._single, self._many = calls("RegisterCustomer"), calls("RegisterCustomers")

    @property
    def single(self) -> float:
        return calls("RegisterCustomer") - self._single

    @property
    def many(self) -> float:
        return calls("RegisterCustomers") - self._many


def contact(key: str, *, email: str = "", phone: str = "", at: datetime = START,
            kind: str = "inquiry") -> Envelope[ContactReceived]:
    return Envelope(data=ContactReceived(
        idempotency_key=key, contact_email=email, contact_phone=phone, channel="web",
        kind=kind, occurred_at=at), subject=email or phone, source="/test/chat")


async def produce_as_one_batch(bootstrap: str, key: bytes,
                               envelopes: list[Envelope[ContactReceived]]) -> None:
    """One partition (one key) and one produce request (the producer lingers
    until all are queued), so the consumer gets them as one batch."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1000,
                                max_batch_size=1 << 20)
    await producer.start()
    try:
        futures = [await producer.send(INTERACTIONS_INGEST, key=key, value=e.body(),
                                       headers=e.headers()) for e in envelopes]
        await producer.flush()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def stored(pool: asyncpg.Pool, prefix: str) -> dict[str, uuid.UUID]:
    rows = await pool.fetch("SELECT idempotency_key, customer_id FROM interactions "
                            "WHERE idempotency_key LIKE $1", f"{prefix}%")
    return {r["idempotency_key"]: r["customer_id"] for r in rows}


def phone_problem(value: str) -> str:
    with pytest.raises(InvalidArgument) as err:
        normalise_phone(value, "phone")
    return err.value.problem


async def test_a_batch_of_unknown_contacts_is_one_registration_call(pair: Pair) -> None:
    pool = pair.interactions.runner.pool
    assert pool is not None
    bootstrap = pair.interactions.runner.settings.kafka_bootstrap_servers or ""
    run = uuid.uuid4().hex[:8]
    emails = [f"batch-{run}-{i}@example.com" for i in range(20)]
    batch = [contact(f"{run}-{i}", email=e) for i, e in enumerate(emails)]
    batch += [contact(f"{run}-again", email=emails[3].upper()),  # the same person again
              contact(f"{run}-phone", phone="+34 600 111 222"),
              contact(f"{run}-bad", phone="123")]
    counted = Calls()
    await produce_as_one_batch(bootstrap, f"chat-{run}".encode(), batch)

    async def all_stored() -> bool:
        return len(await stored(pool, run)) == len(batch) - 1

    await wait_for(all_stored, what="the good contacts recorded")
    dead: list[Any] = []

    async def dead_lettered() -> bool:
        dead[:] = [r for r in await read_topic(bootstrap, dlq_topic(INTERACTIONS_INGEST),
                                               expect=0, timeout=5, settle=0.2)
                   if dict(r.headers)["ce_id"] == batch[-1].id.encode()]
        return bool(dead)

    await wait_for(dead_lettered, what="the bad phone dead-lettered")
    headers = dict(dead[0].headers)
    assert headers["dlq_error_kind"] == b"invalid_contact"
    assert headers["dlq_error_reason"].decode() == f"contact_phone: {phone_problem('123')}"
    # One call for the batch, even though the bad contact made the consumer
    # apply it again record by record; none of the one-at-a-time call.
    assert (counted.many, counted.single) == (1, 0)
    by_key = await stored(pool, run)
    assert by_key[f"{run}-again"] == by_key[f"{run}-3"]
    assert len(set(by_key.values())) == len(emails) + 1
    for i in (0, 19):
        found = await customers(pair).FindCustomers(cpb.FindCustomersRequest(email=emails[i]),
                                                    metadata=pair.customers.metadata)
        assert [c.customer_id for c in found.customers] == [str(by_key[f"{run}-{i}"])]
        assert found.customers[0].stage == cpb.STAGE_POTENTIAL


async def test_record_interaction_registers_with_one_call_before_its_transaction(
        pair: Pair) -> None:
    counted = Calls()
    email = f"grpc-{uuid.uuid4().hex[:8]}@example.com"
    first = await record(pair, contact_email=email)
    assert (counted.many, counted.single) == (1, 0)
    found = await customers(pair).FindCustomers(cpb.FindCustomersRequest(email=email),
                                                metadata=pair.customers.metadata)
    assert [c.customer_id for c in found.customers] == [first.customer_id]


async def nothing_seen(envelopes: list[Envelope]) -> set[str]:
    return set()


async def test_prepare_leaves_out_what_the_inbox_has_taken(
        pair: Pair, directory: CustomerDirectory) -> None:
    """Only the events the inbox has not taken are registered: the others are
    redeliveries the inbox drops, whose contacts must not be registered again."""
    run = uuid.uuid4().hex[:8]
    taken = contact(f"{run}-taken", email=f"taken-{run}@example.com")
    new = contact(f"{run}-new", email=f"new-{run}@example.com")
    asked: list[list[str]] = []

    async def seen(envelopes: list[Envelope]) -> set[str]:
        asked.append([e.id for e in envelopes])
        return {taken.id}

    counted = Calls()
    await directory.prepare([taken, new], seen)
    assert asked == [[taken.id, new.id]]
    assert counted.many == 1
    assert taken.id not in directory._resolved and new.id in directory._resolved
    for email, expected in ((f"taken-{run}@example.com", 0), (f"new-{run}@example.com", 1)):
        found = await customers(pair).FindCustomers(cpb.FindCustomersRequest(email=email),
                                                    metadata=pair.customers.metadata)
        assert len(found.customers) == expected, email
    # A batch with no unknown contact does not ask the inbox at all.
    await directory.prepare([], seen)
    assert len(asked) == 1
    await directory.close()


async def test_a_redelivered_contact_does_not_bring_back_an_erased_customer(pair: Pair) -> None:
    """A contact of an unknown email registers its customer; the customer is
    erased; the same event comes again (a redelivery): the inbox drops it, and
    the customer is not registered again."""
    pool = pair.interactions.runner.pool
    assert pool is not None
    bootstrap = pair.interactions.runner.settings.kafka_bootstrap_servers or ""
    run = uuid.uuid4().hex[:8]
    email = f"erased-{run}@example.com"
    event = contact(f"{run}-once", email=email)
    await produce_as_one_batch(bootstrap, f"chat-{run}".encode(), [event])

    async def recorded() -> bool:
        return len(await stored(pool, run)) == 1

    await wait_for(recorded, what="the contact recorded")
    cid = (await stored(pool, run))[f"{run}-once"]
    await customers(pair).EraseCustomer(cpb.EraseCustomerRequest(customer_id=str(cid)),
                                        metadata=pair.customers.metadata)
    counted = Calls()
    marker = contact(f"{run}-after", email=f"after-{run}@example.com")
    await produce_as_one_batch(bootstrap, f"chat-{run}".encode(), [event, marker])

    async def marker_recorded() -> bool:
        return f"{run}-after" in await stored(pool, run)

    await wait_for(marker_recorded, what="the contact after the redelivery recorded")
    found = await customers(pair).FindCustomers(cpb.FindCustomersRequest(email=email),
                                                metadata=pair.customers.metadata)
    assert list(found.customers) == []
    assert counted.many == 1  # the marker's contact alone


@pytest.fixture
def directory(pair: Pair) -> Iterator[CustomerDirectory]:
    target = f"127.0.0.1:{pair.customers.runner.bound_grpc_port}"
    yield CustomerDirectory(target, DEV_TOKEN)


async def test_an_event_prepare_did_not_see_is_registered_alone(
        pair: Pair, directory: CustomerDirectory) -> None:
    run = uuid.uuid4().hex[:8]
    prepared = [contact(f"{run}-{i}", email=f"prep-{run}-{i}@example.com") for i in range(3)]
    counted = Calls()
    await directory.prepare(list(prepared), nothing_seen)
    ids = [await directory.customer_of(env) for env in prepared]
    assert (counted.many, counted.single) == (1, 0)
    await directory.prepare(list(prepared), nothing_seen)  # a retried batch: already resolved
    assert counted.many == 1
    unseen = contact(f"{run}-late", email=f"prep-{run}-0@example.com")
    assert await directory.customer_of(unseen) == ids[0]
    assert counted.many == 2
    bad = contact(f"{run}-bad", email="not an email")
    with pytest.raises(InvalidArgument) as err:
        await directory.customer_of(bad)
    assert err.value.field == "contact_email"
    # What prepare remembers goes with the batch's envelopes.
    del prepared, unseen, bad
    gc.collect()
    assert not directory._resolved
    await directory.close()


async def test_contacts_wait_while_customers_is_away_and_are_recorded_once_it_is_back(
        own_database: str, own_broker: TansuBroker) -> None:
    """Not lost, not dead-lettered: the batch is retried until the
    RegisterCustomers call goes through."""
    async with customers_behind_a_proxy(own_database, own_broker) as both:
        proxy, pool = both.proxy, both.pool
        run = uuid.uuid4().hex[:8]
        batch = [contact(f"{run}-{i}", email=f"away-{run}-{i}@example.com") for i in range(3)]
        await proxy.down()
        counted = Calls()
        await produce_as_one_batch(own_broker.bootstrap_servers, b"away", batch)
        await asyncio.sleep(2)
        assert await stored(pool, run) == {}
        assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 0
        assert counted.many == 0  # customers never saw a call
        await proxy.up()

        async def recorded() -> bool:
            return len(await stored(pool, run)) == len(batch)

        await wait_for(recorded, timeout=60, what="the contacts recorded once customers is back")
        assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 0
        assert counted.single == 0


class CustomersBeforeBatches(CustomersServicer):
    """The customers service as released before RegisterCustomers."""

    async def RegisterCustomers(self, request: cpb.RegisterCustomersRequest,
                                context: grpc.aio.ServicerContext
                                ) -> cpb.RegisterCustomersResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")
        raise AssertionError("abort raises")


async def test_an_older_customers_release_is_asked_one_contact_at_a_time(pair: Pair) -> None:
    """During a rolling upgrade, customers may not serve RegisterCustomers
    yet: the directory falls back to RegisterCustomer, a contact point a
    call, still before any transaction, and a refusal still names the field."""
    pool = pair.customers.runner.pool
    assert pool is not None
    servicer = CustomersBeforeBatches(
        pool, CustomersContext(clock=pair.customers.runner.clock, lanes=4),
        Peers(pair.customers.runner.settings))
    server, _, port = build_server(
        service="customers", tokens=pair.customers.runner.settings.token_table(),
        address="127.0.0.1:0", registrations=[ServiceRegistration(
            customers_pb2_grpc.add_CustomersServicer_to_server, servicer,
            cpb.DESCRIPTOR.services_by_name["Customers"])])
    await server.start()
    directory = CustomerDirectory(f"127.0.0.1:{port}", DEV_TOKEN)
    try:
        run = uuid.uuid4().hex[:8]
        email = f"older-{run}@example.com"
        known, bad = contact(f"{run}-a", email=email), contact(f"{run}-b", phone="123")
        await directory.prepare([known, bad], nothing_seen)
        customer_id = await directory.customer_of(known)
        with pytest.raises(InvalidArgument) as err:
            await directory.customer_of(bad)
        assert err.value.field == "contact_phone"
        assert await directory.identify(email.upper(), "") == customer_id
        found = await customers(pair).FindCustomers(cpb.FindCustomersRequest(email=email),
                                                    metadata=pair.customers.metadata)
        assert [c.customer_id for c in found.customers] == [str(customer_id)]
    finally:
        await directory.close()
        await server.stop(0)
