"""Interactions, customers and loyalty together, on one clock: a purchase
published on the ingest topic becomes a stage change in customers and a
repeat-buyer discount on crm.loyalty.v1, once, whatever the redelivery."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from crm.customers.v1 import customers_pb2 as cpb
from crm.customers.v1 import customers_pb2_grpc
from crm.interactions.v1 import interactions_pb2 as ipb
from crm.interactions.v1 import interactions_pb2_grpc
from crm_contracts.interactions import ContactReceived
from crm_runtime.events import Envelope
from tests.integration.loyalty.conftest import Trio
from tests.support.loyalty import loyalty_events, of_type, produce, profile_when
from tests.support.node import GRPC_PACKAGES, ensure_packages, node_binary
from tests.support.services import DEV_TOKEN

NODE_CLIENT = Path(__file__).resolve().parents[2] / "support" / "node" / "reflection_client.cjs"


def _purchase(trio: Trio, customer_id: str, key: str, amount: int) -> Envelope:
    return Envelope(data=ContactReceived(
        idempotency_key=key, customer_id=customer_id, channel="web", kind="purchase",
        occurred_at=trio.loyalty.clock.now(), amount_minor=amount, currency="EUR",
        outcome="positive"), subject=customer_id, source="/test/shop")


async def _consenting_customer(trio: Trio, name: str) -> str:
    """A customer registered through the customers service who granted
    promotional offers on the web."""
    customers = customers_pb2_grpc.CustomersStub(trio.customers.channel)
    reply = await customers.RegisterCustomer(cpb.RegisterCustomerRequest(
        display_name=name, emails=[f"{name.lower()}-{uuid.uuid4().hex[:8]}@example.com"]),
        metadata=trio.customers.metadata)
    cid: str = reply.customer.customer_id
    await customers.SetConsent(cpb.SetConsentRequest(
        customer_id=cid, purpose="promotional_offers", granted=True, source="web"),
        metadata=trio.customers.metadata)
    return cid


async def test_second_purchase_through_all_services_yields_one_discount(trio: Trio) -> None:
    cid = await _consenting_customer(trio, "Lola")
    await profile_when(trio.loyalty, cid, lambda p: p.promotional_consent, "consent known")

    first = _purchase(trio, cid, f"sale-1-{cid}", 2500)
    second = _purchase(trio, cid, f"sale-2-{cid}", 4000)
    started = time.monotonic()
    # The shop publishes each sale twice (a retry): each still counts once.
    await produce(trio.interactions, first, first, second, second)
    p = await profile_when(trio.loyalty, cid, lambda p: len(p.discounts) == 1, "a discount")
    elapsed = time.monotonic() - started
    assert p.stage == "repeat" and p.discounts[0].percent == 10
    events = await loyalty_events(trio.loyalty, cid, 3, settle=1.5)
    issued = of_type(events, "loyalty.discount_issued")
    assert [d["rule_id"] for d in issued] == ["repeat-buyer-discount"]
    scheduled = sorted(d["template"] for d in of_type(events, "loyalty.followup_scheduled"))
    assert scheduled == ["thank_you_first_purchase", "welcome"]
    # The welcome follow-up was moot after the first purchase.
    assert [d["reason"] for d in of_type(events, "loyalty.followup_cancelled")] == [
        "moot:customer.purchase_recorded"]
    assert elapsed < 30


async def test_a_case_resolved_late_before_its_breach_still_gets_service_recovery(
        trio: Trio) -> None:
    """The interactions scheduler is down past a case's deadline; the late
    resolution breaches the case first, so loyalty compensates once and
    schedules the late-resolution call, as if the scheduler had fired."""
    customers = customers_pb2_grpc.CustomersStub(trio.customers.channel)
    interactions = interactions_pb2_grpc.InteractionsStub(trio.interactions.channel)
    reply = await customers.RegisterCustomer(cpb.RegisterCustomerRequest(
        display_name="Pepa", emails=[f"pepa-{uuid.uuid4().hex[:8]}@example.com"]),
        metadata=trio.customers.metadata)
    cid = reply.customer.customer_id
    await profile_when(trio.loyalty, cid, lambda p: p.stage == "potential", "customer known")
    complaint = await interactions.RecordInteraction(ipb.RecordInteractionRequest(
        idempotency_key=str(uuid.uuid4()), customer_id=cid, channel="phone", kind="complaint",
        notes="the order never arrived"), metadata=trio.interactions.metadata)
    pool = trio.interactions.runner.pool
    assert pool is not None
    await pool.execute("UPDATE scheduled_work SET due_at = 'infinity' WHERE item_key = $1",
                       complaint.case_id)  # the scheduler is down
    # A day past the 48 h promise; whole days keep the shared clock at noon,
    # which the quiet-hours tests of this package expect.
    trio.loyalty.clock.advance(timedelta(days=3))
    case = await interactions.ResolveCase(ipb.ResolveCaseRequest(
        case_id=complaint.case_id, resolution="resent the order"),
        metadata=trio.interactions.metadata)
    assert case.resolved_late and case.breached
    p = await profile_when(trio.loyalty, cid, lambda p: len(p.discounts) == 1
                           and any(f.rule_id == "service-recovery-late-resolution"
                                   for f in p.follow_ups), "service recovery")
    assert [(d.rule_id, d.amount.amount_minor) for d in p.discounts] == [("service-recovery-breach",
                                                                  1000)]
    events = await loyalty_events(trio.loyalty, cid, 4, settle=1.5)
    assert [d["rule_id"] for d in of_type(events, "loyalty.discount_issued")] == [
        "service-recovery-breach"]
    late_calls = [d["template"] for d in of_type(events, "loyalty.followup_scheduled")
                  if d["rule_id"] == "service-recovery-late-resolution"]
    assert late_calls == ["apology_late_resolution"]


async def test_a_friend_signed_up_with_a_referral_code_rewards_the_referrer_once(
        trio: Trio) -> None:
    """The web shop's sign-up form passes the code the friend typed ("Got a
    code from a friend?") to RegisterCustomer; the friend's first purchase
    rewards the code's owner, once."""
    customers = customers_pb2_grpc.CustomersStub(trio.customers.channel)
    referrer = await _consenting_customer(trio, "Rosa")
    p = await profile_when(trio.loyalty, referrer, lambda p: p.referral_code
                           and p.promotional_consent, "the referrer's code")
    typed = p.referral_code.lower().replace("-", " ")  # as the friend typed it
    friend_reply = await customers.RegisterCustomer(cpb.RegisterCustomerRequest(
        display_name="Nuria", emails=[f"nuria-{uuid.uuid4().hex[:8]}@example.com"],
        source="web-shop", referral_code=typed), metadata=trio.customers.metadata)
    friend = friend_reply.customer.customer_id
    await profile_when(trio.loyalty, friend, lambda p: p.referred_by_customer_id == referrer,
                       "the friend's referrer known")

    sale = _purchase(trio, friend, f"sale-1-{friend}", 3000)
    await produce(trio.interactions, sale, sale)  # published twice: counted once
    p = await profile_when(trio.loyalty, referrer, lambda p: len(p.referrals) == 1, "rewarded")
    assert [r.referred_customer_id for r in p.referrals] == [friend]
    events = await loyalty_events(trio.loyalty, referrer, 2, settle=1.5)
    assert [d["referred_customer_id"] for d in of_type(events, "loyalty.referral_rewarded")] == [
        friend]
    issued = of_type(events, "loyalty.discount_issued")
    assert [(d["rule_id"], d["amount_minor"]) for d in issued] == [("referral-reward", 1500)]
    # The friend got no referral reward themselves.
    friend_events = await loyalty_events(trio.loyalty, friend, 1, settle=0)
    assert not of_type(friend_events, "loyalty.referral_rewarded")


async def test_an_unknown_referral_code_at_sign_up_is_recorded_not_dropped(trio: Trio) -> None:
    customers = customers_pb2_grpc.CustomersStub(trio.customers.channel)
    reply = await customers.RegisterCustomer(cpb.RegisterCustomerRequest(
        emails=[f"olga-{uuid.uuid4().hex[:8]}@example.com"], referral_code="REF-ZZZZ2222ZZ"),
        metadata=trio.customers.metadata)
    cid = reply.customer.customer_id
    p = await profile_when(trio.loyalty, cid, lambda p: p.suppressed, "suppression recorded")
    assert [(s.action_type, s.reason) for s in p.suppressed] == [
        ("referral_reward", "unknown_referral_code")]
    assert not p.referred_by_customer_id


@pytest.mark.slow
async def test_a_node_client_through_reflection_calls_each_service(trio: Trio) -> None:
    """A gRPC client in another language with no proto files: Node.js
    (@grpc/grpc-js) discovers each service through reflection
    (grpc-js-reflection-client, from the npm registry) and calls it with a
    bearer token, as docs/integration.md tells integrators to."""
    node = node_binary()
    modules = await asyncio.to_thread(ensure_packages, *GRPC_PACKAGES)
    config = {"token": DEV_TOKEN} | {
        name: f"127.0.0.1:{getattr(trio, name).runner.bound_grpc_port}"
        for name in ("customers", "interactions", "loyalty")}
    result = await asyncio.to_thread(
        subprocess.run, [node, str(NODE_CLIENT), json.dumps(config)], capture_output=True,
        text=True, timeout=120, stdin=subprocess.DEVNULL,
        env={**os.environ, "NODE_PATH": str(modules)})
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"crm.customers.v1.Customers", "grpc.health.v1.Health",
            "crm.ops.v1.Operations"} <= set(out["services"])
    # customers
    registered = out["registered"]
    assert registered["code"] == "OK", registered
    customer = registered["reply"]["customer"]
    assert customer["display_name"] == "Ada from Node"
    assert customer["emails"] == [out["email"]] and customer["stage"] == "STAGE_POTENTIAL"
    fetched = out["fetched"]
    assert fetched["code"] == "OK" and fetched["reply"]["customer_id"] == customer["customer_id"]
    invalid = out["invalid"]
    assert invalid["code"] == "INVALID_ARGUMENT", invalid
    assert invalid["details"].startswith("emails[0]"), invalid
    assert invalid["has_status_details"], "google.rpc.Status with the field violation"
    assert out["missing"]["code"] == "NOT_FOUND", out["missing"]
    assert out["anonymous"]["code"] == "UNAUTHENTICATED", out["anonymous"]
    # interactions
    recorded = out["recorded"]
    assert recorded["code"] == "OK", recorded
    assert recorded["reply"]["customer_id"] == customer["customer_id"]
    assert recorded["reply"]["channel"] == "chat" and recorded["reply"]["kind"] == "inquiry"
    bad = out["bad_channel"]
    assert bad["code"] == "INVALID_ARGUMENT" and bad["details"].startswith("channel"), bad
    # loyalty
    assert out["profile"]["code"] == "OK", out["profile"]
    assert out["profile"]["reply"]["customer_id"] == customer["customer_id"]
    assert out["profile"]["reply"]["referral_code"].startswith("REF-")
    malformed = out["malformed_code"]
    assert malformed["code"] == "INVALID_ARGUMENT", malformed
    assert malformed["details"].startswith("code:") and malformed["has_status_details"]
