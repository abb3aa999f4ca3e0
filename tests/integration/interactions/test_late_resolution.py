"""A case resolved after its deadline before the scheduler breached it (the
scheduler was down or behind) is breached by the resolution: the same
``case.breached``, ``breached_promise`` signal and breach count as the
scheduler's, once only, also when the scheduler fires at the same time."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from crm.customers.v1 import customers_pb2 as cpb
from crm.interactions.v1 import interactions_pb2 as pb
from crm_runtime import uow
from crm_runtime.clock import ManualClock
from crm_runtime.db import create_pool
from crm_runtime.migrations import migrate, migrations_for
from crm_runtime.scheduler import Scheduler
from crm_runtime.settings import Settings
from services.interactions import cases, commands, handlers, trust
from services.interactions.app import SPEC as INTERACTIONS
from tests.integration.interactions.conftest import Pair
from tests.integration.interactions.test_interactions_service import (
    api,
    consent,
    customers,
    events_of,
    new_customer,
    record,
)
from tests.support.kafka import wait_for

T0 = datetime(2032, 6, 1, 12, tzinfo=UTC)


# --- over the running services ------------------------------------------------

async def test_a_case_resolved_late_without_the_scheduler_is_breached_first(
        pair: Pair) -> None:
    cid = await new_customer(pair)
    await consent(pair, cid)  # to surveys
    unit = f"desk-{uuid.uuid4().hex[:6]}"
    complaint = await record(pair, customer_id=cid, channel="phone", kind="complaint",
                             unit=unit, notes="nobody called back")
    pool = pair.interactions.runner.pool
    assert pool is not None
    # The scheduler is down: its warning and breach of this case never come due.
    moved = await pool.execute("UPDATE scheduled_work SET due_at = 'infinity' "
                               "WHERE item_key LIKE $1 || '/%'", complaint.case_id)
    assert moved == "UPDATE 4"  # first response and resolution: a warning and a breach each
    pair.clock.advance(timedelta(hours=49))  # the 48 h promise is broken
    await asyncio.sleep(0.5)  # time for a (wrongly) running scheduler to act
    case = await api(pair).ResolveCase(pb.ResolveCaseRequest(
        case_id=complaint.case_id, resolution="called back, refund issued"),
        metadata=pair.interactions.metadata)
    assert case.status == "resolved" and case.resolved_late and case.breached
    assert await pool.fetchval("SELECT count(*) FROM scheduled_work WHERE item_key LIKE "
                               "$1 || '%'", complaint.case_id) == 0

    # recorded, opened, both milestones breached, the signal, resolved, survey
    found = await events_of(pair, cid, 7)
    types = [t for t, _ in found]
    assert types == ["interaction.recorded", "case.opened", "case.breached", "case.breached",
                     "customer.dissatisfaction_signal", "case.resolved", "survey.requested"]
    assert [d["milestone"] for t, d in found if t == "case.breached"] == [
        "first_response", "resolution"]
    data = dict(found)
    assert data["case.breached"]["case_id"] == complaint.case_id
    assert data["customer.dissatisfaction_signal"]["reason"] == "breached_promise"
    assert data["customer.dissatisfaction_signal"]["case_id"] == complaint.case_id
    assert data["case.resolved"]["late"] is True
    breached = await api(pair).ListCases(pb.ListCasesRequest(filter="breached",
                                                             customer_id=cid),
                                         metadata=pair.interactions.metadata)
    assert [c.case_id for c in breached.cases] == [complaint.case_id]
    report = await api(pair).GetSatisfactionReport(pb.GetSatisfactionReportRequest(
        group_by="unit"), metadata=pair.interactions.metadata)
    row = next(r for r in report.rows if r.key == unit)
    assert (row.cases_opened, row.cases_resolved_in_time, row.cases_breached) == (1, 0, 1)

    # Resolving again changes nothing and breaches nothing more.
    await api(pair).ResolveCase(pb.ResolveCaseRequest(case_id=complaint.case_id,
                                                      resolution="again"),
                                metadata=pair.interactions.metadata)

    # The breach reached the customers service as the scheduler's would.
    async def at_risk() -> bool:
        c = await customers(pair).GetCustomer(cpb.GetCustomerRequest(customer_id=cid),
                                              metadata=pair.customers.metadata)
        return bool(c.at_risk) and "breached_promise" in c.risk_reasons

    await wait_for(at_risk, what="the customer marked at risk for the broken promise")
    again = await events_of(pair, cid, 7)
    assert [t for t, _ in again].count("case.breached") == 2  # once per milestone


async def test_a_case_resolved_in_time_is_not_breached(pair: Pair) -> None:
    cid = await new_customer(pair)
    complaint = await record(pair, customer_id=cid, channel="phone", kind="complaint")
    pair.clock.advance(timedelta(hours=2))
    case = await api(pair).ResolveCase(pb.ResolveCaseRequest(
        case_id=complaint.case_id, resolution="sorted"), metadata=pair.interactions.metadata)
    assert not case.breached and not case.resolved_late
    types = [t for t, _ in await events_of(pair, cid, 4)]
    assert "case.breached" not in types and "customer.dissatisfaction_signal" not in types


# --- the commands against the scheduler, on a schema of the test's own --------

async def _schema(settings: Settings, name: str) -> asyncpg.Pool:
    assert settings.database_url
    pool = await create_pool(settings.database_url, name, max_size=20)
    async with pool.acquire() as conn:
        await migrate(conn, name, migrations_for(INTERACTIONS.migrations))
    return pool


@pytest.fixture
async def own(settings: Settings, uid: str) -> AsyncIterator[tuple[asyncpg.Pool, ManualClock,
                                                                    commands.Context]]:
    pool = await _schema(settings, f"late_{uid}")
    clock = ManualClock(T0)
    try:
        yield pool, clock, commands.Context(clock=clock, lanes=4)
    finally:
        await pool.close()


async def _open(pool: asyncpg.Pool, ctx: commands.Context, n: int = 1) -> list[uuid.UUID]:
    ids = []
    async with pool.acquire() as conn, conn.transaction():
        for _ in range(n):
            ids.append(await cases.open_case(
                conn, ctx, customer_id=uuid.uuid4(), kind="complaint", channel="email",
                unit="care", summary="late", interaction_id=None,
                idempotency_key=str(uuid.uuid4())))
    return ids


async def _outbox(pool: asyncpg.Pool, event_type: str) -> list[dict[str, Any]]:
    rows = await pool.fetch("SELECT body FROM outbox WHERE event_type = $1 ORDER BY id",
                            event_type)
    return [json.loads(r["body"]) for r in rows]


async def _breaches(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    """The resolutions breached (complaints promise a first response too)."""
    return [e for e in await _outbox(pool, "case.breached") if e["milestone"] == "resolution"]


def _breaches_counted() -> float:
    return REGISTRY.get_sample_value("crm_cases_breached_total", {
        "service": "interactions", "kind": "complaint", "channel": "email",
        "milestone": "resolution", "unit": "care"}) or 0.0


def _scheduler(pool: asyncpg.Pool, clock: ManualClock, ctx: commands.Context) -> Scheduler:
    return Scheduler(pool, clock, {cases.WARN: handlers.on_breach_warning(ctx),
                                   cases.BREACH: handlers.on_breach(ctx)},
                     service="interactions", poll_interval=0.01)


async def _resolve(pool: asyncpg.Pool, ctx: commands.Context, case_id: uuid.UUID) -> None:
    async with uow.transaction(pool) as conn:
        await cases.resolve(conn, ctx, case_id, "done")


async def test_late_resolution_breaches_once_then_resolves_with_the_same_count(
        own: tuple[asyncpg.Pool, ManualClock, commands.Context]) -> None:
    pool, clock, ctx = own
    [case_id] = await _open(pool, ctx)
    clock.advance(timedelta(hours=49))  # no scheduler runs
    counted = _breaches_counted()
    await _resolve(pool, ctx, case_id)
    assert _breaches_counted() == counted + 1
    assert [e["case_id"] for e in await _breaches(pool)] == [str(case_id)]
    signals = await _outbox(pool, "customer.dissatisfaction_signal")
    assert [(s["reason"], s["case_id"]) for s in signals] == [("breached_promise", str(case_id))]
    order = [r["event_type"] for r in await pool.fetch("SELECT event_type FROM outbox "
                                                       "ORDER BY id")]
    assert order.index("case.breached") < order.index("case.resolved")
    row = await pool.fetchrow("SELECT * FROM cases WHERE case_id = $1", case_id)
    assert row is not None and row["breached"] and row["resolved_late"]
    assert row["status"] == "resolved"
    # The scheduler coming back later finds nothing left to do.
    assert await _scheduler(pool, clock, ctx).run_due() == 0
    # Reopened and resolved late again: the broken promise counts once.
    async with uow.transaction(pool) as conn:
        await cases.reopen(conn, ctx, case_id, "not fixed")
    assert await _scheduler(pool, clock, ctx).run_due() == 0
    await _resolve(pool, ctx, case_id)
    assert len(await _breaches(pool)) == 1
    assert _breaches_counted() == counted + 1


async def test_the_scheduler_mid_breach_and_a_late_resolution_breach_once(
        own: tuple[asyncpg.Pool, ManualClock, commands.Context]) -> None:
    pool, clock, ctx = own
    [case_id] = await _open(pool, ctx)
    clock.advance(timedelta(hours=49))
    counted = _breaches_counted()
    # The scheduler's transaction: it took the due rows and breached the case,
    # and has not committed yet when the resolution arrives.
    async with uow.transaction(pool) as sched:
        rows = await sched.fetch("SELECT id FROM scheduled_work WHERE item_key = $1 "
                                 "FOR UPDATE SKIP LOCKED", f"{case_id}/resolution")
        assert len(rows) == 2  # the resolution's warning and breach
        await cases.breach(sched, ctx, case_id)
        await sched.execute("DELETE FROM scheduled_work WHERE id = ANY($1::bigint[])",
                            [r["id"] for r in rows])
        resolving = asyncio.create_task(_resolve(pool, ctx, case_id))
        await asyncio.sleep(0.3)
        assert not resolving.done()  # waits for the scheduler, does not breach beside it
    await asyncio.wait_for(resolving, 10)
    assert len(await _breaches(pool)) == 1
    assert len(await _outbox(pool, "customer.dissatisfaction_signal")) == 1
    assert [e["late"] for e in await _outbox(pool, "case.resolved")] == [True]
    assert _breaches_counted() == counted + 1


async def test_a_late_resolution_in_progress_keeps_the_scheduler_off_the_case(
        own: tuple[asyncpg.Pool, ManualClock, commands.Context]) -> None:
    pool, clock, ctx = own
    [case_id] = await _open(pool, ctx)
    clock.advance(timedelta(hours=49))
    async with uow.transaction(pool) as conn:
        await cases.resolve(conn, ctx, case_id, "done")
        # The scheduler runs while the resolution is not committed yet.
        assert await asyncio.wait_for(_scheduler(pool, clock, ctx).run_due(), 10) == 0
    assert await _scheduler(pool, clock, ctx).run_due() == 0
    assert len(await _breaches(pool)) == 1


async def test_scheduler_and_late_resolutions_racing_breach_each_case_once(
        own: tuple[asyncpg.Pool, ManualClock, commands.Context]) -> None:
    pool, clock, ctx = own
    ids = await _open(pool, ctx, 60)
    clock.advance(timedelta(hours=49))
    counted = _breaches_counted()
    replicas = [_scheduler(pool, clock, ctx) for _ in range(2)]
    loops = [asyncio.create_task(s.run()) for s in replicas]
    try:
        # Every resolution succeeds (no deadlock with the scheduler's locks).
        await asyncio.wait_for(asyncio.gather(*(_resolve(pool, ctx, i) for i in ids)), 60)
    finally:
        for s in replicas:
            s.stop()
        await asyncio.gather(*loops)
    breaches = [e["case_id"] for e in await _breaches(pool)]
    assert sorted(breaches) == sorted(str(i) for i in ids)  # each exactly once
    signals = [s["case_id"] for s in await _outbox(pool, "customer.dissatisfaction_signal")]
    assert sorted(signals) == sorted(breaches)
    assert all(e["late"] for e in await _outbox(pool, "case.resolved"))
    assert await pool.fetchval("SELECT count(*) FROM cases WHERE NOT breached") == 0
    # Nothing of the breaches is left (each resolution asks for a survey, later).
    assert await pool.fetchval("SELECT count(*) FROM scheduled_work WHERE kind <> $1",
                               trust.SURVEY_REQUEST_DUE) == 0
    assert _breaches_counted() == counted + len(ids)
