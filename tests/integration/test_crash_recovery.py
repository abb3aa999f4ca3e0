"""Kill processes at the worst moments: nothing lost, nothing applied twice."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from crm_app.cli import EMBEDDED_BROKER_ENV
from crm_runtime.consumer import dlq_topic
from crm_runtime.events import Envelope
from crm_runtime.settings import Settings
from tests.support.kafka import create_topics, produce_envelopes, read_topic, wait_for
from tests.support.ledger import EntryRequested

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


class Worker:
    def __init__(self, settings: Settings, name: str, requests: str, booked: str,
                 log: Path) -> None:
        self.env = {**os.environ,
                    "DATABASE_URL": settings.database_url or "",
                    "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers or "",
                    "LEDGER_NAME": name, "LEDGER_REQUESTS_TOPIC": requests,
                    "LEDGER_BOOKED_TOPIC": booked,
                    "CRM_CONSUMER_BATCH_SIZE": "50", "CRM_CONSUMER_BATCH_WAIT_MS": "20",
                    **EMBEDDED_BROKER_ENV, "CRM_RETRY_MAX_S": "0.5"}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, failpoints: str = "") -> None:
        env = {**self.env, "CRM_FAILPOINTS": failpoints}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.support.ledger_worker"],
                                     cwd=ROOT, env=env, stdout=self.log.open("ab"),
                                     stderr=subprocess.STDOUT)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def worker_parts(settings: Settings, uid: str, tmp_path: Path) -> Iterator[Worker]:
    w = Worker(settings, f"ledger_{uid}", f"t.req.{uid}", f"t.booked.{uid}",
               tmp_path / "worker.log")
    yield w
    w.kill()


async def test_sigkill_between_db_commit_and_offset_commit(
        settings: Settings, worker_parts: Worker, uid: str) -> None:
    w = worker_parts
    requests, booked = w.env["LEDGER_REQUESTS_TOPIC"], w.env["LEDGER_BOOKED_TOPIC"]
    assert settings.kafka_bootstrap_servers and settings.database_url
    await create_topics(settings.kafka_bootstrap_servers, [requests, booked, dlq_topic(requests)])
    events = [Envelope(data=EntryRequested(customer_id=f"c{i % 5}", amount=i + 1),
                       subject=f"c{i % 5}", source="/test", topic_override=requests)
              for i in range(200)]
    await produce_envelopes(settings.kafka_bootstrap_servers, events)

    # First run dies right after its first database commit, before the offset commit.
    w.start(failpoints="consumer.after_db_commit")
    assert await asyncio.to_thread(w.wait_exit, 60) == -signal.SIGKILL
    conn = await asyncpg.connect(settings.database_url)
    try:
        schema = w.env["LEDGER_NAME"]
        applied_after_crash = await conn.fetchval(
            f'SELECT count(*) FROM "{schema}".applied_entries')
        assert 0 < applied_after_crash < 200  # one batch committed, offsets not

        # Restart without the fault: the committed batch is redelivered and skipped.
        w.start()

        async def all_applied() -> bool:
            n = await conn.fetchval(f'SELECT count(*) FROM "{schema}".applied_entries')
            return bool(n == 200)

        await wait_for(all_applied, timeout=90, what="all 200 entries applied")
        rows = await conn.fetch(f'SELECT customer_id, total FROM "{schema}".balances')
        totals = {r[0]: r[1] for r in rows}
        expected = {f"c{k}": sum(i + 1 for i in range(200) if i % 5 == k) for k in range(5)}
        assert totals == expected
        # The redelivered batch was skipped by the inbox, not dead-lettered.
        assert await conn.fetchval(f'SELECT count(*) FROM "{schema}".dead_letters') == 0
        assert await conn.fetchval(f'SELECT count(*) FROM "{schema}".inbox') == 200
        # Every booked event reaches the topic (duplicates allowed, none missing).
        out = await read_topic(settings.kafka_bootstrap_servers, booked, expect=200, timeout=60)
        assert len({dict(r.headers)["ce_id"] for r in out}) == 200
    finally:
        await conn.close()


async def test_repeated_sigkill_at_random_moments(
        settings: Settings, worker_parts: Worker, uid: str) -> None:
    w = worker_parts
    requests, booked = w.env["LEDGER_REQUESTS_TOPIC"], w.env["LEDGER_BOOKED_TOPIC"]
    assert settings.kafka_bootstrap_servers and settings.database_url
    await create_topics(settings.kafka_bootstrap_servers, [requests, booked, dlq_topic(requests)])
    total = 3000
    # Amounts start at 1000: the ledger refuses 666 on purpose (dead-letter tests).
    events = [Envelope(data=EntryRequested(customer_id=f"c{i % 11}", amount=1000 + i),
                       subject=f"c{i % 11}", source="/test", topic_override=requests)
              for i in range(total)]
    w.env["CRM_CONSUMER_BATCH_SIZE"] = "100"
    conn = await asyncpg.connect(settings.database_url)
    schema = w.env["LEDGER_NAME"]
    try:
        producing = asyncio.create_task(produce_envelopes(settings.kafka_bootstrap_servers, events))
        rng = random.Random(uid)
        for _ in range(4):
            w.start()
            await asyncio.sleep(rng.uniform(2.5, 4.5))  # joined, somewhere mid-stream
            w.kill()
        await producing
        w.start()

        async def all_applied() -> bool:
            try:
                n = await conn.fetchval(f'SELECT count(*) FROM "{schema}".applied_entries')
            except asyncpg.UndefinedTableError:
                return False
            return bool(n == total)

        await wait_for(all_applied, timeout=120, what=f"all {total} entries applied")
        expected = {f"c{k}": sum(1000 + i for i in range(total) if i % 11 == k)
                    for k in range(11)}
        rows = await conn.fetch(f'SELECT customer_id, total FROM "{schema}".balances')
        totals = {r[0]: r[1] for r in rows}
        assert totals == expected
        assert await conn.fetchval(f'SELECT count(*) FROM "{schema}".dead_letters') == 0
        out = await read_topic(settings.kafka_bootstrap_servers, booked, expect=total, timeout=90)
        assert len({dict(r.headers)["ce_id"] for r in out}) == total
    finally:
        await conn.close()
