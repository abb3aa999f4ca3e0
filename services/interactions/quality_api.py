"""gRPC methods of the service's quality (part of the Interactions
servicer): mystery-shopping evaluations, the service-cycle scorecard and
action plans."""

from __future__ import annotations

import asyncpg

from services.interactions import commands


class QualityApi:
    """GetEvaluationForm, RecordEvaluation, ListEvaluations,
    GetServiceCycleScorecard, CreateActionPlan, UpdateActionPlan and
    ListActionPlans; mixed into the servicer of :mod:`api`."""

    _pool: asyncpg.Pool
    _ctx: commands.Context
