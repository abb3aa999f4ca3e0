"""Event handlers of the customers service (consumer group ``crm-customers``).

Purchases arrive as ``interaction.recorded`` events of kind ``purchase``; each
is counted once (the inbox drops redeliveries, and the purchase id, the
interaction id, is unique per customer as a second guard)."""

from __future__ import annotations

from crm_contracts.interactions import (
    DissatisfactionSignal,
    InteractionRecorded,
    SurveyResponseRecorded,
)
from crm_runtime import logs
from crm_runtime.convert import parse_uuid
from crm_runtime.db import Conn
from crm_runtime.events import Envelope, PoisonMessage
from crm_runtime.scheduler import DueWork, WorkHandler
from crm_runtime.service import Route, on
from services.customers import commands


def on_interaction_recorded(ctx: commands.Context) -> Route:
    """Purchases of the whole batch are counted together (one statement per
    step); a bad one makes the runtime re-run the batch record by record. Each
    purchase is read in its event's log and trace context (its span, when
    tracing is on), and the events it causes continue that span."""

    async def handle(conn: Conn, events: list[Envelope[InteractionRecorded]]) -> None:
        purchases = []
        for env in logs.each(events):
            data = env.data
            if data.kind != "purchase":
                continue
            if not data.currency:
                raise PoisonMessage("invalid_payload", "currency: required for a purchase")
            purchases.append(commands.Purchase(
                customer_id=parse_uuid(data.customer_id),
                purchase_id=f"interaction:{data.interaction_id}",
                amount_minor=data.amount_minor, currency=data.currency,
                occurred_at=data.occurred_at, causing_event_id=env.id,
                traceparent=logs.current_traceparent()))
        if purchases:
            await commands.record_purchases(conn, ctx, purchases)

    return on(InteractionRecorded, handle)


def on_dissatisfaction_signal(ctx: commands.Context) -> Route:
    async def handle(conn: Conn, events: list[Envelope[DissatisfactionSignal]]) -> None:
        for env in logs.each(events):
            data = env.data
            await commands.record_dissatisfaction(
                conn, ctx, parse_uuid(data.customer_id), reason=data.reason,
                occurred_at=data.occurred_at, event_id=env.id)

    return on(DissatisfactionSignal, handle)


def on_survey_response(ctx: commands.Context) -> Route:
    async def handle(conn: Conn, events: list[Envelope[SurveyResponseRecorded]]) -> None:
        for env in logs.each(events):
            data = env.data
            await commands.record_survey(
                conn, ctx, parse_uuid(data.customer_id), csat=data.csat, nps=data.nps,
                occurred_at=data.occurred_at, event_id=env.id)

    return on(SurveyResponseRecorded, handle)


def on_churn_due(ctx: commands.Context) -> WorkHandler:
    async def run(conn: Conn, work: DueWork) -> None:
        await commands.churn(conn, ctx, parse_uuid(work.key), work.key,
                             work.payload.get("window_days"))

    return run


def on_risk_review(ctx: commands.Context) -> WorkHandler:
    async def run(conn: Conn, work: DueWork) -> None:
        await commands.review_risk(conn, ctx, parse_uuid(work.key), work.key)

    return run
