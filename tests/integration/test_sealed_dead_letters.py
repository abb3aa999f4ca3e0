"""Dead letters leave a service sealed: the dead-letter topic holds nothing
readable, ``crm dlq replay`` opens each record with the key the service
keeps, and erasing the record's customer (or the key retention) destroys the
key, after which the record is noise for good."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from crm_runtime import sealing
from crm_runtime.consumer import EventConsumer, dlq_topic
from crm_runtime.db import create_pool
from crm_runtime.dlq import SealedWithoutDatabase, replay
from crm_runtime.events import Envelope
from crm_runtime.migrations import migrate, migrations_for
from crm_runtime.outbox import OutboxRelay
from crm_runtime.settings import Settings
from tests.support.kafka import create_topics, produce_envelopes, read_topic, wait_for
from tests.support.ledger import MIGRATIONS, EntryRequested, make_handler


@pytest.fixture
async def refused(settings: Settings, uid: str) -> AsyncIterator[tuple[str, str, Envelope]]:
    """(schema, requests topic, the event): an event its consumer refused and
    dead-lettered, the dead letter published by the relay."""
    schema, requests, booked = f"sealed_{uid}", f"t.sealreq.{uid}", f"t.sealbooked.{uid}"
    bootstrap, dsn = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and dsn
    await create_topics(bootstrap, [requests, booked, dlq_topic(requests)])
    pool = await create_pool(dsn, schema)
    async with pool.acquire() as conn:
        await migrate(conn, schema, migrations_for(MIGRATIONS))
    customer = str(uuid.uuid4())
    event = Envelope(data=EntryRequested(customer_id=customer, amount=666), subject=customer,
                     source="/test/pos", topic_override=requests)  # the handler refuses 666
    consumer = EventConsumer(pool, bootstrap_servers=bootstrap, group=f"crm-{schema}",
                             topics=[requests],
                             handlers={"test.entry_requested": make_handler(booked, 2)},
                             service="ledger", lanes=2, batch_wait_ms=20,
                             consumer_options=settings.consumer_options())
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    relay = OutboxRelay(pool, producer, service="ledger", schema=schema, lanes=2,
                        poll_interval=0.05)
    tasks = [asyncio.create_task(consumer.run()), asyncio.create_task(relay.run())]
    try:
        await produce_envelopes(bootstrap, [event])
        await read_topic(bootstrap, dlq_topic(requests), expect=1)
        yield schema, requests, event
    finally:
        consumer.stop()
        relay.stop()
        await asyncio.gather(*tasks)
        await producer.stop()
        await pool.close()


async def test_the_dead_letter_topic_holds_the_record_sealed_and_replay_opens_it(
        settings: Settings, refused: tuple[str, str, Envelope]) -> None:
    _, requests, event = refused
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    [dead] = await read_topic(bootstrap, dlq_topic(requests), expect=1)
    original = event.body()
    assert dict(dead.headers)[sealing.SEALED_HEADER] == sealing.CIPHER
    assert dead.value is not None and dead.value != original
    assert event.subject.encode() not in dead.value and b"666" not in dead.value
    with pytest.raises(SealedWithoutDatabase):
        await replay(bootstrap, requests, idle_ms=1000)
    result = await replay(bootstrap, requests, idle_ms=1000, database_url=settings.database_url)
    assert (result.replayed, result.reasons) == (1, {"handler_error": 1})
    records = await read_topic(bootstrap, requests, expect=2)
    assert records[-1].value == original
    assert sealing.SEALED_HEADER not in dict(records[-1].headers)


async def test_erasing_the_customer_destroys_the_key_and_replay_skips_the_record(
        settings: Settings, refused: tuple[str, str, Envelope]) -> None:
    schema, requests, event = refused
    bootstrap, dsn = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and dsn
    pool = await create_pool(dsn, schema)
    try:
        async def filed() -> bool:
            return bool(await pool.fetchval(
                "SELECT count(*) FROM dead_letters WHERE subject = $1 AND value_key IS NOT NULL",
                event.subject))

        await wait_for(filed, what="the dead letter filed under its customer")
        async with pool.acquire() as conn, conn.transaction():
            assert await sealing.forget(conn, event.subject) == 1
            assert await sealing.forget(conn, event.subject) == 0
        sent = await pool.fetchval("SELECT count(*) FROM outbox WHERE message_key = $1",
                                   event.subject.encode())
        assert sent == 0
    finally:
        await pool.close()
    result = await replay(bootstrap, requests, idle_ms=1000, database_url=dsn)
    assert (result.replayed, result.reasons) == (0, {"key_destroyed": 1})
    records = await read_topic(bootstrap, requests, expect=1, settle=0.5)
    assert len(records) == 1  # nothing republished


async def test_keys_past_the_retention_are_destroyed(
        settings: Settings, refused: tuple[str, str, Envelope]) -> None:
    schema, _, _ = refused
    assert settings.database_url
    pool = await create_pool(settings.database_url, schema)
    try:
        await wait_for(lambda: _keys(pool), what="a key kept")
        await pool.execute("UPDATE dead_letters SET created_at = now() - interval '31 days'")
        await pool.execute(sealing.EXPIRE_KEYS, 30)
        assert not await _keys(pool)
    finally:
        await pool.close()


async def _keys(pool: asyncpg.Pool) -> bool:
    return bool(await pool.fetchval(
        "SELECT count(*) FROM dead_letters WHERE value_key IS NOT NULL"))
