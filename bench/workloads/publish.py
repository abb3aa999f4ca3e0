"""Publishing: events into Kafka through the transactional outbox and its
relay, against a plain producer sending the same pre-encoded records.

The product path has two phases, timed separately: ``write`` (the service's
side: ``outbox.add`` in transactions of ``--tx-size`` events, one pooled
connection per transaction) and ``relay`` (``OutboxRelay.publish_pending()``
until the outbox is drained: read a lane, publish, wait for ``acks=all``, mark
sent). Both sides use a producer configured like the services' one, started
before the clock starts.
"""

from __future__ import annotations

import time
from typing import Any

import asyncpg

from bench import kafka
from bench.events import KafkaRecord, encode, make_envelopes
from bench.registry import Phases, Workload, register
from crm_runtime import outbox
from crm_runtime.events import Envelope
from crm_runtime.outbox import OutboxRelay


@register
class Publish(Workload):
    name = "publish"
    order = 10
    summary = "outbox.add in transactions (write), then OutboxRelay.publish_pending() (relay)"
    baseline_summary = ("AIOKafkaProducer.send of the same pre-encoded CloudEvents records "
                        "(key, headers, body), awaiting every ack")

    def describe(self) -> str:
        s = self.ctx.settings
        return (f"outbox.add in transactions of {self.ctx.outbox_tx_size} events (write), then "
                f"OutboxRelay.publish_pending() until drained, {s.relay_lanes} lanes, "
                f"batches of {s.relay_batch_size} (relay)")

    async def setup(self) -> None:
        ctx = self.ctx
        self.raw_topic = await ctx.new_topic("publish-raw")
        self.product_topic = await ctx.new_topic("publish-outbox")
        self.envelopes: list[Envelope] = make_envelopes(self.events, self.product_topic)
        self.records: list[KafkaRecord] = [encode(e) for e in self.envelopes]
        self.schema = ctx.new_schema("publish")
        self.pool: asyncpg.Pool = await ctx.migrated_pool(self.schema)
        self.resources.push_async_callback(self.pool.close)
        self.raw_producer: Any = await kafka.start_producer(ctx.bootstrap_servers)
        self.resources.push_async_callback(self.raw_producer.stop)
        self.relay_producer: Any = await kafka.start_producer(ctx.bootstrap_servers)
        self.resources.push_async_callback(self.relay_producer.stop)

    async def baseline(self) -> float:
        started = time.perf_counter()
        await kafka.send_all(self.raw_producer, self.raw_topic, self.records)
        return time.perf_counter() - started

    async def product(self) -> Phases:
        lanes = self.ctx.settings.relay_lanes
        size = self.ctx.outbox_tx_size
        started = time.perf_counter()
        for i in range(0, len(self.envelopes), size):
            async with self.pool.acquire() as conn, conn.transaction():
                await outbox.add(conn, self.envelopes[i:i + size], lanes=lanes)
        written = time.perf_counter()
        relay = OutboxRelay(self.pool, self.relay_producer, service="bench", schema=self.schema,
                            lanes=lanes, batch_size=self.ctx.settings.relay_batch_size)
        while await relay.publish_pending():
            pass
        drained = time.perf_counter()
        return {"write": written - started, "relay": drained - written}

    async def verify(self) -> None:
        row = await self.pool.fetchrow(
            "SELECT count(*) AS total, count(*) FILTER (WHERE sent_at IS NULL) AS unsent"
            " FROM outbox")
        assert row is not None
        if row["unsent"] != 0 or row["total"] != self.events:
            raise RuntimeError(f"publish: outbox holds {row['total']} rows, {row['unsent']} "
                               f"unsent; expected {self.events}, all sent")
        for topic in (self.raw_topic, self.product_topic):
            seen = await kafka.count_records(self.ctx.bootstrap_servers, topic,
                                             expect=self.events)
            if seen != self.events:
                raise RuntimeError(f"publish: {seen} records on {topic}, "
                                   f"expected {self.events}")
