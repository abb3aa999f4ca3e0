"""The idle stack: what the three services, the database and the broker cost
while nothing happens, as ``crm up`` runs them with no traffic.

The size of this workload is a span, not the run's event count: 60 s
(``--quick``: 10 s) of doing nothing, measured after the services serve,
every consumer group of theirs is stable, and a settle of 10 s (3 s with
``--quick``; none of that timed).

Set-up (untimed), per round: a fresh database and broker (see
:mod:`bench.service`); the interactions, customers and loyalty services run
as ``crm up`` runs them (``crm serve <name>``, ``--replicas`` processes
each, the embedded broker's consumer timings), interactions and loyalty
pointed at the customers service's gRPC address.

* product: over the span, the user plus system CPU of each service's
  processes, of the round database's backends (the services' connections;
  none when the server is on another machine) and of the broker, each as a
  percentage of one core, and their sum. The row's "seconds" are the CPU
  seconds of all of them over the span and its "events" the span's seconds,
  so its events/s is the inverse of the share of a core;
* baseline: what the same consumer group memberships cost with the bare
  client and nothing else: a broker of its own with the same topics, and one
  raw ``AIOKafkaConsumer`` per consumer group of the stack (the same topics,
  the stack's aiokafka settings: fetch wait, session, heartbeat; not the
  runtime's idle probe), in this
  process, each looping on ``getmany`` while nothing arrives; the CPU of
  that broker and of this process over the same span. It is the floor of
  the product's Kafka side at those settings (no database work, no relay,
  scheduler or webhook polls, no gRPC server), not of an idle stack in
  general: a consumer that backs off while idle may go under it.

The check: every service process still runs and answers its health check
as ``SERVING`` at the end of the span, and no service holds a dead letter.
The target, under 5 % of one core in all, is printed and not asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import cast

import asyncpg
from aiokafka import AIOKafkaConsumer
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.registry import Phases, Workload, register
from bench.service import (
    ServiceProcesses,
    Stack,
    backends_cpu,
    fresh_stack,
    process_cpu_seconds,
)
from crm_app.cli import create_topics
from crm_contracts.topics import CUSTOMERS, INTERACTIONS, INTERACTIONS_INGEST, LOYALTY
from crm_runtime.consumer import IDLE_OPTIONS
from crm_runtime.stack import TansuBroker
from services.customers.app import SPEC as CUSTOMERS_SPEC
from services.interactions.app import SPEC as INTERACTIONS_SPEC
from services.loyalty.app import SPEC as LOYALTY_SPEC
from services.loyalty.webhook_delivery import GROUP_SUFFIX as WEBHOOK_GROUP_SUFFIX
from services.loyalty.webhooks import TOPICS as WEBHOOK_TOPICS

#: Seconds measured, and seconds of settling before (from serving; longer
#: than a group join on the embedded broker, 2-5 s, which the broker gives
#: no way to watch: it answers ListGroups with nothing and DescribeGroups not
#: at all), full run and --quick.
SPAN_S, SETTLE_S = 60.0, 15.0
QUICK_SPAN_S, QUICK_SETTLE_S = 10.0, 10.0
SPECS = (CUSTOMERS_SPEC, INTERACTIONS_SPEC, LOYALTY_SPEC)
#: Longest wait for the consumer groups to become stable (a guard, not a timing).
JOIN_TIMEOUT_S = 90.0
#: How often a raw baseline consumer returns from ``getmany`` with nothing,
#: as the product's consumers do (their ``batch_wait_ms``).
RAW_POLL_MS = 50


#: The consumer groups of the three services and their topics, as
#: :class:`crm_runtime.service.ServiceRunner` names them (``crm-<service>``
#: plus the subscription's suffix): the baseline's raw members (a test keeps
#: the list in step with the services' subscriptions).
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("crm-customers", (INTERACTIONS,)),
    ("crm-customers-loyalty", (LOYALTY,)),
    ("crm-interactions-ingest", (INTERACTIONS_INGEST,)),
    ("crm-interactions", (CUSTOMERS,)),
    ("crm-loyalty", (CUSTOMERS, INTERACTIONS)),
    (f"crm-loyalty{WEBHOOK_GROUP_SUFFIX}", WEBHOOK_TOPICS),
)


async def until_assigned(consumers: list[AIOKafkaConsumer], timeout: float) -> None:
    """Until every raw consumer has its partitions (its group joined)."""
    deadline = time.monotonic() + timeout
    while not all(c.assignment() for c in consumers):
        if time.monotonic() > deadline:
            raise RuntimeError(f"raw consumers without partitions after {timeout:.0f}s")
        await asyncio.sleep(0.2)


@register
class StackIdle(Workload):
    name = "stack.idle"
    order = 47
    warm_up = False  # nothing to warm: the span is idle by design
    summary = ("interactions + customers + loyalty as crm serve processes, no traffic: CPU of "
               "the services, the database's backends and the broker over the span")
    baseline_summary = ("a broker of its own with the same topics and one raw AIOKafkaConsumer "
                        "per consumer group of the stack (same topics and consumer settings), "
                        "idle over the same span: CPU of that broker and of this process")
    target = "under 5% of one core in all (services, database, broker) -- product figures"

    def _shape(self) -> tuple[float, float]:
        return (QUICK_SPAN_S, QUICK_SETTLE_S) if self.ctx.quick else (SPAN_S, SETTLE_S)

    def describe(self) -> str:
        span, settle = self._shape()
        return (f"interactions, customers and loyalty services ({self.ctx.replicas} crm serve "
                f"process(es) each, one database, one broker), no traffic: CPU over {span:.0f}s "
                f"once every consumer group is stable and {settle:.0f}s settled; the row's "
                f"seconds are CPU seconds of all parts, its events the span's seconds")

    async def setup(self) -> None:
        span, _ = self._shape()
        self.counts["idle"] = int(span)
        started = time.perf_counter()
        self.stack: Stack = await self.resources.enter_async_context(
            fresh_stack(self.ctx, "idle"))
        conn = await self.stack.connect()
        self.resources.push_async_callback(conn.close)
        self.conn: asyncpg.Connection = conn
        settings = self.stack.settings
        replicas = self.ctx.replicas
        customers = ServiceProcesses(CUSTOMERS_SPEC, settings, replicas=replicas)
        to_customers = settings.model_copy(update={"customers_grpc_target": customers.target})
        self.services = [customers,
                         ServiceProcesses(INTERACTIONS_SPEC, to_customers, replicas=replicas),
                         ServiceProcesses(LOYALTY_SPEC, to_customers, replicas=replicas)]
        for service in self.services:
            self.resources.push_async_callback(service.stop)
        await asyncio.gather(*(service.start() for service in self.services))
        self.excluded["set-up: three services serving"] = time.perf_counter() - started

    async def _cpu_used(self) -> dict[str, dict[int, float]]:
        """CPU seconds used so far by each part of the round, per process."""
        parts: dict[str, dict[int, float]] = {}
        for service in self.services:
            used = service.cpu_seconds()
            if used is not None:
                parts[f"the {service.spec.name} process(es)"] = {0: used}
        backends = await backends_cpu(self.conn)
        if backends:
            parts["the database's backends"] = backends
        pid = self.stack.broker_pid
        if pid is not None and (used := process_cpu_seconds(pid)) is not None:
            parts["the broker"] = {pid: used}
        return parts

    async def product(self) -> Phases:
        span, settle = self._shape()
        await asyncio.sleep(settle)
        for service in self.services:
            service.check_running()
        commits_before = await self._commits()
        before = await self._cpu_used()
        started = time.monotonic()
        await asyncio.sleep(span)
        after = await self._cpu_used()
        took = time.monotonic() - started
        # A backend that connected meanwhile counts from nothing.
        spent = {part: sum(used - before.get(part, {}).get(pid, 0.0)
                           for pid, used in procs.items()) for part, procs in after.items()}
        for part, seconds in spent.items():
            self.figures[f"product: CPU (% of one core, {part})"] = seconds / took * 100
        total = sum(spent.values())
        self.figures["product: CPU (% of one core, all of the above)"] = total / took * 100
        # Backends report their counts at most once a second.
        await asyncio.sleep(1.1)
        self.figures["product: database transactions per second"] = (
            await self._commits() - commits_before) / took
        await self._check_serving()
        return {"idle": total}

    async def _commits(self) -> int:
        return cast(int, await self.conn.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database "
            "WHERE datname = current_database()"))

    async def _check_serving(self) -> None:
        """Every process still runs and answers SERVING (raises otherwise)."""
        for service in self.services:
            service.check_running()
            for channel in service.channels(service.replicas):
                try:
                    reply = await health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=5)
                finally:
                    await channel.close()
                if reply.status != health_pb2.HealthCheckResponse.SERVING:
                    raise RuntimeError(f"{self.name}: {service.spec.name} is not serving")

    async def baseline(self) -> float:
        span, settle = self._shape()
        broker = TansuBroker()
        await asyncio.to_thread(broker.start)
        consumers: list[AIOKafkaConsumer] = []
        polling: list[asyncio.Task[None]] = []
        try:
            settings = self.stack.settings.model_copy(
                update={"kafka_bootstrap_servers": broker.bootstrap_servers})
            await create_topics(settings)
            for group, topics in GROUPS:
                consumer = AIOKafkaConsumer(
                    *topics, bootstrap_servers=broker.bootstrap_servers, group_id=group,
                    enable_auto_commit=False, auto_offset_reset="earliest",
                    **{k: v for k, v in settings.consumer_options().items()
                       if k not in IDLE_OPTIONS})
                await consumer.start()
                consumers.append(consumer)

            async def poll(consumer: AIOKafkaConsumer) -> None:
                while True:
                    await consumer.getmany(timeout_ms=RAW_POLL_MS)

            polling = [asyncio.create_task(poll(c)) for c in consumers]
            await until_assigned(consumers, JOIN_TIMEOUT_S)
            await asyncio.sleep(settle)
            pid = broker.pid
            assert pid is not None
            broker_before = process_cpu_seconds(pid) or 0.0
            own_before = sum(os.times()[:2])
            started = time.monotonic()
            await asyncio.sleep(span)
            own = sum(os.times()[:2]) - own_before
            broker_used = (process_cpu_seconds(pid) or 0.0) - broker_before
            took = time.monotonic() - started
            self.figures["raw: CPU (% of one core, the broker)"] = broker_used / took * 100
            self.figures["raw: CPU (% of one core, this process: the raw group members)"] = (
                own / took * 100)
            self.figures["raw: CPU (% of one core, all of the above)"] = (
                (own + broker_used) / took * 100)
            for task in polling:
                if task.done():
                    task.result()  # a raw consumer that failed fails the round
            return own + broker_used
        finally:
            for task in polling:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for consumer in consumers:
                await consumer.stop()
            await asyncio.to_thread(broker.stop)

    async def verify(self) -> None:
        await self._check_serving()
        dead = await self.conn.fetchval(" + ".join(
            f"(SELECT count(*) FROM {spec.schema}.dead_letters)" for spec in SPECS).join(
            ("SELECT ", "")))
        if dead:
            raise RuntimeError(f"{self.name}: {dead} dead letters")
