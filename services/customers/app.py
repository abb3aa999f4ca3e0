"""Wiring of the customers service: its spec for the shared runtime."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from crm.customers.v1 import customers_pb2, customers_pb2_grpc
from crm_contracts.privacy import InteractionsErasureCompleted, LoyaltyErasureCompleted
from crm_contracts.topics import CUSTOMERS, INTERACTIONS, LOYALTY
from crm_runtime.grpc_server import ServiceRegistration
from crm_runtime.service import ServiceContext, ServiceParts, ServiceSpec, Subscription
from crm_runtime.settings import Settings
from services.customers import commands, exports, handlers, memberships, metrics, risk
from services.customers.api import CustomersServicer
from services.customers.gate import GatePolicy


def gate_policy(settings: Settings) -> GatePolicy:
    """The contact gate's settings (``CRM_CONTACT_CAPS`` and the others)."""
    start, end = settings.quiet_hours()
    return GatePolicy(caps=dict(settings.contact_caps),
                      window=timedelta(days=settings.contact_cap_window_days),
                      quiet_start=start, quiet_end=end,
                      default_time_zone=settings.default_time_zone)


def build(svc: ServiceContext) -> ServiceParts:
    ctx = commands.Context(
        clock=svc.clock, lanes=svc.lanes, churn_window=svc.settings.churn_window(),
        erasure_ack_timeout=timedelta(seconds=svc.settings.erasure_ack_timeout_s))
    return ServiceParts(
        subscriptions=[Subscription(
            topics=[INTERACTIONS],
            routes=[handlers.on_interaction_recorded(ctx),
                    handlers.on_dissatisfaction_signal(ctx),
                    handlers.on_survey_response(ctx),
                    handlers.on_erasure_completed(ctx, InteractionsErasureCompleted)]),
            # What loyalty tells customers (its own group: loyalty's topic is
            # busy with actions customers never reads).
            Subscription(topics=[LOYALTY],
                         routes=[handlers.on_consent_withdrawn(ctx),
                                 handlers.on_erasure_completed(ctx, LoyaltyErasureCompleted)],
                         group_suffix="-loyalty")],
        scheduled={commands.CHURN: handlers.on_churn_due(ctx),
                   risk.RISK_REVIEW: handlers.on_risk_review(ctx),
                   memberships.EVALUATE: handlers.on_segment_evaluation(ctx)},
        registrations=[ServiceRegistration(
            customers_pb2_grpc.add_CustomersServicer_to_server,
            CustomersServicer(svc.pool, ctx, exports.Peers(svc.settings),
                              gate_policy(svc.settings)),
            customers_pb2.DESCRIPTOR.services_by_name["Customers"])],
        gauges=metrics.GAUGES,
    )


SPEC = ServiceSpec(name="customers", migrations=Path(__file__).parent / "migrations",
                   build=build, publishes=[CUSTOMERS], consumes=[INTERACTIONS, LOYALTY])
