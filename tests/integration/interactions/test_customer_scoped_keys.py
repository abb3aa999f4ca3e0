"""Idempotency keys are scoped by customer, and records need a customer that
exists: over gRPC and on the ingest topic, with the customers service
beside the interactions service (real PostgreSQL, real broker)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import grpc
import pytest

from crm.customers.v1 import customers_pb2 as cpb
from crm.interactions.v1 import interactions_pb2 as pb
from crm.interactions.v1 import interactions_pb2_grpc
from crm_contracts.customers import CustomerRegistered
from crm_contracts.interactions import ContactReceived
from crm_contracts.topics import INTERACTIONS_INGEST
from crm_runtime import sealing
from crm_runtime.consumer import dlq_topic
from crm_runtime.events import Envelope
from crm_runtime.stack import TansuBroker
from tests.integration.interactions.conftest import Pair, customers_behind_a_proxy
from tests.integration.interactions.test_interactions_service import (
    _ts,
    api,
    customers,
    new_customer,
    record,
)
from tests.support import kafka
from tests.support.customers import register
from tests.support.kafka import Record, dlq_error, produce, produce_envelopes, wait_for


async def _timeline(pair: Pair, customer_id: str) -> list[pb.Interaction]:
    reply = await api(pair).GetTimeline(pb.GetTimelineRequest(customer_id=customer_id),
                                        metadata=pair.interactions.metadata)
    return list(reply.interactions)


async def dead_letter(pair: Pair, event_id: str) -> Record:
    """The dead letter of the ingest event ``event_id``, once it is there."""
    return await kafka.dead_letter(pair.bootstrap, dlq_topic(INTERACTIONS_INGEST), event_id)


async def consumed(pair: Pair, event_id: str) -> None:
    """Until the ingest consumer applied (not dead-lettered) ``event_id``."""
    async def taken() -> bool:
        return bool(await pair.pool.fetchval(
            "SELECT count(*) FROM inbox WHERE event_id = $1", event_id))

    await wait_for(taken, what=f"event {event_id} applied")


def contact(customer_id: str, key: str, **fields: Any) -> Envelope[ContactReceived]:
    fields.setdefault("channel", "web")
    fields.setdefault("kind", "inquiry")
    fields.setdefault("occurred_at", fields.pop("at"))
    return Envelope(data=ContactReceived(idempotency_key=key, customer_id=customer_id,
                                         **fields), subject=customer_id, source="/test/pos")


# --- keys scoped per customer -------------------------------------------------

async def test_a_key_another_customer_used_records_a_contact_of_its_own(pair: Pair) -> None:
    first, second = await new_customer(pair), await new_customer(pair)
    key = f"pos-{uuid.uuid4().hex[:8]}"
    theirs = await record(pair, customer_id=first, idempotency_key=key,
                          notes="first customer's private notes")
    mine = await record(pair, customer_id=second, idempotency_key=key, notes="second's")
    assert mine.interaction_id != theirs.interaction_id
    assert (mine.customer_id, mine.notes) == (second, "second's")
    again = await record(pair, customer_id=second, idempotency_key=key, notes="second's")
    assert again.interaction_id == mine.interaction_id
    assert [i.interaction_id for i in await _timeline(pair, first)] == [theirs.interaction_id]
    assert [i.interaction_id for i in await _timeline(pair, second)] == [mine.interaction_id]


async def test_a_key_reused_for_a_different_contact_is_already_exists(pair: Pair) -> None:
    cid = await new_customer(pair)
    key = f"pos-{uuid.uuid4().hex[:8]}"
    stored = await record(pair, customer_id=cid, idempotency_key=key, channel="web",
                          notes="two boxes")
    # A true retry: occurred_at was not given, so the time it defaulted to
    # (the service's clock, which moved) is not part of the request.
    pair.clock.advance(timedelta(seconds=1))
    retry = await record(pair, customer_id=cid, idempotency_key=key, channel="web",
                         notes="two boxes")
    assert retry.interaction_id == stored.interaction_id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await record(pair, customer_id=cid, idempotency_key=key, channel="phone",
                     notes="three boxes")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert err.value.details() == (f"idempotency_key {key!r}: already used for a different "
                                   "contact of this customer (channel, notes differ)")
    with pytest.raises(grpc.aio.AioRpcError) as err:  # now stating a time: another request
        await record(pair, customer_id=cid, idempotency_key=key, channel="web",
                     notes="two boxes", occurred_at=_ts(pair.clock.now()))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "(occurred_at differs)" in (err.value.details() or "")
    assert [i.notes for i in await _timeline(pair, cid)] == ["two boxes"]


async def test_contacts_identified_by_email_are_scoped_by_the_customer_they_resolve_to(
        pair: Pair) -> None:
    run = uuid.uuid4().hex[:8]
    key = f"chat-{run}"
    first = await record(pair, contact_email=f"a-{run}@example.com", idempotency_key=key,
                         notes="a")
    again = await record(pair, contact_email=f"A-{run}@EXAMPLE.com", idempotency_key=key,
                         notes="a")
    other = await record(pair, contact_email=f"b-{run}@example.com", idempotency_key=key,
                         notes="b")
    assert again.interaction_id == first.interaction_id
    assert other.customer_id != first.customer_id
    assert other.interaction_id != first.interaction_id and other.notes == "b"


async def test_ingest_scopes_keys_by_customer_and_dead_letters_a_conflict(pair: Pair) -> None:
    first, second = await new_customer(pair), await new_customer(pair)
    key = f"pos-{uuid.uuid4().hex[:8]}"
    at = pair.clock.now()
    theirs = contact(first, key, at=at, notes="first")
    mine = contact(second, key, at=at, notes="second")
    retry = contact(second, key, at=at, notes="second")  # a new event id, the same contact
    conflicting = contact(second, key, at=at, notes="second, changed", kind="doubt")
    await produce_envelopes(pair.bootstrap, [theirs, mine, retry, conflicting])
    kind, reason = dlq_error(await dead_letter(pair, conflicting.id))
    assert kind == "idempotency_conflict"
    assert reason == (f"idempotency_key {key!r}: already used for a different contact of this "
                      "customer (kind, notes differ)")
    for env in (theirs, mine, retry):
        await consumed(pair, env.id)
    rows = await pair.pool.fetch(
        "SELECT customer_id, notes FROM interactions WHERE idempotency_key = $1", key)
    assert sorted((str(r["customer_id"]), r["notes"]) for r in rows) == sorted(
        [(first, "first"), (second, "second")])


async def test_cases_and_surveys_keys_are_scoped_by_customer(pair: Pair) -> None:
    first, second = await new_customer(pair), await new_customer(pair)
    key = f"desk-{uuid.uuid4().hex[:8]}"
    theirs = await api(pair).OpenCase(pb.OpenCaseRequest(
        customer_id=first, kind="support", channel="email", summary="first's",
        idempotency_key=key), metadata=pair.interactions.metadata)
    mine = await api(pair).OpenCase(pb.OpenCaseRequest(
        customer_id=second, kind="support", channel="email", summary="second's",
        idempotency_key=key), metadata=pair.interactions.metadata)
    assert mine.case_id != theirs.case_id
    assert (mine.customer_id, mine.summary) == (second, "second's")
    callback = await api(pair).RequestCallback(pb.RequestCallbackRequest(
        customer_id=second, phone="+34 600 000 111", idempotency_key=f"cb-{key}"),
        metadata=pair.interactions.metadata)
    other_callback = await api(pair).RequestCallback(pb.RequestCallbackRequest(
        customer_id=first, phone="+34 600 000 222", idempotency_key=f"cb-{key}"),
        metadata=pair.interactions.metadata)
    assert other_callback.case_id != callback.case_id
    assert other_callback.callback_phone == "+34600000222"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api(pair).RequestCallback(pb.RequestCallbackRequest(
            customer_id=second, phone="+34 600 000 333", idempotency_key=f"cb-{key}"),
            metadata=pair.interactions.metadata)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "(callback_phone differs)" in (err.value.details() or "")

    def survey(customer_id: str, csat: int) -> pb.RecordSurveyResponseRequest:
        return pb.RecordSurveyResponseRequest(
            customer_id=customer_id, touchpoint="checkout", idempotency_key=key,
            answers=[pb.SurveyAnswer(question="speed", csat=csat, nps=-1)])

    a = await api(pair).RecordSurveyResponse(survey(first, 5),
                                             metadata=pair.interactions.metadata)
    b = await api(pair).RecordSurveyResponse(survey(second, 2),
                                             metadata=pair.interactions.metadata)
    assert a.survey_response_id != b.survey_response_id and b.csat == 2.0
    pair.clock.advance(timedelta(seconds=1))  # occurred_at not given: not compared
    again = await api(pair).RecordSurveyResponse(survey(second, 2),
                                                 metadata=pair.interactions.metadata)
    assert again.survey_response_id == b.survey_response_id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api(pair).RecordSurveyResponse(survey(second, 4),
                                             metadata=pair.interactions.metadata)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert err.value.details() == (f"idempotency_key {key!r}: already used for a different "
                                   "survey response of this customer (answers differs)")


async def test_contacts_of_two_customers_with_one_key_open_a_case_each(pair: Pair) -> None:
    first, second = await new_customer(pair), await new_customer(pair)
    key = f"call-{uuid.uuid4().hex[:8]}"
    theirs = await record(pair, customer_id=first, idempotency_key=key, kind="complaint",
                          channel="phone", notes="first's complaint")
    mine = await record(pair, customer_id=second, idempotency_key=key, kind="complaint",
                        channel="phone", notes="second's complaint")
    assert theirs.case_id and mine.case_id and theirs.case_id != mine.case_id
    rows = await pair.pool.fetch(
        "SELECT customer_id, summary FROM cases WHERE idempotency_key = $1",
        f"interaction:{key}")
    assert sorted((str(r["customer_id"]), r["summary"]) for r in rows) == sorted(
        [(first, "first's complaint"), (second, "second's complaint")])


async def test_a_merge_of_two_customers_who_used_one_key_keeps_both_records(
        pair: Pair) -> None:
    survivor, merged = await new_customer(pair), await new_customer(pair)
    key = f"pos-{uuid.uuid4().hex[:8]}"
    kept = await record(pair, customer_id=survivor, idempotency_key=key, kind="complaint",
                        channel="phone", notes="survivor's")
    moved = await record(pair, customer_id=merged, idempotency_key=key, kind="complaint",
                         channel="phone", notes="merged one's")
    for cid in (survivor, merged):
        await api(pair).RecordSurveyResponse(pb.RecordSurveyResponseRequest(
            customer_id=cid, touchpoint="checkout", idempotency_key=key,
            answers=[pb.SurveyAnswer(question="speed", csat=4, nps=-1)]),
            metadata=pair.interactions.metadata)
    await customers(pair).MergeCustomers(cpb.MergeCustomersRequest(
        survivor_customer_id=survivor, merged_customer_id=merged),
        metadata=pair.customers.metadata)

    async def moved_over() -> bool:
        return len(await _timeline(pair, survivor)) == 2

    await wait_for(moved_over, what="the merged customer's contact on the survivor's timeline")
    by_id = {i.interaction_id: i for i in await _timeline(pair, survivor)}
    assert by_id[kept.interaction_id].idempotency_key == key
    assert by_id[moved.interaction_id].idempotency_key == f"merged:{merged}:{key}"
    for table, keys in (("interactions", {key, f"merged:{merged}:{key}"}),
                        ("cases", {f"interaction:{key}", f"merged:{merged}:interaction:{key}"}),
                        ("survey_responses", {key, f"merged:{merged}:{key}"})):
        rows = await pair.pool.fetch(
            f"SELECT idempotency_key FROM {table} WHERE customer_id = $1",
            uuid.UUID(survivor))
        assert {r["idempotency_key"] for r in rows} == keys, table
    assert await pair.pool.fetchval(
        "SELECT count(*) FROM dead_letters WHERE topic = 'crm.customers.v1'") == 0
    # The key under the merged id now means the survivor's contact of it.
    again = await record(pair, customer_id=merged, idempotency_key=key, kind="complaint",
                         channel="phone", notes="survivor's")
    assert again.interaction_id == kept.interaction_id


# --- customers that do not exist ------------------------------------------------

async def test_records_of_a_customer_nobody_knows_are_not_found(pair: Pair) -> None:
    nobody = str(uuid.uuid4())
    cid = await new_customer(pair)
    md = pair.interactions.metadata
    calls: list[Any] = [
        lambda: record(pair, customer_id=nobody),
        lambda: api(pair).OpenCase(pb.OpenCaseRequest(
            customer_id=nobody, kind="support", channel="web",
            idempotency_key=str(uuid.uuid4())), metadata=md),
        lambda: api(pair).RequestCallback(pb.RequestCallbackRequest(
            customer_id=nobody, phone="+34 600 123 456", idempotency_key=str(uuid.uuid4())),
            metadata=md),
        lambda: api(pair).RecordSurveyResponse(pb.RecordSurveyResponseRequest(
            customer_id=nobody, idempotency_key=str(uuid.uuid4()),
            answers=[pb.SurveyAnswer(question="speed", csat=3, nps=-1)]), metadata=md),
        lambda: record(pair, customer_id=cid, attention=pb.Attention(
            mode="indirect", requester_customer_id=cid, decision_maker_customer_id=nobody)),
        lambda: record(pair, customer_id=cid, attention=pb.Attention(
            mode="indirect", requester_customer_id=nobody, decision_maker_customer_id=cid)),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call()
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert err.value.details() == f"customer '{nobody}' not found"
    for table in ("interactions", "cases", "survey_responses"):
        assert await pair.pool.fetchval(
            f"SELECT count(*) FROM {table} WHERE customer_id = $1", uuid.UUID(nobody)) == 0
    assert await pair.pool.fetchval("SELECT count(*) FROM interactions WHERE customer_id = $1",
                                      uuid.UUID(cid)) == 0
    assert not await pair.pool.fetchval(
        "SELECT count(*) FROM known_customers WHERE customer_id = $1", uuid.UUID(nobody))


async def test_a_customer_registered_a_moment_ago_is_known(pair: Pair) -> None:
    """Whether or not customer.registered has been consumed yet: an id this
    service does not know is looked up with the customers service."""
    cid = await new_customer(pair)
    await pair.pool.execute("DELETE FROM known_customers WHERE customer_id = $1",
                              uuid.UUID(cid))  # as if customer.registered were still on its way
    reply = await record(pair, customer_id=cid)
    assert reply.customer_id == cid
    assert await pair.pool.fetchval(
        "SELECT count(*) FROM known_customers WHERE customer_id = $1", uuid.UUID(cid)) == 1


async def test_an_erased_customer_is_no_customer(pair: Pair) -> None:
    cid = await new_customer(pair)
    await record(pair, customer_id=cid)
    await customers(pair).EraseCustomer(cpb.EraseCustomerRequest(customer_id=cid),
                                        metadata=pair.customers.metadata)

    async def forgotten() -> bool:  # kept as erased, never to be contacted
        return bool(await pair.pool.fetchval(
            "SELECT count(*) FROM known_customers WHERE customer_id = $1"
            " AND erased_at IS NOT NULL AND do_not_contact", uuid.UUID(cid)))

    await wait_for(forgotten, what="the erasure consumed")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await record(pair, customer_id=cid)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_an_ingested_contact_of_an_unknown_customer_is_replayable_once_it_exists(
        pair: Pair) -> None:
    nobody = str(uuid.uuid4())
    cid = await new_customer(pair)
    key = f"pos-{uuid.uuid4().hex[:8]}"
    at = pair.clock.now()
    unknown = contact(nobody, key, at=at, kind="purchase", amount_minor=1200, currency="EUR")
    unknown_decider = contact(cid, key, at=at, attention="indirect",
                              requester_customer_id=cid, decision_maker_customer_id=nobody)
    await produce_envelopes(pair.bootstrap, [unknown, unknown_decider])
    dead = await dead_letter(pair, unknown.id)
    assert dlq_error(dead) == ("unknown_customer", f"customer_id: customer '{nobody}' not found")
    assert dlq_error(await dead_letter(pair, unknown_decider.id)) == (
        "unknown_customer", f"decision_maker_customer_id: customer '{nobody}' not found")
    assert await pair.pool.fetchval(
        "SELECT count(*) FROM interactions WHERE idempotency_key = $1", key) == 0

    # The customer comes into existence (customers announces it), and the
    # operator replays the dead letter as `crm dlq replay` does.
    await produce_envelopes(pair.bootstrap, [Envelope(data=CustomerRegistered(
        customer_id=nobody, stage="potential"), subject=nobody, source="/crm/customers")])

    async def known() -> bool:
        return bool(await pair.pool.fetchval(
            "SELECT count(*) FROM known_customers WHERE customer_id = $1", uuid.UUID(nobody)))

    await wait_for(known, what="customer.registered consumed")
    # Opened with the key the service keeps (the record left it sealed).
    found = dict(dead.headers)
    async with pair.pool.acquire() as conn:
        secret = await sealing.key_of(conn, found["dlq_consumer_group"].decode(),
                                      INTERACTIONS_INGEST,
                                      int(found["dlq_original_partition"]),
                                      int(found["dlq_original_offset"]))
    assert secret is not None and dead.value is not None
    headers = [(k, v) for k, v in dead.headers
               if not k.startswith("dlq_") and k != sealing.SEALED_HEADER]
    await produce(pair.bootstrap, [(INTERACTIONS_INGEST, dead.key,
                                      sealing.unseal(secret, dead.value), headers)])
    await consumed(pair, unknown.id)
    stored = await pair.pool.fetchrow(
        "SELECT customer_id, amount_minor FROM interactions WHERE idempotency_key = $1", key)
    assert stored is not None
    assert (str(stored["customer_id"]), stored["amount_minor"]) == (nobody, 1200)


async def test_while_customers_is_away_an_unknown_id_waits_and_is_not_dead_lettered(
        own_database: str, own_broker: TansuBroker) -> None:
    """A customer this service has not heard of yet, while the customers
    service cannot be reached: over gRPC UNAVAILABLE (retry), on the ingest
    topic the batch waits and is retried, not dead-lettered; once customers
    is back both go through."""
    async with customers_behind_a_proxy(own_database, own_broker) as both:
        crm, interactions, proxy, pool = (both.customers, both.interactions, both.proxy,
                                          both.pool)
        reply = await register(crm)
        cid = reply.customer.customer_id

        async def known() -> bool:
            return bool(await pool.fetchval(
                "SELECT count(*) FROM known_customers WHERE customer_id = $1", uuid.UUID(cid)))

        await wait_for(known, what="customer.registered consumed")
        # As if it had not been consumed yet.
        await pool.execute("DELETE FROM known_customers WHERE customer_id = $1", uuid.UUID(cid))
        await proxy.down()
        stub = interactions_pb2_grpc.InteractionsStub(interactions.channel)
        request = pb.RecordInteractionRequest(customer_id=cid, channel="web", kind="inquiry",
                                              idempotency_key="away-grpc")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RecordInteraction(request, metadata=interactions.metadata)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        env = contact(cid, "away-ingest", at=crm.clock.now())
        await produce_envelopes(own_broker.bootstrap_servers, [env])
        await asyncio.sleep(2)
        assert await pool.fetchval("SELECT count(*) FROM interactions") == 0
        assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 0
        await proxy.up()

        async def recorded() -> bool:
            return bool(await pool.fetchval("SELECT count(*) FROM interactions") == 1)

        await wait_for(recorded, timeout=60, what="the ingested contact once customers is back")
        stored = await stub.RecordInteraction(request, metadata=interactions.metadata)
        assert stored.customer_id == cid
        assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 0
