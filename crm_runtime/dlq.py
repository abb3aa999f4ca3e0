"""Replaying dead letters: after the cause is fixed (a deployed bug fix, a
customer that now exists), ``crm dlq replay <topic>`` republishes the records
of ``<topic>.dlq`` to ``<topic>`` with their original key, value and headers
(the ``dlq_*`` headers removed), so the consumers process them again; their
inbox still drops any that were processed meanwhile.

Progress is kept as the committed offset of consumer group
``crm-dlq-replay``, committed only after the broker acknowledged the
republished records, so a replay interrupted half-way resumes where it
stopped and a second replay does not send the same record twice.

A dead letter's value is sealed (:mod:`crm_runtime.sealing`): the replay
opens it with the key the consuming service keeps in its ``dead_letters``
table (its schema is the one of the ``dlq_consumer_group`` header, e.g.
``crm-interactions-ingest`` is ``interactions``), so it needs the database
(``database_url``). A record whose key was destroyed (its customer was
erased, or it outlived the key retention) cannot be opened and is not
republished; it is counted under ``key_destroyed``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from crm_runtime import sealing
from crm_runtime.consumer import dlq_topic
from crm_runtime.db import check_schema_name

REPLAY_GROUP = "crm-dlq-replay"
DLQ_HEADER_PREFIX = "dlq_"


@dataclass
class ReplayResult:
    replayed: int
    reasons: dict[str, int]


class SealedWithoutDatabase(RuntimeError):
    """A sealed dead letter met without a database to find its key in."""


def schema_of_group(group: str) -> str:
    """The schema of the service whose consumer group this is
    (``crm-<service>[-suffix]``)."""
    schema = group.removeprefix("crm-").split("-", 1)[0]
    check_schema_name(schema)
    return schema


async def _opened(conn: asyncpg.Connection | None, r: Any) -> bytes | None:
    """The record's value, opened if sealed; None when its key is gone."""
    headers = dict(r.headers or ())
    if sealing.SEALED_HEADER not in headers:
        value: bytes | None = r.value
        return value
    if conn is None:
        raise SealedWithoutDatabase(
            "dead letters are sealed with keys kept in the services' databases: set "
            "DATABASE_URL to replay them")
    group = headers["dlq_consumer_group"].decode()
    key = await sealing.key_of(conn, group, headers["dlq_original_topic"].decode(),
                               int(headers["dlq_original_partition"]),
                               int(headers["dlq_original_offset"]), schema_of_group(group))
    return None if key is None else sealing.unseal(key, r.value)


def _kept_headers(headers: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    return [(k, v) for k, v in headers
            if not k.startswith(DLQ_HEADER_PREFIX) and k != sealing.SEALED_HEADER]


async def replay(bootstrap: str, topic: str, *, limit: int | None = None,
                 idle_ms: int = 2000, database_url: str | None = None) -> ReplayResult:
    """Republish up to ``limit`` dead letters of ``topic``: those
    dead-lettered before the replay started (by their record time: one that
    fails again is dead-lettered anew, for the next replay, never looped
    over); stops when it has nothing more for ``idle_ms``. ``database_url``: where
    the keys of sealed dead letters are."""
    conn = await asyncpg.connect(database_url) if database_url else None
    try:
        return await _replay(bootstrap, topic, limit, idle_ms, conn)
    finally:
        if conn is not None:
            await conn.close()


async def _replay(bootstrap: str, topic: str, limit: int | None, idle_ms: int,
                  conn: asyncpg.Connection | None) -> ReplayResult:
    source = dlq_topic(topic)
    started_ms = int(time.time() * 1000)  # records dead-lettered from now on wait
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
            records = [r for part in batch.values() for r in part if r.timestamp < started_ms]
            if not records:
                break
            futures = []
            for r in records:
                value = await _opened(conn, r)
                reason = dict(r.headers or ()).get("dlq_error_kind", b"unknown").decode()
                if value is None and r.value is not None:
                    reason = "key_destroyed"
                result.reasons[reason] = result.reasons.get(reason, 0) + 1
                if reason == "key_destroyed":
                    continue
                futures.append(await producer.send(topic, key=r.key, value=value,
                                                   headers=_kept_headers(r.headers or ())))
            await asyncio.gather(*futures)
            offsets: dict[TopicPartition, int] = {}
            for r in records:
                tp = TopicPartition(r.topic, r.partition)
                offsets[tp] = max(offsets.get(tp, 0), r.offset + 1)
            await consumer.commit(offsets)
            result.replayed += len(futures)
    finally:
        await producer.stop()
        await consumer.stop()
    return result
