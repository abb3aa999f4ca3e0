"""Fixtures of the loyalty service tests: one running service per package,
on a ManualClock that starts at noon UTC (outside the default quiet hours),
with the customers service beside it on the same clock (loyalty's contacts
pass its contact gate; the customers the tests make up are mirrored into its
tables as they are produced, tests/support/gate.py), and, for a test module
that asks for ``trio``, interactions too."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from crm_runtime.settings import Settings
from crm_runtime.stack import EMBEDDED_BROKER_SETTINGS, TansuBroker
from services.customers.app import SPEC as CUSTOMERS
from services.interactions.app import SPEC as INTERACTIONS
from services.loyalty.app import SPEC
from tests.support.services import Running, running

START = datetime(2031, 3, 3, 12, tzinfo=UTC)


def loyalty_settings(database_url: str, broker: TansuBroker) -> Settings:
    return Settings(database_url=database_url, kafka_bootstrap_servers=broker.bootstrap_servers,
                    retry_initial_s=0.05, retry_max_s=0.5, scheduler_poll_interval_s=0.05,
                    relay_poll_interval_s=0.05, consumer_batch_wait_ms=20,
                    **EMBEDDED_BROKER_SETTINGS)


@pytest.fixture(scope="package")
async def gate(database_url: str, broker: TansuBroker) -> AsyncIterator[Running]:
    """The customers service: its contact gate decides loyalty's contacts."""
    async with running(CUSTOMERS, loyalty_settings(database_url, broker), START) as r:
        yield r


def with_gate(settings: Settings, gate: Running) -> Settings:
    """``settings`` of a service that reaches the customers service ``gate``."""
    return settings.model_copy(
        update={"customers_grpc_target": f"127.0.0.1:{gate.runner.bound_grpc_port}"})


@pytest.fixture(scope="package")
async def svc(gate: Running, database_url: str, broker: TansuBroker) -> AsyncIterator[Running]:
    async with running(SPEC, with_gate(loyalty_settings(database_url, broker), gate),
                       clock=gate.clock) as r:
        yield r


@dataclass
class Trio:
    interactions: Running
    customers: Running
    loyalty: Running


@pytest.fixture(scope="module")
async def trio(svc: Running, gate: Running, database_url: str,
               broker: TansuBroker) -> AsyncIterator[Trio]:
    settings = with_gate(loyalty_settings(database_url, broker), gate)
    async with running(INTERACTIONS, settings, clock=svc.clock) as interactions:
        yield Trio(interactions, gate, svc)
