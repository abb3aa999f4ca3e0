"""The customers service is consent's one source of truth: a withdrawal made
through loyalty arrives as ``loyalty.consent_withdrawn`` on loyalty's topic
(read whenever customers is up again) and is recorded at the time the
customer made it, so a grant made later stands; every change is one
``customer.consent_changed`` with purpose, state, source and time."""

from __future__ import annotations

import uuid
from datetime import timedelta

import grpc
import pytest

from crm.customers.v1 import customers_pb2 as pb
from crm_contracts.loyalty import ConsentWithdrawn
from crm_contracts.topics import LOYALTY
from crm_runtime.consumer import dlq_topic
from crm_runtime.events import Envelope
from tests.support.customers import customer_events, get, register, stub
from tests.support.kafka import dead_letter, dlq_error, produce_envelopes, wait_for
from tests.support.services import Running


def _bootstrap(svc: Running) -> str:
    bootstrap = svc.runner.settings.kafka_bootstrap_servers
    assert bootstrap
    return bootstrap


def _withdrawn(customer_id: str, at: object, key: str | None = None) -> Envelope:
    """The event as loyalty publishes it; ``key``: another message key (the
    partition of another customer's events)."""
    return Envelope(data=ConsentWithdrawn(customer_id=customer_id, purpose="newsletter",
                                          source="loyalty:unsubscribe", withdrawn_at=at),
                    subject=key or customer_id, source="/crm/loyalty")


async def _consents(svc: Running, cid: str) -> list[tuple[str, bool, str]]:
    return [(c.purpose, c.granted, c.source) for c in (await get(svc, cid)).consents]


async def test_a_withdrawal_published_by_loyalty_is_recorded_and_published(
        svc: Running) -> None:
    reply = await register(svc, display_name="Berta", emails=["berta@example.com"])
    cid = reply.customer.customer_id
    await stub(svc).SetConsent(pb.SetConsentRequest(customer_id=cid, purpose="newsletter",
                                                    granted=True, source="web"),
                               metadata=svc.metadata)
    asked = svc.clock.now() + timedelta(seconds=1)
    await produce_envelopes(_bootstrap(svc), [_withdrawn(cid, asked)])

    async def recorded() -> bool:
        return await _consents(svc, cid) == [("newsletter", False, "loyalty:unsubscribe")]

    await wait_for(recorded, what="the withdrawal recorded")
    changes = [d for t, d in await customer_events(svc, cid, 3)
               if t == "customer.consent_changed"]
    assert [(d["purpose"], d["granted"], d["source"]) for d in changes] == [
        ("newsletter", True, "web"), ("newsletter", False, "loyalty:unsubscribe")]
    assert changes[1]["changed_at"].startswith(asked.isoformat()[:19])


async def test_a_withdrawal_older_than_the_grant_held_changes_nothing(svc: Running) -> None:
    reply = await register(svc, display_name="Celia", emails=["celia@example.com"])
    cid = reply.customer.customer_id
    before = svc.clock.now() - timedelta(minutes=5)  # asked before the grant below
    await stub(svc).SetConsent(pb.SetConsentRequest(customer_id=cid, purpose="newsletter",
                                                    granted=True, source="web"),
                               metadata=svc.metadata)
    late = _withdrawn(cid, before)
    # On the same partition, so dead-lettered after `late` was applied.
    marker = _withdrawn(str(uuid.uuid4()), svc.clock.now(), key=cid)
    await produce_envelopes(_bootstrap(svc), [late, marker])
    await dead_letter(_bootstrap(svc), dlq_topic(LOYALTY), marker.id)
    assert await _consents(svc, cid) == [("newsletter", True, "web")]
    events = await customer_events(svc, cid, 2)
    assert [t for t, _ in events].count("customer.consent_changed") == 1


async def test_a_withdrawal_for_no_customer_is_dead_lettered_with_its_reason(
        svc: Running) -> None:
    unknown = _withdrawn(str(uuid.uuid4()), svc.clock.now())
    await produce_envelopes(_bootstrap(svc), [unknown])
    record = await dead_letter(_bootstrap(svc), dlq_topic(LOYALTY), unknown.id)
    kind, reason = dlq_error(record)
    assert kind == "unknown_customer" and "customer_id" in reason


async def test_do_not_contact_is_published_with_its_time_and_an_unknown_purpose_refused(
        svc: Running) -> None:
    reply = await register(svc, display_name="Dora", emails=["dora@example.com"])
    cid = reply.customer.customer_id
    customer = await stub(svc).SetConsent(pb.SetConsentRequest(
        customer_id=cid, purpose="do_not_contact", granted=True, source="phone"),
        metadata=svc.metadata)
    assert customer.do_not_contact and not customer.consents
    changes = [d for t, d in await customer_events(svc, cid, 2)
               if t == "customer.consent_changed"]
    assert [(d["purpose"], d["granted"], d["source"]) for d in changes] == [
        ("do_not_contact", True, "phone")]
    assert changes[0]["changed_at"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub(svc).SetConsent(pb.SetConsentRequest(customer_id=cid, purpose="sms",
                                                        granted=True),
                                   metadata=svc.metadata)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "purpose" in (err.value.details() or "")
