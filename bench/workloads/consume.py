"""Consuming: N CloudEvents records from Kafka into one PostgreSQL row each,
through the idempotent consumer, against a plain consumer plus COPY.

Both sides read the same N records of one topic (pre-produced, untimed) and
write the same row, ``(event_id, customer_id, amount)``, into an identical
table without constraints.

* baseline: ``AIOKafkaConsumer`` without a group (so no group join), reading
  batches, taking ``ce_id`` from the headers and the fields from the JSON
  body, and ``copy_records_to_table`` per batch: the raw cost of getting the
  events into PostgreSQL;
* product: ``EventConsumer`` (CloudEvents decoding and payload validation,
  inbox claim, handler, one transaction per batch, offset commit) with a
  bench handler inserting one row per event; done when the table holds N rows
  (polled at the pace of the progress, :mod:`bench.pacing`, every 10 ms
  near the end, so the figure can be up to 10 ms late).

Both clocks start when the first poll returns (for the product, when
``EventConsumer.ready`` is set): joining a consumer group takes seconds on
some brokers (about 5 s on Tansu) and would drown the figures. The start-up
times are printed as notes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any, cast

import asyncpg
from aiokafka import AIOKafkaConsumer

from bench import kafka
from bench.events import EntryRecorded, encode, make_envelopes
from bench.pacing import Pace
from bench.registry import Phases, Workload, register
from crm_runtime.consumer import EventConsumer
from crm_runtime.db import Conn
from crm_runtime.events import Envelope
from crm_runtime.migrations import Migration
from crm_runtime.settings import Settings

TABLE = "applied_events"
COLUMNS = ("event_id", "customer_id", "amount")
DDL = f"""CREATE TABLE {TABLE} (
    event_id    text   NOT NULL,
    customer_id text   NOT NULL,
    amount      bigint NOT NULL
)"""
#: The bench table as a service migration, after the runtime's own.
MIGRATION = Migration(source="bench", version=1, name=TABLE, sql=DDL)

#: Pause between two counts of the product table (a count of 20000 rows
#: takes about 1 ms, so the poll costs the database little).
POLL_S = 0.01


async def insert_entries(conn: Conn, events: list[Envelope]) -> None:
    """The product-side handler: one row per event, in the batch transaction."""
    rows = []
    for env in events:
        data = env.data
        assert isinstance(data, EntryRecorded)
        rows.append((env.id, data.customer_id, data.amount))
    await conn.executemany(
        f"INSERT INTO {TABLE} (event_id, customer_id, amount) VALUES ($1, $2, $3)", rows)


def raw_row(record: Any, fields: Sequence[str]) -> tuple[Any, ...]:
    """``ce_id`` from the headers, then ``fields`` of the JSON body."""
    ce_id = next(v for k, v in record.headers if k == "ce_id")
    body = json.loads(record.value)
    return (ce_id.decode(), *(body[f] for f in fields))


async def copy_from_topic(settings: Settings, bootstrap: str, topic: str,
                          conn: asyncpg.Connection, *, schema: str, fields: Sequence[str],
                          expect: int, deadline: float) -> tuple[float, float]:
    """The raw consume baseline: read ``topic`` from the start without a group
    and COPY ``(event_id, *fields)`` of every record into ``schema``.TABLE, a
    batch at a time, until ``expect`` rows were copied. Returns (seconds to the
    first poll, seconds from the first poll to the last COPY)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    opened = time.perf_counter()
    await consumer.start()
    try:
        started: float | None = None
        copied = 0
        while copied < expect:
            if time.monotonic() > deadline:
                raise RuntimeError(f"raw consume of {topic}: {copied} of {expect} rows copied")
            batch = await consumer.getmany(timeout_ms=settings.consumer_batch_wait_ms or 1,
                                           max_records=settings.consumer_batch_size)
            if started is None:
                started = time.perf_counter()
            rows = [raw_row(r, fields) for part in batch.values() for r in part]
            if rows:
                await conn.copy_records_to_table(TABLE, records=rows, columns=COLUMNS,
                                                 schema_name=schema)
                copied += len(rows)
        done = time.perf_counter()
    finally:
        await consumer.stop()
    assert started is not None
    return started - opened, done - started


@register
class Consume(Workload):
    name = "consume"
    order = 20
    summary = "EventConsumer with inbox, one transaction per batch, one INSERT row per event"
    baseline_summary = ("AIOKafkaConsumer (no group) + asyncpg copy_records_to_table "
                        "per batch into a plain table")

    def describe(self) -> str:
        s = self.ctx.settings
        return (f"EventConsumer (batches of up to {s.consumer_batch_size}): decode + validate, "
                "inbox, one INSERT row per event, one transaction per batch, offset commit")

    async def setup(self) -> None:
        ctx = self.ctx
        self.topic = await ctx.new_topic("consume")
        envelopes = make_envelopes(self.events, self.topic)
        await kafka.produce(ctx.bootstrap_servers, self.topic, [encode(e) for e in envelopes])
        self.raw_schema = ctx.new_schema("consume_raw")
        await ctx.plain_schema(self.raw_schema, DDL)
        self.schema = ctx.new_schema("consume")
        self.pool: asyncpg.Pool = await ctx.migrated_pool(self.schema, [MIGRATION])
        self.resources.push_async_callback(self.pool.close)
        self.raw_conn = await ctx.connect()
        self.resources.push_async_callback(self.raw_conn.close)
        self.poll_conn = await ctx.connect()
        self.resources.push_async_callback(self.poll_conn.close)

    def _deadline(self) -> float:
        """A guard against hanging, not a timing check."""
        return time.monotonic() + 120.0 + self.events / 100

    async def baseline(self) -> float:
        start_up, seconds = await copy_from_topic(
            self.ctx.settings, self.ctx.bootstrap_servers, self.topic, self.raw_conn,
            schema=self.raw_schema, fields=("customer_id", "amount"), expect=self.events,
            deadline=self._deadline())
        self.excluded["baseline consumer start (no group)"] = start_up
        return seconds

    async def product(self) -> Phases:
        s = self.ctx.settings
        consumer = EventConsumer(
            self.pool, bootstrap_servers=self.ctx.bootstrap_servers,
            group=f"bench-{self.schema}", topics=[self.topic],
            handlers={EntryRecorded.event_type: insert_entries}, service="bench",
            lanes=s.relay_lanes, batch_size=s.consumer_batch_size,
            batch_wait_ms=s.consumer_batch_wait_ms)
        opened = time.perf_counter()
        task = asyncio.create_task(consumer.run(), name="bench-consumer")
        try:
            ready = asyncio.create_task(consumer.ready.wait())
            await asyncio.wait([ready, task], return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            started = time.perf_counter()
            deadline = self._deadline()
            count = f'SELECT count(*) FROM "{self.schema}".{TABLE}'
            pace = Pace(self.events, least=POLL_S)
            while True:
                if task.done():
                    task.result()  # re-raises what killed the consumer
                    raise RuntimeError("consume: the consumer stopped early")
                applied = cast(int, await self.poll_conn.fetchval(count))
                if applied >= self.events:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"consume: {applied} of {self.events} events applied")
                await asyncio.sleep(pace.next(applied))
            done = time.perf_counter()
        finally:
            consumer.stop()
            await asyncio.wait_for(task, timeout=30)
        self.excluded["product consumer start (group join)"] = started - opened
        return {"apply": done - started}

    async def verify(self) -> None:
        raw = await self.raw_conn.fetchval(
            f'SELECT count(*) FROM "{self.raw_schema}".{TABLE}')
        row = await self.pool.fetchrow(
            f"""SELECT (SELECT count(*) FROM {TABLE}) AS applied,
                       (SELECT count(DISTINCT event_id) FROM {TABLE}) AS distinct_ids,
                       (SELECT count(*) FROM inbox) AS inbox,
                       (SELECT count(*) FROM dead_letters) AS dead""")
        assert row is not None
        if raw != self.events:
            raise RuntimeError(f"consume baseline: {raw} rows, expected {self.events}")
        if (row["applied"], row["distinct_ids"], row["inbox"], row["dead"]) != (
                self.events, self.events, self.events, 0):
            raise RuntimeError(f"consume: {dict(row)}; expected {self.events} applied, "
                               "distinct and in the inbox, no dead letters")
