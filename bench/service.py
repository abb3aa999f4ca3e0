"""Product services run by a workload as deployed, on servers of their own.

The services use fixed schema and topic names (the customers service owns
schema ``customers`` and reads ``crm.interactions.v1``), so a workload that
runs one cannot share the run's database and broker: :func:`fresh_stack`
gives each round a fresh database on the run's PostgreSQL server and a fresh
embedded Tansu broker (in memory, so its topics start empty), and drops both
when the round ends. This holds with ``KAFKA_BOOTSTRAP_SERVERS`` set too: the
run never writes to the product topics of a broker that is not its own.

:class:`ServiceProcesses` runs a service as it is deployed: ``crm serve``
processes (migrations, outbox relay, consumers, scheduler, gRPC with a dev
token), ``--replicas`` of them; :func:`consumed_until` times a consuming
service on the database's clock, from its first transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import kafka
from bench.context import BenchContext
from bench.infra import fresh_database
from bench.pacing import Pace
from crm_app.cli import create_topics
from crm_runtime.migrations import migrate, migrations_for
from crm_runtime.service import ServiceSpec
from crm_runtime.settings import SERVICES, Settings, env_name
from crm_runtime.stack import EMBEDDED_BROKER_SETTINGS, TansuBroker, free_port

#: The bearer token of the in-process services (every scope).
DEV_TOKEN = "bench-dev-token-0123456789"

#: The gRPC port of a bench service's process (:mod:`bench.floor`).
GRPC_PORT_ENV = "BENCH_GRPC_PORT"

#: Clock ticks a second of /proc/<pid>/stat's CPU times.
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Stack:
    """The database and broker of one round, and the service settings on them."""

    database_url: str
    bootstrap_servers: str
    settings: Settings
    #: The round's broker process (None for a broker this run did not start).
    broker_pid: int | None = None

    @property
    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {DEV_TOKEN}")]

    async def connect(self) -> asyncpg.Connection:
        """A plain asyncpg connection, without the runtime's JSON codecs (COPY
        of ``jsonb`` needs asyncpg's own binary codec)."""
        conn: asyncpg.Connection = await asyncpg.connect(self.database_url)
        return conn

    async def migrate(self, spec: ServiceSpec) -> None:
        """Apply the service's migrations, as its start-up would."""
        conn = await self.connect()
        try:
            await migrate(conn, spec.schema, migrations_for(spec.migrations))
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def fresh_stack(ctx: BenchContext, label: str,
                      broker_log: Path | None = None) -> AsyncIterator[Stack]:
    """A fresh database and a fresh broker with the product topics, for one
    round (the broker's output appended to ``broker_log`` when given)."""
    async with contextlib.AsyncExitStack() as stack:
        try:
            url = await stack.enter_async_context(
                fresh_database(ctx.database_url, ctx.new_name(label)))
        except asyncpg.InsufficientPrivilegeError as exc:
            raise RuntimeError(
                f"{label}: the service owns fixed schema names, so each round needs a database "
                f"of its own, and the bench role may not create one ({exc}); run with an "
                "empty DATABASE_URL (a local or embedded server) or grant CREATEDB") from None
        broker = TansuBroker(log_path=broker_log)
        await asyncio.to_thread(broker.start)
        stack.push_async_callback(asyncio.to_thread, broker.stop)
        update: dict[str, Any] = {"database_url": url,
                                  "kafka_bootstrap_servers": broker.bootstrap_servers,
                                  "dev_token": DEV_TOKEN}
        # As crm up does with the embedded broker; CRM_* variables the user set win.
        update |= {k: v for k, v in EMBEDDED_BROKER_SETTINGS.items()
                   if k not in ctx.settings.model_fields_set}
        settings = ctx.settings.model_copy(update=update)
        await create_topics(settings)
        yield Stack(url, broker.bootstrap_servers, settings, broker.pid)


class ServiceProcesses:
    """One service as it is deployed: ``replicas`` processes of
    ``python -m crm_app serve <name>`` (each a full service: consumers,
    relay, scheduler, gRPC), sharing one gRPC port as replicas behind a load
    balancer would (grpc-core binds with ``SO_REUSEPORT``, so the kernel hands
    each new connection to one of them), each with a metrics port of its own.

    :meth:`channels` opens one connection per channel (a local subchannel
    pool), so several channels spread over the replicas."""

    def __init__(self, spec: ServiceSpec, settings: Settings, *, replicas: int = 1,
                 module: Sequence[str] | None = None) -> None:
        self.spec = spec
        self.replicas = replicas
        #: What ``python -m`` runs: ``crm_app serve <name>`` for a product
        #: service; a bench service (:mod:`bench.floor`) names its own module.
        self.module = list(module or ("crm_app", "serve", spec.name))
        self.port = free_port()
        env = {k: v for k, v in os.environ.items()
               if not (k.upper().startswith("CRM_")
                       or k.upper() in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS"))}
        for field in settings.model_fields_set:
            value = settings.model_dump(mode="json", include={field})[field]
            if value is None:
                continue
            env[env_name(field)] = (json.dumps(value) if isinstance(value, dict | list)
                                    else str(value))
        # grpc_port(name) is base + the service's index: aim it at our port.
        # A bench service, not one of SERVICES, reads GRPC_PORT_ENV.
        if spec.name in SERVICES:
            env[env_name("grpc_base_port")] = str(self.port - SERVICES.index(spec.name))
        env[GRPC_PORT_ENV] = str(self.port)
        env["CRM_LOG_LEVEL"] = env.get("CRM_LOG_LEVEL", "WARNING")
        self._env = env
        self._procs: list[asyncio.subprocess.Process] = []
        #: Each replica's ``/metrics`` port.
        self.metrics_ports: list[int] = []
        #: CPU seconds of the replicas from serving to the end that
        #: :func:`consumed_until` saw (group join included), if measured.
        self.work_cpu_s: float | None = None
        #: The same span's CPU seconds of the round database's backends
        #: (the service's connections) and of the broker, if measured.
        self.work_db_cpu_s: float | None = None
        self.work_broker_cpu_s: float | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, timeout: float = 60.0) -> None:
        """Start every replica; return once each answers its health check."""
        for _ in range(self.replicas):
            self._procs.append(await self._spawn())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # Each replica is checked through a connection of its own; until all
        # listen, a new connection may land on any that does.
        for channel in self.channels(self.replicas * 4):
            try:
                while True:
                    self.check_running()
                    try:
                        reply = await health_pb2_grpc.HealthStub(channel).Check(
                            health_pb2.HealthCheckRequest(), timeout=2)
                        if reply.status == health_pb2.HealthCheckResponse.SERVING:
                            break
                    except grpc.aio.AioRpcError:
                        pass
                    if loop.time() > deadline:
                        raise RuntimeError(f"{self.spec.name}: not serving after {timeout:.0f}s")
                    await asyncio.sleep(0.2)
            finally:
                await channel.close()
        await asyncio.sleep(1.0)  # consumers join their group after gRPC serves

    async def _spawn(self) -> asyncio.subprocess.Process:
        """One more replica process, with a metrics port of its own."""
        env = dict(self._env)
        port = free_port()
        self.metrics_ports.append(port)
        if self.spec.name in SERVICES:
            env[env_name("metrics_base_port")] = str(port - SERVICES.index(self.spec.name))
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", *self.module, env=env, stdin=asyncio.subprocess.DEVNULL)

    async def replace_oldest(self, *, kill: bool = False, timeout: float = 30.0) -> float:
        """Stop the oldest replica as a rolling deploy does (SIGTERM, wait for
        it to exit) or as a crash does (``kill``: SIGKILL), then start a new
        one in its place (not waited for: it joins its groups when it is
        ready). Returns the seconds the old one took to exit."""
        old = self._procs.pop(0)
        self.metrics_ports.pop(0)
        started = time.monotonic()
        old.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            await asyncio.wait_for(old.wait(), timeout=timeout)
        except TimeoutError:
            old.kill()
            await old.wait()
        took = time.monotonic() - started
        self._procs.append(await self._spawn())
        return took

    def channels(self, count: int) -> list[grpc.aio.Channel]:
        """``count`` channels, each its own TCP connection."""
        return [grpc.aio.insecure_channel(self.target, options=[
            ("grpc.use_local_subchannel_pool", 1)]) for _ in range(count)]

    def cpu_seconds(self) -> float | None:
        """User plus system CPU seconds its replicas have used so far, from
        ``/proc`` (None where there is none). A figure the machine's noise
        disturbs less than wall-clock time: other load slows a process down,
        but it does not make it do more work."""
        total = 0.0
        for proc in self._procs:
            used = process_cpu_seconds(proc.pid)
            if used is None:
                return None
            total += used
        return total

    def check_running(self) -> None:
        for proc in self._procs:
            if proc.returncode is not None:
                raise RuntimeError(f"{self.spec.name}: a replica exited with {proc.returncode}")

    async def stop(self) -> None:
        for proc in self._procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._procs:
            try:
                await asyncio.wait_for(proc.wait(), timeout=30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self._procs.clear()


def process_cpu_seconds(pid: int, *, named: str | None = None) -> float | None:
    """User plus system CPU seconds process ``pid`` has used so far, from
    ``/proc``; None where there is no such process (or, with ``named``, when
    its command line does not start with that: a database on another machine
    has backends whose ids mean nothing here)."""
    try:
        if named is not None:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if not f.read().startswith(named.encode()):
                    return None
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


async def backends_cpu(conn: asyncpg.Connection) -> dict[int, float]:
    """CPU seconds used so far by each backend of ``conn``'s database but
    ``conn``'s own (none when the server is on another machine)."""
    backends: dict[int, float] = {}
    for r in await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = "
                              "current_database() AND pid <> pg_backend_pid()"):
        used = process_cpu_seconds(r["pid"], named="postgres")
        if used is not None:
            backends[r["pid"]] = used
    return backends


async def check_rows_and_records(what: str, conn: asyncpg.Connection, bootstrap: str,
                                 table: str, topic: str, expected: int,
                                 expected_records: int | None = None) -> None:
    """Raise unless ``table`` holds ``expected`` rows and ``topic`` as many
    records (or ``expected_records``): what a side that copies rows and
    produces records must leave."""
    rows = await conn.fetchval(f"SELECT count(*) FROM {table}")
    if rows != expected:
        raise RuntimeError(f"{what}: {rows} rows in {table}, expected {expected}")
    want = expected if expected_records is None else expected_records
    records = await kafka.count_records(bootstrap, topic, expect=want)
    if records != want:
        raise RuntimeError(f"{what}: {records} records on {topic}, expected {want}")


def cpu_figures(figures: dict[str, float], part: str, events: int,
                spent: Mapping[str, float | None]) -> None:
    """Add ``part``'s CPU per event of each process (label -> CPU seconds,
    None where not measured) and, when all were measured and there are
    several, their sum: on two cores, half of it is a bound on the wall time
    per event that no overlap gets under."""
    if not events:
        return
    known = {label: s for label, s in spent.items() if s is not None}
    for label, s in known.items():
        figures[f"{part} CPU per event (µs, {label})"] = s / events * 1e6
    if len(known) == len(spent) > 1:
        figures[f"{part} CPU per event (µs, all of the above)"] = (
            sum(known.values()) / events * 1e6)


def cpu_figure(figures: dict[str, float], service: ServiceProcesses, events: int,
               part: str = "product") -> None:
    """Add the CPU per event of the service's processes, its database
    backends and the broker, as far as :func:`consumed_until` measured them."""
    cpu_figures(figures, part, events, {
        f"the {service.spec.name} process(es)": service.work_cpu_s,
        "the database's backends": service.work_db_cpu_s,
        "the broker": service.work_broker_cpu_s})


async def consumed_until(service: ServiceProcesses, conn: asyncpg.Connection, group: str, *,
                         count_sql: str, expected: int, what: str, published: bool,
                         deadline: float, poll_s: float = 0.01,
                         broker_pid: int | None = None,
                         first_sql: str | None = None) -> tuple[float, float]:
    """Start ``service`` (its records are waiting on the topic) and poll (at
    the :class:`~bench.pacing.Pace` of its progress, at least every
    ``poll_s`` near the end) until ``count_sql`` counts ``expected`` rows
    and, when ``published``, no outbox
    row of the service is unsent (each row's outbox row commits with it, so
    that means every event was acknowledged; the check uses the partial index
    of unsent rows, cheap unlike counting sent rows).

    Returns the seconds from the start of the first transaction consumer
    group ``group`` ran (its first ``inbox`` row's ``processed_at``) to the
    poll that saw the end, and the seconds from the service's start to that
    first transaction (start-up and group join, which the figure leaves
    out). A group that keeps no inbox rows (its handlers dedupe by natural
    keys) names the time of its first write in ``first_sql`` instead (its
    ``$1`` is the service's start). Both ends are read off the database's
    clock, so they hold across processes. Past ``deadline``
    (``time.monotonic``) it fails saying how far it got. The caller stops the
    service.

    The CPU the service's processes, its database backends and (given
    ``broker_pid``) the broker used over the same span go into
    ``service.work_cpu_s``, ``work_db_cpu_s`` and ``work_broker_cpu_s``."""
    schema = service.spec.schema
    unsent_sql = f"SELECT EXISTS (SELECT 1 FROM {schema}.outbox WHERE sent_at IS NULL)"
    opened = await conn.fetchval("SELECT clock_timestamp()")
    await service.start()
    cpu_before = service.cpu_seconds()
    db_before = await backends_cpu(conn)
    broker_before = process_cpu_seconds(broker_pid) if broker_pid else None
    pace = Pace(expected, least=poll_s)
    while True:
        service.check_running()
        count = await conn.fetchval(count_sql)
        if count >= expected and not (published and await conn.fetchval(unsent_sql)):
            done = await conn.fetchval("SELECT clock_timestamp()")
            cpu_after = service.cpu_seconds()
            if cpu_before is not None and cpu_after is not None:
                service.work_cpu_s = cpu_after - cpu_before
            # A backend that connected meanwhile counts from nothing; none
            # at all: the server is on another machine.
            db_after = await backends_cpu(conn)
            if db_after:
                service.work_db_cpu_s = sum(used - db_before.get(pid, 0.0)
                                            for pid, used in db_after.items())
            broker_after = process_cpu_seconds(broker_pid) if broker_pid else None
            if broker_before is not None and broker_after is not None:
                service.work_broker_cpu_s = broker_after - broker_before
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{service.spec.name}: {count} of {expected} {what}"
                               + (", or events still unsent" if published else ""))
        await asyncio.sleep(pace.next(count))
    first = await (conn.fetchval(first_sql, opened) if first_sql else conn.fetchval(
        f"""SELECT min(processed_at) FROM {schema}.inbox
             WHERE consumer_group = $1 AND processed_at >= $2""", group, opened))
    if first is None:
        raise RuntimeError(f"{service.spec.name}: group {group} consumed nothing")
    return (done - first).total_seconds(), max(0.0, (first - opened).total_seconds())
