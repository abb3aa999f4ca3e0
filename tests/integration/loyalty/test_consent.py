"""Consent has one source of truth, the customers service: an unsubscribe in
loyalty reaches it as an event, the latest decision per purpose wins in
every view, and a list the customer left is not enrolled again by any rule
until the customer grants newsletter consent anew."""

from __future__ import annotations

import json
from datetime import timedelta

from crm.customers.v1 import customers_pb2 as cpb
from crm.customers.v1 import customers_pb2_grpc
from crm.loyalty.v1 import loyalty_pb2 as pb
from crm_contracts.topics import CUSTOMERS
from tests.integration.loyalty.conftest import Trio
from tests.support.kafka import read_topic, wait_for
from tests.support.loyalty import (
    consent,
    loyalty_events,
    new_id,
    of_type,
    produce,
    profile,
    profile_when,
    registered,
    stage_changed,
    stub,
)
from tests.support.services import Running


async def _known(svc: Running, *, newsletter: bool) -> str:
    cid = new_id()
    now = svc.clock.now()
    events = [registered(cid, now)]
    if newsletter:
        events.append(consent(cid, "newsletter", True, now))
    await produce(svc, *events)
    await profile_when(svc, cid, lambda p: p.newsletter_consent == newsletter
                       and (not newsletter or len(p.enrolments) == 1), "known, enrolled")
    return cid


async def test_a_list_left_is_not_enrolled_again_by_another_rule(svc: Running) -> None:
    """The shipped consent rule enrols in ``monthly``; an operator rule on
    another trigger asks for the same list after the customer left it: the
    action is suppressed (``unsubscribed``) until a newer grant."""
    rule = {"id": "repeat-newsletter", "trigger": "customer.stage_changed",
            "when": {"to_stage": "repeat"}, "actions": [{"type": "newsletter", "list": "monthly"}]}
    await stub(svc).UpsertRule(pb.UpsertRuleRequest(definition=json.dumps(rule)),
                               metadata=svc.metadata)
    try:
        cid = await _known(svc, newsletter=True)
        await stub(svc).Unsubscribe(pb.UnsubscribeRequest(customer_id=cid, list="monthly"),
                                    metadata=svc.metadata)
        await produce(svc, stage_changed(cid, "one_time", "repeat", 2, svc.clock.now()))
        p = await profile_when(svc, cid, lambda p: p.suppressed, "the rule's action decided")
        assert [(s.rule_id, s.reason) for s in p.suppressed
                if s.action_type == "newsletter"] == [("repeat-newsletter", "unsubscribed")]
        assert [(e.list, e.status) for e in p.enrolments] == [("monthly", "unsubscribed")]
        # The customer grants newsletter consent again, later: enrolled again.
        later = svc.clock.now() + timedelta(seconds=1)
        await produce(svc, consent(cid, "newsletter", True, svc.clock.now(), changed_at=later))
        p = await profile_when(svc, cid, lambda p: p.enrolments[0].status == "enrolled",
                               "enrolled after a newer grant")
    finally:
        await stub(svc).DisableRule(pb.DisableRuleRequest(rule_id="repeat-newsletter"),
                                    metadata=svc.metadata)


async def test_an_older_grant_arriving_late_does_not_undo_a_withdrawal(svc: Running) -> None:
    cid = await _known(svc, newsletter=True)
    now = svc.clock.now()
    withdrawn = consent(cid, "newsletter", False, now, changed_at=now + timedelta(seconds=2))
    stale = consent(cid, "newsletter", True, now, changed_at=now + timedelta(seconds=1))
    dnc = consent(cid, "do_not_contact", True, now, changed_at=now + timedelta(seconds=2))
    stale_dnc = consent(cid, "do_not_contact", False, now, changed_at=now + timedelta(seconds=1))
    await produce(svc, withdrawn, dnc)
    await profile_when(svc, cid, lambda p: not p.newsletter_consent and p.do_not_contact,
                       "withdrawn")
    await produce(svc, stale, stale_dnc)  # a replayed dead letter, say
    events = await loyalty_events(svc, cid, 1, settle=1.5)
    p = await profile(svc, cid)
    assert not p.newsletter_consent and p.do_not_contact
    assert [(e.list, e.status) for e in p.enrolments] == [("monthly", "unsubscribed")]
    assert len(of_type(events, "loyalty.newsletter_enrolled")) == 1  # the first one only


async def test_unsubscribing_from_every_list_withdraws_consent_in_customers(trio: Trio) -> None:
    """The customer's unsubscribe link calls loyalty; the customers service,
    which owns consent, records the withdrawal from loyalty's event and
    publishes it, and loyalty enrols nobody on the old grant."""
    customers = customers_pb2_grpc.CustomersStub(trio.customers.channel)
    reply = await customers.RegisterCustomer(cpb.RegisterCustomerRequest(
        display_name="Inés", emails=[f"ines-{new_id()[:8]}@example.com"]),
        metadata=trio.customers.metadata)
    cid = reply.customer.customer_id
    await customers.SetConsent(cpb.SetConsentRequest(
        customer_id=cid, purpose="newsletter", granted=True, source="web"),
        metadata=trio.customers.metadata)
    await profile_when(trio.loyalty, cid, lambda p: len(p.enrolments) == 1, "enrolled")

    out = await stub(trio.loyalty).Unsubscribe(pb.UnsubscribeRequest(customer_id=cid),
                                               metadata=trio.loyalty.metadata)
    assert list(out.lists) == ["monthly"]
    p = await profile(trio.loyalty, cid)
    assert not p.newsletter_consent  # honoured at once, customers up or not

    async def withdrawn_in_customers() -> bool:
        c = await customers.GetCustomer(cpb.GetCustomerRequest(customer_id=cid),
                                        metadata=trio.customers.metadata)
        return [(k.purpose, k.granted, k.source) for k in c.consents] == [
            ("newsletter", False, "loyalty:unsubscribe")]

    await wait_for(withdrawn_in_customers, what="the withdrawal recorded by customers")
    bootstrap = trio.customers.runner.settings.kafka_bootstrap_servers
    assert bootstrap
    records = await read_topic(bootstrap, CUSTOMERS, expect=0, timeout=5, settle=0.5)
    changes = [json.loads(r.value) for r in records if r.key == cid.encode()
               and dict(r.headers)["ce_type"] == b"customer.consent_changed"]
    assert [(c["purpose"], c["granted"], c["source"]) for c in changes] == [
        ("newsletter", True, "web"), ("newsletter", False, "loyalty:unsubscribe")]
    assert changes[1]["changed_at"] is not None
    # The echo changes nothing in loyalty: still withdrawn, the list left.
    p = await profile(trio.loyalty, cid)
    assert not p.newsletter_consent
    assert [(e.list, e.status) for e in p.enrolments] == [("monthly", "unsubscribed")]
