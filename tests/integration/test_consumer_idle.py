"""An idle consumer stops fetching and still takes what comes after a
quiet spell (the idle probe of ``crm_runtime.consumer``), over a real
PostgreSQL and the real (embedded) broker."""

from __future__ import annotations

import asyncio

from crm_runtime.consumer import EventConsumer, dlq_topic
from crm_runtime.db import create_pool
from crm_runtime.events import Envelope
from crm_runtime.migrations import migrate, migrations_for
from crm_runtime.settings import Settings
from tests.support.kafka import create_topics, produce_envelopes, wait_for
from tests.support.ledger import MIGRATIONS, EntryRequested, make_handler


async def test_an_idle_consumer_pauses_fetching_and_wakes_for_new_records(
        settings: Settings, uid: str) -> None:
    schema, requests, booked = f"idle_{uid}", f"t.req.{uid}", f"t.booked.{uid}"
    assert settings.database_url and settings.kafka_bootstrap_servers
    bootstrap = settings.kafka_bootstrap_servers
    await create_topics(bootstrap, [requests, booked, dlq_topic(requests)])
    pool = await create_pool(settings.database_url, schema)
    async with pool.acquire() as conn:
        await migrate(conn, schema, migrations_for(MIGRATIONS))
    options = settings.consumer_options() | {"idle_after_ms": 300, "idle_probe_ms": 400}
    consumer = EventConsumer(pool, bootstrap_servers=bootstrap, group=f"g-{schema}",
                             topics=[requests],
                             handlers={"test.entry_requested": make_handler(booked, 2)},
                             service="ledger", lanes=2, batch_wait_ms=50,
                             consumer_options=options)

    def entries(first: int, n: int) -> list[Envelope]:
        return [Envelope(data=EntryRequested(customer_id=f"c{i}", amount=i), subject=f"c{i}",
                         source="/test/pos", topic_override=requests)
                for i in range(first, first + n)]

    async def applied(n: int) -> bool:
        return bool(await pool.fetchval("SELECT count(*) FROM applied_entries") == n)

    async def paused() -> bool:
        return bool(consumer._kafka.paused())

    task = asyncio.create_task(consumer.run())
    try:
        await produce_envelopes(bootstrap, entries(0, 3))
        await wait_for(lambda: applied(3), what="3 entries applied")
        # Quiet: the consumer pauses its partitions between probes.
        await wait_for(paused, timeout=10, what="the idle consumer paused")
        await produce_envelopes(bootstrap, entries(3, 2))
        await wait_for(lambda: applied(5), what="the records after the quiet spell applied")
    finally:
        consumer.stop()
        await task
        await pool.close()
