"""Money, event times, purchase ids and integers at their limits, over the
running customers service: absurd values are refused naming the field (gRPC)
or dead-lettered with a named reason (events), never an INTERNAL error, an
overflow in PostgreSQL or a ``handler_error``."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from crm.customers.v1 import customers_pb2 as pb
from crm_contracts.money import MAX_AMOUNT_MINOR, MAX_TOTAL_MINOR
from crm_contracts.topics import INTERACTIONS
from crm_runtime.consumer import dlq_topic
from crm_runtime.events import Envelope
from tests.support.customers import get, purchase_event, register, stub
from tests.support.kafka import dead_letter, dlq_error, produce_envelopes, wait_for
from tests.support.services import Running


async def _purchase(svc: Running, customer_id: str, amount: int, *, purchase_id: str = "",
                    currency: str = "EUR", at: datetime | None = None) -> pb.Customer:
    request = pb.RecordPurchaseRequest(
        customer_id=customer_id, purchase_id=purchase_id or str(uuid.uuid4()),
        amount=pb.Money(amount_minor=amount, currency=currency))
    if at is not None:
        request.occurred_at.FromDatetime(at)
    reply: pb.Customer = await stub(svc).RecordPurchase(request, metadata=svc.metadata)
    return reply


async def _refused(call: Any, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT
                   ) -> str:
    """The details of a call that must fail with ``code``."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()
    return err.value.details() or ""


def _bootstrap(svc: Running) -> str:
    bootstrap = svc.runner.settings.kafka_bootstrap_servers
    assert bootstrap
    return bootstrap


async def _dead_letter(svc: Running, env: Envelope) -> tuple[str, str]:
    """(error kind, reason) of the dead letter of ``env`` on the DLQ topic."""
    bootstrap = svc.runner.settings.kafka_bootstrap_servers
    assert bootstrap
    return dlq_error(await dead_letter(bootstrap, dlq_topic(INTERACTIONS), env.id))


async def _consumed(svc: Running, env: Envelope) -> None:
    pool = svc.runner.pool
    assert pool is not None

    async def seen() -> bool:
        return bool(await pool.fetchval("SELECT count(*) FROM inbox WHERE event_id = $1",
                                        env.id))

    await wait_for(seen, what=f"{env.id} consumed")


async def _set_total(svc: Running, customer_id: str, currency: str, total: int) -> None:
    pool = svc.runner.pool
    assert pool is not None
    await pool.execute(
        """INSERT INTO customer_spend (customer_id, currency, total_minor) VALUES ($1, $2, $3)
           ON CONFLICT (customer_id, currency) DO UPDATE SET total_minor = EXCLUDED.total_minor""",
        uuid.UUID(customer_id), currency, total)


# --- money --------------------------------------------------------------------


@pytest.mark.parametrize("amount", [MAX_AMOUNT_MINOR + 1, 2**62, 2**63 - 1, -1])
async def test_an_amount_beyond_the_per_purchase_maximum_is_refused(
        svc: Running, amount: int) -> None:
    c = (await register(svc)).customer
    details = await _refused(_purchase(svc, c.customer_id, amount))
    assert details.startswith("amount.amount_minor:"), details
    after = await get(svc, c.customer_id)
    assert after.purchase_count == 0 and not after.total_spent


async def test_the_largest_purchase_is_counted(svc: Running) -> None:
    c = (await register(svc)).customer
    after = await _purchase(svc, c.customer_id, MAX_AMOUNT_MINOR)
    assert [(m.currency, m.amount_minor) for m in after.total_spent] == [
        ("EUR", MAX_AMOUNT_MINOR)]


async def test_a_purchase_that_would_overflow_the_total_is_refused(svc: Running) -> None:
    c = (await register(svc)).customer
    await _purchase(svc, c.customer_id, 1000)
    await _set_total(svc, c.customer_id, "EUR", MAX_TOTAL_MINOR - 500)
    details = await _refused(_purchase(svc, c.customer_id, MAX_AMOUNT_MINOR))
    assert details.startswith("amount.amount_minor:") and "total" in details, details
    after = await get(svc, c.customer_id)
    assert after.purchase_count == 1
    assert [(m.currency, m.amount_minor) for m in after.total_spent] == [
        ("EUR", MAX_TOTAL_MINOR - 500)]
    # Up to the limit still counts; other currencies are separate totals.
    exact = await _purchase(svc, c.customer_id, 500)
    assert {m.currency: m.amount_minor for m in exact.total_spent} == {"EUR": MAX_TOTAL_MINOR}
    usd = await _purchase(svc, c.customer_id, 700, currency="USD")
    assert {m.currency: m.amount_minor for m in usd.total_spent} == {
        "EUR": MAX_TOTAL_MINOR, "USD": 700}


async def test_events_with_absurd_amounts_are_dead_lettered_as_out_of_range(
        svc: Running) -> None:
    huge = (await register(svc)).customer
    full = (await register(svc)).customer
    fine = (await register(svc)).customer
    await _set_total(svc, full.customer_id, "EUR", MAX_TOTAL_MINOR - 10)
    now = svc.clock.now()
    too_big = purchase_event(huge.customer_id, MAX_AMOUNT_MINOR + 1, now)
    overflow = purchase_event(full.customer_id, 11, now)
    good = purchase_event(fine.customer_id, 1234, now)
    await produce_envelopes(_bootstrap(svc), [too_big, overflow, good])
    kind, reason = await _dead_letter(svc, too_big)
    assert kind == "out_of_range" and reason.startswith("amount_minor:"), (kind, reason)
    kind, reason = await _dead_letter(svc, overflow)
    assert kind == "out_of_range" and "total" in reason, (kind, reason)

    async def counted() -> bool:
        return (await get(svc, fine.customer_id)).purchase_count == 1

    await wait_for(counted, what="the good purchase counted")
    assert (await get(svc, huge.customer_id)).purchase_count == 0
    after = await get(svc, full.customer_id)
    assert after.purchase_count == 0
    assert [(m.currency, m.amount_minor) for m in after.total_spent] == [
        ("EUR", MAX_TOTAL_MINOR - 10)]


async def test_a_merge_whose_totals_would_overflow_is_refused(svc: Running) -> None:
    """Purchases stored before amounts were bounded may add up past a total:
    merging such customers is FAILED_PRECONDITION, never a bigint overflow."""
    a = (await register(svc)).customer
    b = (await register(svc)).customer
    pool = svc.runner.pool
    assert pool is not None
    for cid in (a.customer_id, b.customer_id):
        await pool.execute(
            """INSERT INTO purchases (customer_id, purchase_id, amount_minor, currency,
                                      occurred_at) VALUES ($1, $2, $3, 'EUR', $4)""",
            uuid.UUID(cid), f"legacy-{cid}", 2**62 + 1, svc.clock.now())
    details = await _refused(stub(svc).MergeCustomers(pb.MergeCustomersRequest(
        survivor_customer_id=a.customer_id, merged_customer_id=b.customer_id),
        metadata=svc.metadata), grpc.StatusCode.FAILED_PRECONDITION)
    assert "EUR" in details, details
    assert (await get(svc, b.customer_id)).customer_id == b.customer_id  # not merged


# --- event times ----------------------------------------------------------------


@pytest.mark.parametrize(("at", "problem"), [
    (datetime(1999, 12, 31, 23, 59, tzinfo=UTC), "before 2000"),
    (datetime(9999, 12, 31, tzinfo=UTC), "in the future"),
])
async def test_a_purchase_time_out_of_the_window_is_refused(
        svc: Running, at: datetime, problem: str) -> None:
    c = (await register(svc)).customer
    details = await _refused(_purchase(svc, c.customer_id, 100, at=at))
    assert details.startswith("occurred_at:") and (
        problem in details or "2100" in details), details


async def test_a_purchase_time_the_calendar_cannot_hold_is_refused(svc: Running) -> None:
    c = (await register(svc)).customer
    request = pb.RecordPurchaseRequest(
        customer_id=c.customer_id, purchase_id="far-away",
        amount=pb.Money(amount_minor=100, currency="EUR"),
        occurred_at=Timestamp(seconds=2**62))
    details = await _refused(stub(svc).RecordPurchase(request, metadata=svc.metadata))
    assert details.startswith("occurred_at:"), details


async def test_a_purchase_a_little_ahead_of_the_clock_counts_more_is_refused(
        svc: Running) -> None:
    c = (await register(svc)).customer
    now = svc.clock.now()
    ahead = await _purchase(svc, c.customer_id, 100, at=now + timedelta(minutes=10))
    assert ahead.purchase_count == 1
    details = await _refused(_purchase(svc, c.customer_id, 100,
                                       at=now + timedelta(minutes=16)))
    assert details.startswith("occurred_at:") and "in the future" in details, details


@pytest.mark.parametrize("at", [datetime(9999, 12, 31, tzinfo=UTC),
                                datetime(1, 1, 1, tzinfo=UTC),
                                datetime(1999, 1, 1, tzinfo=UTC)])
async def test_purchase_events_out_of_the_time_window_are_dead_lettered_as_out_of_range(
        svc: Running, at: datetime) -> None:
    c = (await register(svc)).customer
    bad = purchase_event(c.customer_id, 100, at)
    await produce_envelopes(_bootstrap(svc), [bad])
    kind, reason = await _dead_letter(svc, bad)
    # Refused by the contract when it decodes (invalid_payload) or by the
    # service's window (out_of_range): named either way, never a handler error.
    assert kind in ("out_of_range", "invalid_payload") and "occurred_at" in reason, (
        kind, reason)
    after = await get(svc, c.customer_id)
    assert after.purchase_count == 0 and not after.HasField("last_purchase_at")


async def test_a_customer_with_an_infinite_purchase_time_stored_can_buy_again(
        svc: Running) -> None:
    """Rows written before times were checked may hold ``-infinity`` (a year-1
    time): asyncpg reads it back as a naive datetime, which must not break
    the next purchase or a segment on the days since the last one."""
    tag = uuid.uuid4().hex[:8]
    c = (await register(svc, profile=pb.Profile(socio_economic_band=tag))).customer
    await _purchase(svc, c.customer_id, 100)
    pool = svc.runner.pool
    assert pool is not None
    await pool.execute("""UPDATE customers SET first_purchase_at = '-infinity',
                                 last_purchase_at = '-infinity' WHERE customer_id = $1""",
                       uuid.UUID(c.customer_id))
    name = f"recent-{tag}"
    await stub(svc).DefineSegment(pb.DefineSegmentRequest(
        name=name, filter_json=json.dumps({"all": [
            {"field": "profile.socio_economic_band", "op": "=", "value": tag},
            {"field": "days_since_last_purchase", "op": "<=", "value": 30}]}),
        churn_window_days=100), metadata=svc.metadata)
    after = await _purchase(svc, c.customer_id, 100)
    assert after.purchase_count == 2 and after.stage == pb.STAGE_REPEAT
    members = await stub(svc).ListSegmentMembers(pb.ListSegmentMembersRequest(name=name),
                                                 metadata=svc.metadata)
    assert c.customer_id in {m.customer_id for m in members.customers}
    event = purchase_event(c.customer_id, 100, svc.clock.now())
    await produce_envelopes(_bootstrap(svc), [event])

    async def counted() -> bool:
        return (await get(svc, c.customer_id)).purchase_count == 3

    await wait_for(counted, what="the event's purchase counted")


# --- purchase ids ---------------------------------------------------------------


async def test_a_purchase_id_is_scoped_to_its_customer(svc: Running) -> None:
    a = (await register(svc)).customer
    b = (await register(svc)).customer
    sale = f"pos-{uuid.uuid4().hex[:8]}"
    await _purchase(svc, a.customer_id, 100, purchase_id=sale)
    other = await _purchase(svc, b.customer_id, 250, purchase_id=sale)
    # B's sale is B's: counted for B, with B's amount, never answered with A's.
    assert other.customer_id == b.customer_id and other.purchase_count == 1
    assert [(m.currency, m.amount_minor) for m in other.total_spent] == [("EUR", 250)]
    a_after = await get(svc, a.customer_id)
    assert a_after.purchase_count == 1
    assert [(m.currency, m.amount_minor) for m in a_after.total_spent] == [("EUR", 100)]


async def test_a_purchase_id_again_with_another_payload_is_already_exists(
        svc: Running) -> None:
    c = (await register(svc)).customer
    sale = f"pos-{uuid.uuid4().hex[:8]}"
    at = svc.clock.now() - timedelta(hours=1)
    first = await _purchase(svc, c.customer_id, 100, purchase_id=sale, at=at)
    # A retry (the same payload; no time given means "now", which a retry cannot repeat).
    same = await _purchase(svc, c.customer_id, 100, purchase_id=sale, at=at)
    assert same.purchase_count == first.purchase_count == 1
    unset = await _purchase(svc, c.customer_id, 100, purchase_id=sale)
    assert unset.purchase_count == 1
    for changed in (_purchase(svc, c.customer_id, 101, purchase_id=sale, at=at),
                    _purchase(svc, c.customer_id, 100, purchase_id=sale, currency="USD",
                              at=at),
                    _purchase(svc, c.customer_id, 100, purchase_id=sale,
                              at=at - timedelta(minutes=1))):
        details = await _refused(changed, grpc.StatusCode.ALREADY_EXISTS)
        assert sale in details, details
    after = await get(svc, c.customer_id)
    assert after.purchase_count == 1
    assert [(m.currency, m.amount_minor) for m in after.total_spent] == [("EUR", 100)]


async def test_an_interaction_counted_again_with_another_amount_is_dead_lettered(
        svc: Running) -> None:
    c = (await register(svc)).customer
    interaction = str(uuid.uuid4())
    now = svc.clock.now()
    first = purchase_event(c.customer_id, 100, now, interaction_id=interaction)
    await produce_envelopes(_bootstrap(svc), [first])
    await _consumed(svc, first)
    same = purchase_event(c.customer_id, 100, now, interaction_id=interaction)
    changed = purchase_event(c.customer_id, 900, now, interaction_id=interaction)
    await produce_envelopes(_bootstrap(svc), [same, changed])
    kind, reason = await _dead_letter(svc, changed)
    assert kind == "already_exists" and interaction in reason, (kind, reason)
    await _consumed(svc, same)
    after = await get(svc, c.customer_id)
    assert after.purchase_count == 1
    assert [(m.currency, m.amount_minor) for m in after.total_spent] == [("EUR", 100)]


# --- integers -----------------------------------------------------------------------


@pytest.mark.parametrize("value", [2**31, 2**40, 2**62])
async def test_segment_values_beyond_int32_are_compared_not_overflowed(
        svc: Running, value: int) -> None:
    tag = uuid.uuid4().hex[:8]
    name = f"big-{tag}"
    await stub(svc).DefineSegment(pb.DefineSegmentRequest(name=name, filter_json=json.dumps(
        {"all": [{"field": "profile.socio_economic_band", "op": "=", "value": tag},
                 {"field": "total_spent.EUR", "op": ">=", "value": value}]})),
        metadata=svc.metadata)
    rich = (await register(svc, profile=pb.Profile(socio_economic_band=tag))).customer
    await _purchase(svc, rich.customer_id, 100)
    await _set_total(svc, rich.customer_id, "EUR", value)
    members = await stub(svc).ListSegmentMembers(pb.ListSegmentMembersRequest(name=name),
                                                 metadata=svc.metadata)
    assert [m.customer_id for m in members.customers] == [rich.customer_id]
    # Purchases still name the segments a stage change leads to.
    c = (await register(svc, profile=pb.Profile(socio_economic_band=tag))).customer
    await _purchase(svc, c.customer_id, 100)
    await _set_total(svc, c.customer_id, "EUR", value)
    again = await _purchase(svc, c.customer_id, 100)
    assert again.stage == pb.STAGE_REPEAT
    history = await stub(svc).GetStageHistory(pb.GetStageHistoryRequest(
        customer_id=c.customer_id), metadata=svc.metadata)
    assert len(history.transitions) == 2


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**30])
async def test_segment_values_beyond_int64_are_invalid_argument(
        svc: Running, value: int) -> None:
    details = await _refused(stub(svc).DefineSegment(pb.DefineSegmentRequest(
        name=f"huge-{uuid.uuid4().hex[:8]}",
        filter_json=f'{{"field": "purchase_count", "op": ">", "value": {value}}}'),
        metadata=svc.metadata))
    assert details.startswith("filter_json.value:"), details


@pytest.mark.parametrize(("request_fields", "field"), [
    ({"churn_window_days": -1}, "churn_window_days"),
    ({"churn_window_days": 2**31 - 1}, "churn_window_days"),
])
async def test_segment_integers_out_of_range_are_invalid_argument(
        svc: Running, request_fields: dict[str, Any], field: str) -> None:
    details = await _refused(stub(svc).DefineSegment(pb.DefineSegmentRequest(
        name=f"w-{uuid.uuid4().hex[:8]}", filter_json='{"field": "at_risk", "op": "=", '
                                                      '"value": true}', **request_fields),
        metadata=svc.metadata))
    assert details.startswith(f"{field}:"), details


@pytest.mark.parametrize("year", [-5, 1, 1899, 2**31 - 1])
async def test_an_absurd_birth_year_is_invalid_argument(svc: Running, year: int) -> None:
    details = await _refused(register(svc, profile=pb.Profile(birth_year=year)))
    assert details.startswith("profile.birth_year:"), details


async def test_absurd_versions_and_page_sizes_are_refused_not_internal(svc: Running) -> None:
    c = (await register(svc)).customer
    details = await _refused(stub(svc).UpdateCustomer(pb.UpdateCustomerRequest(
        customer_id=c.customer_id, expected_version=-1, display_name="x"),
        metadata=svc.metadata))
    assert details.startswith("expected_version:"), details
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub(svc).UpdateCustomer(pb.UpdateCustomerRequest(
            customer_id=c.customer_id, expected_version=2**63 - 1, display_name="x"),
            metadata=svc.metadata)
    assert err.value.code() in (grpc.StatusCode.ABORTED, grpc.StatusCode.INVALID_ARGUMENT)
    details = await _refused(stub(svc).ListCustomers(pb.ListCustomersRequest(
        page_size=-1), metadata=svc.metadata))
    assert details.startswith("page_size:"), details
    # Too large a page is the largest page (clamped), not an error.
    await stub(svc).ListCustomers(pb.ListCustomersRequest(page_size=2**31 - 1),
                                  metadata=svc.metadata)


@pytest.mark.parametrize("field", ["emails", "display_name", "external_ids"])
async def test_a_huge_value_is_refused_with_a_short_error(svc: Running, field: str) -> None:
    """A 10,000-character value: INVALID_ARGUMENT naming the field, with an
    error far below grpcio's 16 KiB trailer limit (never RESOURCE_EXHAUSTED,
    which a client would retry)."""
    huge = "x" * 10_000
    value: Any = [huge] if field != "display_name" else huge
    request = pb.RegisterCustomerRequest(emails=["huge@example.com"])
    if field == "display_name":
        request.display_name = value
    else:
        getattr(request, field)[:] = value
    details = await _refused(stub(svc).RegisterCustomer(request, metadata=svc.metadata))
    assert details.startswith(f"{field}")
    assert "at most 200 characters" in details
    assert len(details) < 300
