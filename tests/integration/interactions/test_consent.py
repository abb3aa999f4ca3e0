"""The customer's consent as the interactions service learns it from
``customer.consent_changed``, and the contacts it stops: survey requests
after a resolution and proactive contacts, recorded in
``suppressed_contacts`` and published as ``contact.suppressed`` (real
PostgreSQL, real broker, the customers service beside)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import grpc
import pytest

from crm.customers.v1 import customers_pb2 as cpb
from crm.interactions.v1 import interactions_pb2 as pb
from crm_contracts.customers import CustomerRegistered
from crm_contracts.interactions import ContactReceived
from crm_runtime.events import Envelope
from tests.integration.interactions.conftest import Pair
from tests.integration.interactions.test_interactions_service import (
    api,
    consent,
    customers,
    events_of,
    new_customer,
    record,
)
from tests.support.kafka import produce_envelopes, wait_for


def _of(events: list[tuple[str, dict[str, Any]]], event_type: str) -> list[dict[str, Any]]:
    return [d for t, d in events if t == event_type]


async def _view(pair: Pair, customer_id: str) -> Any:
    return await pair.pool.fetchrow("SELECT * FROM known_customers WHERE customer_id = $1",
                                      uuid.UUID(customer_id))


async def _view_until(pair: Pair, customer_id: str, column: str, value: object) -> None:
    async def there() -> bool:
        row = await _view(pair, customer_id)
        return row is not None and row[column] == value

    await wait_for(there, what=f"{column} = {value!r} for {customer_id}")


async def _resolved_case(pair: Pair, customer_id: str) -> str:
    """A support case of the customer, opened and resolved; its id."""
    case = await api(pair).OpenCase(pb.OpenCaseRequest(
        customer_id=customer_id, kind="support", channel="chat", unit="helpdesk",
        idempotency_key=str(uuid.uuid4())), metadata=pair.interactions.metadata)
    await api(pair).ResolveCase(pb.ResolveCaseRequest(case_id=case.case_id, resolution="done"),
                                metadata=pair.interactions.metadata)
    return str(case.case_id)


async def _suppressed_rows(pair: Pair, customer_id: str) -> list[Any]:
    return list(await pair.pool.fetch(
        "SELECT * FROM suppressed_contacts WHERE customer_id = $1 ORDER BY at",
        uuid.UUID(customer_id)))


# --- survey requests ----------------------------------------------------------

async def test_a_customer_without_surveys_consent_is_not_asked_for_a_survey(
        pair: Pair) -> None:
    cid = str(uuid.uuid4())
    await produce_envelopes(pair.bootstrap, [Envelope(data=CustomerRegistered(
        customer_id=cid, stage="potential", time_zone="Europe/Madrid"), subject=cid,
        source="/crm/customers")])
    await _view_until(pair, cid, "time_zone", "Europe/Madrid")  # registered, no consent
    case_id = await _resolved_case(pair, cid)

    found = await events_of(pair, cid, 3)
    assert [t for t, _ in found] == ["case.opened", "case.resolved", "contact.suppressed"]
    [event] = _of(found, "contact.suppressed")
    assert (event["contact_type"], event["purpose"], event["reason"], event["case_id"]) == (
        "survey_request", "surveys", "no_surveys_consent", case_id)
    [row] = await _suppressed_rows(pair, cid)
    assert (str(row["contact_id"]), row["contact_type"], row["reason"], str(row["case_id"])) == (
        event["contact_id"], "survey_request", "no_surveys_consent", case_id)
    assert row["at"] == pair.clock.now()


async def test_surveys_consent_granted_through_the_customers_service_allows_a_survey(
        pair: Pair) -> None:
    cid = await new_customer(pair)
    await customers(pair).SetConsent(cpb.SetConsentRequest(
        customer_id=cid, purpose="surveys", granted=True, source="web_form"),
        metadata=pair.customers.metadata)
    await _view_until(pair, cid, "surveys_consent", True)
    case_id = await _resolved_case(pair, cid)

    found = await events_of(pair, cid, 3)
    assert [t for t, _ in found] == ["case.opened", "case.resolved", "survey.requested"]
    assert [d["case_id"] for d in _of(found, "survey.requested")] == [case_id]
    assert await _suppressed_rows(pair, cid) == []


async def test_do_not_contact_suppresses_the_survey_even_with_consent(pair: Pair) -> None:
    cid = await new_customer(pair)
    await consent(pair, cid)
    await consent(pair, cid, "do_not_contact", at=pair.clock.now() + timedelta(seconds=1))
    case_id = await _resolved_case(pair, cid)

    found = await events_of(pair, cid, 3)
    assert "survey.requested" not in [t for t, _ in found]
    [event] = _of(found, "contact.suppressed")
    assert (event["reason"], event["case_id"]) == ("do_not_contact", case_id)


async def test_an_older_grant_arriving_after_a_newer_withdrawal_does_not_restore_consent(
        pair: Pair) -> None:
    cid = await new_customer(pair)
    now = pair.clock.now()
    await consent(pair, cid, granted=True, at=now - timedelta(hours=3))
    await consent(pair, cid, granted=False, at=now - timedelta(hours=1))
    # Decided between the two, published late (a replayed dead letter).
    await consent(pair, cid, granted=True, at=now - timedelta(hours=2))
    row = await _view(pair, cid)
    assert (row["surveys_consent"], row["surveys_consent_at"]) == (False,
                                                                   now - timedelta(hours=1))
    await _resolved_case(pair, cid)
    found = await events_of(pair, cid, 3)
    assert [d["reason"] for d in _of(found, "contact.suppressed")] == ["no_surveys_consent"]
    assert _of(found, "survey.requested") == []

    # A newer grant does.
    await consent(pair, cid, granted=True, at=now)
    await _resolved_case(pair, cid)
    found = await events_of(pair, cid, 6)
    assert len(_of(found, "survey.requested")) == 1


async def test_consent_of_a_customer_not_heard_of_yet_is_kept(pair: Pair) -> None:
    """The registration may be late or dead-lettered: the decision is kept,
    and purposes this service does not use still make the customer known."""
    cid, other = str(uuid.uuid4()), str(uuid.uuid4())
    await consent(pair, cid, "do_not_contact")
    await consent(pair, other, "newsletter")
    row = await _view(pair, cid)
    assert row is not None and row["do_not_contact"] and not row["surveys_consent"]
    row = await _view(pair, other)
    assert row is not None and not row["do_not_contact"] and row["do_not_contact_at"] is None


async def test_an_erased_customer_is_never_asked_again_whatever_comes_later(
        pair: Pair) -> None:
    cid = await new_customer(pair)
    await consent(pair, cid)
    case = await api(pair).OpenCase(pb.OpenCaseRequest(
        customer_id=cid, kind="support", channel="web", idempotency_key=str(uuid.uuid4())),
        metadata=pair.interactions.metadata)
    await customers(pair).EraseCustomer(cpb.EraseCustomerRequest(customer_id=cid),
                                        metadata=pair.customers.metadata)
    await _view_until(pair, cid, "do_not_contact", True)
    # A grant decided later (a replay, or a bug elsewhere) changes nothing.
    await consent(pair, cid, at=pair.clock.now() + timedelta(days=1))
    await consent(pair, cid, "do_not_contact", granted=False,
                  at=pair.clock.now() + timedelta(days=1))
    row = await _view(pair, cid)
    assert row["erased_at"] is not None and row["do_not_contact"]
    assert not row["surveys_consent"]
    await api(pair).ResolveCase(pb.ResolveCaseRequest(case_id=case.case_id, resolution="done"),
                                metadata=pair.interactions.metadata)
    found = await events_of(pair, cid, 3)
    assert [d["reason"] for d in _of(found, "contact.suppressed")] == ["erased"]


async def test_a_merge_keeps_do_not_contact_of_the_merged_customer(pair: Pair) -> None:
    survivor, other = await new_customer(pair), await new_customer(pair)
    await consent(pair, survivor)
    await consent(pair, other, "do_not_contact")
    await customers(pair).MergeCustomers(cpb.MergeCustomersRequest(
        survivor_customer_id=survivor, merged_customer_id=other),
        metadata=pair.customers.metadata)
    await _view_until(pair, survivor, "do_not_contact", True)
    assert await _view(pair, other) is None  # known through the alias only
    row = await _view(pair, survivor)
    assert row["surveys_consent"]  # the survivor's, the merged one never decided
    await _resolved_case(pair, survivor)
    found = await events_of(pair, survivor, 3)
    assert [d["reason"] for d in _of(found, "contact.suppressed")] == ["do_not_contact"]


# --- proactive contacts ---------------------------------------------------------

async def test_a_proactive_contact_to_a_do_not_contact_customer_is_refused_and_recorded(
        pair: Pair) -> None:
    cid = await new_customer(pair)
    await consent(pair, cid, "do_not_contact")
    key = f"call-{uuid.uuid4().hex[:8]}"
    for _ in range(2):  # a retry is refused alike, and recorded once
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await record(pair, customer_id=cid, channel="phone", direction="proactive",
                         kind="follow_up", idempotency_key=key, agent="ana")
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.value.details() == (f"customer {cid} may not be contacted proactively: "
                                       "do_not_contact")
    [row] = await _suppressed_rows(pair, cid)
    assert (row["contact_type"], row["purpose"], row["reason"]) == (
        "proactive_contact", "service", "do_not_contact")
    assert await pair.pool.fetchval(
        "SELECT count(*) FROM interactions WHERE customer_id = $1", uuid.UUID(cid)) == 0

    # The customer calling us is recorded as always.
    reactive = await record(pair, customer_id=cid, channel="phone", kind="inquiry")
    found = await events_of(pair, cid, 2)
    assert [t for t, _ in found] == ["contact.suppressed", "interaction.recorded"]
    [event] = _of(found, "contact.suppressed")
    assert (event["contact_id"], event["contact_type"], event["reason"]) == (
        str(row["contact_id"]), "proactive_contact", "do_not_contact")
    assert [d["interaction_id"] for d in _of(found, "interaction.recorded")] == [
        reactive.interaction_id]


async def test_a_proactive_contact_on_ingest_is_suppressed_not_dead_lettered(
        pair: Pair) -> None:
    refusing, willing = await new_customer(pair), await new_customer(pair)
    await consent(pair, refusing, "do_not_contact")
    at = pair.clock.now()
    stopped, allowed, answered = (
        Envelope(data=ContactReceived(
            idempotency_key=f"out-{uuid.uuid4().hex[:8]}", customer_id=customer, channel="phone",
            direction=direction, kind="follow_up", occurred_at=at),
            subject=customer, source="/test/dialer")
        for customer, direction in ((refusing, "proactive"), (willing, "proactive"),
                                    (refusing, "reactive")))
    await produce_envelopes(pair.bootstrap, [stopped, allowed, answered])

    async def applied() -> bool:  # a dead-lettered event leaves the inbox
        return bool(await pair.pool.fetchval(
            "SELECT count(*) FROM inbox WHERE event_id = ANY($1::text[])",
            [stopped.id, allowed.id, answered.id]) == 3)

    await wait_for(applied, what="the three contacts applied")
    [row] = await _suppressed_rows(pair, refusing)
    assert (row["contact_type"], row["reason"]) == ("proactive_contact", "do_not_contact")
    stored = await pair.pool.fetch(
        "SELECT customer_id, direction FROM interactions WHERE customer_id = ANY($1::uuid[])",
        [uuid.UUID(refusing), uuid.UUID(willing)])
    assert sorted((str(r["customer_id"]), r["direction"]) for r in stored) == sorted([
        (refusing, "reactive"), (willing, "proactive")])
    found = await events_of(pair, refusing, 2)
    assert [t for t, _ in found] == ["contact.suppressed", "interaction.recorded"]
