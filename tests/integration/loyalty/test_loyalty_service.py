"""The loyalty service end to end over a real PostgreSQL and a real broker:
customer and interaction events in, actions out on crm.loyalty.v1, gRPC for
rules, discounts and follow-ups.

Tests share one running service and its ManualClock; each moves time only
forward and reads times relative to ``svc.clock.now()``."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, timedelta
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from crm.loyalty.v1 import loyalty_pb2 as pb
from crm_contracts.topics import LOYALTY
from services.loyalty import commands, store
from services.loyalty.rulebook import RuleBook, load_file
from services.loyalty.settings import DEFAULT_RULES_FILE
from tests.support.kafka import sent_records
from tests.support.loyalty import (
    at_risk,
    case_breached,
    case_resolved,
    consent,
    erased,
    loyalty_events,
    merged,
    new_id,
    of_type,
    produce,
    profile,
    profile_when,
    purchase_recorded,
    registered,
    risk_cleared,
    stage_changed,
    stub,
)
from tests.support.services import Running


async def _customer(svc: Running, *, promotional: bool = False, newsletter: bool = False,
                    referred_by: str = "", channel: str = "email") -> str:
    """A registered customer known to loyalty, with the consents asked for."""
    cid = new_id()
    now = svc.clock.now()
    events = [registered(cid, now, referred_by=referred_by, preferred_channel=channel)]
    if promotional:
        events.append(consent(cid, "promotional_offers", True, now))
    if newsletter:
        events.append(consent(cid, "newsletter", True, now))
    await produce(svc, *events)
    await profile_when(svc, cid, lambda p: p.promotional_consent == promotional
                       and p.newsletter_consent == newsletter, "customer known to loyalty")
    return cid


def _context(svc: Running) -> commands.Context:
    return commands.Context(clock=svc.clock, lanes=svc.runner.settings.relay_lanes,
                            rules=RuleBook(load_file(DEFAULT_RULES_FILE)))


async def test_second_purchase_yields_exactly_one_discount_whatever_the_redelivery(
        svc: Running) -> None:
    cid = await _customer(svc, promotional=True)
    first = stage_changed(cid, "potential", "one_time", 1, svc.clock.now())
    second = stage_changed(cid, "one_time", "repeat", 2, svc.clock.now())
    # The broker redelivers: the same events several times.
    await produce(svc, first, second, second, first, second)
    p = await profile_when(svc, cid, lambda p: len(p.discounts) >= 1, "a discount")
    # Bypass the inbox: apply the same trigger again straight to the database.
    # The deterministic action id refuses a second discount.
    pool = svc.runner.pool
    assert pool is not None
    async with pool.acquire() as conn, conn.transaction():
        await commands.on_events(conn, _context(svc), [second])
    events = await loyalty_events(svc, cid, 3, settle=1.0)
    issued = of_type(events, "loyalty.discount_issued")
    assert len(issued) == 1
    assert issued[0]["rule_id"] == "repeat-buyer-discount"
    assert (issued[0]["kind"], issued[0]["percent"]) == ("percent", 10)
    p = await profile(svc, cid)
    assert [d.percent for d in p.discounts] == [10]
    assert p.discounts[0].code == issued[0]["code"]
    # Welcome and thank-you follow-ups, once each.
    scheduled = sorted(d["rule_id"] for d in of_type(events, "loyalty.followup_scheduled"))
    assert scheduled == ["thank-you-after-first-purchase", "welcome-follow-up"]


async def test_breached_case_produces_a_service_recovery_offer(svc: Running) -> None:
    cid = await _customer(svc)  # no marketing consent: recovery is service, not promotion
    await produce(svc, case_breached(cid, svc.clock.now()))
    # welcome scheduled; apology scheduled, discount issued, apology due (delay 0
    # at noon, outside quiet hours: the scheduler fires it at once).
    events = await loyalty_events(svc, cid, 4)
    issued = of_type(events, "loyalty.discount_issued")
    assert [(d["rule_id"], d["kind"], d["amount_minor"], d["purpose"]) for d in issued] == [
        ("service-recovery-breach", "fixed", 1000, "service")]
    apology = [d for d in of_type(events, "loyalty.followup_scheduled")
               if d["rule_id"] == "service-recovery-breach"]
    assert [(d["channel"], d["template"]) for d in apology] == [
        ("phone", "apology_broken_promise")]
    assert [d["follow_up_id"] for d in of_type(events, "loyalty.followup_due")] == [
        apology[0]["follow_up_id"]]
    # Resolving the case makes the open apology call moot, and as it was late
    # the late-resolution rule schedules a check-in call.
    await produce(svc, case_resolved(cid, svc.clock.now(), late=True))
    later = await loyalty_events(svc, cid, 6, settle=1.0)
    assert [d["reason"] for d in of_type(later, "loyalty.followup_cancelled")] == [
        "moot:case.resolved"]
    assert [d["template"] for d in of_type(later, "loyalty.followup_scheduled")
            if d["rule_id"] == "service-recovery-late-resolution"] == ["apology_late_resolution"]
    # Compensated once, at the breach.
    assert [d["rule_id"] for d in of_type(later, "loyalty.discount_issued")] == [
        "service-recovery-breach"]


async def test_no_newsletter_without_consent_and_unsubscribe_at_once(svc: Running) -> None:
    # A rule enrolling every customer whose preferred channel is post: the
    # trust rule must still refuse customers without newsletter consent.
    rule = {"id": "post-newsletter", "trigger": "customer.consent_changed",
            "when": {"preferred_channel": "post"},
            "actions": [{"type": "newsletter", "list": "paper"}]}
    await stub(svc).UpsertRule(pb.UpsertRuleRequest(definition=json.dumps(rule),
                                                     changed_by="test"), metadata=svc.metadata)
    try:
        without = await _customer(svc, promotional=True, channel="post")
        with_consent = await _customer(svc, newsletter=True, channel="post")
    finally:
        await stub(svc).DisableRule(pb.DisableRuleRequest(rule_id="post-newsletter"),
                                    metadata=svc.metadata)
    p = await profile_when(svc, without, lambda p: len(p.suppressed) >= 1, "suppressed")
    assert not p.enrolments
    assert [(s.rule_id, s.action_type, s.reason) for s in p.suppressed] == [
        ("post-newsletter", "newsletter", "no_newsletter_consent")]
    events = await loyalty_events(svc, without, 1)
    assert not of_type(events, "loyalty.newsletter_enrolled")
    assert [d["reason"] for d in of_type(events, "loyalty.action_suppressed")] == [
        "no_newsletter_consent"]

    p = await profile_when(svc, with_consent, lambda p: len(p.enrolments) == 2, "enrolled")
    assert sorted((e.list, e.status) for e in p.enrolments) == [
        ("monthly", "enrolled"), ("paper", "enrolled")]
    reply = await stub(svc).Unsubscribe(pb.UnsubscribeRequest(customer_id=with_consent,
                                                              list="paper"),
                                        metadata=svc.metadata)
    assert list(reply.lists) == ["paper"]
    p = await profile(svc, with_consent)
    assert sorted((e.list, e.status) for e in p.enrolments) == [
        ("monthly", "enrolled"), ("paper", "unsubscribed")]
    # Withdrawing newsletter consent leaves every list at once.
    await produce(svc, consent(with_consent, "newsletter", False, svc.clock.now()))
    p = await profile_when(svc, with_consent, lambda p: all(
        e.status == "unsubscribed" for e in p.enrolments), "left every list")
    events = await loyalty_events(svc, with_consent, 4)
    assert sorted((d["list"], d["reason"]) for d in of_type(
        events, "loyalty.newsletter_unsubscribed")) == [
        ("monthly", "consent_withdrawn"), ("paper", "customer_request")]


def _redemptions(result: str) -> float:
    return REGISTRY.get_sample_value("crm_loyalty_redemptions_total",
                                     {"service": "loyalty", "result": result}) or 0.0


async def _discount_code(svc: Running) -> tuple[str, str]:
    cid = await _customer(svc, promotional=True)
    await produce(svc, stage_changed(cid, "one_time", "repeat", 2, svc.clock.now()))
    p = await profile_when(svc, cid, lambda p: len(p.discounts) == 1, "a discount")
    return cid, p.discounts[0].code


async def test_fifty_concurrent_redemptions_of_one_code_exactly_one_wins(svc: Running) -> None:
    cid, code = await _discount_code(svc)
    redeemed_before = _redemptions("redeemed")
    order = pb.Money(amount_minor=8000, currency="EUR")
    check = await stub(svc).ValidateDiscount(pb.ValidateDiscountRequest(
        code=code, order_amount=order), metadata=svc.metadata)
    assert check.valid and check.discount_amount.amount_minor == 800

    async def redeem(i: int) -> grpc.StatusCode:
        try:
            await stub(svc).RedeemDiscount(pb.RedeemDiscountRequest(
                code=code, order_id=f"order-{i}", order_amount=order), metadata=svc.metadata)
            return grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            assert "already redeemed" in (exc.details() or ""), exc.details()
            return exc.code()

    codes = await asyncio.gather(*[redeem(i) for i in range(50)])
    assert codes.count(grpc.StatusCode.OK) == 1
    assert codes.count(grpc.StatusCode.FAILED_PRECONDITION) == 49
    assert _redemptions("redeemed") == redeemed_before + 1
    winner = f"order-{codes.index(grpc.StatusCode.OK)}"
    again = await stub(svc).RedeemDiscount(pb.RedeemDiscountRequest(
        code=code, order_id=winner, order_amount=order), metadata=svc.metadata)
    assert again.order_id == winner and again.discount_amount.amount_minor == 800
    events = await loyalty_events(svc, cid, 2)
    redeemed = of_type(events, "loyalty.discount_redeemed")
    assert [(d["order_id"], d["discount_minor"]) for d in redeemed] == [(winner, 800)]
    check = await stub(svc).ValidateDiscount(pb.ValidateDiscountRequest(
        code=code, order_amount=order), metadata=svc.metadata)
    assert not check.valid and "already redeemed" in check.reason


async def test_expired_codes_are_refused_and_expiry_is_announced(svc: Running) -> None:
    cid, code = await _discount_code(svc)
    svc.clock.advance(timedelta(days=28))  # 30-day validity, 3-day notice
    events = await loyalty_events(svc, cid, 2)
    expiring = of_type(events, "loyalty.discount_expiring")
    assert [d["code"] for d in expiring] == [code]
    svc.clock.advance(timedelta(days=3))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub(svc).RedeemDiscount(pb.RedeemDiscountRequest(
            code=code, order_id="late", order_amount=pb.Money(amount_minor=5000,
                                                              currency="EUR")),
            metadata=svc.metadata)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "expired" in (err.value.details() or "")


async def test_due_follow_ups_fire_on_the_scheduler_clock(svc: Running) -> None:
    cid = await _customer(svc)
    p = await profile_when(svc, cid, lambda p: len(p.follow_ups) == 1, "welcome follow-up")
    follow_up = p.follow_ups[0]
    assert (follow_up.rule_id, follow_up.status) == ("welcome-follow-up", "scheduled")
    assert follow_up.due_at.ToDatetime() == (svc.clock.now() + timedelta(days=1)).replace(
        tzinfo=None)

    async def listed() -> list[str]:
        reply = await stub(svc).ListDueFollowUps(pb.ListDueFollowUpsRequest(channel="email",
                                                                            page_size=500),
                                                 metadata=svc.metadata)
        return [f.follow_up_id for f in reply.follow_ups]

    await asyncio.sleep(0.5)  # the scheduler polls every 50 ms: it must not fire early
    assert (await profile(svc, cid)).follow_ups[0].status == "scheduled"
    assert follow_up.follow_up_id not in await listed()
    svc.clock.advance(timedelta(days=1))
    p = await profile_when(svc, cid, lambda p: p.follow_ups[0].status == "due", "due")
    assert follow_up.follow_up_id in await listed()
    done = await stub(svc).CompleteFollowUp(pb.CompleteFollowUpRequest(
        follow_up_id=follow_up.follow_up_id, outcome="contacted"), metadata=svc.metadata)
    assert done.status == "completed"
    assert follow_up.follow_up_id not in await listed()
    events = await loyalty_events(svc, cid, 3)
    assert [t for t, _ in events] == ["loyalty.followup_scheduled", "loyalty.followup_due",
                                      "loyalty.followup_completed"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub(svc).CancelFollowUp(pb.CancelFollowUpRequest(
            follow_up_id=follow_up.follow_up_id), metadata=svc.metadata)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_the_contact_gates_cap_suppresses_and_publishes_the_reason(svc: Running) -> None:
    cid = await _customer(svc, promotional=True)
    now = svc.clock.now()
    # Repeat buyer (a discount), then three win-backs (a discount each, and a
    # follow-up for next week): the fourth promotional contact of the week is
    # over the contact gate's promotional cap (3), so it is suppressed.
    await produce(svc, stage_changed(cid, "one_time", "repeat", 2, now),
                  stage_changed(cid, "repeat", "former", 2, now, "churn_window"),
                  stage_changed(cid, "former", "repeat", 3, now),
                  stage_changed(cid, "repeat", "former", 3, now, "closed"),
                  stage_changed(cid, "former", "repeat", 4, now),
                  stage_changed(cid, "repeat", "former", 4, now, "closed"))
    p = await profile_when(svc, cid, lambda p: len(p.suppressed) == 1, "one suppressed")
    assert [(s.rule_id, s.action_type, s.reason) for s in p.suppressed] == [
        ("win-back-offer", "discount", "frequency_cap")]
    assert len(p.discounts) == 3
    events = await loyalty_events(svc, cid, 8)
    assert [e["reason"] for e in of_type(events, "loyalty.action_suppressed")] == [
        "frequency_cap"]


async def test_do_not_contact_and_erasure_cancel_pending_actions(svc: Running) -> None:
    cid, code = await _discount_code(svc)
    other = await _customer(svc)
    await produce(svc, consent(other, "do_not_contact", True, svc.clock.now()))
    p = await profile_when(svc, other, lambda p: p.do_not_contact, "do not contact")
    assert [(f.status, f.outcome) for f in p.follow_ups] == [("cancelled", "do_not_contact")]

    await produce(svc, erased(cid, svc.clock.now()))
    p = await profile_when(svc, cid, lambda p: p.erased, "erased")
    assert p.referral_code == ""
    assert all(f.status == "cancelled" for f in p.follow_ups)
    assert [d.status for d in p.discounts] == ["withdrawn"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub(svc).RedeemDiscount(pb.RedeemDiscountRequest(
            code=code, order_id="x", order_amount=pb.Money(amount_minor=5000, currency="EUR")),
            metadata=svc.metadata)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "withdrawn" in (err.value.details() or "")
    # Later triggers do nothing for an erased customer.
    await produce(svc, case_breached(cid, svc.clock.now()))
    events = await loyalty_events(svc, cid, 1, settle=1.0)
    assert not [d for d in of_type(events, "loyalty.discount_issued")
                if d["rule_id"] == "service-recovery-breach"]


async def test_merge_repoints_records_to_the_survivor(svc: Running) -> None:
    survivor, _ = await _discount_code(svc)
    other, other_code = await _discount_code(svc)
    await produce(svc, merged(survivor, other, svc.clock.now()))
    p = await profile_when(svc, survivor, lambda p: len(p.discounts) == 2, "both discounts")
    assert other_code in [d.code for d in p.discounts]
    assert (await profile(svc, other)).customer_id == survivor
    # A code issued to the merged id is the survivor's now.
    check = await stub(svc).ValidateDiscount(pb.ValidateDiscountRequest(
        code=other_code, customer_id=other, order_amount=pb.Money(amount_minor=1000,
                                                                 currency="EUR")),
        metadata=svc.metadata)
    assert check.valid


async def _rewarded_once(svc: Running, referrer: str, friend: str
                         ) -> list[tuple[str, dict[str, Any]]]:
    """Wait until ``referrer``'s profile lists the one referral of ``friend``
    and the reward is on the topic once; returns the referrer's events."""
    p = await profile_when(svc, referrer, lambda p: len(p.referrals) == 1, "rewarded")
    assert [r.referred_customer_id for r in p.referrals] == [friend]
    events = await loyalty_events(svc, referrer, 2, settle=1.0)
    assert [d["referred_customer_id"] for d in of_type(events, "loyalty.referral_rewarded")] == [
        friend]
    return events


async def test_referral_rewards_the_referrer_once(svc: Running) -> None:
    referrer = await _customer(svc, promotional=True)
    friend = await _customer(svc, referred_by=referrer)
    code = (await profile(svc, referrer)).referral_code
    assert code.startswith("REF-")
    first = stage_changed(friend, "potential", "one_time", 1, svc.clock.now())
    # A second "first purchase" (say, after a merge) must not reward again.
    again = stage_changed(friend, "potential", "one_time", 1, svc.clock.now())
    await produce(svc, first, again)
    events = await _rewarded_once(svc, referrer, friend)
    assert [d["amount_minor"] for d in of_type(events, "loyalty.discount_issued")] == [1500]


async def test_a_referral_code_names_the_referrer_who_is_rewarded_once(svc: Running) -> None:
    referrer = await _customer(svc, promotional=True)
    code = (await profile(svc, referrer)).referral_code
    friend = new_id()
    await produce(svc, registered(friend, svc.clock.now(), referral_code=code))
    p = await profile_when(svc, friend, lambda p: p.referred_by_customer_id, "referrer known")
    assert p.referred_by_customer_id == referrer and not p.suppressed
    first = stage_changed(friend, "potential", "one_time", 1, svc.clock.now())
    await produce(svc, first, first)
    await _rewarded_once(svc, referrer, friend)


async def test_an_unknown_referral_code_is_recorded_as_a_suppressed_reward(
        svc: Running) -> None:
    def counted() -> float:
        return REGISTRY.get_sample_value("crm_loyalty_actions_total", {
            "service": "loyalty", "rule": "referral-reward", "action_type": "referral_reward",
            "outcome": "suppressed", "reason": "unknown_referral_code"}) or 0.0

    before = counted()
    friend = new_id()
    unknown = "REF-" + uuid.uuid4().hex[:10].upper().translate(str.maketrans("01", "AB"))
    event = registered(friend, svc.clock.now(), referral_code=unknown)
    await produce(svc, event, event)
    p = await profile_when(svc, friend, lambda p: p.suppressed, "suppression recorded")
    assert [(s.rule_id, s.action_type, s.reason, s.trigger_event_id) for s in p.suppressed] == [
        ("referral-reward", "referral_reward", "unknown_referral_code", event.id)]
    assert not p.referred_by_customer_id
    events = await loyalty_events(svc, friend, 2, settle=1.0)  # welcome + suppression
    assert [(d["reason"], d["rule_id"]) for d in of_type(events, "loyalty.action_suppressed")
            ] == [("unknown_referral_code", "referral-reward")]
    assert counted() == before + 1
    # Their first purchase rewards nobody.
    await produce(svc, stage_changed(friend, "potential", "one_time", 1, svc.clock.now()))
    later = await loyalty_events(svc, friend, 3, settle=1.0)  # + the thank-you follow-up
    assert not of_type(later, "loyalty.referral_rewarded")
    assert len(of_type(later, "loyalty.action_suppressed")) == 1


async def test_an_erased_referrers_code_is_unknown(svc: Running) -> None:
    referrer = await _customer(svc, promotional=True)
    code = (await profile(svc, referrer)).referral_code
    await produce(svc, erased(referrer, svc.clock.now()))
    await profile_when(svc, referrer, lambda p: p.erased, "referrer erased")
    friend = new_id()
    await produce(svc, registered(friend, svc.clock.now(), referral_code=code))
    p = await profile_when(svc, friend, lambda p: p.suppressed, "suppression recorded")
    assert [s.reason for s in p.suppressed] == ["unknown_referral_code"]
    assert not p.referred_by_customer_id


async def test_rules_are_versioned_validated_and_dry_run(svc: Running) -> None:
    rules = await stub(svc).ListRules(pb.ListRulesRequest(), metadata=svc.metadata)
    by_id = {r.rule_id: r for r in rules.rules}
    assert by_id["repeat-buyer-discount"].origin == "file"
    rule = {"id": "big-spender", "trigger": "customer.purchase_recorded",
            "when": {"amount_minor": {"gte": 50000}},
            "actions": [{"type": "discount", "percent": 5, "valid_days": 10}]}
    made = await stub(svc).UpsertRule(pb.UpsertRuleRequest(definition=json.dumps(rule)),
                                      metadata=svc.metadata)
    assert (made.version, made.enabled, made.origin) == (1, True, "api")
    rule["actions"][0]["percent"] = 7  # type: ignore[index]
    changed = await stub(svc).UpsertRule(pb.UpsertRuleRequest(
        definition=json.dumps(rule), expected_version=1), metadata=svc.metadata)
    assert changed.version == 2
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub(svc).UpsertRule(pb.UpsertRuleRequest(
            definition=json.dumps(rule), expected_version=1), metadata=svc.metadata)
    assert err.value.code() == grpc.StatusCode.ABORTED
    off = await stub(svc).DisableRule(pb.DisableRuleRequest(rule_id="big-spender",
                                                            note="test"),
                                      metadata=svc.metadata)
    assert (off.version, off.enabled) == (3, False)

    cid = await _customer(svc, promotional=True)
    dry = await stub(svc).DryRunRule(pb.DryRunRuleRequest(
        rule_id="repeat-buyer-discount", customer_id=cid,
        trigger_facts_json=json.dumps({"from_stage": "one_time", "to_stage": "repeat"})),
        metadata=svc.metadata)
    assert dry.matched
    assert [(a.action_type, a.outcome) for a in dry.actions] == [("discount", "performed")]
    miss = await stub(svc).DryRunRule(pb.DryRunRuleRequest(
        rule_id="repeat-buyer-discount", customer_id=cid,
        trigger_facts_json=json.dumps({"from_stage": "potential", "to_stage": "one_time"})),
        metadata=svc.metadata)
    assert not miss.matched and len(miss.failed_conditions) == 2
    # A dry run writes nothing.
    assert not (await profile(svc, cid)).discounts


@pytest.mark.parametrize(("call", "field"), [
    (lambda s, m: s.UpsertRule(pb.UpsertRuleRequest(definition=json.dumps(
        {"id": "x", "trigger": "customer.registered", "when": {"colour": "red"},
         "actions": [{"type": "newsletter", "list": "a"}]})), metadata=m),
     "definition (x).when.colour"),
    (lambda s, m: s.UpsertRule(pb.UpsertRuleRequest(definition="{"), metadata=m),
     "definition"),
    (lambda s, m: s.GetLoyaltyProfile(pb.GetLoyaltyProfileRequest(customer_id="nope"),
                                      metadata=m), "customer_id"),
    (lambda s, m: s.RedeemDiscount(pb.RedeemDiscountRequest(
        code="nope", order_id="o", order_amount=pb.Money(amount_minor=1, currency="EUR")),
        metadata=m), "code"),
    (lambda s, m: s.RedeemDiscount(pb.RedeemDiscountRequest(
        code="AAAA-BBBB-CCCC-DDDD", order_id="", order_amount=pb.Money(amount_minor=1,
                                                                       currency="EUR")),
        metadata=m), "order_id"),
    (lambda s, m: s.ValidateDiscount(pb.ValidateDiscountRequest(code="AAAA-BBBB-CCCC-DDDD"),
                                     metadata=m), "order_amount"),
    (lambda s, m: s.CompleteFollowUp(pb.CompleteFollowUpRequest(
        follow_up_id=new_id(), outcome=""), metadata=m), "outcome"),
    (lambda s, m: s.ListDueFollowUps(pb.ListDueFollowUpsRequest(page_size=-1), metadata=m),
     "page_size"),
])
async def test_bad_input_is_invalid_argument_naming_the_field(
        svc: Running, call: object, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(stub(svc), svc.metadata)  # type: ignore[operator]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert (err.value.details() or "").startswith(f"{field}:"), err.value.details()


async def test_unknown_ids_are_not_found(svc: Running) -> None:
    calls = [
        stub(svc).GetLoyaltyProfile(pb.GetLoyaltyProfileRequest(customer_id=new_id()),
                                    metadata=svc.metadata),
        stub(svc).RedeemDiscount(pb.RedeemDiscountRequest(
            code="AAAA-BBBB-CCCC-DDDD", order_id="o",
            order_amount=pb.Money(amount_minor=1, currency="EUR")), metadata=svc.metadata),
        stub(svc).CompleteFollowUp(pb.CompleteFollowUpRequest(
            follow_up_id=new_id(), outcome="contacted"), metadata=svc.metadata),
        stub(svc).DisableRule(pb.DisableRuleRequest(rule_id="no-such-rule"),
                              metadata=svc.metadata),
        stub(svc).DryRunRule(pb.DryRunRuleRequest(rule_id="no-such-rule",
                                                  customer_id=new_id()), metadata=svc.metadata),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, err.value.details()


async def test_follow_ups_are_cancelled_when_they_got_what_they_were_for(svc: Running) -> None:
    cid = await _customer(svc)
    # At risk, then a new reason while still at risk: one outreach call, not two.
    await produce(svc, at_risk(cid, svc.clock.now()), at_risk(cid, svc.clock.now()))
    p = await profile_when(svc, cid, lambda p: len(p.follow_ups) == 2, "outreach scheduled")
    events = await loyalty_events(svc, cid, 2, settle=1.0)
    assert len(of_type(events, "loyalty.followup_scheduled")) == 2
    assert sorted(f.rule_id for f in p.follow_ups) == ["at-risk-outreach", "welcome-follow-up"]
    # A purchase makes the welcome moot; the risk clearing makes the outreach moot.
    await produce(svc, purchase_recorded(cid, 1999, 1, svc.clock.now()),
                  risk_cleared(cid, svc.clock.now()))
    p = await profile_when(svc, cid, lambda p: all(f.status == "cancelled"
                                                   for f in p.follow_ups), "both cancelled")
    assert sorted((f.rule_id, f.outcome) for f in p.follow_ups) == [
        ("at-risk-outreach", "moot:customer.risk_cleared"),
        ("welcome-follow-up", "moot:customer.purchase_recorded")]


async def test_one_batch_cancels_what_each_event_made_moot_in_its_place(
        svc: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    """Moot follow-ups of a whole consumed batch are read in one statement, and
    each event cancels only what was open when it came: a welcome scheduled
    later in the batch stays, a second purchase cancels nothing more, and each
    cancellation is published after the scheduling it undoes."""
    pool = svc.runner.pool
    assert pool is not None
    ctx, now = _context(svc), svc.clock.now()
    a, b, c = new_id(), new_id(), new_id()
    async with pool.acquire() as conn, conn.transaction():  # an earlier batch
        await commands.on_events(conn, ctx, [registered(b, now), registered(c, now)])
    reads = 0
    listing = store.open_follow_ups_listing

    async def counted(*args: Any) -> list[Any]:
        nonlocal reads
        reads += 1
        return await listing(*args)

    monkeypatch.setattr(store, "open_follow_ups_listing", counted)
    async with pool.acquire() as conn, conn.transaction():
        await commands.on_events(conn, ctx, [
            registered(a, now), purchase_recorded(a, 1999, 1, now), registered(a, now),
            purchase_recorded(b, 1999, 1, now), purchase_recorded(b, 2999, 2, now)])
    assert reads == 1

    async def published(cid: str) -> list[tuple[str, str, str]]:
        bootstrap = svc.runner.settings.kafka_bootstrap_servers
        assert pool is not None and bootstrap
        records = await sent_records(pool, bootstrap, LOYALTY, cid.encode())
        typed = [(dict(r.headers)["ce_type"].decode(), json.loads(r.value)) for r in records]
        return [(t, body["follow_up_id"], body.get("reason", "")) for t, body in typed
                if t.startswith("loyalty.followup_")]

    def state(rows: list[Any]) -> dict[str, tuple[str, str, bool]]:
        return {str(r["follow_up_id"]): (r["status"], r["outcome"], r["pending"]) for r in rows}

    follow_ups = """SELECT f.follow_up_id, f.status, f.outcome,
                           EXISTS (SELECT 1 FROM scheduled_work w WHERE w.kind = $2
                                      AND w.item_key = f.follow_up_id::text) AS pending
                      FROM follow_ups f WHERE f.customer_id = $1"""
    # a: the first welcome is scheduled, then cancelled; the second stays.
    events = await published(a)
    assert [t for t, _, _ in events] == ["loyalty.followup_scheduled",
                                         "loyalty.followup_cancelled",
                                         "loyalty.followup_scheduled"]
    first, second = events[0][1], events[2][1]
    assert events[1][1:] == (first, "moot:customer.purchase_recorded")
    assert state(await pool.fetch(follow_ups, uuid.UUID(a), commands.FOLLOW_UP_DUE)) == {
        first: ("cancelled", "moot:customer.purchase_recorded", False),
        second: ("scheduled", "", True)}
    # b: the welcome of the earlier batch is cancelled once, by the first purchase.
    events = await published(b)
    assert [t for t, _, _ in events] == ["loyalty.followup_scheduled",
                                         "loyalty.followup_cancelled"]
    assert events[1][1:] == (events[0][1], "moot:customer.purchase_recorded")
    assert list(state(await pool.fetch(follow_ups, uuid.UUID(b),
                                       commands.FOLLOW_UP_DUE)).values()) == [
        ("cancelled", "moot:customer.purchase_recorded", False)]
    # c: nothing made its welcome moot.
    assert list(state(await pool.fetch(follow_ups, uuid.UUID(c),
                                       commands.FOLLOW_UP_DUE)).values()) == [
        ("scheduled", "", True)]


async def test_unsubscribe_cancels_pending_newsletter_sends(svc: Running) -> None:
    rule = {"id": "sms-newsletter-welcome", "trigger": "customer.consent_changed",
            "when": {"purpose": "newsletter", "granted": True, "preferred_channel": "sms"},
            "actions": [{"type": "follow_up", "delay": "2d", "channel": "sms",
                         "template": "newsletter_first_issue", "reason": "First issue",
                         "purpose": "newsletter", "list": "monthly"}]}
    await stub(svc).UpsertRule(pb.UpsertRuleRequest(definition=json.dumps(rule)),
                               metadata=svc.metadata)
    try:
        cid = await _customer(svc, newsletter=True, channel="sms")
    finally:
        await stub(svc).DisableRule(pb.DisableRuleRequest(rule_id="sms-newsletter-welcome"),
                                    metadata=svc.metadata)
    p = await profile_when(svc, cid, lambda p: any(
        f.rule_id == "sms-newsletter-welcome" for f in p.follow_ups), "first issue scheduled")
    reply = await stub(svc).Unsubscribe(pb.UnsubscribeRequest(customer_id=cid),
                                        metadata=svc.metadata)
    assert list(reply.lists) == ["monthly"] and reply.cancelled_follow_ups == 1
    p = await profile(svc, cid)
    send = next(f for f in p.follow_ups if f.rule_id == "sms-newsletter-welcome")
    assert (send.status, send.outcome) == ("cancelled", "unsubscribed")
    assert [(e.list, e.status) for e in p.enrolments] == [("monthly", "unsubscribed")]
    # Unsubscribing again changes nothing.
    again = await stub(svc).Unsubscribe(pb.UnsubscribeRequest(customer_id=cid),
                                        metadata=svc.metadata)
    assert (list(again.lists), again.cancelled_follow_ups) == ([], 0)


async def test_quiet_hours_follow_the_customers_time_zone(svc: Running) -> None:
    cid = await _customer(svc)
    pool = svc.runner.pool
    assert pool is not None
    # As customer.registered will carry it once the customers contract has it.
    await pool.execute("UPDATE customer_view SET time_zone = 'Asia/Tokyo' WHERE customer_id = $1",
                       uuid.UUID(cid))
    now = svc.clock.now()
    assert now.hour == 12  # noon UTC is 21:00 in Tokyo: quiet there
    await produce(svc, case_breached(cid, now))
    p = await profile_when(svc, cid, lambda p: len(p.follow_ups) == 2, "apology scheduled")
    apology = next(f for f in p.follow_ups if f.rule_id == "service-recovery-breach")
    assert apology.due_at.ToDatetime(tzinfo=UTC) == now.replace(hour=23)  # 08:00 in Tokyo


async def test_contacts_due_in_quiet_hours_wait_for_the_morning(svc: Running) -> None:
    """Last in this module: it moves the shared clock to the evening."""
    now = svc.clock.now()
    evening = now.replace(hour=22, minute=0, second=0, microsecond=0)
    if evening <= now:
        evening += timedelta(days=1)
    svc.clock.set(evening)
    cid = await _customer(svc)
    await produce(svc, case_breached(cid, svc.clock.now()))
    p = await profile_when(svc, cid, lambda p: len(p.follow_ups) == 2, "apology scheduled")
    apology = next(f for f in p.follow_ups if f.rule_id == "service-recovery-breach")
    # Due at once, but 22:00 UTC is quiet (21:00-08:00, default zone UTC).
    assert apology.due_at.ToDatetime(tzinfo=evening.tzinfo) == (
        evening + timedelta(days=1)).replace(hour=8)
    welcome = next(f for f in p.follow_ups if f.rule_id == "welcome-follow-up")
    assert welcome.due_at.ToDatetime(tzinfo=evening.tzinfo) == (
        evening + timedelta(days=2)).replace(hour=8)
    svc.clock.advance(timedelta(hours=9, minutes=59))
    await asyncio.sleep(0.5)
    assert next(f for f in (await profile(svc, cid)).follow_ups
                if f.rule_id == "service-recovery-breach").status == "scheduled"
    svc.clock.advance(timedelta(minutes=1))
    await profile_when(svc, cid, lambda p: any(
        f.rule_id == "service-recovery-breach" and f.status == "due" for f in p.follow_ups),
        "apology due at 08:00")


async def test_a_due_follow_up_continues_the_trace_of_its_trigger(svc: Running) -> None:
    """The apology call scheduled for a breach fires from the durable
    scheduler, and its ``loyalty.followup_due`` is in the breach's trace."""
    from dataclasses import replace

    from crm_runtime.logs import new_traceparent, trace_id
    from tests.support.kafka import read_topic, wait_for

    cid = await _customer(svc)
    trigger = replace(case_breached(cid, svc.clock.now()), traceparent=new_traceparent())
    await produce(svc, trigger)
    bootstrap = svc.runner.settings.kafka_bootstrap_servers or ""
    due: list[dict[str, bytes]] = []

    async def fired() -> bool:
        due[:] = [dict(r.headers) for r in await read_topic(bootstrap, LOYALTY, expect=0,
                                                             timeout=5, settle=0.2)
                  if r.key == cid.encode()
                  and dict(r.headers)["ce_type"] == b"loyalty.followup_due"]
        return bool(due)

    await wait_for(fired, what="the apology call due")
    assert trace_id(due[0]["ce_traceparent"].decode()) == trace_id(trigger.traceparent)
