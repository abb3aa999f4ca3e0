"""The durable scheduler draining a backlog: ``events`` items due at once
(a clock jump, a churn date shared by many customers), each a handler that
writes one row, run by one :class:`~crm_runtime.scheduler.Scheduler` until
none is left; against the raw way, a loop of transactions that each take a
batch of rows ``FOR UPDATE SKIP LOCKED``, write each one's row and delete
the batch.

The product runs each item in a transaction of its own, on its lanes
(decisions/0040); the baseline is what a batch of items in one transaction
costs, the design that deadlocked when handlers lock shared rows.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import asyncpg

from bench.registry import Phases, Workload, register
from crm_runtime import scheduler
from crm_runtime.clock import ManualClock
from crm_runtime.db import Conn
from crm_runtime.scheduler import DueWork, Scheduler

START = datetime(2030, 1, 1, tzinfo=UTC)
KIND = "bench.drain"


@register
class SchedulerDrain(Workload):
    name = "scheduler.drain"
    order = 70
    summary = "Scheduler.run_due() until a backlog of due items is drained"
    baseline_summary = ("transactions of a batch of rows FOR UPDATE SKIP LOCKED, one INSERT "
                        "per row, one DELETE per batch")

    def describe(self) -> str:
        s = self.ctx.settings
        return (f"Scheduler.run_due() until {self.events} due items are drained: one item a "
                f"transaction, {scheduler.LANES} lanes, rounds of {s.scheduler_batch_size}")

    async def setup(self) -> None:
        self.product_schema = self.ctx.new_schema("drain")
        self.product_pool: asyncpg.Pool = await self.ctx.migrated_pool(self.product_schema)
        self.resources.push_async_callback(self.product_pool.close)
        self.raw_schema = self.ctx.new_schema("drainraw")
        self.raw_pool: asyncpg.Pool = await self.ctx.migrated_pool(self.raw_schema)
        self.resources.push_async_callback(self.raw_pool.close)
        due = START + timedelta(minutes=1)
        async with self.product_pool.acquire() as conn, conn.transaction():
            await conn.execute("CREATE TABLE fired (k text PRIMARY KEY)")
            for i in range(self.events):
                await scheduler.schedule(conn, KIND, f"k{i}", due)
        async with self.raw_pool.acquire() as conn, conn.transaction():
            await conn.execute("CREATE TABLE fired (k text PRIMARY KEY)")
            await conn.execute("CREATE TABLE work (id bigserial PRIMARY KEY, k text NOT NULL)")
            await conn.copy_records_to_table("work", records=[(f"k{i}",)
                                                              for i in range(self.events)],
                                             columns=["k"])

    async def baseline(self) -> float:
        batch = self.ctx.settings.scheduler_batch_size
        started = time.perf_counter()
        async with self.raw_pool.acquire() as conn:
            while True:
                async with conn.transaction():
                    rows = await conn.fetch(
                        "SELECT id, k FROM work ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                        batch)
                    for row in rows:
                        await conn.execute("INSERT INTO fired VALUES ($1)", row["k"])
                    await conn.execute("DELETE FROM work WHERE id = ANY($1::bigint[])",
                                       [r["id"] for r in rows])
                if len(rows) < batch:
                    break
        return time.perf_counter() - started

    async def product(self) -> Phases:
        async def fire(conn: Conn, work: DueWork) -> None:
            await conn.execute("INSERT INTO fired VALUES ($1)", work.key)

        runner = Scheduler(self.product_pool, ManualClock(START + timedelta(hours=1)),
                           {KIND: fire}, service="bench",
                           batch_size=self.ctx.settings.scheduler_batch_size)
        started = time.perf_counter()
        while await runner.run_due():
            pass
        return {"drain": time.perf_counter() - started}

    async def verify(self) -> None:
        for pool in (self.product_pool, self.raw_pool):
            fired = await pool.fetchval("SELECT count(*) FROM fired")
            if fired != self.events:
                raise RuntimeError(f"scheduler.drain: {fired} items ran, expected "
                                   f"{self.events}")
        left = await self.product_pool.fetchval("SELECT count(*) FROM scheduled_work")
        if left:
            raise RuntimeError(f"scheduler.drain: {left} items left in scheduled_work")
