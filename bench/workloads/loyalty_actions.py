"""Loyalty actions: N ``customer.stage_changed`` (one_time -> repeat) events
consumed by the real loyalty service, each turned by the shipped rules
(``services/loyalty/rules.yaml``, rule ``repeat-buyer-discount``, purpose
promotional) into a discount published on ``crm.loyalty.v1``, against a plain
consumer plus COPY plus a plain producer.

Set-up (untimed), per round: a fresh database and broker (see
:mod:`bench.service`); N customers stored in the customers service's tables
with COPY, each having granted ``promotional_offers`` (its contact gate
decides every discount), and made known to loyalty the way the customers
service would: a ``customer.registered`` and a
``customer.consent_changed`` (``promotional_offers`` granted) each on
``crm.customers.v1``, consumed by the loyalty service run once in set-up
until its ``customer_view`` holds all N with promotional consent and its
outbox is drained (registration schedules the welcome follow-up); the service
is then stopped (its group committed the offsets), the database is
ANALYZEd (as autovacuum would have by then in a running deployment), and the
N trigger events are produced on ``crm.customers.v1``, one per customer.

* product: the loyalty service as deployed, ``--replicas`` processes (default
  one) of ``crm serve loyalty``, started again (consumer, outbox relay,
  scheduler and gRPC server all running), beside one process of the
  customers service (``crm serve customers``, started first: loyalty asks
  its contact gate, ``ReserveContacts``, for each discount), from the start
  of its consumer's
  first transaction (the group join is a note; both ends on the database's
  clock) until ``loyalty.discounts`` holds N rows and no outbox row is
  unsent (each discount's ``loyalty.discount_issued`` commits with it, and
  ``sent_at`` is set once the broker acknowledged it), polled at the pace of
  the progress (:mod:`bench.pacing`, every 10 ms near the end).
  Each consumed run is one unit of work: lock and load the customers' views
  and what the trust rules consult, match the rules, ask the contact gate
  (one call per discount, in the transaction), record the action, store the
  discount with a random code, schedule its expiry notice, one outbox row;
* baseline: the same N trigger records on a topic of its own, read by an
  ``AIOKafkaConsumer`` without a group; per batch ``copy_records_to_table`` of
  ``(event_id, customer_id, purchase_count)`` into a plain table of the same
  database, then ``AIOKafkaProducer.send`` of one pre-encoded
  ``loyalty.discount_issued`` record per input to a topic of its own, awaiting
  the batch's acks.

* runtime floor (a figure below the table, not a table row): the same
  trigger records (the baseline's topic) consumed by :mod:`bench.floor`, a
  service on the same shared runtime and settings (inbox, one transaction
  per batch, outbox, relay) whose handler only COPYs the baseline's row and
  queues one ``loyalty.discount_issued`` per input in the outbox, timed like
  the product, after it. Its ratio to the baseline is what the mandated
  reliability patterns cost before any loyalty rule runs; the product's
  ratio to the floor is what loyalty's domain work adds.

Each of the three also prints its CPU per event: its client process(es),
the database's backends and the broker (on two cores, half their sum is a
bound on the wall time per event that no overlap gets under); the product
also the customers process's (the contact gate's calls).

The check: exactly one discount per customer (of that rule, its action
performed, nothing suppressed, no dead letter), and ``crm.loyalty.v1`` holds
exactly one ``loyalty.discount_issued`` per customer, each with an id of its own.
The issue's target is at least half the raw baseline's throughput (ratio at
most 2.0); the harness prints the ratio and asserts nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg
from aiokafka import AIOKafkaConsumer

from bench import floor, kafka
from bench.customers import seed_customers
from bench.events import KafkaRecord, encode
from bench.registry import Phases, Workload, register
from bench.service import (
    ServiceProcesses,
    Stack,
    check_rows_and_records,
    consumed_until,
    cpu_figure,
    cpu_figures,
    fresh_stack,
    process_cpu_seconds,
)
from bench.workloads.consume import COLUMNS, DDL, MIGRATION, TABLE
from crm_contracts.customers import ConsentChanged, CustomerRegistered, StageChanged
from crm_contracts.loyalty import DiscountIssued
from crm_contracts.topics import CUSTOMERS, LOYALTY
from crm_runtime.events import Envelope
from crm_runtime.migrations import migrate, migrations_for
from services.customers.app import SPEC as CUSTOMERS_SPEC
from services.loyalty.app import SPEC

#: The service's schema (``ServiceSpec.schema`` of the loyalty service).
SCHEMA = SPEC.schema
#: The shipped rule a one_time -> repeat stage change fires.
RULE = "repeat-buyer-discount"
#: Schema of the baseline's plain table, in the round's database.
RAW_SCHEMA = "bench_raw"
#: Topics of the baseline, on the round's broker.
RAW_IN = "bench.raw.loyalty.in"
RAW_OUT = "bench.raw.loyalty.out"
#: The runtime floor's service (:mod:`bench.floor`) reads RAW_IN, writes here.
FLOOR_OUT = "bench.floor.out"
#: Pause between two polls of the service's tables.
POLL_S = 0.01
SOURCE = "/crm/customers"
DISCOUNT_ISSUED = DiscountIssued.event_type


def known_customer_envelopes(ids: list[str]) -> list[Envelope]:
    """What the customers service tells loyalty about a new customer who
    consented to offers: ``customer.registered``, ``customer.consent_changed``."""
    out: list[Envelope] = []
    for cid in ids:
        out.append(Envelope(data=CustomerRegistered(
            customer_id=cid, stage="potential", preferred_channel="email", has_email=True,
            source="bench"), subject=cid, source=SOURCE))
        out.append(Envelope(data=ConsentChanged(
            customer_id=cid, purpose="promotional_offers", granted=True, source="bench"),
            subject=cid, source=SOURCE))
    return out


def repeat_envelopes(ids: list[str]) -> list[Envelope]:
    """One ``customer.stage_changed`` one_time -> repeat per customer."""
    return [Envelope(data=StageChanged(
        customer_id=cid, from_stage="one_time", to_stage="repeat", cause="purchase",
        causing_event_id=str(uuid.uuid4()), purchase_count=2), subject=cid, source=SOURCE)
        for cid in ids]


def discount_records(ids: list[str]) -> list[KafkaRecord]:
    """What loyalty publishes for ``ids``, pre-encoded, for the raw producer."""
    expires = datetime.now(UTC) + timedelta(days=30)
    return [encode(Envelope(data=DiscountIssued(
        discount_id=str(uuid.uuid4()), customer_id=cid, code=secrets.token_hex(8).upper(),
        kind="percent", percent=10, currency="EUR", expires_at=expires, rule_id=RULE,
        purpose="promotional", reason="Thank you for buying again"), subject=cid,
        source="/crm/loyalty")) for cid in ids]


def header(record: Any, name: str) -> str:
    return next((v.decode() for k, v in record.headers if k == name), "")


async def until(what: str, deadline: float, service: ServiceProcesses | None,
                check: Any) -> None:
    """Poll ``check()`` (a coroutine function returning a bool) until true."""
    while not await check():
        if service is not None:
            service.check_running()
        if time.monotonic() > deadline:
            raise RuntimeError(what)
        await asyncio.sleep(POLL_S)


@register
class LoyaltyActions(Workload):
    name = "loyalty.actions"
    order = 40
    summary = ("loyalty service (crm serve): customer.stage_changed one_time -> repeat until "
               "every repeat-buyer discount is stored and its event published")
    baseline_summary = ("AIOKafkaConsumer (no group) + asyncpg copy_records_to_table per batch "
                        "of the same records into a plain table + AIOKafkaProducer.send of one "
                        "pre-encoded loyalty.discount_issued per input, awaiting the batch's acks")
    target = "ratio at most 2.00x (at least half the raw baseline's throughput)"

    def describe(self) -> str:
        s = self.ctx.settings
        return (f"loyalty service ({self.ctx.replicas} crm serve process(es), "
                f"consumer batches of up to "
                f"{s.consumer_batch_size}, relay of {s.relay_lanes} lanes) turning "
                f"{self.events} stage changes of consenting customers into discounts (shipped "
                f"rule {RULE}) until {SCHEMA}.discounts holds them all and their "
                f"{DISCOUNT_ISSUED} events are acknowledged")

    def _deadline(self) -> float:
        """A guard against hanging, not a timing check."""
        return time.monotonic() + 120.0 + self.events / 50

    async def setup(self) -> None:
        self.stack: Stack = await self.resources.enter_async_context(
            fresh_stack(self.ctx, "loyalty"))
        await self.stack.migrate(SPEC)
        await self.stack.migrate(CUSTOMERS_SPEC)
        conn = await self.stack.connect()
        self.resources.push_async_callback(conn.close)
        self.conn: asyncpg.Connection = conn
        started = time.perf_counter()
        self.ids = [str(c) for c in await seed_customers(conn, self.events,
                                                         consents=("promotional_offers",))]
        self.excluded["set-up: the customers service's customers and consents (COPY)"] = (
            time.perf_counter() - started)
        bootstrap = self.stack.bootstrap_servers
        started = time.perf_counter()
        await self._make_known()
        self.excluded["set-up: loyalty learns the N customers (2N events)"] = (
            time.perf_counter() - started)
        triggers = [encode(e) for e in repeat_envelopes(self.ids)]
        await kafka.produce(bootstrap, CUSTOMERS, triggers)
        partitions = self.stack.settings.partitions_for(CUSTOMERS)
        await kafka.create_topic(bootstrap, RAW_IN, partitions)
        await kafka.create_topic(bootstrap, RAW_OUT, self.stack.settings.partitions_for(LOYALTY))
        await kafka.create_topic(bootstrap, FLOOR_OUT,
                                 self.stack.settings.partitions_for(LOYALTY))
        # Built here, not on import: bench.floor imports this package.
        self.floor_spec = floor.build(RAW_IN, FLOOR_OUT)
        await migrate(conn, self.floor_spec.schema, [*migrations_for(None), MIGRATION])
        await kafka.produce(bootstrap, RAW_IN, triggers)
        self.raw_records = discount_records(self.ids)
        async with conn.transaction():
            await conn.execute(f"CREATE SCHEMA {RAW_SCHEMA}")
            await conn.execute(f"SET LOCAL search_path TO {RAW_SCHEMA}")
            await conn.execute(DDL)

    async def _make_known(self) -> None:
        """Feed the registrations and consents through the service, untimed."""
        await kafka.produce(self.stack.bootstrap_servers, CUSTOMERS,
                            [encode(e) for e in known_customer_envelopes(self.ids)])
        service = ServiceProcesses(SPEC, self.stack.settings)
        known = f"SELECT count(*) FROM {SCHEMA}.customer_view WHERE promotional_consent"
        unsent = f"SELECT EXISTS (SELECT 1 FROM {SCHEMA}.outbox WHERE sent_at IS NULL)"

        async def all_known() -> bool:
            return cast(int, await self.conn.fetchval(known)) >= self.events

        async def drained() -> bool:
            return not await self.conn.fetchval(unsent)

        try:
            await service.start()
            deadline = self._deadline()
            await until(f"{self.name} set-up: loyalty did not learn {self.events} customers",
                        deadline, service, all_known)
            await until(f"{self.name} set-up: outbox not drained", deadline, service, drained)
        finally:
            await service.stop()
        # The statistics autovacuum would have gathered by now in a running
        # deployment (it runs about once a minute): without them every plan
        # of the product phase is a guess about tables filled seconds ago.
        await self.conn.execute("ANALYZE")  # the round's own database

    async def baseline(self) -> float:
        s = self.stack.settings
        bootstrap = self.stack.bootstrap_servers
        consumer = AIOKafkaConsumer(RAW_IN, bootstrap_servers=bootstrap, group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest")
        producer: Any = await kafka.start_producer(bootstrap)
        outputs = {r.key: r for r in self.raw_records}
        backend = await self.conn.fetchval("SELECT pg_backend_pid()")
        broker = self.stack.broker_pid

        def cpu_now() -> dict[str, float | None]:
            """CPU seconds so far of this process, its database backend and the broker."""
            return {"the bench process": sum(os.times()[:2]),
                    "the database's backends": process_cpu_seconds(backend, named="postgres"),
                    "the broker": process_cpu_seconds(broker) if broker else None}

        opened = time.perf_counter()
        await consumer.start()
        try:
            deadline = self._deadline()
            started: float | None = None
            done = 0
            while done < self.events:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} baseline: {done} of {self.events} done")
                batch = await consumer.getmany(timeout_ms=s.consumer_batch_wait_ms or 1,
                                               max_records=s.consumer_batch_size)
                if started is None:
                    started = time.perf_counter()
                    cpu_before = cpu_now()
                records = [r for part in batch.values() for r in part]
                if not records:
                    continue
                rows = []
                for r in records:
                    body = json.loads(r.value)
                    rows.append((header(r, "ce_id"), body["customer_id"],
                                 body["purchase_count"]))
                await self.conn.copy_records_to_table(TABLE, records=rows, columns=COLUMNS,
                                                      schema_name=RAW_SCHEMA)
                futures = []
                for r in records:
                    out = outputs[r.key]
                    futures.append(await producer.send(RAW_OUT, value=out.value, key=out.key,
                                                       headers=out.headers))
                await asyncio.gather(*futures)
                done += len(records)
            finished = time.perf_counter()
            cpu_after = cpu_now()
            cpu_figures(self.figures, "baseline", self.events, {
                label: None if before is None or after is None else after - before
                for (label, before), after in zip(cpu_before.items(), cpu_after.values(),
                                                  strict=True)})
        finally:
            await consumer.stop()
            await producer.stop()
        assert started is not None
        self.excluded["baseline consumer start (no group)"] = started - opened
        self.baseline_s = finished - started
        return self.baseline_s

    async def product(self) -> Phases:
        customers = ServiceProcesses(CUSTOMERS_SPEC, self.stack.settings)
        started = time.perf_counter()
        await customers.start()
        self.excluded["product: the customers service's start-up"] = (
            time.perf_counter() - started)
        try:
            gated = self.stack.settings.model_copy(
                update={"customers_grpc_target": customers.target})
            before = customers.cpu_seconds()
            self.product_s = await self._consumed(
                "product", ServiceProcesses(SPEC, gated, replicas=self.ctx.replicas),
                f"{SCHEMA}.discounts", "discounts issued")
            after = customers.cpu_seconds()
        finally:
            await customers.stop()
        if before is not None and after is not None:
            # Over the loyalty processes' start-up too, when customers idles.
            self.figures["product CPU per event (µs, the customers process: the contact "
                         "gate)"] = (after - before) / self.events * 1e6
        # The runtime floor, after the product (not part of its figure).
        self.floor_s = await self._consumed(
            "runtime floor", ServiceProcesses(self.floor_spec, self.stack.settings,
                                              replicas=self.ctx.replicas,
                                              module=("bench.floor", RAW_IN, FLOOR_OUT)),
            f"{self.floor_spec.schema}.{TABLE}", "rows and events")
        return {"actions": self.product_s}

    async def _consumed(self, part: str, service: ServiceProcesses, table: str,
                        what: str) -> float:
        """Run ``service`` until ``table`` holds a row per event and its
        outbox is drained; its seconds, its CPU as figures."""
        try:
            seconds, start_up = await consumed_until(
                service, self.conn, f"crm-{service.spec.name}",
                count_sql=f"SELECT count(*) FROM {table}", expected=self.events, what=what,
                published=True, deadline=self._deadline(), poll_s=POLL_S,
                broker_pid=self.stack.broker_pid)
        finally:
            await service.stop()
        self.excluded[f"{part} start-up and consumer group join"] = start_up
        cpu_figure(self.figures, service, self.events, part)
        return seconds

    async def verify(self) -> None:
        n = self.events
        self.figures["runtime floor seconds (bench.floor: inbox, COPY, outbox, relay)"] = (
            self.floor_s)
        self.figures["runtime floor ratio to the baseline"] = self.floor_s / self.baseline_s
        self.figures["product ratio to the runtime floor (loyalty's domain work)"] = (
            self.product_s / self.floor_s)
        bootstrap = self.stack.bootstrap_servers
        await check_rows_and_records(f"{self.name} runtime floor", self.conn, bootstrap,
                                     f"{self.floor_spec.schema}.{TABLE}", FLOOR_OUT, n)
        await check_rows_and_records(f"{self.name} baseline", self.conn, bootstrap,
                                     f"{RAW_SCHEMA}.{TABLE}", RAW_OUT, n)
        row = await self.conn.fetchrow(
            f"""SELECT (SELECT count(*) FROM {SCHEMA}.discounts) AS discounts,
                       (SELECT count(DISTINCT customer_id) FROM {SCHEMA}.discounts) AS customers,
                       (SELECT count(*) FROM {SCHEMA}.discounts
                         WHERE rule_id <> '{RULE}') AS other_rules,
                       (SELECT count(*) FROM {SCHEMA}.actions
                         WHERE rule_id = '{RULE}' AND outcome = 'performed') AS performed,
                       (SELECT count(*) FROM {SCHEMA}.actions
                         WHERE outcome <> 'performed') AS not_performed,
                       (SELECT count(*) FROM {SCHEMA}.dead_letters) AS dead,
                       (SELECT count(*) FROM {SCHEMA}.outbox WHERE sent_at IS NULL) AS unsent""")
        assert row is not None
        # What was published is checked on the topic below.
        expected = {"discounts": n, "customers": n, "other_rules": 0, "performed": n,
                    "not_performed": 0, "dead": 0, "unsent": 0}
        if dict(row) != expected:
            raise RuntimeError(f"{self.name}: {dict(row)}; expected {expected}")
        owners = {str(r["customer_id"]) for r in await self.conn.fetch(
            f"SELECT customer_id FROM {SCHEMA}.discounts")}
        if owners != set(self.ids):
            raise RuntimeError(f"{self.name}: the discounts are not for the {n} customers")
        # The topic also holds the welcome follow-ups registration scheduled (N).
        records = await kafka.read_records(self.stack.bootstrap_servers, LOYALTY, expect=2 * n)
        issued = [r for r in records if header(r, "ce_type") == DISCOUNT_ISSUED]
        keys = [r.key.decode() for r in issued]
        ids = {header(r, "ce_id") for r in issued}
        if len(issued) != n or set(keys) != set(self.ids) or len(ids) != n:
            raise RuntimeError(f"{self.name}: {len(issued)} {DISCOUNT_ISSUED} records on "
                               f"{LOYALTY} for {len(set(keys))} customers; expected exactly "
                               f"one per customer ({n}), each once")
