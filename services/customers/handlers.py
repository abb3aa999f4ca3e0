"""Event handlers of the customers service (consumer group ``crm-customers``).

Purchases arrive as ``interaction.recorded`` events of kind ``purchase``; each
is counted once (the inbox drops redeliveries, and the purchase id, the
interaction id, is unique per customer as a second guard)."""

from __future__ import annotations

import asyncpg

from crm_runtime.db import Conn
from crm_runtime.events import Envelope, PoisonMessage
from crm_runtime.scheduler import DueWork
from services.customers import commands, store
from services.interactions.events import InteractionRecorded


def on_interaction_recorded(ctx: commands.Context):  # type: ignore[no-untyped-def]
    async def handle(conn: Conn, events: list[Envelope]) -> None:
        for env in events:
            data = env.data
            assert isinstance(data, InteractionRecorded)
            if data.kind != "purchase":
                continue
            if not data.currency:
                raise PoisonMessage("invalid_payload", "currency: required for a purchase")
            customer_id = store.parse_id(data.customer_id)
            await commands.record_purchase(
                conn, ctx, customer_id, purchase_id=f"interaction:{data.interaction_id}",
                amount_minor=data.amount_minor, currency=data.currency,
                occurred_at=data.occurred_at, causing_event_id=env.id)

    return handle


def on_churn_due(ctx: commands.Context):  # type: ignore[no-untyped-def]
    async def run(conn: asyncpg.Connection | Conn, work: DueWork) -> None:
        await commands.churn(conn, ctx, store.parse_id(work.key), work.key)

    return run
