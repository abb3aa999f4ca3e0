"""Migrations against a real PostgreSQL: idempotent and safe when concurrent."""

from __future__ import annotations

import asyncio

import asyncpg

from crm_runtime.db import connect
from crm_runtime.migrations import migrate, migrations_for
from crm_runtime.settings import Settings
from tests.support.ledger import MIGRATIONS


async def _schema_shape(conn: asyncpg.Connection, schema: str) -> list[tuple[str, str, str]]:
    rows = await conn.fetch(
        """SELECT table_name, column_name, data_type FROM information_schema.columns
            WHERE table_schema = $1 ORDER BY table_name, column_name""", schema)
    return [(r[0], r[1], r[2]) for r in rows]


async def test_migrating_twice_applies_once(settings: Settings, uid: str) -> None:
    assert settings.database_url
    schema = f"twice_{uid}"
    plan = migrations_for(MIGRATIONS)
    conn = await connect(settings.database_url)
    try:
        first = await migrate(conn, schema, plan)
        shape = await _schema_shape(conn, schema)
        second = await migrate(conn, schema, plan)
        assert first == [f"{m.source}/{m.version:03d}_{m.name}" for m in plan]
        assert first[0] == "runtime/001_outbox_inbox_scheduler"
        assert first[-1] == "service/001_ledger"
        assert second == []
        assert await _schema_shape(conn, schema) == shape
        assert {t for t, _, _ in shape} >= {"outbox", "inbox", "dead_letters", "scheduled_work",
                                            "schema_migrations", "balances", "applied_entries"}
        recorded = await conn.fetchval(f'SELECT count(*) FROM "{schema}".schema_migrations')
        assert recorded == len(plan)
    finally:
        await conn.close()


async def test_concurrent_migrators_do_not_collide(settings: Settings, uid: str) -> None:
    assert settings.database_url
    schema = f"race_{uid}"
    plan = migrations_for(MIGRATIONS)
    conns = [await connect(settings.database_url) for _ in range(6)]
    try:
        results = await asyncio.gather(*(migrate(c, schema, plan) for c in conns))
        applied = [r for r in results if r]
        assert len(applied) == 1  # exactly one process did the work, nobody failed
        count = await conns[0].fetchval(f'SELECT count(*) FROM "{schema}".schema_migrations')
        assert count == len(plan)
    finally:
        for c in conns:
            await c.close()


async def test_each_service_schema_is_separate(settings: Settings, uid: str) -> None:
    assert settings.database_url
    conn = await connect(settings.database_url)
    try:
        await migrate(conn, f"a_{uid}", migrations_for(MIGRATIONS))
        await migrate(conn, f"b_{uid}", migrations_for(None))
        tables_b = {t for t, _, _ in await _schema_shape(conn, f"b_{uid}")}
        assert "balances" not in tables_b and "outbox" in tables_b
    finally:
        await conn.close()
