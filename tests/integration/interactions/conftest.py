"""The interactions service with the customers service beside it (unknown
contacts are registered there), sharing one manual clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from crm_runtime.clock import ManualClock
from crm_runtime.settings import Settings
from crm_runtime.stack import EMBEDDED_BROKER_SETTINGS, TansuBroker
from services.customers.app import SPEC as CUSTOMERS
from services.interactions.app import SPEC as INTERACTIONS
from tests.support.customers import START
from tests.support.services import Running, running


@dataclass
class Pair:
    customers: Running
    interactions: Running
    clock: ManualClock


@pytest.fixture(scope="package")
async def pair(database_url: str, broker: TansuBroker) -> AsyncIterator[Pair]:
    settings = Settings(database_url=database_url,
                        kafka_bootstrap_servers=broker.bootstrap_servers,
                        retry_initial_s=0.05, retry_max_s=0.5, scheduler_poll_interval_s=0.05,
                        consumer_batch_wait_ms=20, metrics_refresh_s=0.2,
                        **EMBEDDED_BROKER_SETTINGS)
    clock = ManualClock(START)
    async with running(CUSTOMERS, settings, clock=clock) as customers:
        target = f"127.0.0.1:{customers.runner.bound_grpc_port}"
        with_target = settings.model_copy(update={"customers_grpc_target": target})
        async with running(INTERACTIONS, with_target, clock=clock) as interactions:
            yield Pair(customers, interactions, clock)
