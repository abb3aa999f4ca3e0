"""The service-cycle scorecard over the real service: customers' answers to
the matrix questions (of any version), mystery shoppers' scores, contacts,
negative contacts and complaints at each moment, the action plans and how
many are overdue, by unit and channel and window; the touchpoints no
cycle knows; and the gauges of scores and overdue plans."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from crm.interactions.v1 import interactions_pb2 as pb
from services.interactions import scorecard
from tests.integration.interactions.conftest import Pair
from tests.integration.interactions.test_action_plans import create, today, update
from tests.integration.interactions.test_interactions_service import (
    _samples,
    api,
    new_customer,
    record,
)
from tests.integration.interactions.test_mystery_shopping import (
    MOMENTS,
    define_cycle,
    evaluate,
    refused,
    stamp,
)
from tests.support.kafka import wait_for


async def answer(pair: Pair, customer_id: str, questions: dict[str, str], unit: str,
                 channel: str, at: datetime, **scores: int) -> None:
    """A survey response answering matrix questions (requirement id -> score)."""
    await api(pair).RecordSurveyResponse(pb.RecordSurveyResponseRequest(
        customer_id=customer_id, touchpoint="greeting", channel=channel, unit=unit,
        occurred_at=stamp(at), idempotency_key=str(uuid.uuid4()),
        answers=[pb.SurveyAnswer(question_id=questions[rid], score=score)
                 for rid, score in scores.items()]), metadata=pair.interactions.metadata)


def questions_of(cycle: pb.ServiceCycle) -> dict[str, str]:
    return {r.requirement_id: r.question_id for m in cycle.moments for r in m.requirements}


async def card(pair: Pair, cycle: str, **fields: Any) -> pb.ServiceCycleScorecard:
    reply: pb.ServiceCycleScorecard = await api(pair).GetServiceCycleScorecard(
        pb.GetServiceCycleScorecardRequest(cycle=cycle, **fields),
        metadata=pair.interactions.metadata)
    return reply


def scores(c: pb.ServiceCycleScorecard) -> dict[str, tuple[Any, ...]]:
    """requirement id -> (customers' score, answers, evaluators' score,
    scores, gap), an unset score as None."""
    def opt(message: Any, field: str) -> float | None:
        return getattr(message, field) if message.HasField(field) else None

    return {r.requirement_id: (opt(r, "customer_score"), r.customer_answers,
                               opt(r, "evaluator_score"), r.evaluator_scores, opt(r, "gap"))
            for m in c.moments for r in m.requirements}


def moment(c: pb.ServiceCycleScorecard, touchpoint: str) -> pb.MomentScore:
    (found,) = [m for m in c.moments if m.touchpoint == touchpoint]
    return found


async def test_the_scorecard_of_a_cycle(pair: Pair) -> None:
    first = await define_cycle(pair)
    name = first.name
    unit, unit2 = f"shop-{uuid.uuid4().hex[:8]}", f"shop-{uuid.uuid4().hex[:8]}"
    cid = await new_customer(pair)
    now = pair.clock.now()
    at = now - timedelta(minutes=5)
    # Customers: answers to the first version's questions and, after the
    # matrix changed, to the second's (the same requirement ids).
    q1 = questions_of(first)
    await answer(pair, cid, q1, unit, "in_person", at, smile=1, fast=4, recommend=8)
    await answer(pair, cid, q1, unit, "phone", at, smile=0)
    await answer(pair, cid, q1, unit2, "in_person", at, smile=0)
    await answer(pair, cid, q1, unit, "in_person", now - timedelta(days=40), smile=0)
    changed = [{**MOMENTS[0], "requirements": [
        {**MOMENTS[0]["requirements"][0], "text": "Smiles warmly"},
        MOMENTS[0]["requirements"][1]]}, *MOMENTS[1:]]
    second = await define_cycle(pair, changed, name=name)
    assert second.version == 2
    await answer(pair, cid, questions_of(second), unit, "in_person", at, smile=1)
    # Mystery shoppers.
    await evaluate(pair, name, unit=unit, channel="in_person", visited_at=stamp(at), scores=[
        pb.CriterionScore(requirement_id="smile", score=1),
        pb.CriterionScore(requirement_id="fast", score=2)])
    await evaluate(pair, name, unit=unit, channel="phone", visited_at=stamp(at),
                   scores=[pb.CriterionScore(requirement_id="smile", score=0)])
    # Contacts at the greeting: one neutral, one negative, one complaint
    # (its case counts once), and a complaint case opened without a contact.
    for fields in ({"kind": "inquiry"}, {"kind": "inquiry", "outcome": "negative"},
                   {"kind": "complaint", "channel": "phone"}):
        await record(pair, customer_id=cid, unit=unit, touchpoint="greeting",
                     occurred_at=stamp(at), **{"channel": "in_person", **fields})
    await api(pair).OpenCase(pb.OpenCaseRequest(
        customer_id=cid, kind="complaint", channel="in_person", unit=unit,
        touchpoint="greeting", idempotency_key=str(uuid.uuid4())),
        metadata=pair.interactions.metadata)
    # Touchpoints no cycle knows.
    lost, pickup = f"lost-{uuid.uuid4().hex[:6]}", f"pickup-{uuid.uuid4().hex[:6]}"
    for tp in (lost, pickup, pickup):
        await record(pair, customer_id=cid, unit=unit, touchpoint=tp, occurred_at=stamp(at))
    # Plans: one due tomorrow (overdue in two days), one of a whole moment,
    # one done (shown: done in the window), one dropped long ago is not shown.
    tomorrow = (today(pair) + timedelta(days=1)).isoformat()
    late = await create(pair, name, requirement_id="smile", due_date=tomorrow)
    whole = await create(pair, name, touchpoint="farewell",
                         due_date=(today(pair) + timedelta(days=20)).isoformat())
    done = await update(pair, (await create(pair, name, requirement_id="recommend"))
                        .action_plan_id, state="done")
    pair.clock.advance(timedelta(days=2))

    c = await card(pair, name, unit=unit)
    assert (c.cycle, c.version, c.unit, c.channel) == (name, 2, unit, "")
    # The window ends just after now (what is stamped now counts), 30 days long.
    end = pair.clock.now() + timedelta(microseconds=1)
    assert c.to == stamp(end)
    assert getattr(c, "from") == stamp(end - timedelta(days=30))
    assert c.priority_formula == scorecard.PRIORITY_FORMULA
    assert [m.touchpoint for m in c.moments] == ["greeting", "checkout", "farewell"]
    assert moment(c, "greeting").requirements[0].text == "Smiles warmly"
    assert scores(c) == {"smile": (66.67, 3, 50.0, 2, 16.67),
                         "fast": (75.0, 1, 25.0, 1, 50.0),
                         "recommend": (80.0, 1, None, 0, None)}
    greeting = moment(c, "greeting")
    assert (greeting.customer_score, greeting.evaluator_score, greeting.gap) == (
        69.44, 41.67, 27.78)  # weighted 2:1: 25/36 and 5/12
    assert (greeting.customer_answers, greeting.evaluator_scores) == (4, 3)
    assert (greeting.contacts, greeting.negative_contacts, greeting.complaints) == (3, 1, 2)
    smile, fast = greeting.requirements
    # reach: 3 answers + 1 negative contact + 2 complaints; shortfall 1 - (2/3 + 1/2) / 2
    assert smile.priority == round(3 * 2 * (5 / 12) * (1 + math.log10(7)), 2)
    assert fast.priority == round(3 * 1 * 0.5 * (1 + math.log10(5)), 2)
    assert greeting.priority == smile.priority
    checkout = moment(c, "checkout")
    assert checkout.priority == round(1 * 3 * 0.2 * (1 + math.log10(2)), 2)
    assert not checkout.HasField("evaluator_score") and not checkout.HasField("gap")
    assert moment(c, "farewell").priority == 0
    # Plans and overdue counts.
    assert [(p.action_plan_id, p.overdue) for p in smile.action_plans] == [
        (late.action_plan_id, True)]
    assert (smile.overdue_action_plans, greeting.overdue_action_plans) == (1, 1)
    assert [p.action_plan_id for p in checkout.requirements[0].action_plans] == [
        done.action_plan_id]
    assert [p.action_plan_id for p in moment(c, "farewell").action_plans] == [
        whole.action_plan_id]
    assert checkout.overdue_action_plans == 0
    assert [(u.touchpoint, u.contacts) for u in c.unmapped_touchpoints] == [
        (pickup, 2), (lost, 1)]

    # By channel.
    in_person = await card(pair, name, unit=unit, channel="in_person")
    assert scores(in_person)["smile"] == (100.0, 2, 100.0, 1, 0.0)
    g = moment(in_person, "greeting")
    assert (g.contacts, g.negative_contacts, g.complaints) == (2, 1, 1)
    # By unit; an old version reads the same requirements.
    other = await card(pair, name, unit=unit2)
    assert scores(other)["smile"] == (0.0, 1, None, 0, None)
    assert moment(other, "greeting").contacts == 0
    v1 = await card(pair, name, unit=unit, version=1)
    assert v1.version == 1 and scores(v1) == scores(c)
    assert moment(v1, "greeting").requirements[0].text == "Smiles"
    # A window of its own: the answer of 40 days ago alone.
    old = await card(pair, name, unit=unit, **{
        "from": stamp(now - timedelta(days=41)), "to": stamp(now - timedelta(days=39))})
    assert scores(old)["smile"] == (0.0, 1, None, 0, None)
    assert [m.contacts for m in old.moments] == [0, 0, 0] and not old.unmapped_touchpoints
    # Every unit: at least what the one unit has.
    everywhere = await card(pair, name)
    assert scores(everywhere)["smile"][1] == 4

    # The gauges: every unit, the trailing 30 days, the latest version.
    def gauge(metric: str, **labels: str) -> float | None:
        key = tuple(sorted({"service": "interactions", **labels}.items()))
        return _samples(metric).get(key)

    async def fresh() -> bool:
        return gauge("crm_action_plans_overdue", cycle=name) == 1 and gauge(
            "crm_service_cycle_score", cycle=name, touchpoint="checkout",
            source="customers") is not None

    await wait_for(fresh, what="quality gauges refreshed")
    # smile: 1, 0, 0 (the other unit), 1; fast 0.75; weighted 2:1.
    assert gauge("crm_service_cycle_score", cycle=name, touchpoint="greeting",
                 source="customers") == pytest.approx(100 * (2 * 0.5 + 0.75) / 3, abs=0.01)
    assert gauge("crm_service_cycle_score", cycle=name, touchpoint="greeting",
                 source="evaluators") == pytest.approx(41.67)
    assert gauge("crm_service_cycle_score", cycle=name, touchpoint="checkout",
                 source="customers") == pytest.approx(80.0)
    assert gauge("crm_service_cycle_score", cycle=name, touchpoint="checkout",
                 source="evaluators") is None
    await update(pair, late.action_plan_id, state="dropped")

    async def cleared() -> bool:
        return gauge("crm_action_plans_overdue", cycle=name) == 0

    await wait_for(cleared, what="overdue plans gauge back to 0")


async def test_a_cycle_with_nothing_measured(pair: Pair) -> None:
    name = (await define_cycle(pair)).name
    c = await card(pair, name, unit=f"shop-{uuid.uuid4().hex[:8]}")
    assert scores(c) == {"smile": (None, 0, None, 0, None), "fast": (None, 0, None, 0, None),
                         "recommend": (None, 0, None, 0, None)}
    assert [m.priority for m in c.moments] == [0, 0, 0]
    assert not c.unmapped_touchpoints


async def test_bad_scorecard_requests_are_refused(pair: Pair) -> None:
    name = (await define_cycle(pair)).name
    now = pair.clock.now()
    await refused(card(pair, ""), grpc.StatusCode.INVALID_ARGUMENT, "cycle")
    await refused(card(pair, "no-such-" + uuid.uuid4().hex), grpc.StatusCode.NOT_FOUND)
    await refused(card(pair, name, version=5), grpc.StatusCode.NOT_FOUND)
    await refused(card(pair, name, channel="pigeon"), grpc.StatusCode.INVALID_ARGUMENT,
                  "channel")
    await refused(card(pair, name, **{"from": stamp(now), "to": stamp(now)}),
                  grpc.StatusCode.INVALID_ARGUMENT, "from")
    await refused(card(pair, name, **{"to": stamp(datetime(2000, 1, 1, tzinfo=UTC)),
                                      "from": stamp(now)}),
                  grpc.StatusCode.INVALID_ARGUMENT, "from")
