"""Transactional outbox and its relay.

:func:`add` writes events into the ``outbox`` table on the caller's connection,
inside the caller's transaction, so a state change and the events it causes
commit or roll back together. :class:`OutboxRelay` publishes committed rows.

Ordering and replicas: each row belongs to a lane, a hash of its message key.
A relay publishes a lane only while it holds that lane's transaction-level
advisory lock, and publishes the lane's rows in id order, so one key's events
reach Kafka in the order they were written, and two relay replicas never
publish the same row in normal operation. A row's mark as sent commits only
after the broker acknowledged it (``acks=all``); when the broker is down the
relay rolls back and retries with backoff, so nothing is lost. A crash
between the ack and the commit republishes those rows: delivery is at least
once, and consumers deduplicate by event id (the inbox).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import zlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from murmurhash2 import murmurhash2

from crm_runtime import metrics, sealing
from crm_runtime.db import Conn, is_transient
from crm_runtime.events import Envelope, cloudevent_headers, header_time
from crm_runtime.retry import Backoff

log = logging.getLogger(__name__)


def lane_of(key: bytes | None, lanes: int) -> int:
    """Stable lane for a key (crc32 is the same in every process and release)."""
    return zlib.crc32(key or b"") % lanes


#: NOTIFY channel that wakes the relay when a transaction added rows, per
#: schema: :func:`wakeup_channel` (runtime migration 006).
WAKEUP_CHANNEL = "crm_outbox"


def wakeup_channel(schema: str) -> str:
    """The channel the outbox trigger of ``schema`` notifies (runtime
    migration 006: the first 52 characters of the name, so that the channel
    stays within the 63 of an identifier)."""
    return f"{WAKEUP_CHANNEL}.{schema[:52]}"


async def add(conn: Conn, events: Sequence[Envelope], *, lanes: int) -> None:
    """Queue ``events`` in the outbox inside the caller's open transaction.
    Their CloudEvents attributes go into columns (runtime migration 005);
    the relay turns them into headers."""
    if not conn.is_in_transaction():
        raise RuntimeError("outbox.add must run inside the transaction of the state change")
    await _insert(conn, [
        (e.id, e.topic, key, None, None, e.body(), e.type, lane_of(key, lanes), e.source,
         header_time(e.time), e.traceparent)
        for e in events for key in (e.subject.encode(),)])


COPY_THRESHOLD = 20
_COLUMNS = ["event_id", "topic", "message_key", "header_keys", "header_values", "body",
            "event_type", "lane", "ce_source", "ce_time", "ce_traceparent"]

RawRecord = tuple[str, str, bytes | None, Sequence[tuple[str, bytes]], bytes | None, str]


async def add_raw(conn: Conn, records: Sequence[RawRecord], *, lanes: int) -> None:
    """Queue already-encoded records with their own headers (dead letters keep
    the original bytes)."""
    await _insert(conn, [
        (event_id, topic, key, [h[0] for h in headers], [h[1] for h in headers], body,
         event_type, lane_of(key, lanes), None, None, None)
        for event_id, topic, key, headers, body, event_type in records])


async def _insert(conn: Conn, rows: list[tuple[Any, ...]]) -> None:
    if len(rows) >= COPY_THRESHOLD:
        # A consumed batch's events: one COPY (ids still follow the row order).
        await conn.copy_records_to_table("outbox", records=rows, columns=_COLUMNS)
    elif rows and all(r[3] is None for r in rows):
        # A few events (a gRPC call, a small batch): one statement, not one per
        # row; WITH ORDINALITY keeps the ids in the rows' order.
        await conn.execute(
            f"""INSERT INTO outbox ({", ".join(_COLUMNS)})
                SELECT event_id, topic, message_key, NULL, NULL, body, event_type, lane,
                       ce_source, ce_time, ce_traceparent
                  FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bytea[], $5::text[],
                              $6::int[], $7::text[], $8::text[], $9::text[]) WITH ORDINALITY
                       AS r(event_id, topic, message_key, body, event_type, lane, ce_source,
                            ce_time, ce_traceparent, n)
                 ORDER BY n""",
            *([r[i] for r in rows] for i in (0, 1, 2, 5, 6, 7, 8, 9, 10)))
    elif rows:
        # Raw records carry header arrays (unnest cannot take arrays of arrays).
        await conn.executemany(
            f"""INSERT INTO outbox ({", ".join(_COLUMNS)})
                VALUES ({", ".join(f"${i}" for i in range(1, len(_COLUMNS) + 1))})""", rows)
    # The outbox_wake_relay trigger (runtime migration 003) notifies the relay.


def _headers(row: Any) -> list[tuple[str, bytes]]:
    """A row's Kafka headers: its own, or built from its CloudEvents columns."""
    if row["header_keys"] is not None:
        return list(zip(row["header_keys"], row["header_values"], strict=True))
    return cloudevent_headers(row["event_id"], row["event_type"], row["ce_source"],
                              row["ce_time"], row["message_key"] or b"", row["ce_traceparent"])


class KeyHashPartitioner:
    """The Java client's partitioner (aiokafka's default: murmur2 of the key
    with Kafka's seed, so Java, librdkafka's ``murmur2_random`` and aiokafka
    producers put a customer on the same partition), hashed by the
    ``murmurhash2`` C extension: aiokafka's murmur2 is pure Python, about
    5 µs a key."""

    def __call__(self, key: bytes | None, all_partitions: list[int],
                 available: list[int]) -> int:
        if key is None:
            return random.choice(available or all_partitions)
        return all_partitions[(murmurhash2(key, KAFKA_MURMUR2_SEED) & 0x7FFFFFFF)
                              % len(all_partitions)]


#: The seed of Kafka's murmur2 (``org.apache.kafka.common.utils.Utils``).
KAFKA_MURMUR2_SEED = 0x9747B28C


def producer_options(producer_batch_bytes: int) -> dict[str, Any]:
    """The relay's producer settings. ``acks=all``: a row is marked sent only
    once every in-sync replica has it. No idempotent producer (Tansu has
    none; the inbox deduplicates). ``linger_ms=0``: the relay queues a whole
    lane's rows before it awaits anything, so they batch anyway, and a lone
    event is not held back. Partitions by key as the Java client does
    (:class:`KeyHashPartitioner`)."""
    return {"acks": "all", "enable_idempotence": False, "linger_ms": 0,
            "max_batch_size": producer_batch_bytes, "partitioner": KeyHashPartitioner()}


def _lock_key(schema: str) -> int:
    return int.from_bytes(hashlib.sha256(f"outbox:{schema}".encode()).digest()[:4],
                          "big", signed=True)


#: Sent rows past the retention (hours in ``$1``). The cutoff is ``now()``, not
#: ``clock_timestamp()``: a volatile cutoff cannot be an index condition, and
#: the ``outbox_sent_at`` index is what keeps this from reading a week of sent
#: rows on every pass.
PRUNE_SENT = "DELETE FROM outbox WHERE sent_at < now() - make_interval(hours => $1)"


#: The relay's second statement: marks up to ``$2`` unsent rows of each lane
#: in ``$1`` (in id order) and returns them. Each lane is one probe of the
#: unsent-rows index, each row one of the primary key, however many sent rows
#: the table keeps (tested in test_query_plans).
MARK_AND_READ = """
    UPDATE outbox AS o SET sent_at = clock_timestamp()
      FROM unnest($1::int[]) AS l, LATERAL (
             SELECT id FROM outbox WHERE lane = l AND sent_at IS NULL
              ORDER BY id LIMIT $2) AS pick
     WHERE o.id = pick.id
    RETURNING o.id, o.lane, o.event_id, o.topic, o.message_key, o.header_keys,
              o.header_values, o.body, o.event_type, o.ce_source, o.ce_time,
              o.ce_traceparent"""


class OutboxRelay:
    """Publishes the outbox of one service schema to Kafka."""

    def __init__(self, pool: asyncpg.Pool, producer: AIOKafkaProducer, *, service: str,
                 schema: str, lanes: int, batch_size: int = 500, poll_interval: float = 1.0,
                 publish_timeout: float = 15.0, retention_hours: int = 168,
                 inbox_retention_days: int = 30, key_retention_days: int = 30,
                 backoff: Backoff | None = None, concurrency: int = 1) -> None:
        self._pool = pool
        self._producer = producer
        self._service = service
        self._lanes = lanes
        self._batch = batch_size
        self._poll = poll_interval
        self._retention_hours = retention_hours
        self._publish_timeout = publish_timeout
        self._inbox_retention_days = inbox_retention_days
        self._key_retention_days = key_retention_days
        self._schema = schema
        self._wakeup = asyncio.Event()
        self._channel = wakeup_channel(schema)
        self._lock_class = _lock_key(schema)
        self._backoff = backoff or Backoff()
        self._stopping = asyncio.Event()
        self._concurrency = max(1, min(concurrency, lanes))
        self._partitioner = KeyHashPartitioner()

    def stop(self) -> None:
        self._stopping.set()
        self._wakeup.set()

    def _on_notify(self, _conn: Conn, _pid: int, _channel: str, _payload: object) -> None:
        self._wakeup.set()

    async def run(self) -> None:
        """Relay until :meth:`stop`; broker or database outages are retried."""
        while not self._stopping.is_set():
            try:
                async with self._pool.acquire() as listener:
                    await listener.add_listener(self._channel, self._on_notify)
                    try:
                        await self._relay_loop()
                    finally:
                        await listener.remove_listener(self._channel, self._on_notify)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = self._backoff.next()
                level = logging.WARNING if _is_outage(exc) else logging.ERROR
                log.log(level, "outbox relay failed (%s: %s); retrying in %.1fs",
                        type(exc).__name__, exc, delay)
                self._wakeup.clear()
                await self._sleep(delay)

    async def _relay_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_observe = 0.0
        while not self._stopping.is_set():
            # Cleared before the round reads: a commit after this point wakes
            # the next round at once, whether or not this round saw its rows.
            self._wakeup.clear()
            _, more = await self._publish_round()
            self._backoff.reset()
            if loop.time() >= next_observe:
                next_observe = loop.time() + 5.0
                await self._maintain()
            if not more:
                # Until a writer's NOTIFY (one may have come during the round:
                # then at once), the idle poll, or stop. A round that published
                # everything it found does not probe again just to find nothing.
                await self._sleep(self._poll)

    async def publish_pending(self) -> int:
        """Publish what is unsent, once (a lane's first ``batch_size`` rows);
        returns how many rows. Used by tests and benchmarks; ``run`` loops
        over the same round."""
        return (await self._publish_round())[0]

    async def _publish_round(self) -> tuple[int, bool]:
        """One round: how many rows were published, and whether a lane had
        more than a batch (so the next round should start at once).

        With one group (``concurrency`` 1, the default) a round is a single
        transaction on one connection: the lanes with unsent rows are found
        and locked in one statement, their rows marked and read in a second,
        published, and the transaction commits. At a steady trickle of small
        commits that round is what the relay's time goes to, so it is as few
        round trips as the ordering rules allow. With more groups, a probe
        first finds the pending lanes; they are split into at most
        ``concurrency`` groups, each published in a transaction of its own on
        a connection of its own."""
        if self._concurrency == 1:
            return await self._publish_lanes(list(range(self._lanes)))
        async with self._pool.acquire() as conn:
            lanes: list[int] = await conn.fetchval(
                """SELECT array(SELECT l FROM generate_series(0, $1 - 1) AS l
                                 WHERE EXISTS (SELECT 1 FROM outbox
                                                WHERE lane = l AND sent_at IS NULL))""",
                self._lanes)
        if not lanes:
            return 0, False
        groups = [lanes[i::self._concurrency] for i in range(min(self._concurrency, len(lanes)))]
        rounds = await asyncio.gather(*(self._publish_lanes(g) for g in groups))
        return sum(n for n, _ in rounds), any(more for _, more in rounds)

    async def _publish_lanes(self, lanes: list[int]) -> tuple[int, bool]:
        """Publish up to ``batch_size`` unsent rows of each of ``lanes`` (in id
        order within a lane) that no other replica holds, in one transaction;
        returns how many, and whether a lane filled its batch."""
        async with self._pool.acquire() as conn, conn.transaction():
            # The locks first, in a statement of their own (only of the lanes
            # this statement's snapshot sees unsent rows in; CASE makes the
            # check come before the lock): the read below must take its
            # snapshot after them, so it sees what the previous holder of a
            # lane marked sent. This transaction's commit does not
            # wait for the WAL flush: losing it in a crash of the database only
            # republishes its rows (at least once; consumers deduplicate by
            # ce_id), while every writer's state change and events still wait.
            row = await conn.fetchrow(
                """SELECT set_config('synchronous_commit', 'off', true),
                          array(SELECT l FROM unnest($2::int[]) AS l
                                 WHERE CASE WHEN EXISTS (SELECT 1 FROM outbox
                                                          WHERE lane = l AND sent_at IS NULL)
                                            THEN pg_try_advisory_xact_lock($1, l) END)
                            AS lanes""",
                self._lock_class, lanes)
            assert row is not None
            locked: list[int] = row["lanes"]
            if not locked:
                return 0, False  # nothing unsent, or other replicas are publishing it
            # Marked and read in one statement. sent_at is when the relay took
            # the rows; no one sees the mark before the commit below, which
            # only happens once the broker acknowledged every row.
            rows = sorted(await conn.fetch(MARK_AND_READ, locked, self._batch),
                          key=lambda r: r["id"])
            if not rows:
                return 0, False
            await asyncio.wait_for(self._publish(rows), timeout=self._publish_timeout)
        for (topic, event_type), count in Counter(
                (r["topic"], r["event_type"]) for r in rows).items():
            metrics.PUBLISHED.labels(self._service, topic, event_type).inc(count)
        more = any(n >= self._batch for n in Counter(r["lane"] for r in rows).values())
        return len(rows), more

    async def _publish(self, rows: Sequence[Any]) -> None:
        """Publish ``rows`` (in id order within a lane) and wait for every ack. Records go
        into record batches of their own, one partition at a time (the key's
        partition, as :class:`KeyHashPartitioner` picks it), each handed to
        the producer whole: one future per batch instead of one coroutine and
        one future per record. A partition's batches are queued in row order
        and aiokafka keeps one in flight per partition, so order is kept."""
        batches: dict[tuple[str, int], list[Any]] = {}
        partitions: dict[str, list[int]] = {}
        for r in rows:
            topic = r["topic"]
            known = partitions.get(topic)
            if known is None:
                known = partitions[topic] = sorted(await self._producer.partitions_for(topic))
            key = r["message_key"]
            builders = batches.setdefault((topic, self._partitioner(key, known, known)), [])
            headers = _headers(r)
            if not builders or builders[-1].append(timestamp=None, key=key, value=r["body"],
                                                   headers=headers) is None:
                builder = self._producer.create_batch()
                # An empty batch takes any record; the broker refuses one
                # over its limit, and the lane retries with backoff.
                builder.append(timestamp=None, key=key, value=r["body"], headers=headers)
                builders.append(builder)
        futures = [await self._producer.send_batch(builder, topic, partition=partition)
                   for (topic, partition), builders in batches.items() for builder in builders]
        await asyncio.gather(*futures)

    async def _maintain(self) -> None:
        """Refresh the outbox gauges, trim sent outbox rows and old inbox ids,
        and destroy the keys of old dead letters (the relay is the one
        periodic loop every service process has)."""
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                """SELECT count(*) AS backlog,
                          coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)
                            AS oldest
                     FROM outbox WHERE sent_at IS NULL""")
            assert row is not None
            metrics.OUTBOX_BACKLOG.labels(self._service).set(row["backlog"])
            metrics.OUTBOX_OLDEST_AGE.labels(self._service).set(float(row["oldest"]))
            await conn.execute(PRUNE_SENT, self._retention_hours)
            await conn.execute(
                "DELETE FROM inbox WHERE processed_at < now() - make_interval(days => $1)",
                self._inbox_retention_days)
            await conn.execute(sealing.EXPIRE_KEYS, self._key_retention_days)

    async def _sleep(self, seconds: float) -> None:
        """Sleep until the timeout, a NOTIFY from a committing writer, or stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout=seconds)


def _is_outage(exc: BaseException) -> bool:
    from aiokafka.errors import KafkaError

    return is_transient(exc) or isinstance(exc, KafkaError)
