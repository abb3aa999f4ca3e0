"""A product service run in-process by a workload, on servers of its own.

The services use fixed schema and topic names (the customers service owns
schema ``customers`` and reads ``crm.interactions.v1``), so a workload that
runs one cannot share the run's database and broker: :func:`fresh_stack`
gives each round a fresh database on the run's PostgreSQL server and a fresh
embedded Tansu broker (in memory, so its topics start empty), and drops both
when the round ends. This holds with ``KAFKA_BOOTSTRAP_SERVERS`` set too: the
run never writes to the product topics of a broker that is not its own.

:class:`InProcessService` runs the real :class:`~crm_runtime.service.ServiceRunner`
(migrations, outbox relay, consumers, scheduler, gRPC with a dev token), as
``tests/support/services.py`` does, and hands the workload the consumers it
built so their ``ready`` event can start a clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from unittest import mock

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import crm_runtime.service
from bench.context import BenchContext
from bench.infra import fresh_database
from crm_runtime.cli import create_topics
from crm_runtime.consumer import EventConsumer
from crm_runtime.migrations import migrate, migrations_for
from crm_runtime.service import ServiceRunner, ServiceSpec
from crm_runtime.settings import Settings, env_name
from crm_runtime.stack import TansuBroker, free_port

#: The bearer token of the in-process services (every scope).
DEV_TOKEN = "bench-dev-token-0123456789"

#: Consumer-group timings for the embedded broker, as ``crm up`` uses them
#: (Tansu holds a rebalance for the whole rebalance timeout). ``CRM_*``
#: variables the user set win.
EMBEDDED_CONSUMER_TIMINGS = {"consumer_session_timeout_ms": 3000,
                             "consumer_heartbeat_interval_ms": 300,
                             "consumer_rebalance_timeout_ms": 1000}


@dataclass(frozen=True)
class Stack:
    """The database and broker of one round, and the service settings on them."""

    database_url: str
    bootstrap_servers: str
    settings: Settings

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
async def fresh_stack(ctx: BenchContext, label: str) -> AsyncIterator[Stack]:
    """A fresh database and a fresh broker with the product topics, for one round."""
    async with contextlib.AsyncExitStack() as stack:
        try:
            url = await stack.enter_async_context(
                fresh_database(ctx.database_url, ctx.new_name(label)))
        except asyncpg.InsufficientPrivilegeError as exc:
            raise RuntimeError(
                f"{label}: the service owns fixed schema names, so each round needs a database "
                f"of its own, and the bench role may not create one ({exc}); run with an "
                "empty DATABASE_URL (a local or embedded server) or grant CREATEDB") from None
        broker = TansuBroker()
        await asyncio.to_thread(broker.start)
        stack.push_async_callback(asyncio.to_thread, broker.stop)
        update: dict[str, Any] = {"database_url": url,
                                  "kafka_bootstrap_servers": broker.bootstrap_servers,
                                  "dev_token": DEV_TOKEN}
        update |= {k: v for k, v in EMBEDDED_CONSUMER_TIMINGS.items()
                   if k not in ctx.settings.model_fields_set}
        settings = ctx.settings.model_copy(update=update)
        await create_topics(settings)
        yield Stack(url, broker.bootstrap_servers, settings)


class InProcessService:
    """One service run by ``ServiceRunner`` in this process, gRPC on a free port."""

    def __init__(self, spec: ServiceSpec, settings: Settings) -> None:
        self.runner = ServiceRunner(spec, settings, grpc_port=0, serve_metrics=False)
        #: The consumers the runner built, one per subscription.
        self.consumers: list[EventConsumer] = []
        #: The topics of each of :attr:`consumers`, in the same order.
        self.consumer_topics: list[tuple[str, ...]] = []
        self._task: asyncio.Task[None] | None = None
        self.channel: Any = None

    async def start(self, timeout: float = 60.0) -> None:
        """Start and return once gRPC serves (consumers may still be joining)."""

        def build_consumer(*args: Any, **kwargs: Any) -> EventConsumer:
            consumer = EventConsumer(*args, **kwargs)
            self.consumers.append(consumer)
            self.consumer_topics.append(tuple(kwargs.get("topics", ())))
            return consumer

        # The runner builds its consumers before it sets ``ready``: capture
        # them, unchanged, to read their ``ready`` events.
        with mock.patch.object(crm_runtime.service, "EventConsumer", build_consumer):
            self._task = asyncio.create_task(self.runner.run(), name="bench-service")
            await self._until(self.runner.ready, timeout, "serving gRPC")
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.runner.bound_grpc_port}")

    async def consumers_ready(self, timeout: float = 120.0) -> None:
        """Until every consumer joined its group and its first poll returned."""
        for consumer in self.consumers:
            await self._until(consumer.ready, timeout, "consumer ready")

    async def consumer_ready(self, topic: str, timeout: float = 120.0) -> None:
        """Until the consumers of ``topic`` joined their group and their first
        poll returned (a service with several subscriptions starts consuming
        one topic while another consumer may still be joining)."""
        found = [c for c, topics in zip(self.consumers, self.consumer_topics, strict=True)
                 if topic in topics]
        if not found:
            raise RuntimeError(f"{self.runner.spec.name}: no consumer of {topic}")
        for consumer in found:
            await self._until(consumer.ready, timeout, f"consumer of {topic} ready")

    async def _until(self, event: asyncio.Event, timeout: float, what: str) -> None:
        assert self._task is not None
        waiter = asyncio.create_task(event.wait())
        try:
            done, _ = await asyncio.wait([waiter, self._task], timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if self._task in done:
            self._task.result()  # re-raises what stopped the service
            raise RuntimeError(f"{self.runner.spec.name}: service stopped before {what}")
        if waiter not in done:
            raise RuntimeError(f"{self.runner.spec.name}: not {what} after {timeout:.0f}s")

    def check_running(self) -> None:
        """Raise what stopped the service, if it stopped."""
        if self._task is not None and self._task.done():
            self._task.result()
            raise RuntimeError(f"{self.runner.spec.name}: service stopped early")

    async def stop(self) -> None:
        if self.channel is not None:
            await self.channel.close()
            self.channel = None
        if self._task is not None:
            self.runner.stop()
            await asyncio.wait_for(self._task, timeout=60)
            self._task = None


class ServiceProcesses:
    """One service as it is deployed: ``replicas`` processes of
    ``python -m crm_runtime serve <name>`` (each a full service: consumers,
    relay, scheduler, gRPC), sharing one gRPC port as replicas behind a load
    balancer would (grpc-core binds with ``SO_REUSEPORT``, so the kernel hands
    each new connection to one of them), each with a metrics port of its own.

    :meth:`channels` opens one connection per channel (a local subchannel
    pool), so several channels spread over the replicas."""

    def __init__(self, spec: ServiceSpec, settings: Settings, *, replicas: int = 1) -> None:
        self.spec = spec
        self.replicas = replicas
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
        from crm_runtime.settings import SERVICES

        env[env_name("grpc_base_port")] = str(self.port - SERVICES.index(spec.name))
        env["CRM_LOG_LEVEL"] = env.get("CRM_LOG_LEVEL", "WARNING")
        self._env = env
        self._procs: list[asyncio.subprocess.Process] = []

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, timeout: float = 60.0) -> None:
        """Start every replica; return once each answers its health check."""
        from crm_runtime.settings import SERVICES

        for _ in range(self.replicas):
            env = dict(self._env)
            env[env_name("metrics_base_port")] = str(free_port() - SERVICES.index(self.spec.name))
            self._procs.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "crm_runtime", "serve", self.spec.name, env=env,
                stdin=asyncio.subprocess.DEVNULL))
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

    def channels(self, count: int) -> list[grpc.aio.Channel]:
        """``count`` channels, each its own TCP connection."""
        return [grpc.aio.insecure_channel(self.target, options=[
            ("grpc.use_local_subchannel_pool", 1)]) for _ in range(count)]

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
