"""SIGKILL the loyalty service while a throttled campaign sends to a few
thousand members: as its first page is about to commit (a failpoint, once
the contact gate counted the page's members), at a random moment, and as a
page takes its members; restarted each time, the run finishes and every
member got exactly one action for the run (the discount or its
suppression), none twice, none missing; the run's counters, the discounts
and the gate's ledger agree.

``crm serve loyalty`` runs in a process of its own on the real clock, on a
database and a broker of this test's own; the customers service (the
contact gate, and the segment's definition) runs in-process beside it."""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from crm.customers.v1 import customers_pb2 as cpb
from crm.customers.v1 import customers_pb2_grpc
from crm.loyalty.v1 import loyalty_pb2 as pb
from crm.loyalty.v1 import loyalty_pb2_grpc
from crm_app.cli import EMBEDDED_BROKER_ENV
from crm_contracts.topics import LOYALTY
from crm_runtime.settings import SERVICES, Settings
from crm_runtime.stack import EMBEDDED_BROKER_SETTINGS, TansuBroker, free_port
from services.customers.app import SPEC as CUSTOMERS
from tests.support.campaigns import ACTION_TYPES, entered
from tests.support.gate import mirror
from tests.support.kafka import produce_envelopes, read_topic, wait_for
from tests.support.loyalty import consent, registered
from tests.support.services import DEV_TOKEN, running

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.slow

MEMBERS = 3000
#: Pages of 500 members, one a second: six seconds of sending, a page in
#: flight a good part of each.
RATE = 30_000
METADATA = [("authorization", f"Bearer {DEV_TOKEN}")]


class Service:
    """``crm serve loyalty`` in a child process, at a fixed gRPC port,
    reaching the customers service at ``customers`` (host:port)."""

    def __init__(self, database_url: str, bootstrap: str, customers: str, log: Path) -> None:
        port = free_port()
        index = SERVICES.index("loyalty")
        inherited = {k: v for k, v in os.environ.items()
                     if not k.startswith("CRM_") and k not in ("DATABASE_URL",
                                                               "KAFKA_BOOTSTRAP_SERVERS")}
        self.env = {**inherited, "DATABASE_URL": database_url,
                    "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                    "CRM_GRPC_BASE_PORT": str(port - index),
                    "CRM_METRICS_BASE_PORT": str(free_port() - index),
                    "CRM_CUSTOMERS_GRPC_TARGET": customers,
                    "CRM_DEV_TOKEN": DEV_TOKEN, "CRM_SERVICE_TOKEN": DEV_TOKEN,
                    "CRM_SCHEDULER_POLL_INTERVAL_S": "0.05",
                    "CRM_RELAY_POLL_INTERVAL_S": "0.05", "CRM_CONSUMER_BATCH_WAIT_MS": "20",
                    "CRM_RETRY_INITIAL_S": "0.05", "CRM_RETRY_MAX_S": "0.5",
                    "CRM_QUIET_HOURS_START": "00:00", "CRM_QUIET_HOURS_END": "00:00",
                    "CRM_LOG_FORMAT": "human", **EMBEDDED_BROKER_ENV}
        self.target = f"127.0.0.1:{port}"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: grpc.aio.Channel | None = None

    @property
    def api(self) -> loyalty_pb2_grpc.LoyaltyStub:
        assert self.channel is not None, "the service is not running"
        return loyalty_pb2_grpc.LoyaltyStub(self.channel)

    async def start(self, failpoints: str = "") -> None:
        """Start it and wait until it answers SERVING."""
        self.proc = self._spawn(failpoints)
        self.channel = grpc.aio.insecure_channel(self.target)
        health = health_pb2_grpc.HealthStub(self.channel)
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            assert self.proc.poll() is None, f"loyalty exited:\n{self.tail()}"
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            assert asyncio.get_running_loop().time() < deadline, f"not SERVING:\n{self.tail()}"
            await asyncio.sleep(0.05)

    def _spawn(self, failpoints: str) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "crm_app", "serve", "loyalty"], cwd=ROOT,
                env={**self.env, "CRM_FAILPOINTS": failpoints}, stdout=out,
                stderr=subprocess.STDOUT)

    async def killed_itself(self) -> None:
        """Wait for the process to SIGKILL itself (a failpoint)."""
        assert self.proc is not None
        code = await asyncio.to_thread(self.proc.wait, 60)
        assert code == -signal.SIGKILL, f"exited with {code}:\n{self.tail()}"
        await self.kill()

    async def kill(self) -> None:
        """SIGKILL: no shutdown, no last commit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(self.proc.wait)
        if self.channel is not None:
            await self.channel.close()
            self.channel = None

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


async def _mid_page(conn: asyncpg.Connection) -> bool:
    """Wait until a page's transaction took its members (it holds them, not
    committed yet); False when the run finished first."""
    async def in_flight_or_done() -> bool:
        return bool(await conn.fetchval(
            """SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
                               JOIN pg_namespace n ON n.oid = c.relnamespace
                              WHERE n.nspname = 'loyalty' AND c.relname = 'campaign_members'
                                AND l.mode = 'RowShareLock' AND l.granted
                                AND l.pid <> pg_backend_pid())
                   OR EXISTS (SELECT 1 FROM loyalty.campaign_runs WHERE state = 'done')"""))

    await wait_for(in_flight_or_done, timeout=30, what="a page in flight")
    return not await conn.fetchval("SELECT count(*) FROM loyalty.campaign_runs "
                                   "WHERE state = 'done'")


async def _reached(conn: asyncpg.Connection, at_least: int, *, count: bool = False) -> Any:
    """Members reached so far (committed), or whether at least ``at_least``."""
    n = await conn.fetchval(
        "SELECT count(*) FROM loyalty.campaign_members WHERE outcome IS NOT NULL")
    return n if count else n >= at_least


async def test_a_killed_campaign_reaches_each_member_exactly_once(
        own_database: str, own_broker: TansuBroker, tmp_path: Path) -> None:
    seed = secrets.randbits(32)
    rng = random.Random(seed)
    bootstrap = own_broker.bootstrap_servers
    settings = Settings(database_url=own_database, kafka_bootstrap_servers=bootstrap,
                        retry_initial_s=0.05, retry_max_s=0.5, relay_poll_interval_s=0.05,
                        consumer_batch_wait_ms=20, quiet_hours_start="00:00",
                        quiet_hours_end="00:00", **EMBEDDED_BROKER_SETTINGS)
    members = sorted(str(uuid.uuid4()) for _ in range(MEMBERS))
    refused = set(members[::10])  # do-not-contact, as the customers service knows it
    now = datetime.now(UTC)
    segment = "kill-test"
    async with running(CUSTOMERS, settings) as crm:
        assert crm.runner.pool is not None
        await mirror(crm.runner.pool, [registered(cid, now) for cid in members]
                     + [consent(cid, "do_not_contact", True, now) for cid in refused])
        await customers_pb2_grpc.CustomersStub(crm.channel).DefineSegment(
            cpb.DefineSegmentRequest(name=segment, filter_json=json.dumps(
                {"field": "profile.socio_economic_band", "op": "=", "value": "nobody"})),
            metadata=crm.metadata)
        service = Service(own_database, bootstrap, f"127.0.0.1:{crm.runner.bound_grpc_port}",
                          tmp_path / "loyalty.log")
        conn = await asyncpg.connect(own_database)
        try:
            # The first page kills the process once the gate counted its
            # members, before it commits.
            await service.start(failpoints="campaigns.page_before_commit")
            await produce_envelopes(bootstrap, [entered(cid, segment, now) for cid in members])

            async def known() -> bool:
                return bool(await conn.fetchval(
                    "SELECT count(*) FROM loyalty.segment_members WHERE segment = $1",
                    segment) == MEMBERS)

            await wait_for(known, timeout=60, what="the segment's members known to loyalty")
            campaign = await service.api.CreateCampaign(pb.CreateCampaignRequest(
                campaign_id="kill", name="Killed and restarted", segment=segment,
                action=pb.CampaignAction(discount=pb.CampaignDiscount(
                    percent=5, purpose="service")), members_per_minute=RATE),
                metadata=METADATA)
            await service.killed_itself()
            counted = await conn.fetchval(
                "SELECT count(*) FROM customers.contact_ledger WHERE service = 'loyalty'")
            assert counted > 0 and await _reached(conn, 0, count=True) == 0, counted
            kills = [f"before the first page committed ({counted} counted by the gate)"]
            # Then at a random moment, and as a page takes its members.
            await service.start()
            await asyncio.sleep(rng.uniform(0.0, 1.5))
            kills.append(f"any time ({await _reached(conn, 0, count=True)} reached)")
            await service.kill()
            await service.start()
            if await _mid_page(conn):
                kills.append(f"taking members ({await _reached(conn, 0, count=True)} reached)")
                await service.kill()
                await service.start()
            await _check(conn, bootstrap, campaign.campaign_id, members, refused,
                         f"seed {seed}, killed {kills}:\n{service.tail()}")
        finally:
            await service.kill()
            await conn.close()


async def _check(conn: asyncpg.Connection, bootstrap: str, campaign_id: str,
                 members: list[str], refused: set[str], where: str) -> None:
    async def done() -> bool:
        return bool(await conn.fetchval(
            "SELECT state = 'done' FROM loyalty.campaign_runs WHERE campaign_id = $1 AND run = 1",
            campaign_id))

    await wait_for(done, timeout=60, what=f"the run done ({where})")
    run = await conn.fetchrow(
        """SELECT targeted, sent, suppressed, skipped, suppressed_by_reason
             FROM loyalty.campaign_runs WHERE campaign_id = $1 AND run = 1""", campaign_id)
    assert run is not None
    sent = len(members) - len(refused)
    assert (run["targeted"], run["sent"], run["suppressed"], run["skipped"]) == (
        len(members), sent, len(refused), 0), where
    assert json.loads(run["suppressed_by_reason"]) == {"do_not_contact": len(refused)}, where
    outcomes = await conn.fetch(
        "SELECT customer_id, outcome FROM loyalty.campaign_members WHERE campaign_id = $1",
        campaign_id)
    assert {str(r["customer_id"]): r["outcome"] for r in outcomes} == {
        cid: "suppressed" if cid in refused else "sent" for cid in members}, where
    assert await conn.fetchval("SELECT count(*) FROM loyalty.discounts WHERE rule_id = $1",
                               f"campaign:{campaign_id}") == sent, where
    # The gate counted each allowed contact once, a page rolled back or not.
    assert await conn.fetchval(
        """SELECT count(*) FROM customers.contact_ledger l
             JOIN loyalty.campaign_members m ON m.action_id::text = l.contact_id
            WHERE m.campaign_id = $1""", campaign_id) == sent, where
    # On crm.loyalty.v1: one action per member, by event id (a record the
    # relay published again after a kill keeps its id).
    actions: dict[str, dict[str, object]] = {}

    async def all_there() -> bool:
        for r in await read_topic(bootstrap, LOYALTY, expect=0, timeout=60, settle=0.5):
            headers = dict(r.headers)
            data = json.loads(r.value)
            if (headers["ce_type"].decode() in ACTION_TYPES
                    and data.get("campaign_id") == campaign_id):
                actions[headers["ce_id"].decode()] = {**data,
                                                      "type": headers["ce_type"].decode()}
        return len({str(a["customer_id"]) for a in actions.values()}) >= len(members)

    await wait_for(all_there, timeout=60, what=f"an action for every member ({where})")
    await asyncio.sleep(1.0)
    await all_there()  # anything published twice shows by now
    per_member = Counter(str(a["customer_id"]) for a in actions.values())
    twice = {cid: n for cid, n in per_member.items() if n != 1}
    assert not twice, f"members with more than one action: {list(twice.items())[:5]} ({where})"
    assert set(per_member) == set(members), where
    kinds = Counter((str(a["type"]), str(a["customer_id"]) in refused) for a in actions.values())
    assert kinds == {("loyalty.discount_issued", False): sent,
                     ("loyalty.action_suppressed", True): len(refused)}, where
    assert {a["campaign_run"] for a in actions.values()} == {1}, where
