"""Hand-overs between members of a consumer group on the embedded broker:
a member that stops sends LeaveGroup, whatever its generation (Tansu numbers
generations from 0, where aiokafka's own stop() does not leave), so its
partitions move at once rather than when its session times out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from crm_runtime.consumer import EventConsumer, dlq_topic
from crm_runtime.db import create_pool
from crm_runtime.migrations import migrate, migrations_for
from crm_runtime.settings import Settings
from tests.support.kafka import create_topics, wait_for
from tests.support.ledger import MIGRATIONS, make_handler

#: A guard against hanging, not a timing under test.
_WITHIN_S = 60.0


@pytest.fixture
async def pool(settings: Settings, uid: str) -> AsyncIterator[asyncpg.Pool]:
    assert settings.database_url
    schema = f"handover_{uid}"
    pool = await create_pool(settings.database_url, schema)
    async with pool.acquire() as conn:
        await migrate(conn, schema, migrations_for(MIGRATIONS))
    yield pool
    await pool.close()


async def test_a_member_that_stops_leaves_and_the_other_takes_its_partitions_at_once(
        settings: Settings, pool: asyncpg.Pool, uid: str) -> None:
    # Both start together, so the group usually forms in one round and stays
    # at generation 0 on Tansu, the case aiokafka's own stop() leaves out.
    assert settings.kafka_bootstrap_servers
    bootstrap = settings.kafka_bootstrap_servers
    requests, booked = f"t.req.{uid}", f"t.booked.{uid}"
    await create_topics(bootstrap, [requests, booked, dlq_topic(requests)], partitions=6)

    def member() -> EventConsumer:
        return EventConsumer(pool, bootstrap_servers=bootstrap, group=f"g-handover-{uid}",
                             topics=[requests],
                             handlers={"test.entry_requested": make_handler(booked, 2)},
                             service="ledger", lanes=2, batch_wait_ms=50,
                             consumer_options=settings.consumer_options())

    first, second = member(), member()
    tasks = [asyncio.create_task(first.run()), asyncio.create_task(second.run())]
    try:
        await wait_for(lambda: _both_hold_partitions(first, second), timeout=_WITHIN_S,
                       what="both members holding partitions")
        sent = _record_requests(second)
        second.stop()
        await asyncio.wait_for(tasks[1], _WITHIN_S)
        assert ("LeaveGroupRequest", 0) in sent  # answered without an error
        await wait_for(lambda: _holds(first, 6), timeout=_WITHIN_S,
                       what="the remaining member holding all six partitions")
    finally:
        first.stop()
        second.stop()
        await asyncio.gather(*tasks, return_exceptions=True)


def _record_requests(consumer: EventConsumer) -> list[tuple[str, int]]:
    """The group requests the consumer's coordinator sends from now on, by
    class name, with the error code of each answer."""
    coordinator: Any = consumer._kafka._coordinator
    send = coordinator._send_req
    sent: list[tuple[str, int]] = []

    async def recording(request: Any) -> Any:
        response = await send(request)
        sent.append((type(request).__name__.split("_")[0],
                     getattr(response, "error_code", 0)))
        return response

    coordinator._send_req = recording
    return sent


async def _both_hold_partitions(first: EventConsumer, second: EventConsumer) -> bool:
    one, two = first._kafka.assignment(), second._kafka.assignment()
    return bool(one) and bool(two) and len(one) + len(two) == 6


async def _holds(consumer: EventConsumer, partitions: int) -> bool:
    return len(consumer._kafka.assignment()) == partitions
