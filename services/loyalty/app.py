"""Wiring of the loyalty service: its spec for the shared runtime.

Settings come from ``CRM_LOYALTY_*`` (:mod:`services.loyalty.settings`) and
the shared quiet hours; the rules file is read and validated here, so a bad
file stops the service at start with the rule and field named. Contacts
pass the customers service's contact gate (``CRM_CUSTOMERS_GRPC_TARGET``,
with the service token)."""

from __future__ import annotations

import logging
from pathlib import Path

from crm.loyalty.v1 import loyalty_pb2, loyalty_pb2_grpc
from crm_contracts.topics import CUSTOMERS, INTERACTIONS, LOYALTY
from crm_runtime import contact_gate
from crm_runtime.grpc_server import ServiceRegistration
from crm_runtime.service import ServiceContext, ServiceParts, ServiceSpec, Subscription
from services.loyalty import (
    campaign_runs,
    commands,
    directory,
    handlers,
    metrics,
    settings,
    webhook_delivery,
)
from services.loyalty.api import LoyaltyServicer
from services.loyalty.rulebook import RuleBook, load_file

log = logging.getLogger(__name__)


def build(svc: ServiceContext) -> ServiceParts:
    conf = settings.load()
    for line in settings.retired():
        log.warning("%s", line)
    ctx = commands.Context(clock=svc.clock, lanes=svc.lanes,
                           rules=RuleBook(load_file(conf.rules_file)),
                           policy=settings.policy(svc.settings),
                           expiry_notice=conf.expiry_notice,
                           gate=contact_gate.connect(svc.settings, "loyalty"))
    return ServiceParts(
        subscriptions=[Subscription(topics=[CUSTOMERS, INTERACTIONS],
                                    routes=[handlers.on_events(ctx, svc.pool)]),
                       # webhooks: group crm-loyalty-webhooks, all three topics
                       webhook_delivery.subscription(svc.pool)],
        scheduled={commands.FOLLOW_UP_DUE: handlers.on_follow_up_due(ctx),
                   commands.DISCOUNT_EXPIRING: handlers.on_discount_expiring(ctx),
                   campaign_runs.START: campaign_runs.on_start(ctx),
                   campaign_runs.SEND: campaign_runs.on_send(ctx, svc.settings.failpoint_set)},
        registrations=[ServiceRegistration(
            loyalty_pb2_grpc.add_LoyaltyServicer_to_server,
            LoyaltyServicer(svc.pool, ctx).use_segments(directory.connect(svc.settings)),
            loyalty_pb2.DESCRIPTOR.services_by_name["Loyalty"])],
        gauges=metrics.GAUGES,
        workers=[webhook_delivery.Worker(svc.pool, conf, service=svc.name,
                                         schema=svc.name)],
    )


SPEC = ServiceSpec(name="loyalty", migrations=Path(__file__).parent / "migrations",
                   build=build, publishes=[LOYALTY],
                   consumes=[CUSTOMERS, INTERACTIONS, LOYALTY])  # LOYALTY: webhooks
