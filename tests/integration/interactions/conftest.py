"""The interactions service with the customers service beside it (unknown
contacts are registered there), sharing one manual clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import asyncpg
import pytest

from crm_runtime.clock import ManualClock
from crm_runtime.db import connect
from crm_runtime.migrations import migrate, migrations_for
from crm_runtime.settings import Settings
from crm_runtime.stack import EMBEDDED_BROKER_SETTINGS, TansuBroker
from services.customers.app import SPEC as CUSTOMERS
from services.interactions.app import SPEC as INTERACTIONS
from tests.support.customers import START
from tests.support.proxy import ToggleProxy
from tests.support.services import Running, running


@dataclass
class Pair:
    customers: Running
    interactions: Running
    clock: ManualClock

    @property
    def pool(self) -> asyncpg.Pool:
        """The interactions service's pool (its schema)."""
        pool = self.interactions.runner.pool
        assert pool is not None
        return pool

    @property
    def bootstrap(self) -> str:
        return self.interactions.runner.settings.kafka_bootstrap_servers or ""


@pytest.fixture(scope="package")
async def pair(database_url: str, broker: TansuBroker) -> AsyncIterator[Pair]:
    # The package's clock moves across days and nights: no quiet hours here
    # (test_contact_gate.py runs services of its own with them).
    settings = Settings(database_url=database_url,
                        kafka_bootstrap_servers=broker.bootstrap_servers,
                        retry_initial_s=0.05, retry_max_s=0.5, scheduler_poll_interval_s=0.05,
                        consumer_batch_wait_ms=20, metrics_refresh_s=0.2,
                        quiet_hours_start="00:00", quiet_hours_end="00:00",
                        **EMBEDDED_BROKER_SETTINGS)
    clock = ManualClock(START)
    async with running(CUSTOMERS, settings, clock=clock) as customers:
        target = f"127.0.0.1:{customers.runner.bound_grpc_port}"
        with_target = settings.model_copy(update={"customers_grpc_target": target})
        async with running(INTERACTIONS, with_target, clock=clock) as interactions:
            yield Pair(customers, interactions, clock)


@dataclass
class ProxiedPair:
    """Customers and interactions, interactions reaching customers through a
    proxy the test can take down and bring back."""

    customers: Running
    interactions: Running
    proxy: ToggleProxy
    pool: asyncpg.Pool  # the interactions service's


@asynccontextmanager
async def customers_behind_a_proxy(database_url: str,
                                   broker: TansuBroker) -> AsyncIterator[ProxiedPair]:
    """The two services on a database and a broker of the test's own (a test
    that takes customers away must not stall the package's pair)."""
    settings = Settings(database_url=database_url,
                        kafka_bootstrap_servers=broker.bootstrap_servers,
                        retry_initial_s=0.05, retry_max_s=0.5, consumer_batch_wait_ms=20,
                        **EMBEDDED_BROKER_SETTINGS)
    async with AsyncExitStack() as stack:
        crm = await stack.enter_async_context(running(CUSTOMERS, settings, START))
        proxy = ToggleProxy(f"postgresql://grpc@127.0.0.1:{crm.runner.bound_grpc_port}/c")
        await proxy.up()
        stack.push_async_callback(proxy.down)
        via_proxy = settings.model_copy(
            update={"customers_grpc_target": f"127.0.0.1:{proxy.port}"})
        interactions = await stack.enter_async_context(
            running(INTERACTIONS, via_proxy, clock=crm.clock))
        assert interactions.runner.pool is not None
        yield ProxiedPair(crm, interactions, proxy, interactions.runner.pool)


@asynccontextmanager
async def migrated_up_to(database_url: str, schema: str,
                         version: int) -> AsyncIterator[asyncpg.Connection]:
    """A connection to ``schema`` holding the interactions service's
    migrations up to ``version`` (and the runtime's), its search path set, for
    a migration test to put rows of that schema in and then migrate on; the
    schema is dropped afterwards."""
    c = await connect(database_url)
    try:
        plan = migrations_for(INTERACTIONS.migrations)
        await migrate(c, schema, [m for m in plan if m.source == "runtime" or m.version <= version])
        await c.execute(f"SET search_path TO {schema}")
        yield c
    finally:
        await c.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await c.close()
