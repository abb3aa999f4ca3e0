"""Purchases into customer stages: N ``interaction.recorded`` purchase events
consumed by the real customers service, against a plain consumer plus COPY.

Set-up (untimed), per round: a fresh database and broker (see
:mod:`bench.service`), the service's migrations, ceil(N/2) customers stored
with COPY (stage potential), and N purchase events on ``crm.interactions.v1``:
one per customer, then a second one for floor(N/2) of them, so every event
moves a stage (potential -> one_time -> repeat) and writes a ``stage_history``
row.

* product: the customers service as deployed, ``--replicas`` processes
  (default one) of ``crm serve customers`` (consumer, outbox relay,
  scheduler and gRPC server all running), from the start of its first
  consumed batch's transaction (the group join is a note) until
  ``customers.stage_history`` holds N rows (polled at the pace of the
  progress, :mod:`bench.pacing`, every 10 ms near the end; both ends on
  the database's clock). Each event is the service's ``record_purchase``
  command: load the customer with a row lock, record the purchase and spend,
  move the stage, save, schedule the churn window, queue the events in the
  outbox;
* baseline: the consume workload's raw baseline on the same topic: an
  ``AIOKafkaConsumer`` without a group and ``copy_records_to_table`` of
  ``(event_id, customer_id, amount_minor)`` per batch into a plain table of the
  same database.

The issue's target is at least half the raw baseline's throughput (ratio at
most 2.0); the harness prints the ratio and asserts nothing.
"""

from __future__ import annotations

import time

import asyncpg

from bench import kafka
from bench.customers import SCHEMA, purchase_envelopes, seed_customers
from bench.events import encode
from bench.registry import Phases, Workload, register
from bench.service import ServiceProcesses, Stack, consumed_until, cpu_figure, fresh_stack
from bench.workloads.consume import DDL, TABLE, copy_from_topic
from crm_contracts.topics import INTERACTIONS
from services.customers.app import SPEC

#: Schema of the baseline's plain table, in the round's database.
RAW_SCHEMA = "bench_raw"
#: Pause between two counts of ``stage_history``.
POLL_S = 0.01


@register
class CustomersPurchases(Workload):
    name = "customers.purchases"
    order = 30
    summary = ("customers service (crm serve): interaction.recorded purchases until every "
               "stage change is applied")
    baseline_summary = ("AIOKafkaConsumer (no group) + asyncpg copy_records_to_table per batch "
                        "of the same records into a plain table")
    target = "ratio at most 2.00x (at least half the raw baseline's throughput)"

    def describe(self) -> str:
        s = self.ctx.settings
        return (f"customers service ({self.ctx.replicas} crm serve process(es), consumer "
                f"batches of up to {s.consumer_batch_size}) applying {self.events} purchases of "
                f"{self._customers()} customers, each a stage change, until "
                f"{SCHEMA}.stage_history holds them all")

    def _customers(self) -> int:
        return (self.events + 1) // 2

    def _deadline(self) -> float:
        """A guard against hanging, not a timing check."""
        return time.monotonic() + 120.0 + self.events / 50

    async def setup(self) -> None:
        self.stack: Stack = await self.resources.enter_async_context(
            fresh_stack(self.ctx, "purchases"))
        await self.stack.migrate(SPEC)
        conn = await self.stack.connect()
        self.resources.push_async_callback(conn.close)
        self.conn: asyncpg.Connection = conn
        ids = await seed_customers(conn, self._customers())
        envelopes = purchase_envelopes(ids, self.events)
        await kafka.produce(self.stack.bootstrap_servers, INTERACTIONS,
                            [encode(e) for e in envelopes])
        async with conn.transaction():
            await conn.execute(f"CREATE SCHEMA {RAW_SCHEMA}")
            await conn.execute(f"SET LOCAL search_path TO {RAW_SCHEMA}")
            await conn.execute(DDL)

    async def baseline(self) -> float:
        start_up, seconds = await copy_from_topic(
            self.stack.settings, self.stack.bootstrap_servers, INTERACTIONS, self.conn,
            schema=RAW_SCHEMA, fields=("customer_id", "amount_minor"), expect=self.events,
            deadline=self._deadline())
        self.excluded["baseline consumer start (no group)"] = start_up
        return seconds

    async def product(self) -> Phases:
        service = ServiceProcesses(SPEC, self.stack.settings, replicas=self.ctx.replicas)
        try:
            seconds, start_up = await consumed_until(
                service, self.conn, f"crm-{SPEC.name}",
                count_sql=f"SELECT count(*) FROM {SCHEMA}.stage_history",
                expected=self.events, what="stage changes applied", published=False,
                deadline=self._deadline(), poll_s=POLL_S, broker_pid=self.stack.broker_pid)
        finally:
            await service.stop()
        self.excluded["product start-up and consumer group join"] = start_up
        cpu_figure(self.figures, service, self.events)
        return {"apply": seconds}

    async def verify(self) -> None:
        raw = await self.conn.fetchval(f"SELECT count(*) FROM {RAW_SCHEMA}.{TABLE}")
        if raw != self.events:
            raise RuntimeError(f"{self.name} baseline: {raw} rows, expected {self.events}")
        row = await self.conn.fetchrow(
            f"""SELECT (SELECT count(*) FROM {SCHEMA}.stage_history) AS changes,
                       (SELECT count(*) FROM {SCHEMA}.purchases) AS purchases,
                       (SELECT count(*) FROM {SCHEMA}.inbox) AS inbox,
                       (SELECT count(*) FROM {SCHEMA}.dead_letters) AS dead,
                       (SELECT count(*) FROM {SCHEMA}.customers
                         WHERE stage = 'repeat') AS repeat""")
        assert row is not None
        expected = (self.events, self.events, self.events, 0, self.events // 2)
        if tuple(row.values()) != expected:
            raise RuntimeError(f"{self.name}: {dict(row)}; expected {self.events} stage "
                               "changes, purchases and inbox rows, no dead letters, "
                               f"{self.events // 2} repeat customers")
