"""A customer at risk of leaving silently: dissatisfaction signals (a
negative contact, a complaint, a low survey score, a broken promise) live for
a window; while any is live the customer is at risk (``customer.at_risk``),
and a review is scheduled for when the oldest expires
(``customer.risk_cleared`` when none is left). The rules are pure
(:func:`domain.risk_reasons`); this module applies them.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from crm_contracts.customers import CustomerAtRisk, CustomerRiskCleared
from crm_runtime import scheduler
from crm_runtime.db import Conn
from services.customers import commands, domain, memberships, store

RISK_REVIEW = "customers.risk_review"


async def record_dissatisfaction(conn: Conn, ctx: commands.Context, customer_id: uuid.UUID, *,
                                 reason: str, occurred_at: datetime, event_id: str) -> None:
    rec = await store.load(conn, customer_id, lock=True, full=False)
    if rec.erased_at is not None:
        return
    await store.add_risk_signal(conn, rec.customer_id, event_id, reason, occurred_at)
    await reassess(conn, ctx, rec.customer_id, event_id)


async def record_survey(conn: Conn, ctx: commands.Context, customer_id: uuid.UUID, *,
                        csat: int | None, nps: int | None, occurred_at: datetime,
                        event_id: str) -> None:
    rec = await store.load(conn, customer_id, lock=True, full=False)
    if rec.erased_at is not None:
        return
    scores = (rec.last_csat, rec.last_nps)
    if rec.last_survey_at is None or occurred_at >= rec.last_survey_at:
        rec.last_csat = csat if csat is not None else rec.last_csat
        rec.last_nps = nps if nps is not None else rec.last_nps
        rec.last_survey_at = occurred_at
        await store.save_core(conn, rec, ctx.clock.now())
    if domain.is_recovery(csat, nps):
        await store.clear_risk_signals(conn, rec.customer_id, occurred_at)
    await reassess(conn, ctx, rec.customer_id, event_id)
    if (rec.last_csat, rec.last_nps) != scores:
        await memberships.refresh(conn, ctx, [rec.customer_id], "survey")


async def reassess(conn: Conn, ctx: commands.Context, customer_id: uuid.UUID,
                         causing_event_id: str) -> None:
    """Set at-risk from the live signals; publish only when it changes, and
    schedule a review for when the oldest live signal expires. A change of
    the mark re-evaluates the customer's segments."""
    rec = await store.load(conn, customer_id, lock=True, follow_alias=False, full=False)
    now = ctx.clock.now()
    signals = await store.risk_signals(conn, customer_id)
    reasons = list(domain.risk_reasons(signals, now))
    if reasons == rec.risk_reasons and rec.at_risk == bool(reasons):
        return
    was_at_risk = rec.at_risk
    rec.at_risk, rec.risk_reasons = bool(reasons), reasons
    await store.save_core(conn, rec, now)
    if reasons:
        await commands.emit_named(conn, ctx, customer_id, CustomerAtRisk(
            customer_id=str(customer_id), reasons=reasons, causing_event_id=causing_event_id))
        live = [at for _, at in signals if now - at < domain.RISK_WINDOW]
        review_at = domain.plus(min(live), domain.RISK_WINDOW)
        if review_at is not None:
            await scheduler.schedule(conn, RISK_REVIEW, str(customer_id), review_at)
    elif was_at_risk:
        await commands.emit_named(conn, ctx, customer_id, CustomerRiskCleared(
            customer_id=str(customer_id), causing_event_id=causing_event_id))
        await scheduler.cancel(conn, RISK_REVIEW, str(customer_id))
    if rec.at_risk != was_at_risk:
        await memberships.refresh(conn, ctx, [customer_id], "risk")


async def review_risk(conn: Conn, ctx: commands.Context, customer_id: uuid.UUID,
                      work_key: str) -> None:
    """Signals expired (run by the scheduler): re-evaluate."""
    rec = await store.load(conn, customer_id, follow_alias=False, full=False)
    if rec.erased_at is None and rec.merged_into is None:
        await reassess(conn, ctx, customer_id, f"risk_review:{work_key}")
