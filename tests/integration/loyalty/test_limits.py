"""Loyalty at the limits: times PostgreSQL stores as ``infinity`` or that
come without an offset, absurd counts and amounts, and a redemption retried
with another order. Nothing mixes naive and aware times, nothing overflows,
and what cannot be applied is refused naming the field or dead-lettered with
a named reason."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from crm.loyalty.v1 import loyalty_pb2 as pb
from crm_contracts.customers import PurchaseRecorded
from crm_contracts.money import MAX_AMOUNT_MINOR
from crm_contracts.topics import CUSTOMERS
from crm_runtime.consumer import dlq_topic
from crm_runtime.events import Envelope
from tests.support.kafka import dead_letter, dlq_error, wait_for
from tests.support.loyalty import (
    consent,
    envelope,
    merged,
    new_id,
    produce,
    profile_when,
    purchase_recorded,
    registered,
    stage_changed,
    stub,
)
from tests.support.services import Running


async def _customer(svc: Running, *, promotional: bool = False) -> str:
    cid = new_id()
    now = svc.clock.now()
    events = [registered(cid, now)]
    if promotional:
        events.append(consent(cid, "promotional_offers", True, now))
    await produce(svc, *events)
    await profile_when(svc, cid, lambda p: p.promotional_consent == promotional,
                       "customer known to loyalty")
    return cid


async def _consumed(svc: Running, env: Envelope) -> None:
    pool = svc.runner.pool
    assert pool is not None

    async def seen() -> bool:
        return bool(await pool.fetchval("SELECT count(*) FROM inbox WHERE event_id = $1",
                                        env.id))

    await wait_for(seen, what=f"{env.id} consumed")


async def _dead_letter(svc: Running, env: Envelope) -> tuple[str, str]:
    """(error kind, reason) of the dead letter of ``env`` on the DLQ topic."""
    bootstrap = svc.runner.settings.kafka_bootstrap_servers
    assert bootstrap
    return dlq_error(await dead_letter(bootstrap, dlq_topic(CUSTOMERS), env.id))


async def _refused(call: Any, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()
    return err.value.details() or ""


# --- times ------------------------------------------------------------------------


@pytest.mark.parametrize("at", [datetime(1, 1, 1, tzinfo=UTC),
                                datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)])
async def test_a_purchase_time_postgres_stores_as_infinity_breaks_nothing(
        svc: Running, at: datetime) -> None:
    """A year-1 time is ``-infinity`` in PostgreSQL, the last microsecond of
    9999 ``infinity``; asyncpg reads both back naive. The next event of the
    customer (its rules compute the days since the last purchase) is applied."""
    cid = await _customer(svc)
    bought = purchase_recorded(cid, 100, 1, at)
    await produce(svc, bought)
    await _consumed(svc, bought)
    await produce(svc, stage_changed(cid, "potential", "one_time", 1, svc.clock.now()))
    await profile_when(svc, cid, lambda p: p.stage == "one_time", "the stage change applied")


async def test_infinite_times_already_stored_are_read_as_aware(svc: Running) -> None:
    """Rows written before times were checked: ``-infinity``/``infinity`` in
    every time of the view. Stage changes, purchases and a merge still apply."""
    survivor = await _customer(svc)
    other = await _customer(svc)
    pool = svc.runner.pool
    assert pool is not None
    await pool.execute(
        """UPDATE customer_view SET last_purchase_at = '-infinity',
                  newsletter_consent_at = 'infinity', promotional_consent_at = '-infinity'
            WHERE customer_id = ANY($1::uuid[])""",
        [uuid.UUID(survivor), uuid.UUID(other)])
    now = svc.clock.now()
    await produce(svc, stage_changed(survivor, "potential", "one_time", 1, now),
                  purchase_recorded(other, 100, 1, now))
    await profile_when(svc, survivor, lambda p: p.stage == "one_time", "the stage change applied")
    # A decision after -infinity applies; none is after one stored at infinity.
    await produce(svc, consent(other, "newsletter", True, now),
                  consent(other, "promotional_offers", True, now))
    p = await profile_when(svc, other, lambda p: p.promotional_consent, "the consent applied")
    assert not p.newsletter_consent
    both = merged(survivor, other, now, stage="repeat", count=2)
    await produce(svc, both)
    await profile_when(svc, survivor, lambda p: p.stage == "repeat", "the merge applied")


async def test_a_purchase_time_without_an_offset_is_not_mixed_with_aware_ones(
        svc: Running) -> None:
    cid = await _customer(svc)
    now = svc.clock.now()
    first = purchase_recorded(cid, 100, 1, now - timedelta(days=2))
    await produce(svc, first)
    await _consumed(svc, first)
    naive = envelope(PurchaseRecorded(
        customer_id=cid, purchase_id=new_id(), amount_minor=100, currency="EUR",
        occurred_at=now.replace(tzinfo=None), purchase_count=2), cid, now)
    await produce(svc, naive)
    await _consumed(svc, naive)
    await produce(svc, stage_changed(cid, "one_time", "repeat", 2, now))
    await profile_when(svc, cid, lambda p: p.stage == "repeat", "the stage change applied")
    pool = svc.runner.pool
    assert pool is not None
    assert await pool.fetchval("SELECT last_purchase_at FROM customer_view WHERE customer_id = $1",
                               uuid.UUID(cid)) == now - timedelta(days=2)


@pytest.mark.parametrize("count", [-1, 2**31, 2**63])
async def test_an_absurd_purchase_count_is_dead_lettered_as_out_of_range(
        svc: Running, count: int) -> None:
    cid = await _customer(svc)
    bad = stage_changed(cid, "potential", "one_time", count, svc.clock.now())
    await produce(svc, bad)
    kind, reason = await _dead_letter(svc, bad)
    assert kind == "out_of_range" and reason.startswith("purchase_count:"), (kind, reason)


# --- discounts ------------------------------------------------------------------------


async def _discount_code(svc: Running) -> str:
    cid = await _customer(svc, promotional=True)
    await produce(svc, stage_changed(cid, "one_time", "repeat", 2, svc.clock.now()))
    p = await profile_when(svc, cid, lambda p: len(p.discounts) == 1, "a discount")
    return p.discounts[0].code


@pytest.mark.parametrize("amount", [MAX_AMOUNT_MINOR + 1, 2**62, -1])
async def test_an_absurd_order_amount_is_invalid_argument(svc: Running, amount: int) -> None:
    code = await _discount_code(svc)
    order = pb.Money(amount_minor=amount, currency="EUR")
    for call in (stub(svc).ValidateDiscount(pb.ValidateDiscountRequest(
                     code=code, order_amount=order), metadata=svc.metadata),
                 stub(svc).RedeemDiscount(pb.RedeemDiscountRequest(
                     code=code, order_id="o-1", order_amount=order), metadata=svc.metadata)):
        details = await _refused(call)
        assert details.startswith("order_amount.amount_minor:"), details
    largest = pb.Money(amount_minor=MAX_AMOUNT_MINOR, currency="EUR")
    done = await stub(svc).RedeemDiscount(pb.RedeemDiscountRequest(
        code=code, order_id="o-2", order_amount=largest), metadata=svc.metadata)
    assert done.discount_amount.amount_minor == MAX_AMOUNT_MINOR // 10


async def test_a_redemption_retried_with_another_order_is_already_exists(svc: Running) -> None:
    code = await _discount_code(svc)
    order = pb.Money(amount_minor=8000, currency="EUR")
    first = await stub(svc).RedeemDiscount(pb.RedeemDiscountRequest(
        code=code, order_id="web-1", order_amount=order), metadata=svc.metadata)
    again = await stub(svc).RedeemDiscount(pb.RedeemDiscountRequest(
        code=code, order_id="web-1", order_amount=order), metadata=svc.metadata)
    assert (again.order_id, again.discount_amount.amount_minor) == (
        first.order_id, first.discount_amount.amount_minor) == ("web-1", 800)
    for other in (pb.Money(amount_minor=9000, currency="EUR"),
                  pb.Money(amount_minor=8000, currency="USD")):
        details = await _refused(stub(svc).RedeemDiscount(pb.RedeemDiscountRequest(
            code=code, order_id="web-1", order_amount=other), metadata=svc.metadata),
            grpc.StatusCode.ALREADY_EXISTS)
        assert "web-1" in details, details
    # Another order is refused as the code is used (not answered with web-1's redemption).
    details = await _refused(stub(svc).RedeemDiscount(pb.RedeemDiscountRequest(
        code=code, order_id="web-2", order_amount=order), metadata=svc.metadata),
        grpc.StatusCode.FAILED_PRECONDITION)
    assert "already redeemed" in details


async def test_a_redemption_is_never_answered_to_another_customer(svc: Running) -> None:
    code = await _discount_code(svc)
    stranger = await _customer(svc)
    order = pb.Money(amount_minor=8000, currency="EUR")
    await stub(svc).RedeemDiscount(pb.RedeemDiscountRequest(
        code=code, order_id="shop-7", order_amount=order), metadata=svc.metadata)
    details = await _refused(stub(svc).RedeemDiscount(pb.RedeemDiscountRequest(
        code=code, order_id="shop-7", customer_id=stranger, order_amount=order),
        metadata=svc.metadata), grpc.StatusCode.FAILED_PRECONDITION)
    assert "another customer" in details


# --- rules ------------------------------------------------------------------------------


def _rule(action: dict[str, Any]) -> str:
    return json.dumps({"id": f"limits-{uuid.uuid4().hex[:6]}", "enabled": False,
                       "trigger": "customer.stage_changed", "actions": [action]})


@pytest.mark.parametrize(("action", "field"), [
    ({"type": "discount", "amount_minor": MAX_AMOUNT_MINOR + 1}, "actions[0].amount_minor"),
    ({"type": "discount", "percent": 10, "min_purchase_minor": 2**63},
     "actions[0].min_purchase_minor"),
    ({"type": "referral_reward", "discount": {"amount_minor": 10**30}},
     "actions[0].discount.amount_minor"),
    ({"type": "follow_up", "delay": "1000000d", "channel": "email", "template": "t",
      "reason": "r"}, "actions[0].delay"),
    ({"type": "follow_up", "delay": "99999999999999999999d", "channel": "email",
      "template": "t", "reason": "r"}, "actions[0].delay"),
    ({"type": "discount", "percent": 10, "valid_days": 2**31 - 1}, "actions[0].valid_days"),
])
async def test_rules_with_absurd_numbers_are_invalid_argument(
        svc: Running, action: dict[str, Any], field: str) -> None:
    details = await _refused(stub(svc).UpsertRule(pb.UpsertRuleRequest(
        definition=_rule(action)), metadata=svc.metadata))
    assert details.split(":")[0].endswith(field), details


@pytest.mark.parametrize("version", [-1, 2**31 - 1])
async def test_an_absurd_expected_version_is_refused_not_internal(
        svc: Running, version: int) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub(svc).UpsertRule(pb.UpsertRuleRequest(
            definition=_rule({"type": "newsletter", "list": "a"}), expected_version=version),
            metadata=svc.metadata)
    assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ABORTED)
