"""Purchase-to-discount latency: purchases published at a steady rate on the
ingest topic, through the interactions, customers and loyalty services, to
the ``loyalty.discount_issued`` read back from ``crm.loyalty.v1``; against a
plain produce -> consume round trip of the same records through the broker at
the same rate.

The size of this workload is a rate and a duration, not the run's event
count: 1,000 purchases/s for 5 s (``--quick``: 200/s for 3 s), one purchase
per customer.

Set-up (untimed), per round: a fresh database and broker (see
:mod:`bench.service`); the three services run as ``crm up`` runs them, each
in ``--replicas`` processes of its own (``crm serve <name>``, default one;
each its own schema on the round's database, all on the round's broker;
interactions and loyalty get the customers service's gRPC address:
interactions only calls it for contacts without a customer id, and every
purchase here has one; loyalty asks its contact gate for every discount).
M = rate x duration customers are stored in the customers service with COPY
(stage potential, ``promotional_offers`` granted: loyalty asks the customers
service's contact gate for every discount); loyalty learns them from a ``customer.registered`` and a
``customer.consent_changed`` (``promotional_offers`` granted) each on
``crm.customers.v1``; then each customer's first purchase goes through the
whole path (ingest -> interactions -> customers: potential -> one_time ->
loyalty), until loyalty's ``customer_view`` has all M one-time buyers with
consent and no outbox has an unsent row; then ANALYZE, as autovacuum would
have by then in a running deployment. The next purchase of each customer
makes them a repeat buyer, which the shipped rule ``repeat-buyer-discount``
rewards with a discount.

* product: a reader of ``crm.loyalty.v1`` (no group, assigned every
  partition at its end) starts first; then one ``contact.received`` purchase
  per customer is published on ``crm.interactions.ingest.v1`` at the steady
  rate (a tick every 10 ms, the product's producer settings); the latency of
  a purchase is from just before its ``send`` to the poll that returned the
  ``loyalty.discount_issued`` keyed by its customer. A discount not read
  within a grace period after the last publish counts as infinitely late. The
  row's seconds run from the first publish to the last discount read;
* baseline: the same records published the same way on a topic of their own
  and read back by the same kind of reader, matched by key: the broker's own
  round trip at that rate, which the product's three hops each pay at least
  once.

The publisher and the reader share this process's event loop; the services
share the machine's cores with them, the database and the broker. The
achieved publish rate is printed beside the offered one.

Beside the end-to-end figures, the percentiles of each hop (:data:`HOPS`:
from each record's Kafka timestamp to the inbox row of the transaction that
consumed it, and from there to the timestamp of the record that transaction
caused) show where the time went.

Beside them, the database transactions committed per purchase while the
product's trip ran (``pg_stat_database.xact_commit`` of the round's
database, read once the backends reported): consumer transactions, relay
rounds and the rest, each with its fixed cost. It also counts the services'
idle work of those seconds (scheduler polls and the like, about 20
transactions a second, some 0.03 per purchase at 1,000/s).

Beside those, the CPU each part of the round used per purchase while the
product's trip ran (user plus system seconds from ``/proc``: each service's
processes, the broker, the round database's backends when the server is on
this machine, and this process, the publisher and reader), and the same for
the baseline's trip per record: at this rate the machine's two cores are
the limit, and these figures, which its noise disturbs far less than the
latencies, say who spends them.

The check: no customer got two discounts, and no dead letters. The issue's
target is a p99 under 100 ms at 1,000 purchases/s; the harness prints the
figures and asserts nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench import kafka
from bench.customers import seed_customers
from bench.events import KafkaRecord, encode
from bench.registry import Phases, Workload, register
from bench.service import (
    ServiceProcesses,
    Stack,
    backends_cpu,
    fresh_stack,
    process_cpu_seconds,
)
from bench.workloads.loyalty_actions import known_customer_envelopes
from crm_contracts.interactions import ContactReceived
from crm_contracts.loyalty import DiscountIssued
from crm_contracts.topics import CUSTOMERS, INTERACTIONS, INTERACTIONS_INGEST, LOYALTY
from crm_runtime.events import Envelope
from services.customers.app import SPEC as CUSTOMERS_SPEC
from services.interactions.app import SPEC as INTERACTIONS_SPEC
from services.loyalty.app import SPEC as LOYALTY_SPEC

#: Offered rate (purchases/s) and seconds of publishing, full run and --quick.
RATE, SECONDS = 1000, 5
QUICK_RATE, QUICK_SECONDS = 200, 3
#: Seconds after the last publish before a missing discount counts as lost.
GRACE_S = 30.0
#: Publishing tick: rate / 100 records every 10 ms.
TICK_S = 0.01
#: Topic of the baseline's round trip, on the round's broker.
RAW_TOPIC = "bench.raw.latency"
DISCOUNT_ISSUED = DiscountIssued.event_type.encode()
SPECS = (CUSTOMERS_SPEC, INTERACTIONS_SPEC, LOYALTY_SPEC)
POLL_S = 0.05
#: After the product's trip, before reading the database's transaction count:
#: a busy backend reports its counts at most once a second.
STATS_FLUSH_S = 1.1
#: The hops of a purchase's way, timed by each record's Kafka timestamp (its
#: producer's clock when the record was batched: the bench's send, each
#: relay's publish) and each inbox row's ``processed_at`` (the start of the
#: consuming transaction, on the database's clock; the same machine's).
#: A service's hop is its transaction and its relay's wait together.
HOPS = ("to interactions' transaction", "interactions' transaction and relay",
        "to customers' transaction", "customers' transaction and relay",
        "to loyalty's transaction", "loyalty's transaction and relay")
#: (topic, type) of the records whose Kafka timestamps :data:`HOPS_SQL` reads.
HOP_RECORDS = ((INTERACTIONS_INGEST, "contact.received"),
               (INTERACTIONS, "interaction.recorded"),
               (CUSTOMERS, "customer.stage_changed"),
               (LOYALTY, "loyalty.discount_issued"))
HOPS_SQL = f"""
    WITH r AS (SELECT * FROM bench_hop_records),
         j AS (
           SELECT a.ts AS a, ii.processed_at AS b, i.ts AS c, ci.processed_at AS d,
                  c.ts AS e, li.processed_at AS f, l.ts AS g
             FROM r AS a
             JOIN {INTERACTIONS_SPEC.schema}.inbox AS ii ON ii.event_id = a.event_id
             JOIN r AS i ON i.key = a.key AND i.type = 'interaction.recorded'
             JOIN {CUSTOMERS_SPEC.schema}.inbox AS ci ON ci.event_id = i.event_id
             JOIN r AS c ON c.key = a.key AND c.type = 'customer.stage_changed'
             JOIN {LOYALTY_SPEC.schema}.inbox AS li ON li.event_id = c.event_id
             JOIN r AS l ON l.key = a.key AND l.type = 'loyalty.discount_issued'
            WHERE a.type = 'contact.received')
    SELECT hop, percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS p50,
           percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) AS p99
      FROM j, LATERAL (VALUES (1, b - a), (2, c - b), (3, d - c), (4, e - d), (5, f - e),
                              (6, g - f)) AS v(hop, took),
           LATERAL (SELECT extract(epoch FROM took) * 1000 AS ms) AS t
     GROUP BY hop ORDER BY hop"""


async def hop_records(bootstrap: str, since_ms: int) -> list[tuple[Any, ...]]:
    """(key, type, event id, Kafka timestamp) of the :data:`HOP_RECORDS`
    timestamped from ``since_ms`` on (the trip's), each topic read to its end."""
    wanted = {topic: event_type.encode() for topic, event_type in HOP_RECORDS}
    rows: list[tuple[Any, ...]] = []
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                              enable_auto_commit=False, auto_offset_reset="earliest")
    await reader.start()
    try:
        # Every topic's partitions before assigning any: once assigned, the
        # client's metadata covers the assigned topics only.
        parts = [TopicPartition(topic, p) for topic in wanted
                 for p in sorted(reader.partitions_for_topic(topic) or ())]
        reader.assign(parts)
        ends = await reader.end_offsets(parts)
        await reader.seek_to_beginning(*parts)
        while [tp for tp in parts if await reader.position(tp) < ends[tp]]:
            batch = await reader.getmany(timeout_ms=100, max_records=5000)
            for r in (r for part in batch.values() for r in part):
                headers = dict(r.headers)
                if r.timestamp >= since_ms and headers.get("ce_type") == wanted[r.topic]:
                    rows.append((r.key, headers["ce_type"].decode(), headers["ce_id"].decode(),
                                 datetime.fromtimestamp(r.timestamp / 1000, UTC)))
    finally:
        await reader.stop()
    return rows


def purchase(customer_id: str, n: int) -> Envelope:
    """The shop's ``contact.received`` of the customer's ``n``-th purchase."""
    return Envelope(data=ContactReceived(
        idempotency_key=f"bench-sale-{n}-{customer_id}", customer_id=customer_id,
        channel="web", kind="purchase", touchpoint="webshop", occurred_at=datetime.now(UTC),
        outcome="positive", amount_minor=2500 + n, currency="EUR"),
        subject=customer_id, source="/crm/bench/shop")


async def purchase_path(stack: Stack, resources: contextlib.AsyncExitStack,
                        replicas: int) -> dict[str, ServiceProcesses]:
    """The three services a purchase crosses, as deployed and started (each
    stopped when ``resources`` closes), by name. Interactions (for unknown
    contacts) and loyalty (for its contact gate) call customers."""
    customers = ServiceProcesses(CUSTOMERS_SPEC, stack.settings, replicas=replicas)
    to_customers = stack.settings.model_copy(
        update={"customers_grpc_target": customers.target})
    services = {CUSTOMERS_SPEC.name: customers, **{
        spec.name: ServiceProcesses(spec, to_customers, replicas=replicas)
        for spec in (INTERACTIONS_SPEC, LOYALTY_SPEC)}}
    for service in services.values():
        resources.push_async_callback(service.stop)
    await asyncio.gather(*(service.start() for service in services.values()))
    return services


async def first_purchases(bootstrap: str, ids: list[str]) -> None:
    """Make the customers known to loyalty (consent to offers) and give each
    a first purchase, so that their next one moves them to repeat."""
    await kafka.produce(bootstrap, CUSTOMERS, [encode(e) for e in known_customer_envelopes(ids)])
    await kafka.produce(bootstrap, INTERACTIONS_INGEST, [encode(purchase(c, 1)) for c in ids])


def _spent(before: dict[str, dict[int, float]],
           after: dict[str, dict[int, float]]) -> dict[str, float]:
    """CPU seconds each part used between two readings; a process that
    started in between counts from zero (one that ended is not counted)."""
    return {part: sum(used - before.get(part, {}).get(pid, 0.0) for pid, used in procs.items())
            for part, procs in after.items()}


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (inf stays inf)."""
    if not ordered:
        return math.inf
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass
class Trip:
    """One paced publish-and-read-back: latencies in ms, inf when missing."""

    latencies: list[float] = field(default_factory=list)
    arrived: int = 0
    duplicates: int = 0
    publish_rate: float = 0.0
    seconds: float = 0.0

    def figures(self, prefix: str) -> dict[str, float]:
        lat = self.latencies
        return {f"{prefix} p50 (ms)": percentile(lat, 0.50),
                f"{prefix} p95 (ms)": percentile(lat, 0.95),
                f"{prefix} p99 (ms)": percentile(lat, 0.99),
                f"{prefix} max (ms)": lat[-1] if lat else math.inf}


async def paced_trip(bootstrap: str, records: list[KafkaRecord], publish_to: str,
                     read_from: str, ce_type: bytes | None, rate: int,
                     grace_s: float) -> Trip:
    """Publish ``records`` on ``publish_to`` at ``rate``/s and read ``read_from``
    (from its end, before the first publish) until a record keyed like each
    one arrived (of ``ce_type`` when given), or ``grace_s`` after the last
    publish."""
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                              enable_auto_commit=False, auto_offset_reset="latest",
                              fetch_max_wait_ms=5)
    await reader.start()
    producer: Any = None
    reading: asyncio.Task[None] | None = None
    try:
        parts = [TopicPartition(read_from, p)
                 for p in sorted(reader.partitions_for_topic(read_from) or ())]
        if not parts:
            raise RuntimeError(f"no partitions of {read_from}")
        reader.assign(parts)
        await reader.seek_to_end(*parts)
        for tp in parts:
            await reader.position(tp)
        wanted = {r.key for r in records}
        sent: dict[bytes, float] = {}
        got: dict[bytes, float] = {}
        trip = Trip()

        async def read() -> None:
            while len(got) < len(wanted):
                batch = await reader.getmany(timeout_ms=5, max_records=5000)
                now = time.perf_counter()
                for part in batch.values():
                    for r in part:
                        if r.key not in wanted or (
                                ce_type is not None
                                and dict(r.headers).get("ce_type") != ce_type):
                            continue
                        if r.key in got:
                            trip.duplicates += 1
                        else:
                            got[r.key] = now

        reading = asyncio.create_task(read(), name="bench-latency-reader")
        producer = await kafka.start_producer(bootstrap)
        per_tick = max(1, round(rate * TICK_S))
        acks = []
        start = time.perf_counter()
        for tick, i in enumerate(range(0, len(records), per_tick)):
            delay = start + tick * TICK_S - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            for r in records[i:i + per_tick]:
                sent[r.key] = time.perf_counter()
                acks.append(await producer.send(publish_to, value=r.value, key=r.key,
                                                headers=r.headers))
        last_sent = time.perf_counter()
        await asyncio.gather(*acks)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reading),
                                   grace_s - (time.perf_counter() - last_sent))
        if reading.done():
            reading.result()
        # Offered rate over the span of the sends (n records, n - 1 gaps).
        span = last_sent - start
        trip.publish_rate = (len(records) - 1) / span if span > 0 else math.inf
        trip.arrived = len(got)
        trip.latencies = sorted((got[k] - t) * 1000 if k in got else math.inf
                                for k, t in sent.items())
        trip.seconds = (max(got.values()) if len(got) == len(sent)
                        else last_sent + grace_s) - start
        return trip
    finally:
        if reading is not None and not reading.done():
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
        if producer is not None:
            await producer.stop()
        await reader.stop()


@register
class LoyaltyLatency(Workload):
    name = "loyalty.latency"
    order = 45
    warm_up = False  # the untimed first purchases take the whole path already
    summary = ("interactions + customers + loyalty as crm serve processes: a second purchase "
               "on the "
               "ingest topic at a steady rate until its loyalty.discount_issued is read back")
    baseline_summary = ("AIOKafkaProducer.send of the same records at the same rate to a topic "
                        "of their own, read back by the same reader (broker round trip)")
    target = "p99 under 100 ms at 1,000 purchases/s (product latency figures)"

    def _shape(self) -> tuple[int, int]:
        return (QUICK_RATE, QUICK_SECONDS) if self.ctx.quick else (RATE, SECONDS)

    def describe(self) -> str:
        rate, seconds = self._shape()
        return (f"interactions, customers and loyalty services ({self.ctx.replicas} crm serve "
                f"process(es) each, one database, one broker): {rate * seconds} purchases at "
                f"{rate}/s for {seconds}s, each a customer's second (one_time -> repeat -> "
                f"discount), timed from publish to the discount read on {LOYALTY}; a discount "
                f"missing {GRACE_S:.0f}s after the last publish counts as infinitely late")

    def _deadline(self, count: int) -> float:
        """A guard against hanging, not a timing check."""
        return time.monotonic() + 120.0 + count / 50

    async def setup(self) -> None:
        rate, seconds = self._shape()
        self.rate = rate
        m = self.customers = rate * seconds
        self.counts["end-to-end"] = m
        self.stack: Stack = await self.resources.enter_async_context(
            fresh_stack(self.ctx, "latency"))
        for spec in SPECS:
            await self.stack.migrate(spec)
        conn = await self.stack.connect()
        self.resources.push_async_callback(conn.close)
        self.conn: asyncpg.Connection = conn
        started = time.perf_counter()
        self.ids = [str(c) for c in await seed_customers(conn, m,
                                                         consents=("promotional_offers",))]
        self.services = list((await purchase_path(self.stack, self.resources,
                                                  self.ctx.replicas)).values())
        self.excluded["set-up: three services started"] = time.perf_counter() - started
        started = time.perf_counter()
        await first_purchases(self.stack.bootstrap_servers, self.ids)
        await self._until_settled(m)
        self.excluded["set-up: first purchases through the whole path"] = (
            time.perf_counter() - started)
        # The statistics autovacuum would have gathered by now in a running
        # deployment (about once a minute), on the round's own database.
        await self.conn.execute("ANALYZE")
        await kafka.create_topic(self.stack.bootstrap_servers, RAW_TOPIC,
                                 self.stack.settings.partitions_for(INTERACTIONS_INGEST))
        self.records = [encode(purchase(c, 2)) for c in self.ids]

    async def _until_settled(self, m: int) -> None:
        """Until loyalty knows all ``m`` customers as consenting one-time buyers
        and no service has an unsent outbox row."""
        ready = (f"SELECT count(*) FROM {LOYALTY_SPEC.schema}.customer_view "
                 "WHERE stage = 'one_time' AND promotional_consent")
        unsent = " OR ".join(f"EXISTS (SELECT 1 FROM {s.schema}.outbox WHERE sent_at IS NULL)"
                             for s in SPECS)
        deadline = self._deadline(m)
        while True:
            for service in self.services:
                service.check_running()
            known = cast(int, await self.conn.fetchval(ready))
            if known >= m and not await self.conn.fetchval(f"SELECT {unsent}"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} set-up: {known} of {m} customers one-time "
                                   "buyers with consent in loyalty, or outboxes not drained")
            await asyncio.sleep(POLL_S)
        await asyncio.sleep(0.5)  # let the consumers go idle again

    async def baseline(self) -> float:
        before = await self._cpu_used()
        trip = await paced_trip(self.stack.bootstrap_servers, self.records, RAW_TOPIC,
                                RAW_TOPIC, None, self.rate, GRACE_S)
        self.raw_cpu = _spent(before, await self._cpu_used())
        self.raw = trip
        return trip.seconds

    async def product(self) -> Phases:
        self.trip_started_ms = int(time.time() * 1000)
        self.commits_before = await self._commits()
        before = await self._cpu_used()
        trip = await paced_trip(self.stack.bootstrap_servers, self.records,
                                INTERACTIONS_INGEST, LOYALTY, DISCOUNT_ISSUED, self.rate,
                                GRACE_S)
        self.product_cpu = _spent(before, await self._cpu_used())
        # Backends report their counts at most once a second.
        await asyncio.sleep(STATS_FLUSH_S)
        self.commits = await self._commits() - self.commits_before
        for service in self.services:
            service.check_running()
        self.trip = trip
        return {"end-to-end": trip.seconds}

    async def _commits(self) -> int:
        """Transactions committed in the round's database so far."""
        return cast(int, await self.conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"))

    async def _cpu_used(self) -> dict[str, dict[int, float]]:
        """CPU seconds used so far by each part of the round, per process."""
        parts: dict[str, dict[int, float]] = {"this process (publisher and reader)": {
            0: sum(os.times()[:2])}}
        for service in self.services:
            used = service.cpu_seconds()
            if used is not None:
                parts[f"the {service.spec.name} process(es)"] = {0: used}
        pid = self.stack.broker_pid
        if pid is not None and (used := process_cpu_seconds(pid)) is not None:
            parts["the broker"] = {pid: used}
        backends = await backends_cpu(self.conn)
        if backends:
            parts["the database's backends"] = backends
        return parts

    async def verify(self) -> None:
        trip, raw, m = self.trip, self.raw, self.customers
        for part, seconds in self.product_cpu.items():
            self.figures[f"product: CPU per purchase (µs, {part})"] = seconds / m * 1e6
        self.figures["product: CPU per purchase (µs, all of the above)"] = sum(
            self.product_cpu.values()) / m * 1e6
        for part, seconds in self.raw_cpu.items():
            self.figures[f"raw: CPU per record (µs, {part})"] = seconds / m * 1e6
        self.figures["product: database transactions per purchase"] = self.commits / m
        self.figures["offered rate (purchases/s)"] = self.rate
        self.figures["product: publish rate achieved (/s)"] = trip.publish_rate
        self.figures[f"product: discounts read (of {m})"] = trip.arrived
        self.figures |= trip.figures("product: purchase -> discount")
        self.figures["raw: publish rate achieved (/s)"] = raw.publish_rate
        self.figures[f"raw: records read back (of {m})"] = raw.arrived
        self.figures |= raw.figures("raw: produce -> consume")
        row = await self.conn.fetchrow(
            f"""SELECT (SELECT count(*) - count(DISTINCT customer_id)
                          FROM {LOYALTY_SPEC.schema}.discounts) AS twice,
                       (SELECT count(*) FROM {LOYALTY_SPEC.schema}.dead_letters)
                     + (SELECT count(*) FROM {CUSTOMERS_SPEC.schema}.dead_letters)
                     + (SELECT count(*) FROM {INTERACTIONS_SPEC.schema}.dead_letters) AS dead""")
        assert row is not None
        if trip.duplicates or raw.duplicates or row["twice"] or row["dead"]:
            raise RuntimeError(f"{self.name}: {trip.duplicates} duplicate discount records "
                               f"read, {raw.duplicates} duplicate raw records, {row['twice']} "
                               f"customers with two discounts, {row['dead']} dead letters")
        if raw.arrived != m:
            raise RuntimeError(f"{self.name} baseline: {raw.arrived} of {m} records read back")
        self.figures["product: discounts stored at the check"] = await self.conn.fetchval(
            f"SELECT count(*) FROM {LOYALTY_SPEC.schema}.discounts")
        # Where the time went (figures, not checks): each hop's percentiles.
        await self.conn.execute("""CREATE TEMP TABLE bench_hop_records (
                                     key bytea, type text, event_id text, ts timestamptz)""")
        await self.conn.copy_records_to_table(
            "bench_hop_records", records=await hop_records(
                self.stack.bootstrap_servers, self.trip_started_ms))
        for r in await self.conn.fetch(HOPS_SQL):
            name = f"product: hop {r['hop']} ({HOPS[r['hop'] - 1]})"
            self.figures[f"{name} p50 (ms)"] = float(r["p50"])
            self.figures[f"{name} p99 (ms)"] = float(r["p99"])
