"""Kill the loyalty service between its database commit and its offset
commit, and at random moments: every trigger still yields its discount
exactly once, and every discount event reaches crm.loyalty.v1.

The service runs as ``crm serve loyalty`` in a process of its own, on a
database and a broker of this test's own (the package's in-process service
uses the same schema and consumer group names)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from crm_app.cli import EMBEDDED_BROKER_ENV, create_topics
from crm_contracts.topics import LOYALTY
from crm_runtime.events import Envelope
from crm_runtime.stack import TansuBroker, free_port
from services.customers.app import SPEC as CUSTOMERS
from tests.integration.loyalty.conftest import loyalty_settings
from tests.support.gate import mirror
from tests.support.kafka import produce_envelopes, read_topic, wait_for
from tests.support.loyalty import consent, registered, stage_changed
from tests.support.services import DEV_TOKEN, running

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.slow


class Service:
    """``crm serve loyalty`` in a child process; its contacts pass the gate
    of the customers service at ``gate`` (host:port)."""

    def __init__(self, database_url: str, bootstrap: str, log: Path, gate: str) -> None:
        self.env = {**os.environ, "DATABASE_URL": database_url,
                    "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                    "CRM_GRPC_BASE_PORT": str(free_port() - 2),
                    "CRM_METRICS_BASE_PORT": str(free_port() - 2),
                    "CRM_CONSUMER_BATCH_SIZE": "20", "CRM_CONSUMER_BATCH_WAIT_MS": "20",
                    "CRM_CUSTOMERS_GRPC_TARGET": gate, "CRM_SERVICE_TOKEN": DEV_TOKEN,
                    **EMBEDDED_BROKER_ENV, "CRM_RETRY_MAX_S": "0.5"}
        self.env.pop("CRM_LOYALTY_RULES_FILE", None)
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, failpoints: str = "") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "crm_app", "serve", "loyalty"], cwd=ROOT,
            env={**self.env, "CRM_FAILPOINTS": failpoints}, stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


async def test_killed_loyalty_issues_each_discount_exactly_once(
        own_database: str, own_broker: TansuBroker, tmp_path: Path) -> None:
    bootstrap = own_broker.bootstrap_servers
    settings = loyalty_settings(own_database, own_broker)
    await create_topics(settings)
    now = datetime.now(UTC)
    customers = [str(uuid.uuid4()) for _ in range(40)]
    events = [e for cid in customers for e in (
        registered(cid, now), consent(cid, "promotional_offers", True, now),
        stage_changed(cid, "potential", "one_time", 1, now),
        stage_changed(cid, "one_time", "repeat", 2, now))]
    # The customers service, its contact gate knowing these customers.
    async with running(CUSTOMERS, settings) as gate:
        assert gate.runner.pool is not None
        await mirror(gate.runner.pool, events)
        service = Service(own_database, bootstrap, tmp_path / "loyalty.log",
                          f"127.0.0.1:{gate.runner.bound_grpc_port}")
        await _crash_and_check(service, bootstrap, events, customers, own_database)


async def _crash_and_check(service: Service, bootstrap: str, events: list[Envelope],
                           customers: list[str], own_database: str) -> None:
    try:
        await produce_envelopes(bootstrap, events[:80])
        # Dies right after its first batch committed, before the offsets.
        service.start(failpoints="consumer.after_db_commit")
        assert await asyncio.to_thread(service.wait_exit, 90) == -signal.SIGKILL
        # Then killed at random moments while the rest arrives.
        rng = random.Random(own_database)
        producing = asyncio.create_task(produce_envelopes(bootstrap, events[80:]))
        for _ in range(3):
            service.start()
            await asyncio.sleep(rng.uniform(3.0, 5.0))
            service.kill()
        await producing
        service.start()
        conn = await asyncpg.connect(own_database)
        try:
            async def all_issued() -> bool:
                try:
                    n = await conn.fetchval("SELECT count(*) FROM loyalty.discounts")
                except asyncpg.UndefinedTableError:
                    return False
                return bool(n >= len(customers))

            await wait_for(all_issued, timeout=120, what="a discount per customer")
            await asyncio.sleep(1.0)  # anything doubled would show by now
            rows = await conn.fetch("SELECT customer_id, rule_id FROM loyalty.discounts")
            assert sorted(str(r["customer_id"]) for r in rows) == sorted(customers)
            assert {r["rule_id"] for r in rows} == {"repeat-buyer-discount"}
            assert await conn.fetchval("SELECT count(*) FROM loyalty.dead_letters") == 0
            follow_ups = await conn.fetchval(
                "SELECT count(*) FROM loyalty.follow_ups WHERE rule_id = 'welcome-follow-up'")
            assert follow_ups == len(customers)
        finally:
            await conn.close()
        # Every discount event reached the topic (a republished duplicate keeps its id).
        out = await read_topic(bootstrap, LOYALTY, expect=len(customers), timeout=60)
        issued = {dict(r.headers)["ce_id"]: json.loads(r.value) for r in out
                  if dict(r.headers)["ce_type"] == b"loyalty.discount_issued"}
        assert sorted(d["customer_id"] for d in issued.values()) == sorted(customers)
    finally:
        service.kill()
