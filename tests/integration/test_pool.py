"""The service pool (crm_runtime.db): a released connection carries nothing
into its next use (the cheap reset), and its statements are not JIT-compiled."""

from __future__ import annotations

import asyncio

import pytest

from crm_runtime.db import ARRAY_TYPES, create_pool
from crm_runtime.service import open_pool
from crm_runtime.settings import Settings


@pytest.mark.parametrize("leave", ["open transaction", "transaction settings", "xact lock"])
async def test_a_released_connection_starts_clean(database_url: str, uid: str,
                                                  leave: str) -> None:
    schema = f"pool_{uid}"
    pool = await create_pool(database_url, schema, max_size=1, min_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.execute(f"CREATE SCHEMA {schema}")
            await conn.execute(f"CREATE TABLE {schema}.t (v int)")
        async with pool.acquire() as conn:
            first_pid = conn.get_server_pid()
            if leave == "open transaction":  # as a task cancelled mid-way would
                await conn.execute("BEGIN")
                await conn.execute("INSERT INTO t VALUES (1)")
            elif leave == "transaction settings":
                async with conn.transaction():
                    await conn.execute("SET LOCAL search_path TO public")
                    await conn.execute("SET LOCAL statement_timeout = 1")
            else:
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock(4242)")
        async with pool.acquire() as conn:
            assert conn.get_server_pid() == first_pid  # the same connection, reused
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT count(*) FROM t") == 0
            assert await conn.fetchval("SHOW search_path") == f"{schema},public"
            assert await conn.fetchval("SHOW statement_timeout") == "0"
            assert await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                " AND pid = pg_backend_pid()") == 0
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await pool.close()


async def test_service_connections_do_not_jit_compile(database_url: str, uid: str) -> None:
    # A plan estimated above jit_above_cost would be compiled first, about
    # 50 ms of LLVM work before a statement that runs in a few milliseconds.
    pool = await create_pool(database_url, f"jit_{uid}", max_size=1)
    try:
        async with pool.acquire() as conn:
            plan = "\n".join(r[0] for r in await conn.fetch(
                "EXPLAIN SELECT count(*) FROM pg_class a, pg_class b, pg_class c"))
            assert "JIT" not in plan, plan
    finally:
        await pool.close()


async def test_a_new_connection_knows_the_array_types_before_its_first_statement(
        database_url: str, uid: str) -> None:
    # asyncpg learns an array type with a catalog query the first time a
    # connection meets it; a pool connection has learnt every one the
    # services use when it is made, not on the hot path of its first batches.
    pool = await create_pool(database_url, f"pool_{uid}", max_size=1, min_size=1)
    try:
        async with pool.acquire() as conn:
            queries: list[str] = []
            conn.add_query_logger(lambda record: queries.append(record.query))
            values: list[list[object]] = [[] for _ in ARRAY_TYPES]
            casts = ", ".join(f"${n}::{t}[]" for n, t in enumerate(ARRAY_TYPES, 1))
            row = await conn.fetchrow(f"SELECT {casts}", *values)
            assert row is not None and list(row.values()) == values
            await asyncio.sleep(0.05)
            assert not [q for q in queries if "pg_catalog" in q or "typeinfo" in q]
    finally:
        await pool.close()


async def test_a_service_pool_opens_its_minimum_at_start(database_url: str, uid: str) -> None:
    """The first batches of a service under load take connections that are
    already set up (CRM_DB_POOL_MIN), not ones made on their way."""
    schema = f"pool_{uid}"
    settings = Settings(database_url=database_url, db_pool_min=3, db_pool_max=5)
    pool = await open_pool(settings, schema)
    try:
        backends = await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            f"crm-{schema}")
        assert (pool.get_size(), pool.get_idle_size(), backends) == (3, 3, 3)
    finally:
        await pool.close()
