"""Replaying dead letters: after the cause is fixed (a deployed bug fix, a
customer that now exists), ``crm dlq replay <topic>`` republishes the records
of ``<topic>.dlq`` to ``<topic>`` with their original key, value and headers
(the ``dlq_*`` headers removed), so the consumers process them again; their
inbox still drops any that were processed meanwhile.

Progress is kept as the committed offset of consumer group
``crm-dlq-replay``, committed only after the broker acknowledged the
republished records, so a replay interrupted half-way resumes where it
stopped and a second replay does not send the same record twice.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from crm_runtime.consumer import dlq_topic

REPLAY_GROUP = "crm-dlq-replay"
DLQ_HEADER_PREFIX = "dlq_"


@dataclass
class ReplayResult:
    replayed: int
    reasons: dict[str, int]


async def replay(bootstrap: str, topic: str, *, limit: int | None = None,
                 idle_ms: int = 2000) -> ReplayResult:
    """Republish up to ``limit`` dead letters of ``topic``; stops when the
    dead-letter topic has nothing more for ``idle_ms``."""
    source = dlq_topic(topic)
    consumer = AIOKafkaConsumer(source, bootstrap_servers=bootstrap, group_id=REPLAY_GROUP,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                session_timeout_ms=6000, heartbeat_interval_ms=500)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await consumer.start()
    await producer.start()
    result = ReplayResult(0, {})
    try:
        while limit is None or result.replayed < limit:
            want = 500 if limit is None else min(500, limit - result.replayed)
            batch = await consumer.getmany(timeout_ms=idle_ms, max_records=want)
            records = [r for part in batch.values() for r in part]
            if not records:
                break
            futures = []
            for r in records:
                headers = [(k, v) for k, v in (r.headers or ())
                           if not k.startswith(DLQ_HEADER_PREFIX)]
                reason = dict(r.headers or ()).get("dlq_error_kind", b"unknown").decode()
                result.reasons[reason] = result.reasons.get(reason, 0) + 1
                futures.append(await producer.send(topic, key=r.key, value=r.value,
                                                   headers=headers))
            await asyncio.gather(*futures)
            offsets: dict[TopicPartition, int] = {}
            for r in records:
                tp = TopicPartition(r.topic, r.partition)
                offsets[tp] = max(offsets.get(tp, 0), r.offset + 1)
            await consumer.commit(offsets)
            result.replayed += len(records)
    finally:
        await producer.stop()
        await consumer.stop()
    return result
