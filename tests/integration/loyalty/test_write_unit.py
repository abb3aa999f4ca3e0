"""A unit of work's rows reach every table the same whichever way each batch
travels (arrays below ``db.Rows.COPY_FROM`` rows, COPY from it)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import asyncpg
import pytest

from crm_runtime.db import Rows
from services.loyalty import batch_store, store
from tests.integration.loyalty.conftest import START
from tests.support.services import Running

SMALL, BIG = 3, Rows.COPY_FROM


def _pool(svc: Running) -> asyncpg.Pool:
    pool = svc.runner.pool
    assert pool is not None
    return pool


@pytest.mark.parametrize(("n_actions", "n_discounts", "n_follow_ups", "n_schedules", "n_views"), [
    (SMALL, SMALL, SMALL, SMALL, SMALL),
    (BIG, BIG, BIG, BIG, BIG),
    (BIG, SMALL, BIG, SMALL, BIG),
    (SMALL, BIG, 0, BIG, SMALL),
])
async def test_write_unit_stores_every_batch(svc: Running, n_actions: int, n_discounts: int,
                                             n_follow_ups: int, n_schedules: int,
                                             n_views: int) -> None:
    run = uuid.uuid4().hex[:8]
    customers = [uuid.uuid4() for _ in range(max(n_actions, n_discounts, n_follow_ups, n_views))]
    pool = _pool(svc)
    await pool.execute("INSERT INTO customer_view (customer_id, updated_at) "
                       "SELECT unnest($1::uuid[]), $2", customers, START)
    later = START + timedelta(days=1)
    # A schedule already there is moved, as scheduler.schedule() would.
    await pool.execute("INSERT INTO scheduled_work (kind, item_key, due_at, payload, attempts) "
                       "VALUES ('unit.test', $1, $2, '{}', 3)", f"{run}-0", START)
    actions = [(uuid.uuid4(), customers[i], f"rule-{run}", 2, i, "discount", "promotional",
                f"event-{run}-{i}", "customer.stage_changed", "performed", "", START)
               for i in range(n_actions)]
    discounts = [(uuid.uuid4(), f"CODE-{run}-{i}", customers[i], f"rule-{run}",
                  "percent" if i % 2 else "fixed", 10 if i % 2 else None,
                  None if i % 2 else 500, "EUR", 1000, "promotional", "", START, later)
                 for i in range(n_discounts)]
    follow_ups = [(uuid.uuid4(), customers[i], f"rule-{run}", "email", "thanks", "first",
                   "service", "", ["customer.erased", f"moot-{i}"] if i % 2 else [], START,
                   later, START) for i in range(n_follow_ups)]
    schedules = [("unit.test", f"{run}-{i}", later + timedelta(minutes=i), f"trace-{i}")
                 for i in range(n_schedules)]
    views = [store.View(customer_id=customers[i], stage="repeat", purchase_count=i,
                        segments=["vip", f"s{i}"] if i % 2 else [], at_risk=bool(i % 3),
                        referral_code=f"REF-{run}-{i}")
             for i in range(n_views)]
    async with pool.acquire() as conn, conn.transaction():
        await batch_store.write_unit(conn, actions=actions, discounts=discounts,
                               follow_ups=follow_ups, schedules=schedules, views=views,
                               now=later)

    got_actions = await pool.fetch("SELECT action_id, customer_id, action_index, at FROM actions "
                                   "WHERE rule_id = $1 ORDER BY action_index", f"rule-{run}")
    assert [(r["action_id"], r["customer_id"], r["action_index"], r["at"])
            for r in got_actions] == [(a[0], a[1], a[4], a[11]) for a in actions]
    got_discounts = await pool.fetch(
        "SELECT code, kind, percent, amount_minor, expires_at FROM discounts WHERE rule_id = $1 "
        "ORDER BY code", f"rule-{run}")
    assert sorted((r["code"], r["kind"], r["percent"], r["amount_minor"], r["expires_at"])
                  for r in got_discounts) == sorted((d[1], d[4], d[5], d[6], d[12])
                                                    for d in discounts)
    got_follow_ups = await pool.fetch(
        "SELECT follow_up_id, cancel_on, status, due_at FROM follow_ups WHERE rule_id = $1",
        f"rule-{run}")
    assert sorted((r["follow_up_id"], r["cancel_on"], r["status"], r["due_at"])
                  for r in got_follow_ups) == sorted((f[0], f[8], "scheduled", f[10])
                                                     for f in follow_ups)
    got_schedules = await pool.fetch(
        "SELECT item_key, due_at, attempts, traceparent FROM scheduled_work "
        "WHERE kind = 'unit.test' AND item_key LIKE $1", f"{run}-%")
    expected = {s[1]: (s[2], 0, s[3]) for s in schedules}  # {run}-0 moved, attempts reset
    assert {r["item_key"]: (r["due_at"], r["attempts"], r["traceparent"])
            for r in got_schedules} == expected
    got_views = await pool.fetch(
        "SELECT customer_id, stage, purchase_count, segments, at_risk, referral_code, updated_at "
        "FROM customer_view WHERE customer_id = ANY($1::uuid[])", customers)
    by_id = {r["customer_id"]: r for r in got_views}
    for v in views:
        row = by_id[v.customer_id]
        assert (row["stage"], row["purchase_count"], row["segments"], row["at_risk"],
                row["referral_code"], row["updated_at"]) == (
            v.stage, v.purchase_count, v.segments, v.at_risk, v.referral_code, later)
    untouched = [by_id[c] for c in customers[n_views:]]
    assert all(r["stage"] == "potential" and r["updated_at"] == START for r in untouched)


@pytest.mark.parametrize("size", [SMALL, BIG])
async def test_an_action_recorded_twice_fails_the_unit(svc: Running, size: int) -> None:
    """Whichever way the batch travels (a copied one goes straight into the
    table), a second record of an action violates its key and the whole unit
    rolls back."""
    run = uuid.uuid4().hex[:8]
    customer = uuid.uuid4()
    actions = [(uuid.uuid4(), customer, f"rule-{run}", 1, i, "discount", "promotional",
                f"event-{run}-{i}", "customer.stage_changed", "performed", "", START)
               for i in range(size)]
    pool = _pool(svc)
    async with pool.acquire() as conn, conn.transaction():
        await batch_store.write_unit(conn, actions=actions[:1], discounts=[], follow_ups=[],
                               schedules=[], views=[], now=START)
    with pytest.raises(asyncpg.UniqueViolationError):
        async with pool.acquire() as conn, conn.transaction():
            await batch_store.write_unit(conn, actions=actions[1:] + actions[:1], discounts=[],
                                   follow_ups=[], schedules=[("unit.test", f"{run}-x", START, "")],
                                   views=[], now=START)
    assert await pool.fetchval("SELECT count(*) FROM actions WHERE rule_id = $1",
                               f"rule-{run}") == 1
    assert not await pool.fetchval("SELECT count(*) FROM scheduled_work WHERE item_key = $1",
                                   f"{run}-x")
