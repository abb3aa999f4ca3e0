"""Action plans over the real service: created for a requirement or a
moment of a cycle's latest version, once per key; moved through their
states (done and dropped are final); overdue once their day has passed;
listed by cycle, state and overdue, a page at a time."""

from __future__ import annotations

import uuid
from datetime import UTC, date, timedelta
from typing import Any

import grpc
import pytest

from crm.interactions.v1 import interactions_pb2 as pb
from tests.integration.interactions.conftest import Pair
from tests.integration.interactions.test_interactions_service import api
from tests.integration.interactions.test_mystery_shopping import (
    define_cycle,
    evaluate,
    refused,
)


def today(pair: Pair) -> date:
    return pair.clock.now().astimezone(UTC).date()


async def create(pair: Pair, cycle: str, **fields: Any) -> pb.ActionPlan:
    fields.setdefault("idempotency_key", str(uuid.uuid4()))
    fields.setdefault("description", "Train the staff to greet within a minute")
    fields.setdefault("owner", "shop-1 manager")
    fields.setdefault("due_date", (today(pair) + timedelta(days=7)).isoformat())
    if "touchpoint" not in fields:
        fields.setdefault("requirement_id", "smile")
    reply: pb.ActionPlan = await api(pair).CreateActionPlan(
        pb.CreateActionPlanRequest(cycle=cycle, **fields), metadata=pair.interactions.metadata)
    return reply


async def update(pair: Pair, plan_id: str, **fields: Any) -> pb.ActionPlan:
    reply: pb.ActionPlan = await api(pair).UpdateActionPlan(
        pb.UpdateActionPlanRequest(action_plan_id=plan_id, **fields),
        metadata=pair.interactions.metadata)
    return reply


async def listed(pair: Pair, page_size: int = 2, **fields: Any) -> list[str]:
    ids: list[str] = []
    token = ""
    while True:
        page = await api(pair).ListActionPlans(pb.ListActionPlansRequest(
            page_size=page_size, page_token=token, **fields), metadata=pair.interactions.metadata)
        assert len(page.action_plans) <= page_size
        ids += [p.action_plan_id for p in page.action_plans]
        token = page.next_page_token
        if not token:
            return ids


async def test_a_plan_for_a_requirement_or_a_moment_is_created_once(pair: Pair) -> None:
    cycle = (await define_cycle(pair)).name
    due = (today(pair) + timedelta(days=7)).isoformat()
    key = str(uuid.uuid4())
    plan = await create(pair, cycle, requirement_id="fast", idempotency_key=key, due_date=due)
    assert (plan.cycle, plan.touchpoint, plan.requirement_id, plan.state, plan.source) == (
        cycle, "greeting", "fast", "planned", "manual")
    assert (plan.due_date, plan.owner, plan.overdue) == (due, "shop-1 manager", False)
    assert plan.created_at == plan.updated_at
    assert await create(pair, cycle, requirement_id="fast", idempotency_key=key,
                        due_date=due) == plan
    # The moment may be stated too, when it is the requirement's.
    stated = await create(pair, cycle, requirement_id="fast", touchpoint="greeting",
                          due_date=due)
    assert stated.touchpoint == "greeting"
    whole = await create(pair, cycle, touchpoint="farewell", due_date=today(pair).isoformat())
    assert (whole.touchpoint, whole.requirement_id) == ("farewell", "")
    details = await refused(create(pair, cycle, requirement_id="fast", idempotency_key=key,
                                   owner="someone else", due_date=due),
                            grpc.StatusCode.ALREADY_EXISTS)
    assert "owner" in details and "due_on" not in details
    # From an evaluation that scored the requirement (or a requirement of the moment).
    e = await evaluate(pair, cycle)  # scores "smile" only
    from_eval = await create(pair, cycle, source="evaluation", evaluation_id=e.evaluation_id)
    assert (from_eval.source, from_eval.evaluation_id) == ("evaluation", e.evaluation_id)
    moment = await create(pair, cycle, touchpoint="greeting", source="evaluation",
                          evaluation_id=e.evaluation_id)
    assert moment.evaluation_id == e.evaluation_id
    low = await create(pair, cycle, requirement_id="recommend", source="low_score")
    assert (low.touchpoint, low.source) == ("checkout", "low_score")


async def test_bad_plans_are_refused_naming_the_field(pair: Pair) -> None:
    cycle = (await define_cycle(pair)).name
    other = (await define_cycle(pair)).name
    e = await evaluate(pair, cycle)  # scores "smile" only
    elsewhere = await evaluate(pair, other)
    yesterday = (today(pair) - timedelta(days=1)).isoformat()
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    cases: list[tuple[dict[str, Any], grpc.StatusCode, str]] = [
        ({"cycle": ""}, invalid, "cycle"),
        ({"cycle": "no-such-" + uuid.uuid4().hex}, grpc.StatusCode.NOT_FOUND, ""),
        ({"requirement_id": "nope"}, invalid, "requirement_id"),
        ({"requirement_id": "", "touchpoint": ""}, invalid, "requirement_id"),
        ({"touchpoint": "nowhere"}, invalid, "touchpoint"),
        ({"requirement_id": "smile", "touchpoint": "checkout"}, invalid, "touchpoint"),
        ({"description": " "}, invalid, "description"),
        ({"owner": ""}, invalid, "owner"),
        ({"due_date": ""}, invalid, "due_date"),
        ({"due_date": "2031-02-30"}, invalid, "due_date"),
        ({"due_date": "next week"}, invalid, "due_date"),
        ({"due_date": yesterday}, invalid, "due_date"),
        ({"idempotency_key": ""}, invalid, "idempotency_key"),
        ({"source": "gut_feeling"}, invalid, "source"),
        ({"source": "evaluation"}, invalid, "evaluation_id"),
        ({"source": "evaluation", "evaluation_id": "x"}, invalid, "evaluation_id"),
        ({"source": "evaluation", "evaluation_id": str(uuid.uuid4())},
         grpc.StatusCode.NOT_FOUND, ""),
        ({"source": "evaluation", "evaluation_id": elsewhere.evaluation_id}, invalid,
         "evaluation_id"),
        ({"source": "evaluation", "evaluation_id": e.evaluation_id, "requirement_id": "fast"},
         invalid, "evaluation_id"),
        ({"source": "evaluation", "evaluation_id": e.evaluation_id, "touchpoint": "checkout"},
         invalid, "evaluation_id"),
        ({"evaluation_id": e.evaluation_id}, invalid, "evaluation_id"),
    ]
    for fields, code, field in cases:
        await refused(create(pair, fields.pop("cycle", cycle), **fields), code, field)
    assert await listed(pair, cycle=cycle) == []


async def test_plans_move_through_their_states(pair: Pair) -> None:
    cycle = (await define_cycle(pair)).name
    plan = await create(pair, cycle)
    pair.clock.advance(timedelta(seconds=5))
    started = await update(pair, plan.action_plan_id, state="in_progress", owner="Ana")
    assert (started.state, started.owner, started.description, started.due_date) == (
        "in_progress", "Ana", plan.description, plan.due_date)
    assert started.updated_at.ToDatetime() > plan.updated_at.ToDatetime()
    assert started.created_at == plan.created_at
    later = (today(pair) + timedelta(days=30)).isoformat()
    moved = await update(pair, plan.action_plan_id, due_date=later, description="Coach them")
    assert (moved.state, moved.owner, moved.due_date, moved.description) == (
        "in_progress", "Ana", later, "Coach them")
    await refused(update(pair, plan.action_plan_id, state="planned"),
                  grpc.StatusCode.FAILED_PRECONDITION)
    done = await update(pair, plan.action_plan_id, state="done")
    assert done.state == "done"
    # A retry changes nothing and is answered; any change of a done plan is refused.
    assert await update(pair, plan.action_plan_id, state="done") == done
    for fields in ({"state": "dropped"}, {"state": "in_progress"}, {"owner": "Bea"},
                   {"description": "again"}):
        await refused(update(pair, plan.action_plan_id, **fields),
                      grpc.StatusCode.FAILED_PRECONDITION)
    # planned -> done and planned -> dropped directly; dropped is final too.
    assert (await update(pair, (await create(pair, cycle)).action_plan_id,
                         state="done")).state == "done"
    dropped = await update(pair, (await create(pair, cycle)).action_plan_id, state="dropped")
    assert dropped.state == "dropped"
    await refused(update(pair, dropped.action_plan_id, state="in_progress"),
                  grpc.StatusCode.FAILED_PRECONDITION)
    fresh = await create(pair, cycle)
    await refused(update(pair, fresh.action_plan_id, state="finished"),
                  grpc.StatusCode.INVALID_ARGUMENT, "state")
    await refused(update(pair, fresh.action_plan_id,
                         due_date=(today(pair) - timedelta(days=1)).isoformat()),
                  grpc.StatusCode.INVALID_ARGUMENT, "due_date")
    await refused(update(pair, fresh.action_plan_id, due_date="soon"),
                  grpc.StatusCode.INVALID_ARGUMENT, "due_date")
    await refused(update(pair, str(uuid.uuid4()), state="done"), grpc.StatusCode.NOT_FOUND)
    await refused(update(pair, "not-a-plan", state="done"), grpc.StatusCode.INVALID_ARGUMENT,
                  "action_plan_id")


@pytest.mark.parametrize("page_size", [1, 2, 50])
async def test_plans_are_listed_by_cycle_state_and_overdue(pair: Pair, page_size: int) -> None:
    cycle = (await define_cycle(pair)).name
    soon = (today(pair) + timedelta(days=1)).isoformat()
    later = (today(pair) + timedelta(days=10)).isoformat()
    due_soon = await create(pair, cycle, due_date=soon)
    pair.clock.advance(timedelta(seconds=1))
    started = await update(pair, (await create(pair, cycle, due_date=soon)).action_plan_id,
                           state="in_progress")
    pair.clock.advance(timedelta(seconds=1))
    done = await update(pair, (await create(pair, cycle, due_date=soon)).action_plan_id,
                        state="done")
    pair.clock.advance(timedelta(seconds=1))
    not_yet = await create(pair, cycle, touchpoint="checkout", due_date=later)
    assert await listed(pair, page_size, cycle=cycle) == [
        not_yet.action_plan_id, done.action_plan_id, started.action_plan_id,
        due_soon.action_plan_id]
    assert await listed(pair, page_size, cycle=cycle, state="in_progress") == [
        started.action_plan_id]
    assert await listed(pair, page_size, cycle=cycle, overdue=True) == []
    # Two days on, the plans due tomorrow are overdue unless done.
    pair.clock.advance(timedelta(days=2))
    assert await listed(pair, page_size, cycle=cycle, overdue=True) == [
        started.action_plan_id, due_soon.action_plan_id]
    page = await api(pair).ListActionPlans(pb.ListActionPlansRequest(cycle=cycle),
                                           metadata=pair.interactions.metadata)
    assert [p.overdue for p in page.action_plans] == [False, False, True, True]
    # Its day moved on, a plan is not overdue any more.
    moved = await update(pair, due_soon.action_plan_id,
                         due_date=(today(pair) + timedelta(days=3)).isoformat())
    assert not moved.overdue
    assert await listed(pair, page_size, cycle=cycle, overdue=True) == [started.action_plan_id]
    await refused(api(pair).ListActionPlans(pb.ListActionPlansRequest(page_token="%%"),
                                            metadata=pair.interactions.metadata),
                  grpc.StatusCode.INVALID_ARGUMENT, "page_token")
    await refused(api(pair).ListActionPlans(pb.ListActionPlansRequest(state="someday"),
                                            metadata=pair.interactions.metadata),
                  grpc.StatusCode.INVALID_ARGUMENT, "state")
