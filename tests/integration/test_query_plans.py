"""Plans of statements whose cost grows with a table: they must reach their
rows through an index, also in the plan PostgreSQL caches for a prepared
statement (asyncpg prepares every statement) while a table is still small."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from crm_runtime.db import Rows, connect, load_rows
from crm_runtime.migrations import migrate, migrations_for
from crm_runtime.outbox import MARK_AND_READ, PRUNE_SENT
from services.loyalty import batch_store, store
from services.loyalty.app import SPEC as LOYALTY

START = datetime(2031, 3, 3, 12, tzinfo=UTC)


async def _plan(conn: asyncpg.Connection, sql: str, types: str, args: str) -> str:
    """The plan of ``sql`` prepared with parameter ``types``, for ``args``."""
    await conn.execute(f"PREPARE probe({types}) AS {sql}")
    try:
        rows = await conn.fetch(f"EXPLAIN EXECUTE probe({args})")
    finally:
        await conn.execute("DEALLOCATE probe")
    return "\n".join(r[0] for r in rows)


async def test_the_trigger_guard_probes_the_index_in_a_generic_plan(own_database: str) -> None:
    # The plan is made and cached while the table has a few hundred rows and
    # kept as it grows (until an ANALYZE): `trigger_event_id = ANY($1)` is then
    # a sequential scan comparing every row with every id.
    conn = await asyncpg.connect(own_database,
                                 server_settings={"plan_cache_mode": "force_generic_plan"})
    try:
        await migrate(conn, "loyalty", migrations_for(LOYALTY.migrations))
        await conn.execute("SET search_path = loyalty")
        await conn.execute(
            """INSERT INTO actions (action_id, customer_id, rule_id, rule_version, action_index,
                                    action_type, purpose, trigger_event_id, trigger_type,
                                    outcome, at)
               SELECT gen_random_uuid(), gen_random_uuid(), 'thank-you', 1, 0, 'follow_up',
                      'service', md5(i::text), 'customer.stage_changed', 'performed', now()
                 FROM generate_series(1, 300) AS i""")
        await conn.execute("ANALYZE actions")
        plan = await _plan(conn, batch_store._ACTIONS_OF_TRIGGERS.format(ids="$1"), "text[]",
                           "'{a,b}'")
        assert "Seq Scan on actions" not in plan, plan
        assert "actions_trigger_event_id_rule_id_action_index_key" in plan, plan
    finally:
        await conn.close()


async def test_pruning_sent_outbox_rows_uses_the_sent_at_index(own_database: str) -> None:
    conn = await asyncpg.connect(own_database)
    try:
        await migrate(conn, "plans", migrations_for(None))
        await conn.execute("SET search_path = plans")
        await conn.execute(
            """INSERT INTO outbox (event_id, topic, body, event_type, lane, ce_source, ce_time,
                                   ce_traceparent, sent_at)
               SELECT 'e' || i, 't', '', 'x.y', 0, '/s', '2031-01-01T00:00:00Z', '', now()
                 FROM generate_series(1, 20000) AS i""")
        await conn.execute("ANALYZE outbox")
        plan = await _plan(conn, PRUNE_SENT, "int", "168")
        assert "outbox_sent_at" in plan and "Seq Scan" not in plan, plan
    finally:
        await conn.close()


async def test_the_relay_reaches_unsent_rows_through_the_index_in_a_generic_plan(
        own_database: str) -> None:
    # A week of sent rows stays in the outbox (the retention): the relay's
    # mark-and-read must not read them to find the few unsent ones.
    conn = await asyncpg.connect(own_database,
                                 server_settings={"plan_cache_mode": "force_generic_plan"})
    try:
        await migrate(conn, "relay_plans", migrations_for(None))
        await conn.execute("SET search_path = relay_plans")
        await conn.execute(
            """INSERT INTO outbox (event_id, topic, body, event_type, lane, ce_source, ce_time,
                                   ce_traceparent, sent_at)
               SELECT 'e' || i, 't', '', 'x.y', i % 4, '/s', '2031-01-01T00:00:00Z', '',
                      CASE WHEN i > 19990 THEN NULL ELSE now() END
                 FROM generate_series(1, 20000) AS i""")
        await conn.execute("ANALYZE outbox")
        plan = await _plan(conn, MARK_AND_READ, "int[], int", "'{0,1,2,3}', 500")
        assert "Seq Scan on outbox" not in plan, plan
        assert "outbox_unsent" in plan and "outbox_pkey" in plan, plan
    finally:
        await conn.close()


async def test_a_large_batch_of_views_is_updated_through_the_index(own_database: str) -> None:
    # Copied rows reach the planner with their real count, and it hashes the
    # whole customer_view table to update a few hundred of its rows; arrays
    # keep the cached generic plan, which probes the primary key per row.
    conn = await connect(own_database, schema="loyalty",
                         server_settings={"plan_cache_mode": "force_generic_plan"})
    try:
        await migrate(conn, "loyalty", migrations_for(LOYALTY.migrations))
        await conn.execute("SET search_path = loyalty")
        ids = await conn.fetch(
            """INSERT INTO customer_view (customer_id, updated_at)
               SELECT gen_random_uuid(), now() FROM generate_series(1, 20000)
               RETURNING customer_id""")
        await conn.execute("ANALYZE customer_view")
        views = [store.View(customer_id=r["customer_id"], stage="repeat")
                 for r in ids[: 10 * Rows.COPY_FROM]]
        async with conn.transaction():
            sql, params = await load_rows(
                conn, batch_store._WRITE_UNIT,
                batch_store._unit_batches([], [], [], [], views, now=START))
            await conn.execute(f"PREPARE probe AS {sql}")  # types from the casts
            args = f"({', '.join(['NULL'] * len(params))})" if params else ""
            rows = await conn.fetch(f"EXPLAIN EXECUTE probe{args}")
        plan = "\n".join(r[0] for r in rows)
        assert "Index Scan using customer_view_pkey" in plan, plan
        assert "Seq Scan on customer_view" not in plan, plan
    finally:
        await conn.close()
