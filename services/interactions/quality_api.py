"""gRPC methods of the service's quality (part of the Interactions
servicer): mystery-shopping evaluations, the service-cycle scorecard and
action plans. Protobuf in and out only; :mod:`quality` does the work."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

import asyncpg
import grpc

from crm.interactions.v1 import interactions_pb2 as pb
from crm_runtime import uow
from crm_runtime.convert import page_size, request_time, time_page_token
from crm_runtime.convert import timestamp as ts
from services.interactions import commands, matrix, quality, scorecard
from services.interactions.scorecard import Plan


def _time(message: Any, field: str) -> datetime | None:
    """The time a request states in ``field``, or None when it states none."""
    return request_time(getattr(message, field), field) if message.HasField(field) else None


def plan_to_pb(p: Plan, today: date) -> pb.ActionPlan:
    return pb.ActionPlan(
        action_plan_id=p.action_plan_id, cycle=p.cycle, touchpoint=p.touchpoint,
        requirement_id=p.requirement_id, description=p.description, owner=p.owner,
        due_date=p.due_on.isoformat() if p.due_on else "", state=p.state, source=p.source,
        evaluation_id=p.evaluation_id, created_at=ts(p.created_at),
        updated_at=ts(p.updated_at), overdue=p.overdue(today))


def evaluation_to_pb(e: quality.Recorded) -> pb.Evaluation:
    r = e.row
    return pb.Evaluation(
        evaluation_id=str(r["evaluation_id"]), cycle=r["cycle"], version=r["version"],
        evaluator=r["evaluator"], unit=r["unit"], channel=r["channel"],
        visited_at=ts(r["visited_at"]),
        scores=[pb.CriterionScore(requirement_id=s["requirement_id"], score=s["score"],
                                  note=s["note"], touchpoint=s["touchpoint"], scale=s["scale"],
                                  weight=s["weight"]) for s in e.scores],
        notes=r["notes"], score=r["score"], recorded_at=ts(r["recorded_at"]),
        idempotency_key=r["idempotency_key"])


def _requirement_to_pb(r: scorecard.RequirementScore, today: date) -> pb.RequirementScore:
    return pb.RequirementScore(
        requirement_id=r.requirement.requirement_id, text=r.requirement.text,
        scale=r.requirement.scale, weight=r.requirement.weight,
        customer_score=r.customer_score, customer_answers=r.customer_answers,
        evaluator_score=r.evaluator_score, evaluator_scores=r.evaluator_scores, gap=r.gap,
        priority=r.priority, action_plans=[plan_to_pb(p, today) for p in r.plans],
        overdue_action_plans=r.overdue_plans)


def _moment_to_pb(m: scorecard.MomentScore, today: date) -> pb.MomentScore:
    return pb.MomentScore(
        touchpoint=m.moment.touchpoint, name=m.moment.name, weight=m.moment.weight,
        customer_score=m.customer_score, customer_answers=m.customer_answers,
        evaluator_score=m.evaluator_score, evaluator_scores=m.evaluator_scores, gap=m.gap,
        contacts=m.contacts.contacts, negative_contacts=m.contacts.negative,
        complaints=m.contacts.complaints, priority=m.priority,
        requirements=[_requirement_to_pb(r, today) for r in m.requirements],
        action_plans=[plan_to_pb(p, today) for p in m.plans],
        overdue_action_plans=m.overdue_plans)


class QualityApi:
    """GetEvaluationForm, RecordEvaluation, ListEvaluations,
    GetServiceCycleScorecard, CreateActionPlan, UpdateActionPlan and
    ListActionPlans; mixed into the servicer of :mod:`api`."""

    _pool: asyncpg.Pool
    _ctx: commands.Context

    async def GetEvaluationForm(self, request: pb.GetEvaluationFormRequest,
                                context: grpc.aio.ServicerContext) -> pb.EvaluationForm:
        c = await uow.run(self._pool, lambda conn: quality.evaluation_form(
            conn, request.cycle, request.version))
        return pb.EvaluationForm(cycle=c.name, version=c.version, criteria=[
            pb.EvaluationCriterion(touchpoint=m.touchpoint, requirement_id=r.requirement_id,
                                   text=r.text, scale=matrix.criterion_scale(r.scale),
                                   weight=r.weight, channels=list(r.channels))
            for m in c.moments for r in m.requirements])

    async def RecordEvaluation(self, request: pb.RecordEvaluationRequest,
                               context: grpc.aio.ServicerContext) -> pb.Evaluation:
        scores = [{"requirement_id": s.requirement_id, "score": s.score, "note": s.note}
                  for s in request.scores]
        visited_at = _time(request, "visited_at")
        return evaluation_to_pb(await uow.run(self._pool, lambda c: quality.record_evaluation(
            c, self._ctx, cycle=request.cycle, version=request.version,
            evaluator=request.evaluator, unit=request.unit, channel=request.channel,
            visited_at=visited_at, scores=scores, notes=request.notes,
            idempotency_key=request.idempotency_key)))

    async def ListEvaluations(self, request: pb.ListEvaluationsRequest,
                              context: grpc.aio.ServicerContext) -> pb.ListEvaluationsResponse:
        size = page_size(request.page_size)
        since, until = _time(request, "from"), _time(request, "to")
        page = await uow.run(self._pool, lambda c: quality.list_evaluations(
            c, cycle=request.cycle, unit=request.unit, channel=request.channel, since=since,
            until=until, page_token=request.page_token, limit=size))
        token = (time_page_token(page[-1].row["visited_at"], page[-1].row["evaluation_id"])
                 if len(page) == size else "")
        return pb.ListEvaluationsResponse(evaluations=[evaluation_to_pb(e) for e in page],
                                          next_page_token=token)

    async def GetServiceCycleScorecard(self, request: pb.GetServiceCycleScorecardRequest,
                                       context: grpc.aio.ServicerContext
                                       ) -> pb.ServiceCycleScorecard:
        since, until = _time(request, "from"), _time(request, "to")
        card, window = await uow.run(self._pool, lambda c: quality.get_scorecard(
            c, self._ctx, cycle=request.cycle, version=request.version, since=since,
            until=until, unit=request.unit, channel=request.channel))
        today = quality.today(self._ctx)
        reply = pb.ServiceCycleScorecard(
            cycle=card.cycle, version=card.version, to=ts(window.until),
            unit=request.unit.strip(), channel=request.channel.strip().lower(),
            moments=[_moment_to_pb(m, today) for m in card.moments],
            priority_formula=scorecard.PRIORITY_FORMULA,
            unmapped_touchpoints=[pb.UnmappedTouchpoint(touchpoint=t, contacts=n)
                                  for t, n in card.unmapped])
        getattr(reply, "from").CopyFrom(ts(window.since))
        return reply

    async def CreateActionPlan(self, request: pb.CreateActionPlanRequest,
                               context: grpc.aio.ServicerContext) -> pb.ActionPlan:
        plan = await uow.run(self._pool, lambda c: quality.create_plan(
            c, self._ctx, cycle=request.cycle, touchpoint=request.touchpoint,
            requirement_id=request.requirement_id, description=request.description,
            owner=request.owner, due_date=request.due_date, source=request.source,
            evaluation_id=request.evaluation_id, idempotency_key=request.idempotency_key))
        return plan_to_pb(plan, quality.today(self._ctx))

    async def UpdateActionPlan(self, request: pb.UpdateActionPlanRequest,
                               context: grpc.aio.ServicerContext) -> pb.ActionPlan:
        plan = await uow.run(self._pool, lambda c: quality.update_plan(
            c, self._ctx, request.action_plan_id, state=request.state, owner=request.owner,
            due_date=request.due_date, description=request.description))
        return plan_to_pb(plan, quality.today(self._ctx))

    async def ListActionPlans(self, request: pb.ListActionPlansRequest,
                              context: grpc.aio.ServicerContext) -> pb.ListActionPlansResponse:
        size = page_size(request.page_size)
        page = await uow.run(self._pool, lambda c: quality.list_plans(
            c, self._ctx, cycle=request.cycle, state=request.state, overdue=request.overdue,
            page_token=request.page_token, limit=size))
        today = quality.today(self._ctx)
        token = ""
        if len(page) == size:
            last = page[-1]
            token = time_page_token(last.created_at, uuid.UUID(last.action_plan_id))
        return pb.ListActionPlansResponse(action_plans=[plan_to_pb(p, today) for p in page],
                                          next_page_token=token)
