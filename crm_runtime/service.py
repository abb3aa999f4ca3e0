"""How one service process runs: the lifecycle every service shares.

A service describes itself with a :class:`ServiceSpec` (its name, migrations,
and a ``build`` function that wires its handlers and servicers from a
:class:`ServiceContext`). :class:`ServiceRunner` does the rest, in order:
connect (retrying until the database answers), migrate, serve metrics, start
the outbox relay, the consumers and the scheduler, serve gRPC, then wait for
SIGINT/SIGTERM and shut down gracefully (health goes NOT_SERVING, in-flight
calls get ``shutdown_grace_s`` to finish, loops stop, the pool closes).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar, cast

import asyncpg
import uvloop
from aiokafka import AIOKafkaProducer

from crm.ops.v1 import ops_pb2, ops_pb2_grpc
from crm_runtime import db, logs, metrics, tls, tracing
from crm_runtime.clock import Clock, OffsetClock, SystemClock
from crm_runtime.consumer import BatchHandler, EventConsumer, Interest, Prepare
from crm_runtime.db import Conn
from crm_runtime.events import Envelope, EventPayload
from crm_runtime.grpc_server import ServiceRegistration, build_server, set_serving
from crm_runtime.migrations import migrate, migrations_for
from crm_runtime.ops import OperationsServicer
from crm_runtime.outbox import OutboxRelay, producer_options
from crm_runtime.retry import Backoff
from crm_runtime.scheduler import Scheduler, WorkHandler
from crm_runtime.settings import Settings

log = logging.getLogger(__name__)

#: A state gauge refresh waits at least this many times its own duration
#: before the next: the gauges use at most about a twentieth of a database
#: core, however large the tables they count grow.
GAUGE_SPACING = 20.0


Q = TypeVar("Q", bound=EventPayload)


@dataclass(frozen=True)
class Route:
    """One handler and the payload classes it is declared for; made by :func:`on`."""

    payloads: tuple[type[EventPayload], ...]
    handler: BatchHandler


def on(payloads: type[Q] | tuple[type[Q], ...],
       handler: Callable[[Conn, list[Envelope[Q]]], Awaitable[None]]) -> Route:
    """Route events of ``payloads`` (one class, or several that one handler
    takes together) to ``handler``, which receives them typed: the consumer
    hands a handler only the events of the types it is routed, so no handler
    checks or casts what it gets. A run of consecutive events routed to the
    same handler reaches it as one list, in order."""
    classes = payloads if isinstance(payloads, tuple) else (payloads,)
    return Route(classes, cast(BatchHandler, handler))


@dataclass(frozen=True)
class Subscription:
    """Topics one consumer group reads and the handlers of its event types:
    typed :class:`Route` s, or (for a raw consumer) handlers by CloudEvents
    type. ``prepare`` runs before each batch's transaction (see
    :data:`crm_runtime.consumer.Prepare`); ``interest`` narrows the handled
    types per batch (:data:`crm_runtime.consumer.Interest`). With
    ``natural_keys`` the handlers are idempotent by their own keys (a
    redelivered event finds its rows and adds nothing), so the group keeps
    no inbox row an event."""

    topics: Sequence[str]
    routes: Sequence[Route] = ()
    handlers: Mapping[str, BatchHandler] = field(default_factory=dict)
    group_suffix: str = ""
    prepare: Prepare | None = None
    interest: Interest | None = None
    natural_keys: bool = False

    def by_type(self) -> dict[str, BatchHandler]:
        """Every handler by the CloudEvents type it handles."""
        handlers = dict(self.handlers)
        for route in self.routes:
            for payload in route.payloads:
                if payload.event_type in handlers:
                    raise ValueError(f"{payload.event_type} is routed twice")
                handlers[payload.event_type] = route.handler
        return handlers


class Worker(Protocol):
    """A background loop a service runs beside its consumers and scheduler
    (loyalty's webhook deliveries): ``run`` until ``stop`` is called; an
    exception out of ``run`` stops the service (as a dead consumer does)."""

    async def run(self) -> None: ...

    def stop(self) -> None: ...


@dataclass
class ServiceParts:
    """What a service's ``build`` returns."""

    subscriptions: list[Subscription] = field(default_factory=list)
    scheduled: Mapping[str, WorkHandler] = field(default_factory=dict)
    registrations: list[ServiceRegistration] = field(default_factory=list)
    gauges: list[metrics.DbGauge] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)


@dataclass
class ServiceContext:
    settings: Settings
    pool: asyncpg.Pool
    clock: Clock
    name: str

    @property
    def lanes(self) -> int:
        return self.settings.relay_lanes


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    migrations: Path | None
    build: Callable[[ServiceContext], ServiceParts]
    publishes: Sequence[str] = ()
    consumes: Sequence[str] = ()

    @property
    def schema(self) -> str:
        return self.name


async def open_pool(settings: Settings, schema: str, backoff: Backoff | None = None,
                    attempts: int | None = None) -> asyncpg.Pool:
    """Connect, retrying with backoff while the database is not there yet."""
    assert settings.database_url, "DATABASE_URL must be resolved before services start"
    backoff = backoff or Backoff(settings.retry_initial_s, settings.retry_max_s)
    while True:
        try:
            return await db.create_pool(settings.database_url, schema,
                                        max_size=settings.db_pool_max,
                                        min_size=settings.db_pool_min)
        except Exception as exc:
            if not db.is_transient(exc) or (attempts is not None and backoff.attempts >= attempts):
                raise
            delay = backoff.next()
            log.warning("database not reachable (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)


async def migrate_service(pool: asyncpg.Pool, spec: ServiceSpec) -> list[str]:
    async with pool.acquire() as conn:
        return await migrate(conn, spec.schema, migrations_for(spec.migrations))


class ServiceRunner:
    """Runs one service until stopped. ``clock`` is injectable for tests."""

    def __init__(self, spec: ServiceSpec, settings: Settings, *, clock: Clock | None = None,
                 grpc_port: int | None = None, serve_metrics: bool = True) -> None:
        self.spec = spec
        self.settings = settings
        self.clock: Clock = clock or (OffsetClock() if settings.dev_clock_control
                                      else SystemClock())
        self._grpc_port = settings.grpc_port(spec.name) if grpc_port is None else grpc_port
        self._serve_metrics = serve_metrics
        self._stop = asyncio.Event()
        self.ready = asyncio.Event()
        self.bound_grpc_port = 0
        self.pool: asyncpg.Pool | None = None

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        s = self.settings
        assert s.kafka_bootstrap_servers, "KAFKA_BOOTSTRAP_SERVERS must be resolved"
        tls.check(s)  # a bad certificate stops the service before it starts anything
        logs.set_service(self.spec.name)
        tracing.configure(s.otel_exporter, self.spec.name)
        pool = self.pool = await open_pool(s, self.spec.schema)
        tasks: list[asyncio.Task[None]] = []
        producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap_servers,
                                    **producer_options(s.producer_batch_bytes))
        stoppers: list[Callable[[], None]] = []
        try:
            applied = await migrate_service(pool, self.spec)
            if applied:
                log.info("%s: applied %d migrations", self.spec.name, len(applied))
            ctx = ServiceContext(settings=s, pool=pool, clock=self.clock, name=self.spec.name)
            parts = self.spec.build(ctx)
            if self._serve_metrics:
                metrics.serve(s.metrics_port(self.spec.name), s.grpc_host)
            await _start_producer(producer, s)
            relay = OutboxRelay(pool, producer, service=self.spec.name, schema=self.spec.schema,
                                lanes=s.relay_lanes, batch_size=s.relay_batch_size,
                                poll_interval=s.relay_poll_interval_s,
                                retention_hours=s.outbox_retention_hours,
                                inbox_retention_days=s.inbox_retention_days,
                                key_retention_days=s.dead_letter_key_retention_days,
                                backoff=Backoff(s.retry_initial_s, s.retry_max_s),
                                concurrency=s.relay_concurrency)
            tasks.append(asyncio.create_task(relay.run(), name=f"{self.spec.name}-relay"))
            stoppers.append(relay.stop)
            for sub in parts.subscriptions:
                consumer = EventConsumer(
                    pool, bootstrap_servers=s.kafka_bootstrap_servers,
                    group=f"crm-{self.spec.name}{sub.group_suffix}", topics=sub.topics,
                    handlers=sub.by_type(), service=self.spec.name, lanes=s.relay_lanes,
                    batch_size=s.consumer_batch_size, batch_wait_ms=s.consumer_batch_wait_ms,
                    backoff=Backoff(s.retry_initial_s, s.retry_max_s),
                    failpoints=s.failpoint_set, consumer_options=s.consumer_options(),
                    concurrency=s.consumer_concurrency,
                    commit_interval_ms=s.consumer_commit_interval_ms, prepare=sub.prepare,
                    interest=sub.interest, record_ids=not sub.natural_keys)
                tasks.append(asyncio.create_task(consumer.run(), name=f"{self.spec.name}-consumer"))
                stoppers.append(consumer.stop)
            if parts.scheduled:
                scheduler = Scheduler(pool, self.clock, parts.scheduled, service=self.spec.name,
                                      batch_size=s.scheduler_batch_size,
                                      poll_interval=s.scheduler_poll_interval_s)
                tasks.append(asyncio.create_task(scheduler.run(), name=f"{self.spec.name}-sched"))
                stoppers.append(scheduler.stop)
            for i, worker in enumerate(parts.workers):
                tasks.append(asyncio.create_task(worker.run(),
                                                 name=f"{self.spec.name}-worker-{i}"))
                stoppers.append(worker.stop)
            if parts.gauges:
                metrics.DB_GAUGES.add(parts.gauges)
                tasks.append(asyncio.create_task(
                    self._refresh_gauges(pool, parts.gauges), name=f"{self.spec.name}-gauges"))
            ops = ServiceRegistration(
                ops_pb2_grpc.add_OperationsServicer_to_server,
                OperationsServicer(pool, self.spec.name, self.spec.schema,
                                   self.clock if s.dev_clock_control else None),
                ops_pb2.DESCRIPTOR.services_by_name["Operations"])
            registrations = [*parts.registrations, ops]
            server, health, self.bound_grpc_port = build_server(
                service=self.spec.name, registrations=registrations, tokens=s.token_table(),
                address=f"{s.grpc_host}:{self._grpc_port}",
                credentials=tls.server_credentials(s))
            await server.start()
            await set_serving(health, [r.descriptor.full_name for r in registrations], True)
            log.info("%s: serving gRPC on %s:%d (%s)", self.spec.name, s.grpc_host,
                     self.bound_grpc_port, tls.summary(s))
            self.ready.set()
            await self._wait(tasks)
            await set_serving(health, [r.descriptor.full_name for r in registrations], False)
            await server.stop(s.shutdown_grace_s)
        finally:
            for stop in stoppers:
                stop()
            for task in tasks:
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(task, timeout=s.shutdown_grace_s)
            with contextlib.suppress(Exception):
                await producer.stop()
            await pool.close()
            log.info("%s: stopped", self.spec.name)

    async def _refresh_gauges(self, pool: asyncpg.Pool, gauges: list[metrics.DbGauge]) -> None:
        """Keep the state gauges fresh; a failed refresh keeps the last values.
        The next refresh waits ``metrics_refresh_s``, or :data:`GAUGE_SPACING`
        times what this one took when that is longer: a gauge counting a
        table that grew large (customers by stage at ten million) would
        otherwise keep the database busy with its own counting."""
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            started = loop.time()
            try:
                async with pool.acquire() as conn:
                    await metrics.DB_GAUGES.refresh(self.spec.name, conn, gauges,
                                                    self.clock.now())
            except Exception as exc:
                log.warning("%s: refreshing gauges failed (%s)", self.spec.name, exc)
            pause = max(self.settings.metrics_refresh_s, GAUGE_SPACING * (loop.time() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), pause)

    async def _wait(self, tasks: list[asyncio.Task[None]]) -> None:
        """Until stop is asked, or a background loop dies (then re-raise)."""
        stop_task = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait([stop_task, *tasks], return_when=asyncio.FIRST_COMPLETED)
        stop_task.cancel()
        for task in done:
            if task is not stop_task and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]


async def _start_producer(producer: AIOKafkaProducer, settings: Settings) -> None:
    backoff = Backoff(settings.retry_initial_s, settings.retry_max_s)
    while True:
        try:
            await producer.start()
            return
        except Exception as exc:
            delay = backoff.next()
            log.warning("broker not reachable (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)


def tune_gc(gen0_threshold: int) -> None:
    """Garbage collection for a long-running service. The objects alive once
    the service is loaded (modules, classes, settings) go to the permanent
    generation, so no collection scans them again; and the young generation
    is collected after ``gen0_threshold`` allocations instead of 700. A
    consumed batch allocates hundreds of thousands of short-lived objects,
    nearly all freed by reference counting, and with the default a collection
    ran about every 40 events (measured: 5-7% of a busy process's time).
    Unreachable cycles are still collected, a little later."""
    gc.freeze()
    if gen0_threshold:
        gc.set_threshold(gen0_threshold, *gc.get_threshold()[1:])


def run_forever(runner: ServiceRunner) -> None:
    """Run a service in this process until SIGINT or SIGTERM."""
    tune_gc(runner.settings.gc_gen0_threshold)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, runner.stop)
        await runner.run()

    # uvloop: asyncpg's and aiokafka's I/O callbacks run in C, not in
    # asyncio's Python selector loop (measured: 5% of an ingesting process).
    uvloop.run(main())
