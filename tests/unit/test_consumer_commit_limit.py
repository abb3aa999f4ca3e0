"""The consumer's last offset commits are bounded in time: a broker that does
not answer holds up neither a rebalance nor a shutdown."""

from __future__ import annotations

import asyncio
from typing import Any

from crm_runtime import consumer as consumer_module
from crm_runtime.consumer import EventConsumer


async def test_commit_done_gives_up_on_a_commit_that_never_ends(monkeypatch: Any) -> None:
    monkeypatch.setattr(consumer_module, "COMMIT_DONE_S", 0.2)
    consumer = EventConsumer(None, bootstrap_servers="127.0.0.1:9", group="g",  # type: ignore[arg-type]
                             topics=["t"], handlers={}, service="s", lanes=1)
    # An offset commit the broker never answers.
    stuck = [asyncio.create_task(asyncio.sleep(3600))]
    consumer._committing = stuck[0]
    try:
        done = asyncio.create_task(consumer.commit_done())
        finished, _ = await asyncio.wait([done], timeout=5)
        assert finished == {done}  # returned after its limit, did not wait for the commit
        done.result()
    finally:
        for task in stuck:
            task.cancel()
        await consumer._kafka.stop()
