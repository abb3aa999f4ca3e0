"""Kafka helpers of the harness: topics, producers configured like the
product's, bulk producing for set-up, and reading a topic back to check it.

Counting is done by reading the records, not from end offsets: the embedded
Tansu broker reports end offsets that do not always match the record count.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.events import KafkaRecord
from crm_runtime import outbox
from crm_runtime.settings import Settings


def producer_options() -> dict[str, Any]:
    """The producer settings of the product's relay; the raw baseline uses
    the same, so the comparison is about the path, not tuning."""
    return outbox.producer_options(Settings().producer_batch_bytes)


async def start_producer(bootstrap: str) -> Any:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **producer_options())
    await producer.start()
    return producer


async def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=partitions,
                                            replication_factor=1)])
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, names: Sequence[str]) -> None:
    """Best effort: a broker that cannot delete topics keeps them."""
    if not names:
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        with contextlib.suppress(Exception):
            await admin.delete_topics(list(names))
    finally:
        await admin.close()


async def send_all(producer: Any, topic: str, records: Sequence[KafkaRecord]) -> None:
    """Queue every record, then wait for every acknowledgement."""
    futures = [await producer.send(topic, value=r.value, key=r.key, headers=r.headers)
               for r in records]
    await asyncio.gather(*futures)


async def produce(bootstrap: str, topic: str, records: Sequence[KafkaRecord]) -> None:
    producer = await start_producer(bootstrap)
    try:
        await send_all(producer, topic, records)
    finally:
        await producer.stop()


async def count_records(bootstrap: str, topic: str, *, expect: int,
                        within_s: float = 60.0) -> int:
    """Read ``topic`` from the start until ``expect`` records arrived (or the
    deadline passed); returns how many were read."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    seen = 0
    try:
        deadline = time.monotonic() + within_s
        while seen < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            seen += sum(len(part) for part in batch.values())
    finally:
        await consumer.stop()
    return seen


async def read_records(bootstrap: str, topic: str, *, expect: int, within_s: float = 60.0,
                       settle_s: float = 0.5) -> list[Any]:
    """Every record of ``topic``, read from the start until ``expect`` arrived
    (or the deadline passed), then for ``settle_s`` more so that duplicates
    beyond ``expect`` are read too."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + within_s
        settled: float | None = None
        while time.monotonic() < (settled or deadline):
            batch = await consumer.getmany(timeout_ms=100, max_records=5000)
            records.extend(r for part in batch.values() for r in part)
            if settled is None and len(records) >= expect:
                settled = time.monotonic() + settle_s
    finally:
        await consumer.stop()
    return records
