"""Outbox and relay over a real PostgreSQL and a real broker."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary_event

from crm_runtime import outbox
from crm_runtime.db import create_pool
from crm_runtime.events import Envelope
from crm_runtime.migrations import migrate, migrations_for
from crm_runtime.outbox import OutboxRelay
from crm_runtime.settings import Settings
from crm_runtime.stack import TansuBroker
from tests.support.kafka import create_topics, read_topic
from tests.support.ledger import MIGRATIONS, EntryBooked


async def _pool(settings: Settings, schema: str) -> asyncpg.Pool:
    assert settings.database_url
    pool = await create_pool(settings.database_url, schema)
    async with pool.acquire() as conn:
        await migrate(conn, schema, migrations_for(MIGRATIONS))
    return pool


def _events(topic: str, customers: int, per_customer: int) -> list[Envelope]:
    return [Envelope(data=EntryBooked(customer_id=f"c{c}", amount=n, balance=n),
                     subject=f"c{c}", source="/crm/test", topic_override=topic)
            for n in range(per_customer) for c in range(customers)]


async def _write(pool: asyncpg.Pool, events: list[Envelope], lanes: int) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await outbox.add(conn, events, lanes=lanes)


async def _producer(bootstrap: str) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=3000,
                                retry_backoff_ms=100)
    await producer.start()
    return producer


@contextlib.asynccontextmanager
async def _relay_parts(settings: Settings, bootstrap: str, topic: str, schema: str
                       ) -> AsyncIterator[tuple[asyncpg.Pool, AIOKafkaProducer]]:
    """The topic, a migrated pool on ``schema`` and a producer; closed after."""
    await create_topics(bootstrap, [topic])
    pool = await _pool(settings, schema)
    producer = await _producer(bootstrap)
    try:
        yield pool, producer
    finally:
        await producer.stop()
        await pool.close()


def _per_key(records: list) -> dict[bytes, list[int]]:  # type: ignore[type-arg]
    order: dict[bytes, list[int]] = defaultdict(list)
    for r in records:
        order[r.key].append(int(r.value.split(b'"amount":')[1].split(b",")[0]))
    return order


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_published_in_order_per_key_and_readable_by_cloudevents_sdk(
        settings: Settings, broker: TansuBroker, uid: str, concurrency: int) -> None:
    # Batches of 15 rows per lane: the 200 rows take several passes, each
    # with every pending lane in one transaction (concurrency 1) or the
    # lanes split over concurrent transactions.
    topic = f"t.relay.{uid}"
    async with _relay_parts(settings, broker.bootstrap_servers, topic,
                            f"relay_{uid}") as (pool, producer):
        events = _events(topic, customers=5, per_customer=40)
        start = 0
        for size in [25, 7] * 6 + [8]:  # many transactions, COPYs and small INSERTs
            await _write(pool, events[start:start + size], lanes=4)
            start += size
        assert start == len(events)
        relay = OutboxRelay(pool, producer, service="t", schema=f"relay_{uid}", lanes=4,
                            batch_size=15, concurrency=concurrency)
        passes = []
        while published := await relay.publish_pending():
            passes.append(published)
        assert sum(passes) == 200 and max(passes) <= 4 * 15 and len(passes) >= 4
        records = await read_topic(broker.bootstrap_servers, topic, expect=200)
        assert len(records) == 200
        for seq in _per_key(records).values():
            assert seq == list(range(40))
        unsent = await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        assert unsent == 0
        # Any CloudEvents SDK reads the messages: the Python one here.
        first = records[0]
        ce = from_binary_event(KafkaMessage(headers=dict(first.headers), key=first.key,
                                            value=first.value))
        original = next(e for e in events if e.id == ce.get_id())
        assert ce.get_type() == "test.entry_booked"
        assert ce.get_source() == "/crm/test"
        assert ce.get_subject() == original.subject
        assert ce.get_specversion() == "1.0"
        assert ce.get_time() == original.time
        assert ce.get_datacontenttype() == "application/json"
        assert ce.get_data() == original.data.model_dump()
        assert dict(first.headers)["content-type"] == b"application/json"
        assert first.key == original.subject.encode()


async def test_rows_of_a_release_before_the_cloudevent_columns_are_published_as_written(
        settings: Settings, broker: TansuBroker, uid: str) -> None:
    """Rows with header arrays (what outbox.add wrote before runtime migration
    005, and what dead letters still write) and rows with CloudEvents columns
    share a lane in id order; each reaches Kafka with the headers it was
    written with."""
    topic = f"t.relay.mixed.{uid}"
    async with _relay_parts(settings, broker.bootstrap_servers, topic,
                            f"mixed_{uid}") as (pool, producer):
        events = _events(topic, customers=1, per_customer=6)
        async with pool.acquire() as conn, conn.transaction():
            for i, e in enumerate(events):
                if i % 2:
                    await outbox.add(conn, [e], lanes=1)
                else:  # the arrays-only row of an older writer
                    await conn.execute(
                        """INSERT INTO outbox (event_id, topic, message_key, header_keys,
                                               header_values, body, event_type, lane)
                           VALUES ($1, $2, $3, $4, $5, $6, $7, 0)""",
                        e.id, e.topic, e.subject.encode(), [k for k, _ in e.headers()],
                        [v for _, v in e.headers()], e.body(), e.type)
        assert await pool.fetchval("SELECT count(*) FROM outbox WHERE ce_source IS NULL") == 3
        relay = OutboxRelay(pool, producer, service="t", schema=f"mixed_{uid}", lanes=1)
        assert await relay.publish_pending() == 6
        records = await read_topic(broker.bootstrap_servers, topic, expect=6)
        assert [list(r.headers) for r in records] == [e.headers() for e in events]
        assert [r.value for r in records] == [e.body() for e in events]
        with pytest.raises(asyncpg.CheckViolationError):  # neither form: refused
            await pool.execute(
                """INSERT INTO outbox (event_id, topic, message_key, body, event_type, lane)
                   VALUES ('x', $1, NULL, NULL, 'test.entry_booked', 0)""", topic)


async def test_events_written_while_broker_down_are_published_after_it_returns(
        settings: Settings, own_broker: TansuBroker, uid: str) -> None:
    topic = f"t.down.{uid}"
    await create_topics(own_broker.bootstrap_servers, [topic])
    pool = await _pool(settings, f"down_{uid}")
    producer = await _producer(own_broker.bootstrap_servers)
    relay = OutboxRelay(pool, producer, service="t", schema=f"down_{uid}", lanes=2,
                        poll_interval=0.1, publish_timeout=1.0)
    task = asyncio.create_task(relay.run())
    try:
        before = _events(topic, customers=3, per_customer=5)
        await _write(pool, before, lanes=2)
        own_broker.pause()
        during = _events(topic, customers=3, per_customer=5)
        for e in during:  # one transaction per event while the broker is away
            await _write(pool, [e], lanes=2)
        await asyncio.sleep(3)  # let the relay fail and back off a few times
        assert not task.done()
        own_broker.resume()
        records = await read_topic(own_broker.bootstrap_servers, topic, expect=30, timeout=60)
        ids = {dict(r.headers)["ce_id"].decode() for r in records}
        assert ids == {e.id for e in before + during}  # nothing lost
        async def drained() -> bool:
            n = await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
            return bool(n == 0)
        from tests.support.kafka import wait_for
        await wait_for(drained, what="outbox drained")
    finally:
        own_broker.resume()
        relay.stop()
        await asyncio.wait_for(task, 10)
        await producer.stop()
        await pool.close()


async def test_two_relay_replicas_do_not_publish_the_same_row(
        settings: Settings, broker: TansuBroker, uid: str) -> None:
    topic = f"t.replicas.{uid}"
    schema = f"replicas_{uid}"
    await create_topics(broker.bootstrap_servers, [topic])
    pool = await _pool(settings, schema)
    producers = [await _producer(broker.bootstrap_servers) for _ in range(2)]
    relays = [OutboxRelay(pool, p, service="t", schema=schema, lanes=4, batch_size=20,
                          poll_interval=0.05) for p in producers]
    tasks = [asyncio.create_task(r.run()) for r in relays]
    try:
        events = _events(topic, customers=8, per_customer=50)
        for i in range(0, len(events), 10):
            await _write(pool, events[i:i + 10], lanes=4)
        records = await read_topic(broker.bootstrap_servers, topic, expect=400, settle=2.0)
        ids = [dict(r.headers)["ce_id"] for r in records]
        assert len(ids) == 400 and len(set(ids)) == 400
        for seq in _per_key(records).values():
            assert seq == list(range(50))
    finally:
        for r in relays:
            r.stop()
        await asyncio.gather(*tasks)
        for p in producers:
            await p.stop()
        await pool.close()


async def test_run_drains_full_batches_at_once_and_wakes_on_each_commit(
        settings: Settings, broker: TansuBroker, uid: str) -> None:
    # The idle poll is an hour: what is published below is published because
    # a lane had a full batch (the next round starts at once) or because a
    # commit notified the relay, never because the poll came round.
    topic = f"t.relay.run.{uid}"
    async with _relay_parts(settings, broker.bootstrap_servers, topic,
                            f"relay_run_{uid}") as (pool, producer):
        events = _events(topic, customers=3, per_customer=20)
        await _write(pool, events[:45], lanes=2)  # 45 rows in batches of 4 a lane
        relay = OutboxRelay(pool, producer, service="t", schema=f"relay_run_{uid}", lanes=2,
                            batch_size=4, poll_interval=3600)
        running = asyncio.create_task(relay.run())
        try:
            records = await read_topic(broker.bootstrap_servers, topic, expect=45)
            assert len(records) == 45
            for later in (events[45:50], events[50:60]):  # each commit wakes it again
                await _write(pool, later, lanes=2)
            records = await read_topic(broker.bootstrap_servers, topic, expect=60)
            assert len(records) == 60
            assert _per_key(records) == {f"c{c}".encode(): list(range(20)) for c in range(3)}
            assert await pool.fetchval(
                "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0
        finally:
            relay.stop()
            await asyncio.wait_for(running, 10)


async def test_a_commit_wakes_only_the_relay_of_its_own_schema(
        settings: Settings, broker: TansuBroker, uid: str) -> None:
    # Services sharing a database each listen on their schema's channel: a
    # commit in one schema does not wake the relay of another.
    topic = f"t.relay.channel.{uid}"
    await create_topics(broker.bootstrap_servers, [topic])
    assert settings.database_url
    ours, theirs = await _pool(settings, f"relay_a_{uid}"), await _pool(settings, f"relay_b_{uid}")
    listener = await asyncpg.connect(settings.database_url)
    heard: list[str] = []
    try:
        await listener.add_listener(outbox.wakeup_channel(f"relay_a_{uid}"),
                                    lambda _c, _p, channel, _payload: heard.append(channel))
        events = _events(topic, customers=1, per_customer=2)
        await _write(theirs, events[:1], lanes=2)
        await asyncio.sleep(0.3)
        assert heard == []
        await _write(ours, events[1:], lanes=2)
        for _ in range(100):
            if heard:
                break
            await asyncio.sleep(0.05)
        assert heard == [f"crm_outbox.relay_a_{uid}"]
    finally:
        await listener.close()
        await ours.close()
        await theirs.close()
