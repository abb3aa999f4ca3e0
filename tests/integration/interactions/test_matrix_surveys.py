"""Surveys from the service-cycle matrix over the running interactions
service: the questions a resolved case's survey request carries, answers
naming them, and a cycle's periodic survey of a segment, run on the
scheduler's clock."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import grpc
import pytest

from crm.customers.v1 import customers_pb2 as cpb
from crm.interactions.v1 import interactions_pb2 as pb
from crm_contracts.customers import SegmentEntered
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
from tests.integration.interactions.test_rpcs_more import _of
from tests.support.kafka import produce_envelopes, wait_for


def _key() -> str:
    """A touchpoint no other test names."""
    return f"t{uuid.uuid4().hex[:12]}"


async def _define(pair: Pair, name: str, *moments: pb.MomentOfTruth,
                  **fields: Any) -> pb.ServiceCycle:
    reply: pb.ServiceCycle = await api(pair).DefineServiceCycle(pb.ServiceCycle(
        name=name, moments=list(moments), **fields), metadata=pair.interactions.metadata)
    return reply


def _matrix(touchpoint: str) -> pb.MomentOfTruth:
    return pb.MomentOfTruth(touchpoint=touchpoint, requirements=[
        pb.Requirement(requirement_id="speed", text="a quick answer"),
        pb.Requirement(requirement_id="voice", text="a kind voice", channels=["phone"]),
        pb.Requirement(requirement_id="solved", text="solved at once", scale="yes_no",
                       channels=["chat", "email"]),
        pb.Requirement(requirement_id="recommend", text="the help", scale="nps")])


async def _survey(pair: Pair, customer_id: str, *answers: pb.SurveyAnswer,
                  key: str = "") -> pb.SurveyResponse:
    reply: pb.SurveyResponse = await api(pair).RecordSurveyResponse(
        pb.RecordSurveyResponseRequest(
            customer_id=customer_id, channel="chat", unit="helpdesk",
            idempotency_key=key or str(uuid.uuid4()), answers=list(answers)),
        metadata=pair.interactions.metadata)
    return reply


async def _asked(pair: Pair, customer_id: str, event_type: str = "survey.requested",
                 count: int = 1) -> list[dict[str, Any]]:
    """The customer's events of that type, once there are ``count``."""
    found: list[dict[str, Any]] = []

    async def there() -> bool:
        found[:] = _of(await events_of(pair, customer_id, 0), event_type)
        return len(found) >= count

    await wait_for(there, what=f"{count} {event_type} of {customer_id}")
    return found


# --- a resolved case's survey -------------------------------------------------------

async def test_a_resolved_case_is_asked_the_questions_of_its_touchpoint(pair: Pair) -> None:
    touchpoint, name = _key(), f"support-{uuid.uuid4().hex[:8]}"
    cycle = await _define(pair, name, _matrix(touchpoint))
    other = await _define(pair, f"other-{uuid.uuid4().hex[:8]}", pb.MomentOfTruth(
        touchpoint=touchpoint, requirements=[pb.Requirement(requirement_id="x", text="tea")]))
    cid = await new_customer(pair)
    await consent(pair, cid)
    # The touchpoint is the contact's: the case opened from it names it too.
    contact = await record(pair, customer_id=cid, channel="chat", kind="complaint",
                           touchpoint=touchpoint)
    await api(pair).ResolveCase(pb.ResolveCaseRequest(case_id=contact.case_id, resolution="ok"),
                                metadata=pair.interactions.metadata)
    [asked] = await _asked(pair, cid)
    assert (asked["reason"], asked["touchpoint"], asked["channel"], asked["case_id"],
            asked["interaction_id"]) == ("case_resolved", touchpoint, "chat", contact.case_id,
                                         contact.interaction_id)
    ids = {r.requirement_id: r.question_id for r in cycle.moments[0].requirements}
    # Every active cycle's moment of that key, the requirements on chat only.
    assert [(q["cycle"], q["cycle_version"], q["requirement_id"], q["scale"], q["question_id"])
            for q in asked["questions"]] == sorted([
        (name, 1, "speed", "csat", ids["speed"]), (name, 1, "solved", "yes_no", ids["solved"]),
        (name, 1, "recommend", "nps", ids["recommend"]),
        (other.name, 1, "x", "csat", other.moments[0].requirements[0].question_id)],
        key=lambda q: q[0])
    assert asked["questions"][1]["text"] == "How satisfied were you with: a quick answer?"
    assert {q["touchpoint"] for q in asked["questions"]} == {touchpoint}


async def test_a_case_at_no_known_touchpoint_is_asked_no_matrix_question(pair: Pair) -> None:
    cid = await new_customer(pair)
    await consent(pair, cid)
    case = await api(pair).OpenCase(pb.OpenCaseRequest(
        customer_id=cid, kind="support", channel="email", touchpoint=_key(),
        idempotency_key=str(uuid.uuid4())), metadata=pair.interactions.metadata)
    await api(pair).ResolveCase(pb.ResolveCaseRequest(case_id=case.case_id, resolution="ok"),
                                metadata=pair.interactions.metadata)
    [asked] = await _asked(pair, cid)
    assert asked["questions"] == [] and asked["touchpoint"] == case.touchpoint


# --- answers to the matrix's questions ----------------------------------------------

async def test_an_answer_to_a_question_is_stored_and_derives_csat_and_nps(pair: Pair) -> None:
    cycle = await _define(pair, f"answers-{uuid.uuid4().hex[:8]}", _matrix(_key()))
    ids = {r.requirement_id: r.question_id for r in cycle.moments[0].requirements}
    cid = await new_customer(pair)
    key = str(uuid.uuid4())
    answers = [pb.SurveyAnswer(question_id=ids["speed"], score=2, comment="slow"),
               pb.SurveyAnswer(question_id=ids["solved"], score=1),
               pb.SurveyAnswer(question_id=ids["recommend"], score=9),
               pb.SurveyAnswer(question="anything else?", csat=5, nps=-1)]
    reply = await _survey(pair, cid, *answers, key=key)
    assert reply.csat == pytest.approx(3.5) and reply.nps == 9  # 2 and 5; the NPS answer
    speed, solved, recommend, free = reply.answers
    assert (speed.question_id, speed.score, speed.csat, speed.nps, speed.requirement_id,
            speed.scale, speed.comment) == (ids["speed"], 2, 2, -1, "speed", "csat", "slow")
    assert speed.question == "How satisfied were you with: a quick answer?"
    assert (solved.score, solved.csat, solved.nps, solved.scale) == (1, 0, -1, "yes_no")
    assert (recommend.score, recommend.csat, recommend.nps) == (9, 0, 9)
    assert (free.question_id, free.csat, free.scale) == ("", 5, "")
    # A retry returns the same response.
    assert await _survey(pair, cid, *answers, key=key) == reply
    rows = await pair.pool.fetch(
        "SELECT * FROM survey_answers WHERE survey_response_id = $1 ORDER BY requirement_id",
        uuid.UUID(reply.survey_response_id))
    assert [(r["requirement_id"], r["score"], r["scale"], r["cycle"], r["version"],
             str(r["customer_id"]), r["channel"], r["unit"]) for r in rows] == [
        (rid, score, scale, cycle.name, 1, cid, "chat", "helpdesk")
        for rid, score, scale in (("recommend", 9, "nps"), ("solved", 1, "yes_no"),
                                  ("speed", 2, "csat"))]
    found = await events_of(pair, cid, 2)  # the response and its low CSAT signal
    [recorded] = _of(found, "survey.response_recorded")
    assert (recorded["csat"], recorded["nps"]) == (4, 9)  # 3.5 rounded to even
    assert [d["reason"] for d in _of(found, "customer.dissatisfaction_signal")] == ["low_csat"]


@pytest.mark.parametrize(("answers", "field"), [
    (lambda ids: [pb.SurveyAnswer(question_id=str(uuid.uuid4()), score=3)],
     "answers[0].question_id"),
    (lambda ids: [pb.SurveyAnswer(question_id="not-a-question", score=3)],
     "answers[0].question_id"),
    (lambda ids: [pb.SurveyAnswer(question_id=ids["speed"], score=6)], "answers[0].score"),
    (lambda ids: [pb.SurveyAnswer(question_id=ids["speed"], score=0)], "answers[0].score"),
    (lambda ids: [pb.SurveyAnswer(question_id=ids["solved"], score=2)], "answers[0].score"),
    (lambda ids: [pb.SurveyAnswer(question_id=ids["speed"], score=3),
                  pb.SurveyAnswer(question_id=ids["speed"], score=4)], "answers[1].question_id"),
    (lambda ids: [pb.SurveyAnswer(question_id=ids["recommend"], score=3),
                  pb.SurveyAnswer(question="again", nps=5)], "answers[1].nps"),
    (lambda ids: [pb.SurveyAnswer(question="free", score=3)], "answers[0].score"),
])
async def test_a_bad_answer_is_invalid_argument_naming_it(
        pair: Pair, answers: Any, field: str) -> None:
    cycle = await _define(pair, f"bad-answers-{uuid.uuid4().hex[:8]}", _matrix(_key()))
    ids = {r.requirement_id: r.question_id for r in cycle.moments[0].requirements}
    cid = await new_customer(pair)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _survey(pair, cid, *answers(ids))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(f"{field}:"), err.value.details()
    assert await pair.pool.fetchval("SELECT count(*) FROM survey_responses WHERE "
                                    "customer_id = $1", uuid.UUID(cid)) == 0


async def test_answers_follow_a_merge_and_are_in_the_export(pair: Pair) -> None:
    cycle = await _define(pair, f"merge-{uuid.uuid4().hex[:8]}", _matrix(_key()))
    question = cycle.moments[0].requirements[0].question_id
    survivor, other = await new_customer(pair), await new_customer(pair)
    reply = await _survey(pair, other, pb.SurveyAnswer(question_id=question, score=4))
    await customers(pair).MergeCustomers(cpb.MergeCustomersRequest(
        survivor_customer_id=survivor, merged_customer_id=other),
        metadata=pair.customers.metadata)

    async def moved() -> bool:
        owner = await pair.pool.fetchval(
            "SELECT customer_id::text FROM survey_answers WHERE survey_response_id = $1",
            uuid.UUID(reply.survey_response_id))
        return bool(owner == survivor)

    await wait_for(moved, what="the merged customer's answers moved to the survivor")
    part = await api(pair).ExportCustomerData(pb.ExportCustomerDataRequest(
        customer_id=survivor), metadata=pair.interactions.metadata)
    [answer] = json.loads(part.json)["survey_answers"]
    assert (answer["question_id"], answer["score"], answer["customer_id"]) == (
        question, 4, survivor)


# --- periodic surveys ---------------------------------------------------------------

async def _enter(pair: Pair, customer_id: str, segment: str) -> None:
    """``customer.segment_entered`` as the customers service publishes it,
    once the interactions service has applied it."""
    env = Envelope(data=SegmentEntered(customer_id=customer_id, segment=segment,
                                       changed_at=pair.clock.now(), cause="test"),
                   subject=customer_id, source="/crm/customers")
    await produce_envelopes(pair.bootstrap, [env])

    async def entered() -> bool:
        return bool(await pair.pool.fetchval(
            "SELECT member FROM customer_segments WHERE customer_id = $1 AND segment = $2",
            uuid.UUID(customer_id), segment))

    await wait_for(entered, what=f"{customer_id} in segment {segment}")


async def test_a_periodic_survey_asks_the_segment_every_n_days(pair: Pair) -> None:
    segment, touchpoint = f"seg-{uuid.uuid4().hex[:8]}", _key()
    willing, unwilling, outsider = [await new_customer(pair) for _ in range(3)]
    await consent(pair, willing)
    await consent(pair, outsider)
    for cid in (willing, unwilling):
        await _enter(pair, cid, segment)
    cycle = await _define(pair, f"periodic-{uuid.uuid4().hex[:8]}", _matrix(touchpoint),
                          survey_every_days=8, survey_segment=segment)
    assert cycle.survey_channel == "email"
    ids = {r.requirement_id: r.question_id for r in cycle.moments[0].requirements}

    # The first run at once: the member who consents is asked the cycle's
    # questions on email; the one who does not is suppressed, not asked.
    [asked] = await _asked(pair, willing)
    assert (asked["reason"], asked["cycle"], asked["channel"], asked["case_id"]) == (
        "periodic", cycle.name, "email", "")
    assert [q["question_id"] for q in asked["questions"]] == [
        ids["speed"], ids["solved"], ids["recommend"]]  # not the phone-only one
    [stopped] = await _asked(pair, unwilling, "contact.suppressed")
    assert (stopped["contact_type"], stopped["purpose"], stopped["reason"]) == (
        "survey_request", "surveys", "no_surveys_consent")
    due = await pair.pool.fetchval(
        "SELECT due_at FROM scheduled_work WHERE kind = 'surveys.periodic' AND item_key = $1",
        cycle.name)
    assert due == cycle.defined_at.ToDatetime(tzinfo=due.tzinfo) + timedelta(days=8)

    # A new version with the same periodic survey (a requirement reworded)
    # keeps the pending run's time: it asks nobody again now.
    reworded = _matrix(touchpoint)
    reworded.requirements[0].text = "a quick first answer"
    again = await _define(pair, cycle.name, reworded, survey_every_days=8,
                          survey_segment=segment)
    assert again.version == cycle.version + 1
    run = await pair.pool.fetchrow(
        "SELECT due_at, payload FROM scheduled_work WHERE kind = 'surveys.periodic' "
        "AND item_key = $1", cycle.name)
    assert run is not None and run["due_at"] == due
    cycle = again

    # Nothing more until the next run is due; then each member once more.
    pair.clock.set(due - timedelta(minutes=1))
    assert len(_of(await events_of(pair, willing, 1), "survey.requested")) == 1
    pair.clock.set(due + timedelta(minutes=1))

    _first, second = await _asked(pair, willing, count=2)
    # The second run asks the new version's questions.
    reworded_ids = {r.requirement_id: r.question_id for r in again.moments[0].requirements}
    assert [q["question_id"] for q in second["questions"]] == [
        reworded_ids["speed"], reworded_ids["solved"], reworded_ids["recommend"]]
    assert second["questions"][0]["text"].endswith("a quick first answer?")
    assert len(await _asked(pair, unwilling, "contact.suppressed", 2)) == 2
    assert _of(await events_of(pair, outsider, 0), "survey.requested") == []
