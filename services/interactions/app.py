"""Wiring of the interactions service: its spec for the shared runtime."""

from __future__ import annotations

from pathlib import Path

from crm.interactions.v1 import interactions_pb2, interactions_pb2_grpc
from crm_contracts.topics import CUSTOMERS, INTERACTIONS, INTERACTIONS_INGEST
from crm_runtime.grpc_server import ServiceRegistration
from crm_runtime.service import ServiceContext, ServiceParts, ServiceSpec, Subscription
from services.interactions import calendars, cases, commands, cycles, handlers, metrics, trust
from services.interactions.api import InteractionsServicer
from services.interactions.directory import CustomerDirectory


def build(svc: ServiceContext) -> ServiceParts:
    ctx = commands.Context(clock=svc.clock, lanes=svc.lanes)
    s = svc.settings
    directory = CustomerDirectory(s.customers_target(), s.service_token or s.dev_token,
                                  pool=svc.pool, settings=s)
    return ServiceParts(
        subscriptions=[
            # Unknown contacts are registered with customers, the customer
            # ids contacts state checked, and proactive contacts put to the
            # contact gate, before each batch's transaction opens.
            Subscription(topics=[INTERACTIONS_INGEST],
                         routes=[handlers.on_contacts(ctx, directory)],
                         group_suffix="-ingest",
                         prepare=handlers.prepare_contacts(directory, ctx)),
            Subscription(topics=[CUSTOMERS],
                         routes=[handlers.on_customers_registered(),
                                 handlers.on_customer_erased(ctx),
                                 handlers.on_customers_merged(),
                                 handlers.on_consent_changed(),
                                 handlers.on_segment_changes()]),
        ],
        scheduled={cases.WARN: handlers.on_breach_warning(ctx),
                   cases.BREACH: handlers.on_breach(ctx),
                   calendars.MOVE: handlers.on_move_open_cases(ctx),
                   trust.SURVEY_REQUEST_DUE: handlers.on_survey_request(ctx, directory),
                   cycles.PERIODIC_RUN: handlers.on_periodic_survey(ctx)},
        registrations=[ServiceRegistration(
            interactions_pb2_grpc.add_InteractionsServicer_to_server,
            InteractionsServicer(svc.pool, ctx, directory),
            interactions_pb2.DESCRIPTOR.services_by_name["Interactions"])],
        gauges=metrics.GAUGES,
    )


SPEC = ServiceSpec(name="interactions", migrations=Path(__file__).parent / "migrations",
                   build=build, publishes=[INTERACTIONS],
                   consumes=[INTERACTIONS_INGEST, CUSTOMERS])
