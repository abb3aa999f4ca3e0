"""Links and merges of customer records: a requester linked to the
decision-maker they buy for (indirect attention), and two records of one
person merged into the survivor, which keeps both histories and identifiers.

Split from :mod:`commands` because a merge touches every part of a customer
(purchases, stage, churn schedule, risk) and reads best in one place.
"""

from __future__ import annotations

import uuid

from crm_contracts.customers import CustomersLinked, CustomersMerged
from crm_runtime import scheduler
from crm_runtime.db import Conn
from crm_runtime.errors import FailedPrecondition, InvalidArgument
from crm_runtime.events import EventPayload
from services.customers import commands, domain, memberships, risk, store
from services.customers.domain import StageCause, StageChange


async def link(conn: Conn, ctx: commands.Context, requester_id: uuid.UUID,
               decision_maker_id: uuid.UUID, role: str) -> store.CustomerRecord:
    role = role.strip().lower()
    if not role:
        raise InvalidArgument("role", "required, e.g. 'employee_of' or 'buys_for'")
    requester = await store.load(conn, requester_id)
    decider = await store.load(conn, decision_maker_id)
    if requester.customer_id == decider.customer_id:
        raise InvalidArgument("decision_maker_id", "must be a different customer")
    commands.require_active(requester)
    commands.require_active(decider)
    if await store.insert_link(conn, requester.customer_id, decider.customer_id, role,
                               ctx.clock.now()):
        await commands.emit_named(conn, ctx, requester.customer_id, CustomersLinked(
            customer_id=str(requester.customer_id),
            decision_maker_id=str(decider.customer_id), role=role))
    return await store.load(conn, requester.customer_id)


async def merge(conn: Conn, ctx: commands.Context, survivor_id: uuid.UUID, merged_id: uuid.UUID,
                request_id: str) -> store.CustomerRecord:
    """The survivor keeps both histories and identifiers; the other id becomes
    an alias of it. Merging an alias again is a no-op."""
    if survivor_id == merged_id:
        raise InvalidArgument("merged_customer_id", "must differ from survivor_customer_id")
    # Lock both rows in a fixed order so concurrent merges cannot deadlock.
    for cid in sorted([survivor_id, merged_id]):
        await store.load(conn, cid, lock=True, follow_alias=False)
    survivor = await store.load(conn, survivor_id, follow_alias=False)
    merged = await store.load(conn, merged_id, follow_alias=False)
    if merged.merged_into == survivor.customer_id:
        return survivor  # already merged: a retried call
    if survivor.merged_into is not None:
        raise FailedPrecondition(f"survivor {survivor_id} is itself merged into "
                                 f"{survivor.merged_into}")
    if merged.merged_into is not None:
        raise FailedPrecondition(f"customer {merged_id} is already merged into "
                                 f"{merged.merged_into}")
    commands.require_active(survivor)
    commands.require_active(merged)
    await store.move_records(conn, survivor.customer_id, merged.customer_id)
    await store.recompute_purchases(conn, survivor)
    survivor.do_not_contact = survivor.do_not_contact or merged.do_not_contact
    for key, value in merged.profile.items():
        survivor.profile.setdefault(key, value)
    if not survivor.display_name:
        survivor.display_name = merged.display_name
    events: list[EventPayload] = []
    target = domain.stage_after_merge(survivor.stage, merged.stage, survivor.purchase_count)
    if target != survivor.stage:
        events += await commands.change_stage(
            conn, ctx, survivor, StageChange(survivor.stage, target, StageCause.MERGED),
            request_id)
    now = ctx.clock.now()
    merged.merged_into = survivor.customer_id
    merged.display_name, merged.profile = "", {}
    await store.save_core(conn, merged, now)
    await store.save_core(conn, survivor, now)
    await scheduler.cancel(conn, commands.CHURN, str(merged.customer_id))
    await scheduler.cancel(conn, risk.RISK_REVIEW, str(merged.customer_id))
    await commands.schedule_churn(conn, ctx, survivor)
    events.append(CustomersMerged(
        customer_id=str(survivor.customer_id), merged_customer_id=str(merged.customer_id),
        stage=survivor.stage.value, purchase_count=survivor.purchase_count))
    evaluation = await memberships.evaluate(conn, ctx, [survivor.customer_id])
    await commands.emit_named(conn, ctx, survivor.customer_id, *events, evaluation=evaluation)
    await memberships.merged(conn, ctx, evaluation, merged.customer_id)
    await risk.reassess(conn, ctx, survivor.customer_id, request_id)
    return await store.load(conn, survivor.customer_id)
