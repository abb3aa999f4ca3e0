"""The durable scheduler over a real PostgreSQL, with several replicas."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

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
