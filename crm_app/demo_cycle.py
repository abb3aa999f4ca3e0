"""The demo's service-cycle step: the store defines its service cycle (the
moments of truth of an in-store purchase and what the customer requires at
each), a mystery shopper visits and scores it criterion by criterion, the
demo's customer answers the survey questions of the delivery, and the
scorecard shows customers' and evaluators' scores side by side, the
negative contacts and complaints of each moment, and which requirement to
improve first; an action plan is made for it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from crm.interactions.v1 import interactions_pb2 as ipb
from crm.interactions.v1 import interactions_pb2_grpc

#: The demo's service cycle: defining it again changes nothing.
CYCLE = "demo in-store purchase"


def _req(requirement_id: str, text: str, scale: str = "csat", weight: int = 1,
         channels: tuple[str, ...] = ()) -> ipb.Requirement:
    return ipb.Requirement(requirement_id=requirement_id, text=text, scale=scale,
                           weight=weight, channels=channels)


MOMENTS = [
    ipb.MomentOfTruth(touchpoint="greeting", name="Greeting at the door", weight=2, requirements=[
        _req("greeted-quickly", "being greeted within a minute", channels=("in_person",))]),
    ipb.MomentOfTruth(touchpoint="advice", name="Advice on the sofa", weight=3, requirements=[
        _req("knows-the-product", "an adviser who knows the product", weight=2),
        _req("no-pressure", "advice without pressure to buy", scale="yes_no")]),
    ipb.MomentOfTruth(touchpoint="checkout", name="Paying", weight=2, requirements=[
        _req("fast-payment", "paying without a queue")]),
    ipb.MomentOfTruth(touchpoint="delivery", name="Delivery at home", weight=5, requirements=[
        _req("on-time", "delivery on the promised day", weight=2),
        _req("undamaged", "the sofa arrives undamaged", scale="yes_no", weight=3),
        _req("recommend", "recommending us after the delivery", scale="nps")]),
]

#: The mystery shopper's scores of the store visit (the delivery is not
#: part of a visit): requirement id -> score on its criterion's scale.
VISIT = {"greeted-quickly": 5, "knows-the-product": 4, "no-pressure": 1, "fast-payment": 3}
#: The customer's answers to the delivery's questions.
ANSWERS = {"on-time": 2, "undamaged": 0, "recommend": 6}


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _moment_line(m: ipb.MomentScore) -> str:
    customers = _score(m.customer_score if m.HasField("customer_score") else None)
    evaluators = _score(m.evaluator_score if m.HasField("evaluator_score") else None)
    return (f"customers {customers}, evaluators {evaluators} (of 100); "
            f"{m.negative_contacts} negative contact(s), {m.complaints} complaint(s); "
            f"priority {m.priority:.2f}")


async def service_cycle(stub: interactions_pb2_grpc.InteractionsStub,
                        md: list[tuple[str, str]], customer_id: str, unit: str,
                        run: str) -> dict[str, Any]:
    """Play the step; returns the facts the demo prints."""
    cycle = await stub.DefineServiceCycle(ipb.ServiceCycle(name=CYCLE, moments=MOMENTS),
                                          metadata=md)
    visit = await stub.RecordEvaluation(ipb.RecordEvaluationRequest(
        cycle=CYCLE, version=cycle.version, evaluator="Mystery shopping agency",
        unit=unit, channel="in_person", notes="Visited as a couple looking for a sofa",
        scores=[ipb.CriterionScore(requirement_id=r, score=s) for r, s in VISIT.items()],
        idempotency_key=f"demo-{run}-visit"), metadata=md)
    questions = {r.requirement_id: r.question_id for m in cycle.moments
                 for r in m.requirements}
    await stub.RecordSurveyResponse(ipb.RecordSurveyResponseRequest(
        customer_id=customer_id, touchpoint="delivery", channel="email", unit=unit,
        answers=[ipb.SurveyAnswer(question_id=questions[r], score=s)
                 for r, s in ANSWERS.items()],
        idempotency_key=f"demo-{run}-survey"), metadata=md)
    now = visit.recorded_at.ToDatetime()
    window = ipb.GetServiceCycleScorecardRequest(cycle=CYCLE)
    window.__getattribute__("from").FromDatetime(now - timedelta(days=60))
    card = await stub.GetServiceCycleScorecard(window, metadata=md)
    worst = max(((m, r) for m in card.moments for r in m.requirements),
                key=lambda mr: mr[1].priority)
    due = (now + timedelta(days=14)).date().isoformat()
    plan = await stub.CreateActionPlan(ipb.CreateActionPlanRequest(
        cycle=CYCLE, requirement_id=worst[1].requirement_id, owner="logistics",
        description="Wrap every sofa in a second layer and photograph it before loading",
        due_date=due, source="low_score", idempotency_key=f"demo-{run}-plan"), metadata=md)
    facts: dict[str, Any] = {
        "service cycle": f"{CYCLE} (version {cycle.version}): "
                         + ", ".join(m.name for m in cycle.moments),
        "mystery shopper": f"{visit.score:.0f} of 100 at {unit}",
    }
    for m in card.moments:
        facts[m.name] = _moment_line(m)
    facts["improve first"] = (f"{worst[0].name}: {worst[1].text} "
                              f"(priority {worst[1].priority:.2f})")
    facts["action plan"] = f"{plan.owner}, due {plan.due_date}: {plan.description}"
    if card.unmapped_touchpoints:
        facts["touchpoints no cycle knows"] = ", ".join(
            f"{u.touchpoint} ({u.contacts})" for u in card.unmapped_touchpoints)
    return facts
