"""A campaign to a segment: the customers service evaluates a segment of N
customers, loyalty learns its members from ``customer.segment_entered``,
and a campaign issues a discount to each member; against an
``INSERT ... SELECT`` of the same members and a raw produce of one record
per member.

The size is N members (``-n``; the run's default of 20,000 events means
N = 100,000 here, a realistic segment; ``-n 1000000`` for a million).

Set-up (untimed), per round: a fresh database and broker (see
:mod:`bench.service`); N + N/10 customers stored in the customers service's
tables with COPY, each having granted ``promotional_offers`` (a discount's
purpose), N/10 of them with profile ``socio_economic_band`` ``bench-small``
and the N others ``bench-large`` (the segments' filters: that band, and the
consent); loyalty learns their consent from one
``customer.consent_changed`` each on ``crm.customers.v1``, consumed by the
loyalty service run once in set-up (no rule fires on it) until every view
holds it; then ANALYZE. Quiet hours are off for the round (the contact gate
would refuse every discount at night; ``CRM_QUIET_HOURS_*`` set by the user
win).

* product: both services as deployed (``crm serve customers``, then
  ``--replicas`` processes of ``crm serve loyalty``, which asks the
  customers service's contact gate). Two passes, the same way: first the
  N/10 segment (its figures below the table), then the N one (the table's
  rows), so each process's peak memory is read after N/10 members and
  again after N:

  - ``evaluate``: ``DefineSegment`` on the customers service; its pass
    starts about 10 s later (the segment cache's settle time: a note, not
    timed) and evaluates every customer in pages of 1000, one scheduled
    item each, emitting one ``customer.segment_entered`` per member;
    timed from the start of the first page (the customers service's
    ``segment_members.since``) until loyalty's ``segment_members`` holds
    all the members (the database's clock at both ends);
  - ``issue``: ``CreateCampaign`` (a 10 % discount, unthrottled, starting
    now) until its run is ``done`` and no outbox row is unsent: the run
    snapshots the members in one statement, then pages of 500 members, a
    scheduled item each: lock the views, loyalty's checks, the contact gate
    in one call, a discount with its code and expiry notice and its
    ``loyalty.discount_issued`` per member, the members' outcomes and the
    run's counters (the database's clock at both ends).
* baseline, per phase: ``evaluate``: one ``INSERT ... SELECT`` of the N
  members (the same filter, compiled by the customers service's own
  compiler, on its table) into a plain table keyed like loyalty's
  ``segment_members``; ``issue``: ``AIOKafkaProducer.send`` of one
  pre-encoded ``loyalty.discount_issued`` per member to a topic of its own,
  awaiting every ack.

Figures below the table: CPU per member of each process in each phase
(customers, loyalty, the database's backends, the broker; the baseline's
too); the N/10 pass's members/s; the peak resident memory (``VmHWM``) of the
loyalty and customers processes after the N/10 pass and after the N pass:
the same figure twice means memory does not grow with the segment.

The check: per pass, the run is done with N targeted and N sent (none
suppressed or skipped), loyalty holds one discount per member (the
segment's customers, no other) and ``crm.loyalty.v1`` exactly one
``loyalty.discount_issued`` per member for the campaign (by
``campaign_id``), no suppression, no dead letter; the baseline's table and
topic hold N each.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc

from bench import kafka
from bench.context import BenchContext
from bench.customers import SCHEMA as CUSTOMERS_SCHEMA
from bench.customers import seed_customers
from bench.events import KafkaRecord, encode
from bench.pacing import Pace
from bench.registry import Phases, Workload, register
from bench.service import (
    ServiceProcesses,
    Stack,
    backends_cpu,
    fresh_stack,
    process_cpu_seconds,
)
from bench.workloads.loyalty_actions import header, until
from crm.customers.v1 import customers_pb2, customers_pb2_grpc
from crm.loyalty.v1 import loyalty_pb2, loyalty_pb2_grpc
from crm_contracts.customers import ConsentChanged
from crm_contracts.loyalty import ActionSuppressed, DiscountIssued
from crm_contracts.topics import CUSTOMERS, LOYALTY
from crm_runtime.events import Envelope
from services.customers import segments
from services.customers.app import SPEC as CUSTOMERS_SPEC
from services.customers.memberships import EVALUATE
from services.loyalty.app import SPEC

SCHEMA = SPEC.schema
#: The run's default event count (``bench.__main__.DEFAULT_EVENTS``), which
#: this workload reads as its own default size.
RUN_DEFAULT_EVENTS = 20_000
DEFAULT_MEMBERS = 100_000
RAW_SCHEMA = "bench_raw"
RAW_TOPIC = "bench.raw.campaign"
PERCENT, VALID_DAYS = 10, 30
REASON = "Spring offer for our customers"
DISCOUNT_ISSUED = DiscountIssued.event_type
SUPPRESSED = ActionSuppressed.event_type
POLL_S = 0.02
#: The CPU snapshot is taken this long before the segment's pass is due.
BEFORE_DUE_S = 0.3


def members_for(events: int) -> int:
    """The segment size of a run of ``events`` (see the module doc)."""
    return DEFAULT_MEMBERS if events == RUN_DEFAULT_EVENTS else events


def segment_filter(band: str) -> dict[str, Any]:
    return {"all": [{"field": "profile.socio_economic_band", "op": "=", "value": band},
                    {"field": "consent.promotional_offers", "op": "=", "value": True}]}


def consent_envelopes(ids: list[str]) -> list[Envelope]:
    """What the customers service told loyalty of each customer's consent."""
    return [Envelope(data=ConsentChanged(customer_id=cid, purpose="promotional_offers",
                                         granted=True, source="bench"),
                     subject=cid, source="/crm/customers") for cid in ids]


def discount_records(ids: list[str], campaign_id: str) -> list[KafkaRecord]:
    """A campaign's ``loyalty.discount_issued`` for ``ids``, pre-encoded."""
    expires = datetime.now(UTC) + timedelta(days=VALID_DAYS)
    return [encode(Envelope(data=DiscountIssued(
        discount_id=str(uuid.uuid4()), customer_id=cid, code=secrets.token_hex(8).upper(),
        kind="percent", percent=PERCENT, currency="EUR", expires_at=expires, rule_id="",
        purpose="promotional", reason=REASON, campaign_id=campaign_id, campaign_run=1),
        subject=cid, source="/crm/loyalty")) for cid in ids]


def peak_rss_mib(pid: int) -> float | None:
    """The process's peak resident memory (``VmHWM``), MiB; None if unknown."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def pids(service: ServiceProcesses) -> list[int]:
    return [proc.pid for proc in service._procs]


@dataclass(frozen=True)
class Pass:
    """One segment and its campaign."""

    label: str
    band: str
    ids: list[str]

    @property
    def segment(self) -> str:
        return f"bench-{self.label}"

    @property
    def campaign(self) -> str:
        return f"bench-{self.label}-offer"


@dataclass(frozen=True)
class Timed:
    evaluate_s: float
    issue_s: float


@register
class LoyaltyCampaign(Workload):
    name = "loyalty.campaign"
    order = 47
    warm_up = False  # the N/10 pass goes first, on the same processes
    summary = ("customers + loyalty services (crm serve): a segment defined and evaluated "
               "until loyalty knows every member, then a discount campaign to it until every "
               "member's discount is issued and published")
    baseline_summary = ("INSERT ... SELECT of the segment's members (the same filter) into a "
                        "plain table; AIOKafkaProducer.send of one pre-encoded "
                        "loyalty.discount_issued per member to a topic of its own")

    def __init__(self, ctx: BenchContext, events: int) -> None:
        super().__init__(ctx, events)
        self.n = members_for(events)
        self.small_n = max(1, self.n // 10)
        self.counts = {"evaluate": self.n, "issue": self.n}

    def describe(self) -> str:
        return (f"customers service (1 crm serve process) evaluating a segment of {self.n:,} "
                f"members (pages of 1000) until the loyalty service ({self.ctx.replicas} "
                f"process(es)) holds them all; then a {PERCENT} % discount campaign to them, "
                "unthrottled (pages of 500, the contact gate asked once a page), until its run "
                "is done and every loyalty.discount_issued is acknowledged")

    def _deadline(self, members: int) -> float:
        """A guard against hanging, not a timing check."""
        return time.monotonic() + 180.0 + members / 100

    async def setup(self) -> None:
        self.stack: Stack = await self.resources.enter_async_context(
            fresh_stack(self.ctx, "campaign"))
        quiet = {"quiet_hours_start", "quiet_hours_end"}
        self.settings = self.stack.settings.model_copy(update={
            f: "00:00" for f in quiet - self.ctx.settings.model_fields_set})
        await self.stack.migrate(SPEC)
        await self.stack.migrate(CUSTOMERS_SPEC)
        conn = await self.stack.connect()
        self.resources.push_async_callback(conn.close)
        self.conn: asyncpg.Connection = conn
        started = time.perf_counter()
        ids = [str(c) for c in await seed_customers(
            conn, self.n + self.small_n, consents=("promotional_offers",))]
        self.small = Pass("small", "bench-small", ids[:self.small_n])
        self.large = Pass("large", "bench-large", ids[self.small_n:])
        await conn.execute(
            f"""UPDATE {CUSTOMERS_SCHEMA}.customers SET profile = profile || jsonb_build_object(
                  'socio_economic_band', CASE WHEN customer_id = ANY($1::uuid[])
                                              THEN 'bench-small' ELSE 'bench-large' END)""",
            self.small.ids)
        await conn.execute(f"VACUUM ANALYZE {CUSTOMERS_SCHEMA}.customers")
        self.excluded["set-up: the customers, their consents and bands (COPY, UPDATE)"] = (
            time.perf_counter() - started)
        started = time.perf_counter()
        await self._make_known(ids)
        self.excluded["set-up: loyalty learns the customers' consents (one event each)"] = (
            time.perf_counter() - started)
        async with conn.transaction():
            await conn.execute(f"CREATE SCHEMA {RAW_SCHEMA}")
            await conn.execute(f"""CREATE TABLE {RAW_SCHEMA}.segment_members (
                segment text NOT NULL, customer_id uuid NOT NULL,
                PRIMARY KEY (segment, customer_id))""")
        await kafka.create_topic(self.stack.bootstrap_servers, RAW_TOPIC,
                                 self.settings.partitions_for(LOYALTY))
        self.raw_records = discount_records(self.large.ids, self.large.campaign)

    async def _make_known(self, ids: list[str]) -> None:
        await kafka.produce(self.stack.bootstrap_servers, CUSTOMERS,
                            [encode(e) for e in consent_envelopes(ids)])
        service = ServiceProcesses(SPEC, self.settings)
        known = f"SELECT count(*) FROM {SCHEMA}.customer_view WHERE promotional_consent"

        async def all_known() -> bool:
            return bool(await self.conn.fetchval(known) >= len(ids))

        try:
            await service.start()
            await until(f"{self.name} set-up: loyalty did not learn {len(ids)} consents",
                        self._deadline(len(ids)), service, all_known)
        finally:
            await service.stop()
        await self.conn.execute("ANALYZE")  # as autovacuum would have by now

    # --- the raw baseline ----------------------------------------------------------------

    async def baseline(self) -> Phases:
        backend = await self.conn.fetchval("SELECT pg_backend_pid()")
        broker = self.stack.broker_pid
        compiled = segments.compile_sql(segment_filter(self.large.band), datetime.now(UTC),
                                        [self.large.segment])
        insert = (f"INSERT INTO {RAW_SCHEMA}.segment_members (segment, customer_id) "
                  "SELECT $1, c.customer_id FROM customers c WHERE c.erased_at IS NULL "
                  f"AND c.merged_into IS NULL AND ({compiled.sql})")
        db_before = process_cpu_seconds(backend, named="postgres")
        started = time.perf_counter()
        async with self.conn.transaction():
            await self.conn.execute(f"SET LOCAL search_path TO {CUSTOMERS_SCHEMA}")
            await self.conn.execute(insert, *compiled.params)
        evaluate_s = time.perf_counter() - started
        db_after = process_cpu_seconds(backend, named="postgres")
        self._cpu("baseline evaluate", self.n, {
            "the database backend": _spent(db_before, db_after)})
        producer: Any = await kafka.start_producer(self.stack.bootstrap_servers)
        try:
            bench_before = sum(os.times()[:2])
            broker_before = process_cpu_seconds(broker) if broker else None
            started = time.perf_counter()
            await kafka.send_all(producer, RAW_TOPIC, self.raw_records)
            issue_s = time.perf_counter() - started
            bench_after = sum(os.times()[:2])
            broker_after = process_cpu_seconds(broker) if broker else None
        finally:
            await producer.stop()
        self._cpu("baseline issue", self.n, {
            "the bench process: aiokafka": bench_after - bench_before,
            "the broker": _spent(broker_before, broker_after)})
        return {"evaluate": evaluate_s, "issue": issue_s}

    # --- the product -------------------------------------------------------------------

    async def product(self) -> Phases:
        started = time.perf_counter()
        self.customers = ServiceProcesses(CUSTOMERS_SPEC, self.settings)
        self.loyalty = ServiceProcesses(SPEC, self.settings.model_copy(
            update={"customers_grpc_target": self.customers.target}),
            replicas=self.ctx.replicas)
        try:
            await self.customers.start()
            await self.loyalty.start()
            self.excluded["product: both services' start-up"] = time.perf_counter() - started
            async with (grpc.aio.insecure_channel(self.customers.target) as cust,
                        grpc.aio.insecure_channel(self.loyalty.target) as loy):
                self.customers_stub = customers_pb2_grpc.CustomersStub(cust)
                self.loyalty_stub = loyalty_pb2_grpc.LoyaltyStub(loy)
                small = await self._pass(self.small, "N/10 pass ")
                large = await self._pass(self.large, "")
        finally:
            await self.loyalty.stop()
            await self.customers.stop()
        members = f"{self.small_n:,} members"
        self.figures[f"N/10 pass ({members}): evaluate members/s"] = (
            self.small_n / small.evaluate_s)
        self.figures[f"N/10 pass ({members}): issue members/s"] = self.small_n / small.issue_s
        return {"evaluate": large.evaluate_s, "issue": large.issue_s}

    async def _pass(self, p: Pass, part: str) -> Timed:
        n = len(p.ids)
        deadline = self._deadline(n)
        # evaluate
        defined_at = await self._clock()
        await self.customers_stub.DefineSegment(customers_pb2.DefineSegmentRequest(
            name=p.segment, description="bench campaign segment",
            filter_json=json.dumps(segment_filter(p.band))),
            metadata=self.stack.metadata, timeout=30)
        due = await self.conn.fetchval(
            f"SELECT due_at FROM {CUSTOMERS_SCHEMA}.scheduled_work "
            "WHERE kind = $1 AND item_key = $2", EVALUATE, p.segment)
        if due is not None:
            wait = (due - await self._clock()).total_seconds() - BEFORE_DUE_S
            await asyncio.sleep(max(0.0, wait))
        before = await self._cpu_now()
        await self._poll(f"{part}evaluate: members loyalty holds", n, deadline,
                         f"SELECT count(*) FROM {SCHEMA}.segment_members "
                         "WHERE segment = $1 AND member", p.segment)
        done = await self._clock()
        after = await self._cpu_now()
        first = await self.conn.fetchval(
            f"SELECT min(since) FROM {CUSTOMERS_SCHEMA}.segment_members WHERE segment = $1",
            p.segment)
        self.excluded[f"{part}evaluate: definition to the pass's first page"] = (
            (first - defined_at).total_seconds())
        if not part:  # the N/10 pass's CPU is left out: its rate says enough
            self._cpu("evaluate", n, self._spent(before, after))
        evaluate_s = (done - first).total_seconds()
        self._peaks(n, "evaluate", (("loyalty", self.loyalty),))
        # issue
        before = await self._cpu_now()
        started = await self._clock()
        await self.loyalty_stub.CreateCampaign(loyalty_pb2.CreateCampaignRequest(
            campaign_id=p.campaign, name=f"Bench offer ({p.label})", segment=p.segment,
            action=loyalty_pb2.CampaignAction(discount=loyalty_pb2.CampaignDiscount(
                percent=PERCENT, valid_days=VALID_DAYS, reason=REASON)),
            created_by="bench"), metadata=self.stack.metadata, timeout=30)
        await self._poll(f"{part}issue: members reached", n, deadline,
                         f"""SELECT CASE WHEN state = 'done' AND NOT EXISTS (
                                 SELECT 1 FROM {SCHEMA}.outbox WHERE sent_at IS NULL)
                                 THEN targeted ELSE least(sent + suppressed + skipped,
                                                          targeted - 1) END
                               FROM {SCHEMA}.campaign_runs
                              WHERE campaign_id = $1 AND run = 1""", p.campaign)
        done = await self._clock()
        after = await self._cpu_now()
        if not part:
            self._cpu("issue", n, self._spent(before, after))
        self._peaks(n, "issue", (("loyalty", self.loyalty), ("customers", self.customers)))
        return Timed(evaluate_s, (done - started).total_seconds())

    async def _poll(self, what: str, expected: int, deadline: float, sql: str,
                    *args: Any) -> None:
        """Poll ``sql`` (a count; None counts as 0) until it reaches ``expected``."""
        pace = Pace(expected, least=POLL_S)
        while True:
            self.customers.check_running()
            self.loyalty.check_running()
            count = await self.conn.fetchval(sql, *args) or 0
            if count >= expected:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: {what}: {count} of {expected}")
            await asyncio.sleep(pace.next(count))

    async def _clock(self) -> datetime:
        now: datetime = await self.conn.fetchval("SELECT clock_timestamp()")
        return now

    async def _cpu_now(self) -> dict[str, Any]:
        broker = self.stack.broker_pid
        return {"customers": self.customers.cpu_seconds(), "loyalty": self.loyalty.cpu_seconds(),
                "db": await backends_cpu(self.conn),
                "broker": process_cpu_seconds(broker) if broker else None}

    @staticmethod
    def _spent(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float | None]:
        db: float | None = None
        if after["db"]:  # none: the server is on another machine
            # A backend that connected meanwhile counts from nothing.
            db = sum(used - before["db"].get(pid, 0.0) for pid, used in after["db"].items())
        return {"the customers process": _spent(before["customers"], after["customers"]),
                "the loyalty process(es)": _spent(before["loyalty"], after["loyalty"]),
                "the database's backends": db,
                "the broker": _spent(before["broker"], after["broker"])}

    def _cpu(self, part: str, members: int, spent: dict[str, float | None]) -> None:
        """CPU per member of each process (and their sum, when all are known)."""
        known = {label: s for label, s in spent.items() if s is not None}
        for label, s in known.items():
            self.figures[f"{part} CPU per member (µs, {label})"] = s / members * 1e6
        if len(known) == len(spent) > 1:
            self.figures[f"{part} CPU per member (µs, all of the above)"] = (
                sum(known.values()) / members * 1e6)

    def _peaks(self, members: int, phase: str,
               services: tuple[tuple[str, ServiceProcesses], ...]) -> None:
        """The peak resident memory so far of each service's (largest) process."""
        for label, service in services:
            peaks = [p for p in map(peak_rss_mib, pids(service)) if p is not None]
            if peaks:
                self.figures[f"peak RSS (MiB, the {label} process) after the {phase} of "
                             f"{members:,} members"] = max(peaks)

    # --- the check -----------------------------------------------------------------------

    async def verify(self) -> None:
        n, bootstrap = self.n, self.stack.bootstrap_servers
        raw = await self.conn.fetchval(f"SELECT count(*) FROM {RAW_SCHEMA}.segment_members")
        if raw != n:
            raise RuntimeError(f"{self.name} baseline: {raw} members, expected {n}")
        records = await kafka.count_records(bootstrap, RAW_TOPIC, expect=n)
        if records != n:
            raise RuntimeError(f"{self.name} baseline: {records} records, expected {n}")
        dead = await self.conn.fetchval(
            f"SELECT (SELECT count(*) FROM {SCHEMA}.dead_letters) "
            f"+ (SELECT count(*) FROM {CUSTOMERS_SCHEMA}.dead_letters)")
        if dead:
            raise RuntimeError(f"{self.name}: {dead} dead letters")
        for p in (self.small, self.large):
            await self._check_run(p)
        # At least one discount_issued per member of each pass.
        found = await kafka.read_records(bootstrap, LOYALTY,
                                         expect=len(self.small.ids) + len(self.large.ids))
        issued: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter)
        suppressed = 0
        for r in found:
            kind = header(r, "ce_type")
            if kind == DISCOUNT_ISSUED:
                body = json.loads(r.value)
                issued[body.get("campaign_id", "")][body["customer_id"]] += 1
            elif kind == SUPPRESSED:
                suppressed += 1
        if suppressed:
            raise RuntimeError(f"{self.name}: {suppressed} {SUPPRESSED} on {LOYALTY}")
        for p in (self.small, self.large):
            got = issued.get(p.campaign, collections.Counter())
            twice = sum(1 for c in got.values() if c > 1)
            if twice or set(got) != set(p.ids):
                raise RuntimeError(
                    f"{self.name}: {p.campaign}: {sum(got.values())} {DISCOUNT_ISSUED} on "
                    f"{LOYALTY} for {len(got)} customers ({twice} more than once); expected "
                    f"exactly one for each of its {len(p.ids)} members")

    async def _check_run(self, p: Pass) -> None:
        n = len(p.ids)
        run = await self.conn.fetchrow(
            f"""SELECT r.state, r.targeted, r.sent, r.suppressed, r.skipped, c.state AS campaign,
                       (SELECT count(*) FROM {SCHEMA}.segment_members
                         WHERE segment = $2 AND member) AS members,
                       (SELECT count(*) FROM {SCHEMA}.campaign_members
                         WHERE campaign_id = $1 AND outcome = 'sent') AS reached
                  FROM {SCHEMA}.campaign_runs r JOIN {SCHEMA}.campaigns c USING (campaign_id)
                 WHERE r.campaign_id = $1 AND r.run = 1""", p.campaign, p.segment)
        expected = {"state": "done", "targeted": n, "sent": n, "suppressed": 0, "skipped": 0,
                    "campaign": "done", "members": n, "reached": n}
        if run is None or dict(run) != expected:
            raise RuntimeError(f"{self.name}: {p.campaign}: {None if run is None else dict(run)}"
                               f"; expected {expected}")
        owners = [str(r["customer_id"]) for r in await self.conn.fetch(
            f"SELECT customer_id FROM {SCHEMA}.discounts WHERE rule_id = $1",
            f"campaign:{p.campaign}")]
        if len(owners) != n or set(owners) != set(p.ids):
            raise RuntimeError(f"{self.name}: {p.campaign}: {len(owners)} discounts for "
                               f"{len(set(owners))} customers; expected one for each of its "
                               f"{n} members")


def _spent(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before
