"""Interactions' proactive contacts pass the customers service's contact gate
(real PostgreSQL, real broker, both services, quiet hours 21:00-08:00 and the
default caps; each test on a database and broker of its own, its clock at
noon UTC): survey requests are sent, suppressed by the cap, or deferred by
the customer's quiet hours and sent when they end; an agent's proactive
contact over the cap is refused and recorded as suppressed, on gRPC and on
the ingest topic; one logged in the customer's quiet hours is kept, counted
and flagged; while customers is away, survey requests wait and go out when
it is back."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import grpc
import pytest

from crm.customers.v1 import customers_pb2 as cpb
from crm.customers.v1 import customers_pb2_grpc
from crm.interactions.v1 import interactions_pb2 as pb
from crm.interactions.v1 import interactions_pb2_grpc
from crm_contracts.interactions import ContactReceived
from crm_contracts.topics import INTERACTIONS
from crm_runtime.events import Envelope
from crm_runtime.stack import TansuBroker
from tests.integration.interactions.conftest import ProxiedPair, customers_behind_a_proxy
from tests.support.kafka import produce_envelopes, read_topic, wait_for


def _customers(both: ProxiedPair) -> customers_pb2_grpc.CustomersStub:
    return customers_pb2_grpc.CustomersStub(both.customers.channel)


def _api(both: ProxiedPair) -> interactions_pb2_grpc.InteractionsStub:
    return interactions_pb2_grpc.InteractionsStub(both.interactions.channel)


async def _customer(both: ProxiedPair, *consents: str, zone: str = "") -> str:
    """A customer registered with the customers service, with these consents,
    once interactions has heard of them all."""
    reply = await _customers(both).RegisterCustomer(cpb.RegisterCustomerRequest(
        emails=[f"{uuid.uuid4().hex[:10]}@example.com"], profile=cpb.Profile(time_zone=zone)),
        metadata=both.customers.metadata)
    cid = reply.customer.customer_id
    for purpose in consents:
        await _customers(both).SetConsent(cpb.SetConsentRequest(
            customer_id=cid, purpose=purpose, granted=True, source="test"),
            metadata=both.customers.metadata)

    async def known() -> bool:
        row = await both.pool.fetchrow(
            "SELECT surveys_consent FROM known_customers WHERE customer_id = $1",
            uuid.UUID(cid))
        return row is not None and row["surveys_consent"] == ("surveys" in consents)

    await wait_for(known, what=f"interactions knows {cid}")
    return str(cid)


async def _resolved_case(both: ProxiedPair, customer_id: str) -> str:
    md = both.interactions.metadata
    case = await _api(both).OpenCase(pb.OpenCaseRequest(
        customer_id=customer_id, kind="support", channel="chat", unit="helpdesk",
        idempotency_key=str(uuid.uuid4())), metadata=md)
    await _api(both).ResolveCase(pb.ResolveCaseRequest(case_id=case.case_id,
                                                       resolution="done"), metadata=md)
    return str(case.case_id)


async def _events(both: ProxiedPair, customer_id: str, event_type: str,
                  expect: int) -> list[dict[str, Any]]:
    """This customer's events of ``event_type`` on crm.interactions.v1, once
    there are ``expect`` (then a moment more, so more would show)."""
    bootstrap = both.interactions.runner.settings.kafka_bootstrap_servers or ""
    found: list[dict[str, Any]] = []

    async def enough() -> bool:
        records = await read_topic(bootstrap, INTERACTIONS, expect=0, timeout=5, settle=0.5)
        found[:] = [json.loads(r.value) for r in records if r.key == customer_id.encode()
                    and dict(r.headers)["ce_type"].decode() == event_type]
        return len(found) >= expect

    await wait_for(enough, what=f"{expect} {event_type} of {customer_id}")
    return found


async def _proactive(both: ProxiedPair, customer_id: str, key: str = "",
                     **fields: Any) -> pb.Interaction:
    reply: pb.Interaction = await _api(both).RecordInteraction(pb.RecordInteractionRequest(
        customer_id=customer_id, channel="phone", kind="follow_up", direction="proactive",
        agent="ana", idempotency_key=key or str(uuid.uuid4()), **fields),
        metadata=both.interactions.metadata)
    return reply


async def test_survey_requests_are_sent_capped_and_deferred_by_quiet_hours(
        own_database: str, own_broker: TansuBroker) -> None:
    async with customers_behind_a_proxy(own_database, own_broker) as both:
        cid = await _customer(both, "surveys")
        cases = [await _resolved_case(both, cid) for _ in range(2)]
        sent = await _events(both, cid, "survey.requested", 2)
        assert sorted(e["case_id"] for e in sent) == sorted(cases)
        # Two contacts in the week: the surveys cap (2) is used up.
        third = await _resolved_case(both, cid)
        [suppressed] = await _events(both, cid, "contact.suppressed", 1)
        assert (suppressed["reason"], suppressed["case_id"]) == ("frequency_cap", third)
        assert len(await _events(both, cid, "survey.requested", 2)) == 2

        # Noon UTC is 21:00 in Tokyo: the request waits for 08:00 there.
        tokyo = await _customer(both, "surveys", zone="Asia/Tokyo")
        case_id = await _resolved_case(both, tokyo)

        async def deferred() -> bool:
            return bool(await both.pool.fetchval(
                "SELECT count(*) FROM scheduled_work WHERE kind = 'surveys.request' "
                "AND due_at > $1", both.customers.clock.now()))

        await wait_for(deferred, what="the survey request moved to the morning")
        due = await both.pool.fetchval(
            "SELECT due_at FROM scheduled_work WHERE kind = 'surveys.request'")
        assert due == both.customers.clock.now() + timedelta(hours=11)  # 23:00 UTC
        both.customers.clock.advance(timedelta(hours=11))
        [requested] = await _events(both, tokyo, "survey.requested", 1)
        assert requested["case_id"] == case_id


async def test_a_proactive_contact_over_the_cap_is_refused_on_grpc_and_on_ingest(
        own_database: str, own_broker: TansuBroker) -> None:
    async with customers_behind_a_proxy(own_database, own_broker) as both:
        cid = await _customer(both)
        keys = [f"call-{i}" for i in range(6)]
        for key in keys:  # service contacts: 6 in the week
            await _proactive(both, cid, key)
        again = await _proactive(both, cid, keys[0])  # a retry: the stored contact
        assert again.idempotency_key == keys[0]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _proactive(both, cid, "call-7")
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "frequency_cap" in (err.value.details() or "")
        [suppressed] = await _events(both, cid, "contact.suppressed", 1)
        assert (suppressed["contact_type"], suppressed["reason"]) == (
            "proactive_contact", "frequency_cap")
        # On the ingest topic: suppressed too, not dead-lettered, the batch goes on.
        env = Envelope(data=ContactReceived(
            idempotency_key="campaign-call", customer_id=cid, channel="phone",
            direction="proactive", kind="follow_up", occurred_at=both.customers.clock.now()),
            subject=cid, source="/crm/test")
        await produce_envelopes(own_broker.bootstrap_servers, [env])
        assert [e["reason"] for e in await _events(both, cid, "contact.suppressed", 2)] == [
            "frequency_cap", "frequency_cap"]
        assert await both.pool.fetchval(
            "SELECT count(*) FROM interactions WHERE customer_id = $1", uuid.UUID(cid)) == 6
        assert await both.pool.fetchval("SELECT count(*) FROM dead_letters") == 0


async def test_a_call_logged_in_the_customers_quiet_hours_is_kept_counted_and_flagged(
        own_database: str, own_broker: TansuBroker) -> None:
    async with customers_behind_a_proxy(own_database, own_broker) as both:
        cid = await _customer(both, zone="Asia/Tokyo")  # 21:00 there
        reply = await _proactive(both, cid, "late-call")
        assert reply.outside_quiet_hours and reply.interaction_id
        [flagged] = await _events(both, cid, "contact.outside_quiet_hours", 1)
        assert (flagged["interaction_id"], flagged["channel"]) == (reply.interaction_id, "phone")
        retry = await _proactive(both, cid, "late-call")  # the stored contact, no new flag
        assert retry.interaction_id == reply.interaction_id and not retry.outside_quiet_hours
        counted = await both.customers.runner.pool.fetchval(  # type: ignore[union-attr]
            "SELECT count(*) FROM contact_ledger WHERE customer_id = $1", uuid.UUID(cid))
        assert counted == 1
        assert len(await _events(both, cid, "contact.outside_quiet_hours", 1)) == 1


async def test_while_customers_is_away_survey_requests_wait_then_go_out(
        own_database: str, own_broker: TansuBroker) -> None:
    async with customers_behind_a_proxy(own_database, own_broker) as both:
        cid = await _customer(both, "surveys")
        await both.proxy.down()
        case_id = await _resolved_case(both, cid)  # interactions alone resolves it

        async def waiting() -> bool:
            return bool(await both.pool.fetchval(
                "SELECT count(*) FROM scheduled_work WHERE kind = 'surveys.request' "
                "AND due_at > $1", both.customers.clock.now()))

        await wait_for(waiting, what="the survey request waiting for the gate")
        assert await both.pool.fetchval(
            "SELECT count(*) FROM suppressed_contacts WHERE customer_id = $1",
            uuid.UUID(cid)) == 0
        await both.proxy.up()

        async def sent() -> bool:
            """Each try 30 s later (the channel reconnects on its own back-off)."""
            both.customers.clock.advance(timedelta(seconds=30))
            return not await both.pool.fetchval(  # this test's own database
                "SELECT count(*) FROM scheduled_work WHERE kind = 'surveys.request'")

        await wait_for(sent, what="the survey request once customers is back")
        [requested] = await _events(both, cid, "survey.requested", 1)
        assert requested["case_id"] == case_id
