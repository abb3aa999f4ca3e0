"""The idle probe's settings reach the consumer, not aiokafka."""

from __future__ import annotations

from typing import cast

import asyncpg

from crm_runtime.consumer import IDLE_OPTIONS, EventConsumer
from crm_runtime.settings import Settings
from crm_runtime.stack import EMBEDDED_BROKER_SETTINGS


async def test_the_idle_options_are_the_consumers_own() -> None:
    settings = Settings(**EMBEDDED_BROKER_SETTINGS)
    options = settings.consumer_options()
    assert set(IDLE_OPTIONS) <= set(options)
    assert options["idle_after_ms"] == 10000  # on the embedded broker
    assert Settings().consumer_options()["idle_after_ms"] == 0  # off on Kafka
    # aiokafka would refuse an option it does not know.
    consumer = EventConsumer(cast(asyncpg.Pool, None), bootstrap_servers="127.0.0.1:1",
                             group="g", topics=["t"], handlers={}, service="s", lanes=1,
                             consumer_options=options)
    assert consumer._idle_after == 10.0
    assert consumer._idle_probe == 0.5
    assert not set(IDLE_OPTIONS) & set(consumer._consumer_options)
