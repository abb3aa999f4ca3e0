"""Kafka helpers for tests: produce envelopes or raw records, read topics
back with deadlines instead of sleeps."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeAlias

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from crm_runtime.events import Envelope

#: aiokafka's ConsumerRecord (its generic parameters are not typed for mypy).
Record: TypeAlias = Any


async def create_topics(bootstrap: str, names: Sequence[str], partitions: int = 3) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(n, num_partitions=partitions, replication_factor=1)
               for n in names if n not in existing]
        if new:
            await admin.create_topics(new)
    finally:
        await admin.close()


async def produce(bootstrap: str, records: Sequence[tuple[str, bytes | None, bytes | None,
                                                        list[tuple[str, bytes]]]]) -> None:
    """Produce (topic, key, value, headers) records and wait for the acks."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        futures = [await producer.send(t, key=k, value=v, headers=h) for t, k, v, h in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def produce_envelopes(bootstrap: str, envelopes: Sequence[Envelope]) -> None:
    await produce(bootstrap, [(e.topic, e.subject.encode(), e.body(), e.headers())
                              for e in envelopes])


async def read_topic(bootstrap: str, topic: str, *, expect: int, timeout: float = 30.0,
                     settle: float = 0.5) -> list[Record]:
    """Read ``topic`` from the start until ``expect`` records arrived, then keep
    reading ``settle`` seconds more so extra (duplicate) records show up too."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    records: list[Record] = []
    try:
        deadline = time.monotonic() + timeout
        settle_until: float | None = None
        while True:
            now = time.monotonic()
            if len(records) >= expect and settle_until is None:
                settle_until = now + settle
            if (settle_until is not None and now >= settle_until) or now >= deadline:
                break
            batch = await consumer.getmany(timeout_ms=100)
            for part in batch.values():
                records.extend(part)
    finally:
        await consumer.stop()
    return records


async def caught_up(bootstrap: str, group: str, topics: Sequence[str]) -> bool:
    """Whether consumer group ``group`` committed every partition of
    ``topics`` up to its end (every record there was consumed; for a group
    that keeps no inbox rows, the one sign of it)."""
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                              enable_auto_commit=False)
    await reader.start()
    try:
        await reader.topics()  # the cluster's metadata, with the topics' partitions
        parts = [TopicPartition(t, p) for t in topics
                 for p in sorted(reader.partitions_for_topic(t) or ())]
        ends = await reader.end_offsets(parts)
        for tp in parts:
            if ends[tp] > 0 and (await reader.committed(tp) or 0) < ends[tp]:
                return False
        return True
    finally:
        await reader.stop()


async def keyed_records(bootstrap: str, topic: str, key: bytes,
                        ce_type: str | None = None) -> list[Record]:
    """The records of ``topic`` keyed ``key`` (of ``ce_type`` when given), in
    their order (one key is one partition), the topic read to its end."""
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                              enable_auto_commit=False, auto_offset_reset="earliest")
    await reader.start()
    found: list[Record] = []
    try:
        await reader.topics()
        parts = [TopicPartition(topic, p) for p in sorted(reader.partitions_for_topic(topic) or ())]
        reader.assign(parts)
        ends = await reader.end_offsets(parts)
        await reader.seek_to_beginning(*parts)
        while [tp for tp in parts if await reader.position(tp) < ends[tp]]:
            batch = await reader.getmany(timeout_ms=100, max_records=5000)
            found += [r for part in batch.values() for r in part if r.key == key and (
                ce_type is None or dict(r.headers).get("ce_type") == ce_type.encode())]
    finally:
        await reader.stop()
    return found


async def sent_records(pool: asyncpg.Pool, bootstrap: str, topic: str, key: bytes,
                       ce_type: str | None = None) -> list[Record]:
    """:func:`keyed_records` once the outbox of ``pool``'s schema holds no
    unsent row keyed ``key`` (everything written for the key is on the
    topic)."""
    async def sent() -> bool:
        return not await pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM outbox WHERE message_key = $1 AND sent_at IS NULL)",
            key)

    await wait_for(sent, what=f"the outbox rows of {key!r} sent")
    return await keyed_records(bootstrap, topic, key, ce_type)


async def wait_for(check: Callable[[], Awaitable[bool]], *, timeout: float = 30.0,
                   what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def dead_letter(bootstrap: str, dlq: str, event_id: str, *,
                      timeout: float = 30.0) -> Record:
    """The record of event ``event_id`` on the dead-letter topic ``dlq``, once
    it is there."""
    found: list[Record] = []

    async def there() -> bool:
        found[:] = [r for r in await read_topic(bootstrap, dlq, expect=0, timeout=5, settle=0.2)
                    if dict(r.headers).get("ce_id") == event_id.encode()]
        return bool(found)

    await wait_for(there, timeout=timeout, what=f"the dead letter of {event_id}")
    return found[0]


def dlq_error(record: Record) -> tuple[str, str]:
    """(error kind, reason) a dead letter's headers give."""
    headers = dict(record.headers)
    return headers["dlq_error_kind"].decode(), headers["dlq_error_reason"].decode()
