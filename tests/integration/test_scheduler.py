"""The durable scheduler over a real PostgreSQL, with several replicas."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg

from crm_runtime.clock import ManualClock
from crm_runtime.db import Conn, create_pool
from crm_runtime.migrations import migrate, migrations_for
from crm_runtime.scheduler import DueWork, Scheduler, cancel, schedule
from crm_runtime.settings import Settings
from tests.support.kafka import wait_for

START = datetime(2030, 1, 1, tzinfo=UTC)


async def _setup(settings: Settings, schema: str) -> asyncpg.Pool:
    assert settings.database_url
    pool = await create_pool(settings.database_url, schema)
    async with pool.acquire() as conn:
        await migrate(conn, schema, migrations_for(None))
        await conn.execute("CREATE TABLE fired (item_key text NOT NULL, replica int NOT NULL)")
    return pool


def _handler(replica: int):  # type: ignore[no-untyped-def]
    async def run(conn: Conn, work: DueWork) -> None:
        await conn.execute("INSERT INTO fired VALUES ($1, $2)", work.key, replica)

    return run


async def test_due_work_runs_once_across_replicas_on_the_injected_clock(
        settings: Settings, uid: str) -> None:
    pool = await _setup(settings, f"sched_{uid}")
    clock = ManualClock(START)
    try:
        async with pool.acquire() as conn, conn.transaction():
            for i in range(300):
                await schedule(conn, "reminder", f"r{i}", START + timedelta(hours=1 + i % 3),
                               {"n": i})
            # Scheduling the same item again moves it instead of doubling it.
            await schedule(conn, "reminder", "r0", START + timedelta(days=30))
            assert await cancel(conn, "reminder", "r1")
        replicas = [Scheduler(pool, clock, {"reminder": _handler(n)}, service="t",
                              batch_size=25, poll_interval=0.02) for n in range(3)]
        tasks = [asyncio.create_task(s.run()) for s in replicas]
        await asyncio.sleep(0.3)
        assert await pool.fetchval("SELECT count(*) FROM fired") == 0  # nothing due yet
        clock.advance(timedelta(hours=1, minutes=30))  # the first third is due
        await wait_for(lambda: _count(pool, 99), what="first third fired")
        clock.advance(timedelta(hours=2))
        await wait_for(lambda: _count(pool, 298), what="the rest fired")
        await asyncio.sleep(0.3)
        for s in replicas:
            s.stop()
        await asyncio.gather(*tasks)
        rows = await pool.fetch("SELECT item_key, count(*) AS n FROM fired GROUP BY item_key")
        assert all(r["n"] == 1 for r in rows)
        assert {r["item_key"] for r in rows} == {f"r{i}" for i in range(2, 300)}
        assert len({r["replica"] for r in await pool.fetch("SELECT replica FROM fired")}) > 1
        remaining = await pool.fetch("SELECT item_key FROM scheduled_work")
        assert [r["item_key"] for r in remaining] == ["r0"]  # moved a month ahead
    finally:
        await pool.close()


async def _count(pool: asyncpg.Pool, expected: int) -> bool:
    return bool(await pool.fetchval("SELECT count(*) FROM fired") == expected)


async def test_a_failing_item_is_retried_later_without_blocking_others(
        settings: Settings, uid: str) -> None:
    pool = await _setup(settings, f"schedfail_{uid}")
    clock = ManualClock(START)
    calls = 0

    async def flaky(conn: Conn, work: DueWork) -> None:
        nonlocal calls
        calls += 1
        if work.key == "bad":
            raise RuntimeError("template missing")
        await conn.execute("INSERT INTO fired VALUES ($1, 0)", work.key)

    try:
        async with pool.acquire() as conn, conn.transaction():
            for key in ("a", "bad", "b"):
                await schedule(conn, "send", key, START)
        scheduler = Scheduler(pool, clock, {"send": flaky}, service="t",
                              retry_after=timedelta(minutes=5))
        assert await scheduler.run_due() == 2
        row = await pool.fetchrow(
            "SELECT attempts, last_error, due_at FROM scheduled_work WHERE item_key = 'bad'")
        assert row is not None
        assert row["attempts"] == 1 and "template missing" in row["last_error"]
        assert row["due_at"] == START + timedelta(minutes=5)
        assert await scheduler.run_due() == 0  # not due again yet
    finally:
        await pool.close()


async def test_due_work_runs_in_the_trace_that_scheduled_it(settings: Settings,
                                                            uid: str) -> None:
    """With tracing on, the work is a span ``run <kind>`` whose parent is the
    span that scheduled it; events it writes would continue that trace."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from crm_runtime import logs, tracing
    from crm_runtime.scheduler import schedule_many

    pool = await _setup(settings, f"sched_trace_{uid}")
    clock = ManualClock(START)
    seen: dict[str, str] = {}

    async def remember(conn: Conn, work: DueWork) -> None:
        seen[work.key] = logs.current_traceparent()

    exporter = InMemorySpanExporter()
    tracing.configure("none", "test", span_exporter=exporter)
    try:
        parent, other = logs.new_traceparent(), logs.new_traceparent()
        async with pool.acquire() as conn, conn.transaction():
            with logs.context(traceparent=parent):
                await schedule(conn, "review", "one", START)
            await schedule_many(conn, "review", [("two", START, {}), ("three", START, {})],
                                traceparents=[other, ""])
        scheduler = Scheduler(pool, clock, {"review": remember}, service="t")
        assert await scheduler.run_due() == 3
    finally:
        tracing.configure("none", "test")
        await pool.close()
    assert logs.trace_id(seen["one"]) == logs.trace_id(parent)
    assert logs.trace_id(seen["two"]) == logs.trace_id(other)
    assert logs.trace_id(seen["three"]) not in ("", logs.trace_id(parent), logs.trace_id(other))
    spans: dict[str, str | None] = {logs.trace_id(parent): None, logs.trace_id(other): None}
    for span in exporter.get_finished_spans():
        if span.name == "run review" and format(span.context.trace_id, "032x") in spans:
            assert span.parent is not None
            spans[format(span.context.trace_id, "032x")] = format(span.parent.span_id, "016x")
    assert spans == {logs.trace_id(parent): parent.split("-")[2],
                     logs.trace_id(other): other.split("-")[2]}


async def test_many_items_due_at_once_on_two_runners_run_once_without_deadlock(
        settings: Settings, uid: str) -> None:
    """A clock jump makes hundreds of items due at once; each handler locks
    the row of the customer it concerns, as the services' handlers do, and
    the items of one customer are spread over both runners. Neither runner
    may hold one item's locks while waiting for another's, so no deadlock."""
    pool = await _setup(settings, f"sched_jump_{uid}")
    clock = ManualClock(START)
    customers = 8

    def handler(replica: int):  # type: ignore[no-untyped-def]
        async def run(conn: Conn, work: DueWork) -> None:
            await conn.execute("SELECT 1 FROM customer WHERE id = $1 FOR UPDATE",
                               work.payload["customer"])
            await asyncio.sleep(0.002)  # the work between the lock and the commit
            await conn.execute("UPDATE customer SET n = n + 1 WHERE id = $1",
                               work.payload["customer"])
            await conn.execute("INSERT INTO fired VALUES ($1, $2)", work.key, replica)

        return run

    try:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("CREATE TABLE customer (id int PRIMARY KEY, n int NOT NULL)")
            await conn.execute("INSERT INTO customer SELECT i, 0 FROM generate_series(0, $1) i",
                               customers - 1)
            shuffled = random.Random(7)
            for i in range(240):  # all due at the same instant, customers in no order
                await schedule(conn, "churn", f"c{i}", START + timedelta(hours=1),
                               {"customer": shuffled.randrange(customers)})
        runners = [Scheduler(pool, clock, {"churn": handler(n)}, service="t", batch_size=40)
                   for n in range(2)]
        clock.advance(timedelta(days=366))

        async def drain(runner: Scheduler) -> None:
            # run_due raises what the run loop would only log and retry.
            while await runner.run_due():
                pass

        await asyncio.wait_for(asyncio.gather(*(drain(r) for r in runners)), 60)
        rows = await pool.fetch("SELECT item_key, count(*) AS n FROM fired GROUP BY item_key")
        assert {r["item_key"] for r in rows} == {f"c{i}" for i in range(240)}
        assert all(r["n"] == 1 for r in rows), [r for r in rows if r["n"] != 1]
        assert await pool.fetchval("SELECT sum(n) FROM customer") == 240
        assert await pool.fetchval("SELECT count(*) FROM scheduled_work") == 0
        replicas = {r["replica"] for r in await pool.fetch("SELECT replica FROM fired")}
        assert replicas == {0, 1}, "both runners took part"
    finally:
        await pool.close()


class _CountingPool:
    """A pool that counts the connections taken from it (what the scheduler
    asks of a pool is ``acquire``)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.acquired = 0

    def acquire(self) -> Any:
        self.acquired += 1
        return self._pool.acquire()


async def test_an_idle_round_takes_one_connection_and_lanes_join_when_work_is_due(
        settings: Settings, uid: str) -> None:
    """An idle round (nothing due) is one statement on one connection; once
    the first lane finds an item due, the other lanes join and the batch is
    run side by side."""
    pool = await _setup(settings, f"sched_idle_{uid}")
    clock = ManualClock(START)
    counting = _CountingPool(pool)
    try:
        async with pool.acquire() as conn, conn.transaction():
            for i in range(40):
                await schedule(conn, "reminder", f"r{i}", START + timedelta(hours=1))
        runner = Scheduler(cast(asyncpg.Pool, counting), clock, {"reminder": _handler(0)},
                           service="t", batch_size=100, lanes=4)
        assert await runner.run_due() == 0
        assert counting.acquired == 1
        clock.advance(timedelta(hours=2))
        counting.acquired = 0
        assert await runner.run_due() == 40
        assert counting.acquired == 4
        assert await _count(pool, 40)
        assert await pool.fetchval("SELECT count(*) FROM scheduled_work") == 0
    finally:
        await pool.close()
