"""The benchmark's runtime floor (``bench.floor``) does what its figure claims:
one row and one published ``loyalty.discount_issued`` per distinct input,
through the inbox (a redelivered record changes nothing) and the outbox; and
the database CPU figure counts the other backends, not the asking one."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from bench import floor
from bench.service import backends_cpu
from bench.workloads.consume import MIGRATION, TABLE
from crm_contracts.customers import StageChanged
from crm_contracts.loyalty import DiscountIssued
from crm_runtime.events import Envelope
from crm_runtime.migrations import migrate, migrations_for
from crm_runtime.service import ServiceRunner
from crm_runtime.settings import Settings
from tests.support.kafka import create_topics, produce_envelopes, read_topic, wait_for


async def test_one_row_and_one_published_event_per_distinct_input(
        settings: Settings, own_database: str, uid: str) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    in_topic, out_topic = f"t.floor.in.{uid}", f"t.floor.out.{uid}"
    await create_topics(bootstrap, [in_topic, out_topic])
    spec = floor.build(in_topic, out_topic)
    conn = await asyncpg.connect(own_database)
    try:
        await migrate(conn, spec.schema, [*migrations_for(None), MIGRATION])
        customers = [str(uuid.uuid4()) for _ in range(30)]
        envelopes = [Envelope(data=StageChanged(
            customer_id=cid, from_stage="one_time", to_stage="repeat", cause="purchase",
            causing_event_id=str(uuid.uuid4()), purchase_count=2), subject=cid,
            source="/crm/customers", topic_override=in_topic) for cid in customers]
        # The first five again: a redelivery, the same event ids.
        await produce_envelopes(bootstrap, [*envelopes, *envelopes[:5]])
        runner = ServiceRunner(spec, settings.model_copy(update={"database_url": own_database}),
                               grpc_port=0, serve_metrics=False)
        task = asyncio.create_task(runner.run())
        try:
            async def stored() -> bool:
                return bool(await conn.fetchval(
                    f"""SELECT count(*) = 30 AND NOT EXISTS (
                               SELECT 1 FROM floor.outbox WHERE sent_at IS NULL)
                          FROM floor.{TABLE}"""))

            await wait_for(stored, timeout=60, what="30 rows and their events sent")
            records = await read_topic(bootstrap, out_topic, expect=30)
        finally:
            runner.stop()
            await asyncio.wait_for(task, 30)
        rows = await conn.fetch(f"SELECT event_id, customer_id, amount FROM floor.{TABLE}")
        assert sorted((r["event_id"], r["customer_id"], r["amount"]) for r in rows) == sorted(
            (e.id, e.subject, 2) for e in envelopes)
        assert sorted(r.key.decode() for r in records if r.key) == sorted(customers)
        types = {v.decode() for r in records for k, v in r.headers if k == "ce_type"}
        assert types == {DiscountIssued.event_type}
    finally:
        await conn.close()


async def test_backend_cpu_counts_the_other_backends_only(own_database: str) -> None:
    asking = await asyncpg.connect(own_database)
    other = await asyncpg.connect(own_database)
    try:
        other_pid = await other.fetchval("SELECT pg_backend_pid()")
        before = await backends_cpu(asking)
        await other.fetchval("SELECT count(*) FROM generate_series(1, 3000000)")
        after = await backends_cpu(asking)
        assert await asking.fetchval("SELECT pg_backend_pid()") not in after
        assert after[other_pid] - before[other_pid] > 0
    finally:
        await other.close()
        await asking.close()
