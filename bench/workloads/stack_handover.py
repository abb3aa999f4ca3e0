"""Hand-overs: how long each consumer group stops while replicas come and go.

The three services run as deployed, two ``crm serve`` processes each (or
``--replicas``, at least two), under a steady load of purchases, one per
customer, each a customer's second (one_time -> repeat -> a discount from
the shipped rule ``repeat-buyer-discount``). The load runs in windows of
:data:`WINDOW_S` seconds:

1. steady: nothing happens;
2. three graceful restarts, one service per window (interactions, customers,
   loyalty): the oldest replica gets SIGTERM, as a rolling deploy sends it;
   once it exited a new one starts in its place and joins the groups;
3. three crashes, one service per window: the oldest replica gets SIGKILL,
   and a new one starts at once.

Each consumer transaction stamps its inbox rows' ``processed_at`` (the
transaction's start, on the database's clock), so the inbox shows when a
group applied something. Per consumer group and window, the workload prints
the longest gap between consecutive ``processed_at`` values of the whole
group and of any one partition (a group's records are keyed by customer, and
every topic has the same partition count, so an event's partition follows
from its key): a rebalance stops the whole group, a killed member's
partitions stop until the broker gives up on it. A gap is counted in the
window it starts in, so a downstream group shows an upstream group's stall
in the upstream's window, not in its own. The targets: under 2 s for a
graceful restart, under the session timeout plus 2 s for a crash, and no
multi-second gap in the steady window.

* product: the paced load with the restarts and crashes, until every
  discount is stored and every outbox drained; the row's seconds run from the
  first publish to then;
* baseline: the same records published the same way on a topic of their own
  (the broker's pace alone; it shows the publisher kept the rate).

The check: every customer got exactly one discount (loyalty's ``discounts``
and its outbox's ``loyalty.discount_issued`` rows), no dead letters.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import cast

import asyncpg
from murmurhash2 import murmurhash2

from bench import kafka
from bench.customers import seed_customers
from bench.events import KafkaRecord, encode
from bench.registry import Phases, Workload, register
from bench.runner import progress
from bench.service import Stack, fresh_stack
from bench.workloads.loyalty_latency import first_purchases, purchase, purchase_path
from crm_contracts.topics import INTERACTIONS_INGEST
from crm_runtime.outbox import KAFKA_MURMUR2_SEED
from services.customers.app import SPEC as CUSTOMERS_SPEC
from services.interactions.app import SPEC as INTERACTIONS_SPEC
from services.loyalty.app import SPEC as LOYALTY_SPEC

#: Purchases a second, and seconds per window (full run and --quick).
RATE, WINDOW_S = 200, 10.0
QUICK_RATE, QUICK_WINDOW_S = 100, 8.0
#: Publishing tick.
TICK_S = 0.01
#: The services in the order they are restarted (and then killed).
SPECS = (INTERACTIONS_SPEC, CUSTOMERS_SPEC, LOYALTY_SPEC)
#: The first seconds of the steady window are left out (the consumers wake
#: from idle and the first batches are small).
SETTLE_S = 1.0
RAW_TOPIC = "bench.raw.handover"
POLL_S = 0.1
#: Where the round's broker writes its log, if anywhere (to read a hand-over
#: from the broker's side).
BROKER_LOG = Path(os.environ["BENCH_BROKER_LOG"]) if os.environ.get("BENCH_BROKER_LOG") else None


@dataclass(frozen=True)
class Window:
    """One span of the load, from ``start`` (database clock) to the next
    window's start; ``name`` says what happened at its start."""

    name: str
    start: datetime
    #: Seconds the replica took to exit after its signal (0 when none).
    exit_s: float = 0.0


def partition_of(key: bytes, partitions: int) -> int:
    """The partition the Java-compatible partitioner gives ``key``."""
    return (murmurhash2(key, KAFKA_MURMUR2_SEED) & 0x7FFFFFFF) % partitions


def longest_gaps(stamps: Sequence[datetime], bounds: Sequence[datetime]) -> list[float]:
    """The longest gap in seconds between consecutive distinct ``stamps``
    (ascending) for each window ``bounds[i]`` .. ``bounds[i + 1]`` (the last
    open-ended), counted in the window the gap starts in; 0 where none."""
    longest = [0.0] * (len(bounds) - 1)
    for a, b in itertools.pairwise(stamps):
        i = bisect.bisect_right(bounds, a) - 1
        if 0 <= i < len(longest):
            longest[i] = max(longest[i], (b - a).total_seconds())
    return longest


async def paced_publish(bootstrap: str, topic: str, records: list[KafkaRecord],
                        rate: int) -> float:
    """Publish ``records`` on ``topic`` at ``rate``/s; returns the achieved rate."""
    producer = await kafka.start_producer(bootstrap)
    try:
        per_tick = max(1, round(rate * TICK_S))
        acks = []
        start = time.perf_counter()
        for tick, i in enumerate(range(0, len(records), per_tick)):
            delay = start + tick * TICK_S - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            for r in records[i:i + per_tick]:
                acks.append(await producer.send(topic, value=r.value, key=r.key,
                                                headers=r.headers))
        span = time.perf_counter() - start
        await asyncio.gather(*acks)
        return (len(records) - 1) / span if span > 0 else float("inf")
    finally:
        await producer.stop()


@register
class StackHandover(Workload):
    name = "stack.handover"
    order = 47
    warm_up = False
    summary = ("interactions + customers + loyalty, 2+ crm serve processes each, under a "
               "steady purchase load: one graceful restart and one crash of a replica per "
               "service; the longest gap per consumer group from the inbox's processed_at")
    baseline_summary = ("AIOKafkaProducer.send of the same records at the same rate to a topic "
                        "of their own (the publisher's pace)")
    target = ("graceful restart: every group's longest gap under 2 s; crash: under the session "
              "timeout + 2 s; steady: no multi-second gap")

    def _shape(self) -> tuple[int, float]:
        return (QUICK_RATE, QUICK_WINDOW_S) if self.ctx.quick else (RATE, WINDOW_S)

    @property
    def replicas(self) -> int:
        return max(2, self.ctx.replicas)

    def describe(self) -> str:
        rate, window = self._shape()
        return (f"interactions, customers and loyalty ({self.replicas} crm serve processes "
                f"each): purchases at {rate}/s in {1 + 2 * len(SPECS)} windows of {window:.0f}s "
                "(steady; a SIGTERM restart of one replica of each service in turn; a SIGKILL "
                "of one of each in turn), longest gap between inbox processed_at per group")

    async def setup(self) -> None:
        rate, window = self._shape()
        self.rate, self.window = rate, window
        m = self.customers = int(rate * window * (1 + 2 * len(SPECS)))
        self.counts["load"] = m
        self.stack: Stack = await self.resources.enter_async_context(
            fresh_stack(self.ctx, "handover", broker_log=BROKER_LOG))
        for spec in SPECS:
            await self.stack.migrate(spec)
        conn = await self.stack.connect()
        self.resources.push_async_callback(conn.close)
        self.conn: asyncpg.Connection = conn
        started = time.perf_counter()
        self.ids = [str(c) for c in await seed_customers(conn, m,
                                                         consents=("promotional_offers",))]
        self.partitions = self.stack.settings.partitions_for(INTERACTIONS_INGEST)
        self.services = await purchase_path(self.stack, self.resources, self.replicas)
        self.excluded["set-up: three services started"] = time.perf_counter() - started
        started = time.perf_counter()
        bootstrap = self.stack.bootstrap_servers
        await first_purchases(bootstrap, self.ids)
        await self._until(f"SELECT count(*) FROM {LOYALTY_SPEC.schema}.customer_view "
                          "WHERE stage = 'one_time' AND promotional_consent", m,
                          "customers one-time buyers with consent in loyalty")
        self.excluded["set-up: first purchases through the whole path"] = (
            time.perf_counter() - started)
        await self.conn.execute("ANALYZE")
        await kafka.create_topic(bootstrap, RAW_TOPIC, self.partitions)
        envelopes = [purchase(c, 2) for c in self.ids]
        #: Partition of each purchase's event id (the interactions group's inbox rows).
        self.purchase_partitions = {e.id: partition_of(e.subject.encode(), self.partitions)
                                    for e in envelopes}
        self.records = [encode(e) for e in envelopes]
        await asyncio.sleep(1.0)  # let the consumers go idle again

    async def _until(self, count_sql: str, m: int, what: str) -> None:
        """Until ``count_sql`` counts ``m`` and no outbox has an unsent row."""
        unsent = " OR ".join(f"EXISTS (SELECT 1 FROM {s.schema}.outbox WHERE sent_at IS NULL)"
                             for s in SPECS)
        deadline = time.monotonic() + 180.0 + m / 50
        while True:
            for service in self.services.values():
                service.check_running()
            done = cast(int, await self.conn.fetchval(count_sql))
            if done >= m and not await self.conn.fetchval(f"SELECT {unsent}"):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: {done} of {m} {what}, or outboxes not "
                                   "drained")
            await asyncio.sleep(POLL_S)

    async def baseline(self) -> float:
        started = time.perf_counter()
        self.raw_rate = await paced_publish(self.stack.bootstrap_servers, RAW_TOPIC,
                                            self.records, self.rate)
        return time.perf_counter() - started

    async def _now(self) -> datetime:
        return cast(datetime, await self.conn.fetchval("SELECT clock_timestamp()"))

    async def _hand_overs(self, t0: float) -> list[Window]:
        """The windows' actions, each at its time after ``t0`` (perf_counter)."""
        windows = [Window("steady", await self._now())]
        plan = [(f"SIGTERM restart of {s.name}", s.name, False) for s in SPECS]
        plan += [(f"SIGKILL of {s.name}", s.name, True) for s in SPECS]
        for i, (label, name, kill) in enumerate(plan, start=1):
            await asyncio.sleep(max(0.0, t0 + i * self.window - time.perf_counter()))
            start = await self._now()
            took = await self.services[name].replace_oldest(kill=kill)
            windows.append(Window(label, start, took))
            progress(f"  {start:%H:%M:%S.%f}: {label} (exited after {took:.1f}s)")
        return windows

    async def product(self) -> Phases:
        started = time.perf_counter()
        self.first = await self._now()
        publishing = asyncio.create_task(paced_publish(
            self.stack.bootstrap_servers, INTERACTIONS_INGEST, self.records, self.rate))
        self.windows = await self._hand_overs(started)
        self.publish_rate = await publishing
        self.last = await self._now()
        await self._until(f"SELECT count(*) FROM {LOYALTY_SPEC.schema}.discounts", self.customers,
                          "discounts stored")
        return {"load": time.perf_counter() - started}

    async def _stamps(self) -> dict[str, dict[int | None, list[datetime]]]:
        """Each consumer group's distinct ``processed_at`` values of this load,
        ascending, in all (key None) and per partition."""
        partition_of_event = dict(self.purchase_partitions)
        for spec in SPECS:
            for r in await self.conn.fetch(
                    f"SELECT event_id, message_key FROM {spec.schema}.outbox "
                    "WHERE created_at >= $1 AND message_key IS NOT NULL", self.first):
                partition_of_event[r["event_id"]] = partition_of(bytes(r["message_key"]),
                                                                 self.partitions)
        stamps: dict[str, dict[int | None, set[datetime]]] = defaultdict(
            lambda: defaultdict(set))
        for spec in SPECS:
            for r in await self.conn.fetch(
                    f"SELECT consumer_group, event_id, processed_at FROM {spec.schema}.inbox "
                    "WHERE processed_at >= $1", self.first):
                group = stamps[r["consumer_group"]]
                group[None].add(r["processed_at"])
                part = partition_of_event.get(r["event_id"])
                if part is not None:
                    group[part].add(r["processed_at"])
        return {g: {p: sorted(s) for p, s in parts.items()} for g, parts in stamps.items()}

    async def verify(self) -> None:
        m = self.customers
        self._gap_figures(await self._stamps())
        row = await self.conn.fetchrow(
            f"""SELECT (SELECT count(*) FROM {LOYALTY_SPEC.schema}.discounts) AS discounts,
                       (SELECT count(DISTINCT customer_id)
                          FROM {LOYALTY_SPEC.schema}.discounts) AS customers,
                       (SELECT count(*) FROM {LOYALTY_SPEC.schema}.dead_letters)
                     + (SELECT count(*) FROM {CUSTOMERS_SPEC.schema}.dead_letters)
                     + (SELECT count(*) FROM {INTERACTIONS_SPEC.schema}.dead_letters) AS dead""")
        assert row is not None
        if not (row["discounts"] == row["customers"] == m) or row["dead"]:
            raise RuntimeError(f"{self.name}: {row['discounts']} discounts for "
                               f"{row['customers']} customers, {row['dead']} dead letters; "
                               f"expected {m} customers with one discount each, no dead letters")

    def _gap_figures(self, stamps: dict[str, dict[int | None, list[datetime]]]) -> None:
        """The rates, the exit times and each group's longest gaps per window."""
        self.figures["offered rate (purchases/s)"] = self.rate
        self.figures["product: publish rate achieved (/s)"] = self.publish_rate
        self.figures["raw: publish rate achieved (/s)"] = self.raw_rate
        settings = self.stack.settings
        self.figures["session timeout (s)"] = settings.consumer_session_timeout_ms / 1000
        for w in self.windows[1:]:
            self.figures[f"{w.name}: seconds to exit"] = w.exit_s
        bounds = [w.start for w in self.windows]
        bounds[0] += timedelta(seconds=SETTLE_S)
        bounds.append(self.last)
        for group, parts in sorted(stamps.items()):
            whole = longest_gaps(parts[None], bounds)
            worst = [max(col) for col in zip(*(longest_gaps(s, bounds)
                                               for p, s in parts.items() if p is not None),
                                             strict=True)] if len(parts) > 1 else whole
            for w, g, p in zip(self.windows, whole, worst, strict=True):
                self.figures[f"{group}: longest gap, {w.name} (s, whole group)"] = g
                self.figures[f"{group}: longest gap, {w.name} (s, any one partition)"] = p
            longest = sorted(itertools.pairwise(parts[None]), key=lambda ab: ab[0] - ab[1])[:3]
            progress(f"  {group}: longest gaps " + ", ".join(
                f"{(b - a).total_seconds():.1f}s from {a:%H:%M:%S.%f}"[:-3] for a, b in longest))
