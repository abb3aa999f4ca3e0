"""Event and scheduled-work handlers of the loyalty service (consumer group
``crm-loyalty``, reading ``crm.customers.v1`` and ``crm.interactions.v1``).

Each run of consumed events goes through :func:`commands.on_events`, one
unit of work in the batch's transaction; the runtime's inbox drops
redeliveries. Before the first event the process applies the rules file (once
per process start).
"""

from __future__ import annotations

import asyncpg

from crm_runtime.consumer import BatchHandler
from crm_runtime.convert import parse_uuid
from crm_runtime.db import Conn
from crm_runtime.events import Envelope
from crm_runtime.scheduler import DueWork, WorkHandler
from services.loyalty import commands

#: Event types loyalty reacts to (customers' and interactions' contracts).
CUSTOMER_EVENTS = ("customer.registered", "customer.stage_changed", "customer.won_back",
                   "customer.purchase_recorded", "customer.consent_changed",
                   "customer.erased", "customer.merged", "customer.at_risk",
                   "customer.risk_cleared")
INTERACTION_EVENTS = ("interaction.recorded", "case.breached", "case.resolved",
                      "survey.response_recorded", "customer.dissatisfaction_signal")


def on_events(ctx: commands.Context, pool: asyncpg.Pool) -> BatchHandler:
    async def handle(conn: Conn, events: list[Envelope]) -> None:
        await ctx.rules.sync_file(pool, ctx.clock.now())
        await commands.on_events(conn, ctx, events)

    return handle


def on_follow_up_due(ctx: commands.Context) -> WorkHandler:
    async def run(conn: Conn, work: DueWork) -> None:
        await commands.follow_up_due(conn, ctx, parse_uuid(work.key, "follow_up_id"))

    return run


def on_discount_expiring(ctx: commands.Context) -> WorkHandler:
    async def run(conn: Conn, work: DueWork) -> None:
        await commands.discount_expiring(conn, ctx, parse_uuid(work.key, "discount_id"))

    return run
