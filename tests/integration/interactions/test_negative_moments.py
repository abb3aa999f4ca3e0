"""Negative moments of truth and why customers are dissatisfied: a contact
recorded with outcome negative (over gRPC and on the ingest topic) is a
dissatisfaction signal (reason negative_contact, once per contact); the
dissatisfaction cause of contacts and cases is checked, stored, inherited by
the case a contact opens, carried on the events, and a satisfaction report
groups by it."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import grpc
import pytest

from crm.interactions.v1 import interactions_pb2 as pb
from crm_contracts.interactions import ContactReceived
from crm_contracts.topics import INTERACTIONS_INGEST
from crm_runtime.consumer import dlq_topic
from crm_runtime.events import Envelope
from tests.integration.interactions.conftest import Pair
from tests.integration.interactions.test_interactions_service import (
    _ts,
    api,
    events_of,
    new_customer,
    record,
)
from tests.integration.interactions.test_rpcs_more import _of, _open
from tests.support.kafka import dead_letter, dlq_error, produce_envelopes, wait_for

SIGNAL = "customer.dissatisfaction_signal"


async def _ingest(pair: Pair, customer_id: str, **fields: Any) -> Envelope[ContactReceived]:
    fields.setdefault("idempotency_key", f"pos-{uuid.uuid4().hex[:10]}")
    fields.setdefault("channel", "in_person")
    fields.setdefault("kind", "inquiry")
    env = Envelope(data=ContactReceived(customer_id=customer_id,
                                        occurred_at=pair.clock.now(), **fields),
                   subject=customer_id, source="/pos")
    await produce_envelopes(pair.bootstrap, [env])
    return env


async def test_a_negative_contact_is_a_signal_once(pair: Pair) -> None:
    cid = await new_customer(pair)
    key = f"call-{uuid.uuid4().hex[:8]}"
    bad = await record(pair, customer_id=cid, idempotency_key=key, channel="phone",
                       outcome="negative", touchpoint="delivery", cause="slow_delivery",
                       occurred_at=_ts(pair.clock.now()))
    assert bad.cause == "slow_delivery" and bad.outcome == "negative"
    again = await record(pair, customer_id=cid, idempotency_key=key, channel="phone",
                         outcome="negative", touchpoint="delivery", cause="slow_delivery",
                         occurred_at=bad.occurred_at)
    assert again.interaction_id == bad.interaction_id
    # A marker after the retry: on the customer's partition it comes after
    # anything the retry could have published.
    await record(pair, customer_id=cid, kind="inquiry")
    found = await events_of(pair, cid, 3)
    recorded = _of(found, "interaction.recorded")
    assert len(recorded) == 2 and recorded[0]["cause"] == "slow_delivery"
    assert recorded[0]["outcome"] == "negative" and recorded[1]["cause"] == ""
    assert _of(found, SIGNAL) == [{
        "customer_id": cid, "reason": "negative_contact", "occurred_at": recorded[0]["occurred_at"],
        "score": None, "interaction_id": bad.interaction_id, "case_id": "",
        "cause": "slow_delivery", "touchpoint": "delivery"}]
    assert [t for t, _ in found] == ["interaction.recorded", SIGNAL, "interaction.recorded"]


async def test_a_negative_contact_without_a_cause_is_a_signal_too(pair: Pair) -> None:
    cid = await new_customer(pair)
    bad = await record(pair, customer_id=cid, outcome="negative", touchpoint="till")
    [signal] = _of(await events_of(pair, cid, 2), SIGNAL)
    assert (signal["interaction_id"], signal["cause"], signal["touchpoint"]) == (
        bad.interaction_id, "", "till")


async def test_a_negative_repeated_complaint_is_both_signals_and_its_case_inherits(
        pair: Pair) -> None:
    cid = await new_customer(pair)
    first = await record(pair, customer_id=cid, kind="complaint", channel="phone",
                         touchpoint="checkout", cause="price_felt_high")
    second = await record(pair, customer_id=cid, kind="complaint", channel="phone",
                          outcome="negative", touchpoint="returns", cause="return")
    assert first.case_id and second.case_id
    cases = {c.case_id: c for c in (await api(pair).ListCases(pb.ListCasesRequest(
        filter="all", customer_id=cid), metadata=pair.interactions.metadata)).cases}
    assert (cases[first.case_id].cause, cases[first.case_id].touchpoint) == (
        "price_felt_high", "checkout")
    assert (cases[second.case_id].cause, cases[second.case_id].touchpoint) == (
        "return", "returns")
    found = await events_of(pair, cid, 6)
    opened = {d["case_id"]: d for d in _of(found, "case.opened")}
    assert (opened[second.case_id]["cause"], opened[second.case_id]["touchpoint"]) == (
        "return", "returns")
    signals = sorted((d["reason"], d["interaction_id"], d["case_id"], d["cause"],
                      d["touchpoint"]) for d in _of(found, SIGNAL))
    assert signals == [("negative_contact", second.interaction_id, "", "return", "returns"),
                       ("repeated_complaint", "", second.case_id, "return", "returns")]


@pytest.mark.parametrize(("fields", "problem"), [
    ({"outcome": "negative", "cause": "rude_staff"}, "'rude_staff' is not one of"),
    ({"outcome": "neutral", "cause": "return"},
     "only a negative contact or a complaint has a dissatisfaction cause"),
    ({"outcome": "positive", "kind": "purchase", "cause": "return",
      "amount": pb.Money(amount_minor=100, currency="EUR")},
     "only a negative contact or a complaint has a dissatisfaction cause"),
])
async def test_a_bad_cause_is_invalid_argument(pair: Pair, fields: dict[str, Any],
                                               problem: str) -> None:
    cid = await new_customer(pair)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await record(pair, customer_id=cid, **fields)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(f"cause: {problem}")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _open(pair, cid, cause="rude_staff")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("cause: 'rude_staff' is not one of")


async def test_the_cause_is_part_of_the_contacts_request(pair: Pair) -> None:
    cid = await new_customer(pair)
    key = f"web-{uuid.uuid4().hex[:8]}"
    at = _ts(pair.clock.now())
    await record(pair, customer_id=cid, idempotency_key=key, outcome="negative",
                 occurred_at=at)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await record(pair, customer_id=cid, idempotency_key=key, outcome="negative",
                     cause="bad_treatment", occurred_at=at)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "(cause differs)" in (err.value.details() or "")


async def test_ingest_negative_contacts_signal_and_bad_causes_are_dead_lettered(
        pair: Pair) -> None:
    cid = await new_customer(pair)
    rude = await _ingest(pair, cid, outcome="negative", cause="rude")
    neutral = await _ingest(pair, cid, cause="product_failure")
    await _ingest(pair, cid, outcome="negative", kind="support", touchpoint="repair-desk",
                  cause="product_failure")
    for env, reason in ((rude, "cause: 'rude' is not one of"),
                        (neutral, "cause: only a negative contact or a complaint")):
        letter = await dead_letter(pair.bootstrap, dlq_topic(INTERACTIONS_INGEST), env.id)
        kind, why = dlq_error(letter)
        assert kind == "invalid_contact" and why.startswith(reason)
    found = await events_of(pair, cid, 3)  # recorded, signal, case.opened
    [recorded] = _of(found, "interaction.recorded")
    assert (recorded["outcome"], recorded["cause"]) == ("negative", "product_failure")
    [signal] = _of(found, SIGNAL)
    assert (signal["reason"], signal["interaction_id"], signal["cause"],
            signal["touchpoint"]) == ("negative_contact", recorded["interaction_id"],
                                      "product_failure", "repair-desk")
    [opened] = _of(found, "case.opened")
    assert (opened["cause"], opened["touchpoint"]) == ("product_failure", "repair-desk")


async def test_open_case_takes_a_cause_and_the_contacts_touchpoint(pair: Pair) -> None:
    cid = await new_customer(pair)
    contact = await record(pair, customer_id=cid, kind="inquiry", outcome="negative",
                           touchpoint="payment", cause="no_answer_after_paying")
    inherited = await _open(pair, cid, interaction_id=contact.interaction_id)
    assert (inherited.cause, inherited.touchpoint) == ("no_answer_after_paying", "payment")
    stated = await _open(pair, cid, interaction_id=contact.interaction_id, cause="return",
                         touchpoint="returns-desk", idempotency_key="case-stated-" + cid)
    assert (stated.cause, stated.touchpoint) == ("return", "returns-desk")
    again = await _open(pair, cid, interaction_id=contact.interaction_id, cause="return",
                        touchpoint="returns-desk", idempotency_key="case-stated-" + cid)
    assert again.case_id == stated.case_id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _open(pair, cid, interaction_id=contact.interaction_id, cause="bad_treatment",
                    touchpoint="returns-desk", idempotency_key="case-stated-" + cid)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "(cause differs)" in (err.value.details() or "")
    plain = await _open(pair, cid)
    assert (plain.cause, plain.touchpoint) == ("", "")


async def test_a_breached_promise_signal_names_the_cases_cause(pair: Pair) -> None:
    cid = await new_customer(pair)
    case = await _open(pair, cid, kind="complaint", channel="phone", cause="bad_treatment",
                       touchpoint="front-desk")
    pair.clock.advance(timedelta(hours=49))  # past the 48 h of a complaint
    signals: list[dict[str, Any]] = []

    async def breached() -> bool:
        signals[:] = [d for d in _of(await events_of(pair, cid, 1), SIGNAL)
                      if d["reason"] == "breached_promise"]
        return bool(signals)

    await wait_for(breached, what="the breached promise's signal")
    [signal] = signals
    assert (signal["case_id"], signal["cause"], signal["touchpoint"]) == (
        case.case_id, "bad_treatment", "front-desk")


async def test_the_report_by_cause(pair: Pair) -> None:
    """Contacts and cases counted under their cause; what states none is in
    no row."""
    pair.clock.advance(timedelta(minutes=1))  # a window of this test's own
    since = pair.clock.now()
    cid = await new_customer(pair)
    await record(pair, customer_id=cid, outcome="negative", cause="slow_delivery")
    await record(pair, customer_id=cid, outcome="negative", cause="slow_delivery")
    await record(pair, customer_id=cid, kind="complaint", cause="slow_delivery")  # a case
    await record(pair, customer_id=cid, kind="complaint", outcome="negative",
                 cause="price_felt_high")  # a case
    await record(pair, customer_id=cid, outcome="negative")  # no cause
    await record(pair, customer_id=cid)
    await _open(pair, cid, cause="product_failure")
    pair.clock.advance(timedelta(minutes=1))
    request = pb.GetSatisfactionReportRequest(group_by="cause", to=_ts(pair.clock.now()))
    getattr(request, "from").CopyFrom(_ts(since))
    report = await api(pair).GetSatisfactionReport(request, metadata=pair.interactions.metadata)
    rows = {r.key: (r.contacts, r.negative_contacts, r.cases_opened) for r in report.rows}
    assert rows == {"slow_delivery": (3, 2, 1), "price_felt_high": (1, 1, 1),
                    "product_failure": (0, 0, 1)}
    by_touchpoint = await api(pair).GetSatisfactionReport(pb.GetSatisfactionReportRequest(
        to=_ts(pair.clock.now()), **{"from": _ts(since)}), metadata=pair.interactions.metadata)
    [everything] = by_touchpoint.rows
    assert (everything.key, everything.contacts, everything.negative_contacts,
            everything.cases_opened) == ("", 6, 4, 3)
