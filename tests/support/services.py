"""Run a real service in-process for a test: its own schema and consumer
groups come from the service spec, the clock is a ManualClock the test moves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc

from crm_app.cli import create_topics
from crm_runtime.clock import ManualClock
from crm_runtime.grpc_client import open_channel
from crm_runtime.service import ServiceRunner, ServiceSpec
from crm_runtime.settings import Settings

DEV_TOKEN = "test-dev-token-0123456789"


@dataclass
class Running:
    runner: ServiceRunner
    clock: ManualClock
    channel: grpc.aio.Channel

    @property
    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {DEV_TOKEN}")]


@asynccontextmanager
async def running(spec: ServiceSpec, settings: Settings, start: datetime | None = None,
                  clock: ManualClock | None = None) -> AsyncIterator[Running]:
    """Run ``spec`` until the block ends; services that must share time (as
    they do in production) get the same ``clock``."""
    settings = settings.model_copy(update={"dev_token": DEV_TOKEN})
    await create_topics(settings)
    clock = clock or ManualClock(start or datetime.now(UTC))
    runner = ServiceRunner(spec, settings, clock=clock, grpc_port=0, serve_metrics=False)
    task = asyncio.create_task(runner.run())
    ready = asyncio.create_task(runner.ready.wait())
    done, _ = await asyncio.wait([task, ready], timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # start-up failed: raise its error
    assert ready in done, "service did not become ready in 60s"
    # TLS when the settings configure it, as the services' own clients do.
    channel = open_channel(f"127.0.0.1:{runner.bound_grpc_port}", settings)
    try:
        yield Running(runner, clock, channel)
    finally:
        await channel.close()
        runner.stop()
        await asyncio.wait_for(task, 30)
