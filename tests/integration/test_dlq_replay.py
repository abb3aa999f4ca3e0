"""`crm dlq replay`: dead letters go back to their topic once, without the
dlq headers, and the consumer processes them this time."""

from __future__ import annotations

import asyncio

from crm_runtime.consumer import dlq_topic
from crm_runtime.dlq import replay
from crm_runtime.settings import Settings
from tests.support.kafka import create_topics, produce, read_topic


async def test_replay_republishes_each_dead_letter_once(settings: Settings, uid: str) -> None:
    bootstrap = settings.kafka_bootstrap_servers or ""
    # A topic of this test's own: other tests leave dead letters on the real ones.
    topic = f"t.replay.{uid}"
    await create_topics(bootstrap, [topic, dlq_topic(topic)])
    before = len(await read_topic(bootstrap, topic, expect=0, timeout=3))
    await produce(bootstrap, [
        (dlq_topic(topic), f"k{i}-{uid}".encode(), f"v{i}".encode(),
         [("ce_id", f"{uid}-{i}".encode()), ("dlq_error_kind", b"invalid_contact"),
          ("dlq_original_offset", b"7")]) for i in range(5)])
    first = await replay(bootstrap, topic, limit=3, idle_ms=1000)
    second = await replay(bootstrap, topic, idle_ms=1000)
    third = await replay(bootstrap, topic, idle_ms=1000)
    assert (first.replayed, second.replayed, third.replayed) == (3, 2, 0)
    assert first.reasons == {"invalid_contact": 3}
    await asyncio.sleep(0)
    records = await read_topic(bootstrap, topic, expect=before + 5)
    mine = [r for r in records if r.key and r.key.decode().endswith(uid)]
    assert sorted(r.value for r in mine) == [f"v{i}".encode() for i in range(5)]
    for r in mine:
        assert all(not k.startswith("dlq_") for k, _ in r.headers)
        assert dict(r.headers)["ce_id"].decode().startswith(uid)
