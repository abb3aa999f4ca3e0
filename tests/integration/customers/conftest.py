"""Fixtures of the customers service tests: one running service per package;
interactions and loyalty answer its data-subject export with empty parts."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from crm_runtime.settings import Settings
from services.customers.app import SPEC
from tests.support.customers import START
from tests.support.export_peers import empty_export_peers
from tests.support.services import Running, running


@pytest.fixture(scope="package")
async def svc(database_url: str, broker: object) -> AsyncIterator[Running]:
    from crm_runtime.stack import EMBEDDED_BROKER_SETTINGS, TansuBroker

    assert isinstance(broker, TansuBroker)
    settings = Settings(database_url=database_url,
                        kafka_bootstrap_servers=broker.bootstrap_servers,
                        retry_initial_s=0.05, retry_max_s=0.5, scheduler_poll_interval_s=0.05,
                        consumer_batch_wait_ms=20, metrics_refresh_s=0.2,
                        **EMBEDDED_BROKER_SETTINGS)
    async with empty_export_peers(settings) as with_peers, running(SPEC, with_peers,
                                                                   START) as r:
        yield r


