"""Prometheus metrics of the interactions service (beside the runtime's)."""

from __future__ import annotations

from prometheus_client import Counter, Summary

from crm_runtime.metrics import DbGauge
from services.interactions import quality_store, store

INTERACTIONS = Counter("crm_interactions", "Contacts recorded (each once)",
                       ["service", "channel", "kind"])
CASES_OPENED = Counter("crm_cases_opened", "Cases opened", ["service", "kind", "channel"])
CASES_BREACHED = Counter("crm_cases_breached",
                         "Milestones of cases (first response, resolution) whose due time passed "
                         "unmet", ["service", "kind", "channel", "milestone", "unit"])
CSAT_RESPONSES = Counter("crm_csat_responses", "Survey responses with a CSAT answer",
                         ["service", "channel"])
CSAT_SCORE = Summary("crm_csat_score", "CSAT (1-5) of survey responses", ["service", "channel"])
NPS_RESPONSES = Counter("crm_nps_responses", "NPS answers by category",
                        ["service", "channel", "category"])
TOUCHPOINTS_UNMAPPED = Counter(
    "crm_touchpoints_unmapped", "Contacts and cases naming a touchpoint no active service cycle "
    "knows (record: contact or case)", ["service", "record"])

GAUGES = [
    DbGauge("crm_cases_open", "Cases not resolved yet", (),
            store.CASES_OPEN_SQL),
    DbGauge("crm_cases_overdue", "Unresolved cases past their promised deadline", (),
            store.CASES_OVERDUE_SQL),
    DbGauge("crm_cases_paused", "Unresolved cases waiting on the customer (clock stopped)", (),
            store.CASES_PAUSED_SQL),
    DbGauge("crm_service_cycle_score", "Score 0-100 of each moment of every cycle's latest "
            "version over the last 30 days, by source (customers: survey answers; "
            "evaluators: mystery shopping)", ("cycle", "touchpoint", "source"),
            quality_store.SCORES_SQL),
    DbGauge("crm_action_plans_overdue", "Action plans due before today (UTC) and still "
            "planned or in progress, by cycle", ("cycle",), quality_store.OVERDUE_PLANS_SQL),
]


def nps_category(score: int) -> str:
    return "promoter" if score >= 9 else "passive" if score >= 7 else "detractor"
