"""Event and scheduled-work handlers of the loyalty service (consumer group
``crm-loyalty``, reading ``crm.customers.v1`` and ``crm.interactions.v1``).

One handler is routed every payload class loyalty consumes
(:data:`commands.CONSUMED`, the classes of :data:`commands.LoyaltyInput`), so
the consumer hands it each batch's run of those events whole: one batch of
loyalty's state (:class:`services.loyalty.unit.Batch`) and one flush per
run, in the batch's transaction; :func:`commands.on_events` gives each event
to the function of its payload class. The runtime's inbox drops
redeliveries. Before the first event the process applies the rules file (once
per process start).
"""

from __future__ import annotations

import asyncpg

from crm_runtime.convert import parse_uuid
from crm_runtime.db import Conn
from crm_runtime.events import Envelope
from crm_runtime.scheduler import DueWork, WorkHandler
from crm_runtime.service import Route, on
from services.loyalty import commands, contacting, discounts
from services.loyalty.commands import LoyaltyInput


def on_events(ctx: commands.Context, pool: asyncpg.Pool) -> Route:
    async def handle(conn: Conn, events: list[Envelope[LoyaltyInput]]) -> None:
        await ctx.rules.sync_file(pool, ctx.clock.now())
        await commands.on_events(conn, ctx, events)

    return on(commands.CONSUMED, handle)


def on_follow_up_due(ctx: commands.Context) -> WorkHandler:
    async def run(conn: Conn, work: DueWork) -> None:
        await contacting.follow_up_due(conn, ctx, parse_uuid(work.key, "follow_up_id"))

    return run


def on_discount_expiring(ctx: commands.Context) -> WorkHandler:
    async def run(conn: Conn, work: DueWork) -> None:
        await discounts.discount_expiring(conn, ctx, parse_uuid(work.key, "discount_id"))

    return run
