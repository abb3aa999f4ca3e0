"""Kill the interactions service around a case's pause and resume: the
scheduled warning and breach of its resolution move exactly once. No stale
breach fires after a pause (even with the old due time long past while the
service was down), and none is lost when the service dies right after a
resume.

``crm serve interactions`` runs in a process of its own on the real clock
(promises of a few seconds), on a database and a broker of this test's own;
the customers service runs in-process beside it on the same ones.
"""

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
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from crm.customers.v1 import customers_pb2 as cpb
from crm.customers.v1 import customers_pb2_grpc
from crm.interactions.v1 import interactions_pb2 as pb
from crm.interactions.v1 import interactions_pb2_grpc
from crm_app.cli import EMBEDDED_BROKER_ENV
from crm_contracts.topics import INTERACTIONS
from crm_runtime.settings import SERVICES, Settings
from crm_runtime.stack import EMBEDDED_BROKER_SETTINGS, TansuBroker, free_port
from services.customers.app import SPEC as CUSTOMERS
from tests.support.kafka import wait_for
from tests.support.services import DEV_TOKEN, Running, running

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.slow

MAX_S, WARN_S = 8, 2  # the complaint's resolution promise, calendar time
METADATA = [("authorization", f"Bearer {DEV_TOKEN}")]


# --- the service in a child process --------------------------------------------------

class Service:
    """``crm serve interactions`` in a child process, at a fixed gRPC port,
    reaching the customers service at ``customers`` (host:port)."""

    def __init__(self, database_url: str, bootstrap: str, customers: str, log: Path) -> None:
        port = free_port()
        inherited = {k: v for k, v in os.environ.items()
                     if not k.startswith("CRM_") and k not in ("DATABASE_URL",
                                                               "KAFKA_BOOTSTRAP_SERVERS")}
        index = SERVICES.index("interactions")
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
        self.starts = 0

    @property
    def api(self) -> interactions_pb2_grpc.InteractionsStub:
        assert self.channel is not None, "the service is not running"
        return interactions_pb2_grpc.InteractionsStub(self.channel)

    async def start(self) -> None:
        """Start it and wait until it answers SERVING."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = self._spawn()
        self.channel = grpc.aio.insecure_channel(self.target)
        health = health_pb2_grpc.HealthStub(self.channel)
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"interactions exited with {self.proc.returncode} at "
                                     f"start {self.starts}:\n{self.tail()}")
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"interactions not SERVING in 60 s:\n{self.tail()}")
            await asyncio.sleep(0.05)

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"\n===== start {self.starts} at {_now().isoformat()} =====\n".encode())
            out.flush()
            return subprocess.Popen(
                [sys.executable, "-m", "crm_app", "serve", "interactions"], cwd=ROOT,
                env=self.env, stdout=out, stderr=subprocess.STDOUT)

    async def kill(self) -> None:
        """SIGKILL: no shutdown, no flush, no last commit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(self.proc.wait)
            with self.log.open("ab") as out:
                out.write(f"===== SIGKILL at {_now().isoformat()} =====\n".encode())
        if self.channel is not None:
            await self.channel.close()
            self.channel = None

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


# --- what the service published and stored --------------------------------------------

@dataclass(frozen=True)
class Event:
    type: str
    id: str
    time: datetime  # the CloudEvents time: when the service emitted it
    offset: int
    data: dict[str, Any]

    def __str__(self) -> str:
        return (f"{self.type} id={self.id} time={self.time.isoformat()} "
                f"due_at={self.data.get('due_at')} milestone={self.data.get('milestone')}")


async def published(bootstrap: str, customer_id: str) -> list[Event]:
    """Every record on crm.interactions.v1 keyed by the customer, read from the
    beginning up to the end offsets (not a timed read: nothing is missed)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        await consumer.topics()  # metadata
        parts = [TopicPartition(INTERACTIONS, p)
                 for p in sorted(consumer.partitions_for_topic(INTERACTIONS) or ())]
        assert parts, f"no partitions of {INTERACTIONS}"
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        found: list[Event] = []
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            positions = {tp: await consumer.position(tp) for tp in parts}
            if all(positions[tp] >= ends[tp] for tp in parts):
                break
            assert asyncio.get_running_loop().time() < deadline, (
                f"could not read {INTERACTIONS} to its end: at {positions}, end {ends}")
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for r in records:
                    if r.key != customer_id.encode():
                        continue
                    headers = dict(r.headers)
                    found.append(Event(
                        headers["ce_type"].decode(), headers["ce_id"].decode(),
                        datetime.fromisoformat(headers["ce_time"].decode().replace("Z",
                                                                                   "+00:00")),
                        r.offset, json.loads(r.value)))
        return found
    finally:
        await consumer.stop()


def of_type(events: list[Event], kind: str, case_id: str) -> list[Event]:
    """The events of ``kind`` about the case, a redelivered record (same id)
    counted once."""
    seen: dict[str, Event] = {}
    for e in events:
        if e.type == kind and e.data.get("case_id") == case_id:
            seen.setdefault(e.id, e)
    return list(seen.values())


def due_of(event: Event) -> datetime | None:
    """The milestone's due time an event states."""
    due = event.data.get("due_at")
    return datetime.fromisoformat(due) if due else None


def listing(events: list[Event]) -> str:
    return "\n  ".join(str(e) for e in events) or "(none)"


async def drained(conn: asyncpg.Connection) -> None:
    """Until the relay published everything the service committed."""
    async def empty() -> bool:
        return bool(await conn.fetchval(
            "SELECT count(*) FROM interactions.outbox WHERE sent_at IS NULL") == 0)

    await wait_for(empty, timeout=20, what="the interactions outbox to drain")


async def scheduled(conn: asyncpg.Connection, case_id: str) -> list[tuple[str, datetime]]:
    rows = await conn.fetch(
        """SELECT kind, due_at FROM interactions.scheduled_work
            WHERE kind IN ('cases.breach_warning', 'cases.breach')
              AND (item_key = $1 OR item_key LIKE $1 || '/%') ORDER BY due_at""", case_id)
    return [(r["kind"], r["due_at"]) for r in rows]


# --- helpers ------------------------------------------------------------------------

def _now() -> datetime:
    return datetime.now(UTC)


def _at(value: Timestamp) -> datetime:
    return value.ToDatetime(tzinfo=UTC)


def _resolution(case: pb.Case) -> pb.Milestone:
    found = [m for m in case.milestones if m.name == "resolution"]
    assert len(found) == 1, f"case {case.case_id}: milestones {list(case.milestones)}"
    return found[0]


async def _sleep_until(when: datetime) -> None:
    await asyncio.sleep(max(0.0, (when - _now()).total_seconds()))


async def _case(service: Service, customer_id: str, case_id: str) -> pb.Case:
    found = await service.api.ListCases(pb.ListCasesRequest(filter="all",
                                                            customer_id=customer_id),
                                        metadata=METADATA)
    matching: list[pb.Case] = [c for c in found.cases if c.case_id == case_id]
    assert len(matching) == 1, f"case {case_id} of {customer_id}: {len(matching)} listed"
    return matching[0]


async def _customer(crm: Running) -> str:
    reply = await customers_pb2_grpc.CustomersStub(crm.channel).RegisterCustomer(
        cpb.RegisterCustomerRequest(emails=[f"{uuid.uuid4().hex[:10]}@example.com"]),
        metadata=crm.metadata)
    return str(reply.customer.customer_id)


async def _complaint(service: Service, customer_id: str) -> pb.Case:
    """A complaint by phone: it opens a case, whose promise is returned."""
    recorded = await service.api.RecordInteraction(pb.RecordInteractionRequest(
        customer_id=customer_id, channel="phone", direction="reactive", kind="complaint",
        notes="the parcel arrived broken", idempotency_key=str(uuid.uuid4())),
        metadata=METADATA)
    assert recorded.case_id, f"a complaint of {customer_id} opened no case"
    return await _case(service, customer_id, recorded.case_id)


@dataclass
class Stack:
    service: Service
    crm: Running
    conn: asyncpg.Connection
    bootstrap: str


@pytest.fixture
async def stack(own_database: str, own_broker: TansuBroker,
                tmp_path: Path) -> AsyncIterator[Stack]:
    """Customers in-process, interactions in a child process (started, with
    the short complaint policy set), a connection to the database."""
    settings = Settings(database_url=own_database,
                        kafka_bootstrap_servers=own_broker.bootstrap_servers,
                        retry_initial_s=0.05, retry_max_s=0.5, relay_poll_interval_s=0.05,
                        consumer_batch_wait_ms=20, **EMBEDDED_BROKER_SETTINGS)
    async with running(CUSTOMERS, settings) as crm:
        service = Service(own_database, own_broker.bootstrap_servers,
                          f"127.0.0.1:{crm.runner.bound_grpc_port}",
                          tmp_path / "interactions.log")
        conn = await asyncpg.connect(own_database)
        try:
            await service.start()
            policy = await service.api.SetPromisePolicy(pb.PromisePolicy(
                kind="complaint", channel="phone", min_seconds=0, max_seconds=MAX_S,
                warn_before_seconds=WARN_S, first_response_seconds=0, clock="calendar"),
                metadata=METADATA)
            assert (policy.max_seconds, policy.clock) == (MAX_S, "calendar")
            yield Stack(service, crm, conn, own_broker.bootstrap_servers)
        finally:
            await service.kill()
            await conn.close()


# --- one case, killed right after its pause and right after its resume ---------------------

async def test_a_pause_and_a_resume_move_the_breach_exactly_once_across_kills(
        stack: Stack) -> None:
    service, conn = stack.service, stack.conn
    cid = await _customer(stack.crm)

    # 1. The complaint opens a case: only a resolution, due in MAX_S seconds.
    case = await _complaint(service, cid)
    case_id, opened = case.case_id, _at(case.opened_at)
    res = _resolution(case)
    d0 = _at(res.due_at)
    assert [m.name for m in case.milestones] == ["resolution"], case
    assert res.state == "pending" and d0 - opened == timedelta(seconds=MAX_S), res
    assert _at(case.promised_by) == d0
    assert await scheduled(conn, case_id) == [
        ("cases.breach_warning", d0 - timedelta(seconds=WARN_S)), ("cases.breach", d0)]

    # 2. Paused 2 s later: the clock stops with about 6 s left, nothing scheduled.
    await _sleep_until(opened + timedelta(seconds=2))
    paused = await service.api.PauseCase(pb.PauseCaseRequest(
        case_id=case_id, reason="waiting for the customer's photos"), metadata=METADATA)
    # 3. Killed at once, the pause's reply in hand.
    await service.kill()
    paused_at, res = _at(paused.paused_at), _resolution(paused)
    left = d0 - paused_at
    assert paused.paused and res.state == "paused", paused
    assert 5 <= res.remaining_seconds <= 7, f"remaining {res.remaining_seconds}s: {res}"
    assert timedelta(seconds=5) < left < timedelta(seconds=7), left
    assert await scheduled(conn, case_id) == [], "the pause left scheduled work of the case"

    # Down until well past the old due time, then up for 3 s: nothing fires.
    await _sleep_until(d0 + timedelta(seconds=3))
    await service.start()
    await asyncio.sleep(3)
    still = await _case(service, cid, case_id)
    assert still.paused and _resolution(still).state == "paused", still
    assert not still.breached
    await drained(conn)
    events = await published(stack.bootstrap, cid)
    stale = [e for e in events if e.type in ("case.breached", "case.breach_warning")]
    assert not stale, (f"case {case_id} paused at {paused_at} (old due {d0}) published "
                       f"after a restart past its old due time:\n  {listing(stale)}\n"
                       f"log:\n{service.tail()}")
    assert len(of_type(events, "case.paused", case_id)) == 1, listing(events)

    # 4. Resumed: due after the time it had left, from now. Killed at once,
    # restarted at once.
    asked = _now()
    resumed = await service.api.ResumeCase(pb.ResumeCaseRequest(case_id=case_id),
                                           metadata=METADATA)
    answered = _now()
    await service.kill()
    res = _resolution(resumed)
    d1 = _at(res.due_at)
    assert not resumed.paused and res.state == "pending", resumed
    assert asked + left - timedelta(seconds=1) <= d1 <= answered + left + timedelta(seconds=1), (
        f"resumed between {asked} and {answered} with {left} left, yet due {d1}")
    assert _at(resumed.promised_by) == d1
    assert await scheduled(conn, case_id) == [
        ("cases.breach_warning", d1 - timedelta(seconds=WARN_S)), ("cases.breach", d1)], (
        "the resume did not schedule the warning and the breach at the new due time")
    await service.start()

    # 5. Past the new due time: one warning, one breach, at the new due time.
    await _sleep_until(d1 + timedelta(seconds=3))
    final = await _case(service, cid, case_id)
    assert _resolution(final).state == "missed" and final.breached, final
    assert _at(_resolution(final).due_at) == d1
    assert await scheduled(conn, case_id) == []
    await drained(conn)
    events = await published(stack.bootstrap, cid)
    [resume_event] = of_type(events, "case.resumed", case_id)
    resumed_at = datetime.fromisoformat(resume_event.data["resumed_at"])
    assert d1 == resumed_at + left, f"due {d1}, resumed at {resumed_at} with {left} left"
    breaches = of_type(events, "case.breached", case_id)
    warnings = of_type(events, "case.breach_warning", case_id)
    assert len(breaches) == 1, (f"case {case_id}: {len(breaches)} case.breached, expected 1 "
                                f"(due {d1}):\n  {listing(events)}\nlog:\n{service.tail()}")
    assert len(warnings) == 1, (f"case {case_id}: {len(warnings)} case.breach_warning, "
                                f"expected 1 (due {d1}):\n  {listing(events)}")
    [breach], [warning] = breaches, warnings
    assert breach.data["milestone"] == "resolution", breach
    assert due_of(breach) == d1, f"{breach}, due {d1}"
    # The service's clock is this host's: a breach recorded before the due
    # time would be a stale one.
    assert breach.time >= d1, f"{breach} recorded before its due time {d1}"
    assert warning.time >= d1 - timedelta(seconds=WARN_S), f"{warning} early, due {d1}"
    assert due_of(warning) == d1, warning
    assert resume_event.offset < warning.offset < breach.offset, listing(events)
    signals = [e for e in events if e.type == "customer.dissatisfaction_signal"
               and e.data.get("reason") == "breached_promise"]
    assert len({e.id for e in signals}) == 1, listing(events)
    raw = [e for e in events if e.type in ("case.breached", "case.breach_warning")]
    assert len(raw) == 2, f"a record published twice:\n  {listing(raw)}"

    # Killed and restarted once more: nothing is published again.
    await service.kill()
    await service.start()
    await asyncio.sleep(1.0)
    await drained(conn)
    again = await published(stack.bootstrap, cid)
    extra = [e for e in again if e.offset not in {x.offset for x in events}]
    assert not extra, f"published after the last restart:\n  {listing(extra)}"


# --- several cases, paused and resumed at random moments, killed at random moments --------

@dataclass
class Tracked:
    customer_id: str
    case_id: str
    state: str = ""
    due: datetime | None = None  # the resolution's, as the last reply said; None paused
    warn: datetime | None = None
    resolved: bool = False
    history: list[str] = field(default_factory=list)

    def saw(self, what: str, case: pb.Case) -> None:
        res = _resolution(case)
        self.state = res.state
        self.due = _at(res.due_at) if res.HasField("due_at") else None
        self.warn = _at(res.warn_at) if res.HasField("warn_at") else None
        self.resolved = case.status == "resolved"
        left = f", {res.remaining_seconds}s left" if res.state == "paused" else ""
        self.history.append(f"{_now().time()} {what}: {res.state}, due "
                            f"{self.due.time() if self.due else '-'}{left}")


def _seed() -> int:
    """PROMISE_KILL_SEED replays a failed run (its message names the seed)."""
    given = os.environ.get("PROMISE_KILL_SEED")
    return int(given) if given else secrets.randbits(32)


async def test_random_pauses_resumes_and_kills_breach_each_case_once_at_its_final_due_time(
        stack: Stack) -> None:
    seed = _seed()
    rng = random.Random(seed)
    service, conn = stack.service, stack.conn
    tracked = [Tracked(await _customer(stack.crm), "") for _ in range(5)]
    for t in tracked:
        case = await _complaint(service, t.customer_id)
        t.case_id = case.case_id
        t.saw("opened", case)
    kills: list[str] = []

    async def act(t: Tracked) -> None:
        """Pause a running case; resume a paused one (by ResumeCase, or by a
        contact from the customer on the case)."""
        if t.resolved:
            return
        if t.state != "paused":
            t.saw("paused", await service.api.PauseCase(
                pb.PauseCaseRequest(case_id=t.case_id, reason="waiting"), metadata=METADATA))
        elif rng.random() < 0.5:
            t.saw("resumed", await service.api.ResumeCase(
                pb.ResumeCaseRequest(case_id=t.case_id), metadata=METADATA))
        else:
            await service.api.RecordInteraction(pb.RecordInteractionRequest(
                customer_id=t.customer_id, channel="email", direction="reactive",
                kind="support", case_id=t.case_id, idempotency_key=str(uuid.uuid4())),
                metadata=METADATA)
            t.saw("contact on it", await _case(service, t.customer_id, t.case_id))

    def due_soon() -> tuple[Tracked, datetime] | None:
        """A running case and its next warning or breach, 0.3 to 4 s away."""
        now = _now()
        moments = [(m, i) for i, t in enumerate(tracked) if t.state in ("pending", "warning")
                   for m in (t.due, t.warn)
                   if m is not None and now + timedelta(seconds=0.3) <= m
                   <= now + timedelta(seconds=4)]
        if not moments:
            return None
        m, i = rng.choice(moments)
        return tracked[i], m

    async def kill(why: str) -> None:
        await service.kill()
        kills.append(f"{_now().time()} ({why})")

    # Four runs of the service between random pauses and resumes, each
    # killed at a random moment: right after a reply, or just as a case's
    # warning or breach comes due (the scheduler's transaction in flight;
    # that case is left alone meanwhile), or any time.
    for _ in range(4):
        target = due_soon() if rng.random() < 0.6 else None
        if target is not None:
            until = target[1] + timedelta(seconds=rng.uniform(0.0, 0.06))
            how = f"as {target[0].case_id} came due at {target[1].time()}"
        else:
            until, how = _now() + timedelta(seconds=rng.uniform(0.8, 2.5)), "any time"
        others = [t for t in tracked if target is None or t is not target[0]]
        after_reply = target is None and rng.random() < 0.4
        while True:
            wait = rng.choice([0.0, 0.0, rng.uniform(0.05, 0.6)])
            if _now() + timedelta(seconds=wait) >= until:
                break
            await asyncio.sleep(wait)
            await act(rng.choice(others))
        if after_reply:
            await act(rng.choice(others))
            await kill("right after a reply")
        else:
            await _sleep_until(until)
            await kill(how)
        await asyncio.sleep(rng.uniform(0.0, 1.0))
        await service.start()
    # Every case runs again towards its final due time, but one, resolved
    # (in time, unless it came due meanwhile).
    for t in tracked:
        if t.state == "paused":
            t.saw("resumed", await service.api.ResumeCase(
                pb.ResumeCaseRequest(case_id=t.case_id), metadata=METADATA))
    lucky = rng.choice([t for t in tracked if t.state in ("pending", "warning")] or [None])
    if lucky is not None:
        lucky.saw("resolved", await service.api.ResolveCase(pb.ResolveCaseRequest(
            case_id=lucky.case_id, resolution="refunded"), metadata=METADATA))
    finals = {t.case_id: t.due for t in tracked}
    last_due = max((d for d in finals.values() if d is not None), default=_now())
    # Killed once more while the last ones come due.
    target = due_soon()
    if target is not None:
        await _sleep_until(target[1] + timedelta(seconds=rng.uniform(0.0, 0.06)))
        await kill(f"as {target[0].case_id} came due at {target[1].time()}")
    else:
        await asyncio.sleep(rng.uniform(0.5, 2.0))
        await kill("any time")
    await service.start()
    await _sleep_until(last_due + timedelta(seconds=2))
    await drained(conn)

    problems: list[str] = []
    for t in tracked:
        # A record the relay published again after a kill keeps its event id
        # (at-least-once, consumers deduplicate): counted once.
        events = await published(stack.bootstrap, t.customer_id)
        breaches = of_type(events, "case.breached", t.case_id)
        warnings = of_type(events, "case.breach_warning", t.case_id)
        res = _resolution(await _case(service, t.customer_id, t.case_id))
        final = finals[t.case_id]
        where = (f"case {t.case_id} (final due {final}, now {res.state}):\n    "
                 + "\n    ".join(t.history) + "\n  published:\n  " + listing(events))
        if left := await scheduled(conn, t.case_id):
            problems.append(f"scheduled work left behind {left}: {where}")
        if t.resolved and res.state == "hit":  # met in time: never breached
            if breaches or len(warnings) > 1:
                problems.append(f"resolved in time, yet {len(breaches)} case.breached and "
                                f"{len(warnings)} case.breach_warning: {where}")
            continue
        if len(breaches) != 1:
            problems.append(f"{len(breaches)} case.breached, expected 1: {where}")
        if len(warnings) != 1:
            problems.append(f"{len(warnings)} case.breach_warning, expected 1: {where}")
        if res.state != "missed":
            problems.append(f"resolution {res.state}, expected missed: {where}")
        for b in breaches:
            due = due_of(b)
            if b.data.get("milestone") != "resolution" or due is None or due != final:
                problems.append(f"{b}: not the final due time: {where}")
            if due is None or b.time < due or (final is not None and b.time < final):
                problems.append(f"{b}: recorded before its due time: {where}")
    assert not problems, (f"seed {seed} (PROMISE_KILL_SEED={seed} replays it), killed at "
                          + ", ".join(kills) + ":\n" + "\n".join(problems)
                          + f"\nlog:\n{service.tail(60)}")
