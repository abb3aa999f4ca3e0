"""Contact ingest: N ``contact.received`` events consumed by the real
interactions service, stored and published again as ``interaction.recorded``,
against a plain consumer plus COPY and a plain producer.

Set-up (untimed), per round: a fresh database and broker (see
:mod:`bench.service`), the service's migrations, and N ``contact.received``
events on ``crm.interactions.ingest.v1``, each with a customer id of its own
(seeded in the customers service's tables with COPY, and written into the
interactions service's ``known_customers`` beforehand as
``customer.registered`` events would have, so the service never calls the
customers service to register them) and a mix of
channels, directions, outcomes and kinds that do not open cases (inquiry,
suggestion, doubt, purchase with an amount in EUR, follow_up). Proactive
contacts pass the contact gate: the customers service runs beside the
product (its CPU is a figure of its own), as deployed.

* product: the interactions service as deployed, ``--replicas`` processes
  (default one) of ``crm serve interactions`` (its two consumers, outbox
  relay, scheduler and gRPC server all running), from the start of its
  ingest consumer's first transaction (the group join is a note; both ends
  on the database's clock) until
  ``interactions.interactions`` holds N rows and then no outbox row is unsent
  (a contact's outbox row commits with it, and ``sent_at`` is set once the
  broker acknowledged the record), polled at the pace of the progress
  (:mod:`bench.pacing`, every 10 ms near the end) with cheap queries (a
  count of sent rows would cost the database more than the product's own
  work). Each consumed batch is one transaction: inbox claim, one bulk
  INSERT of the contacts (``record_contacts``), one outbox row per contact;
  the relay publishes the rows on ``crm.interactions.v1``;
* baseline: the consume workload's raw baseline on the same topic (an
  ``AIOKafkaConsumer`` without a group and ``copy_records_to_table`` of
  ``(event_id, customer_id, amount_minor)`` per batch into a plain table of the
  same database), then ``AIOKafkaProducer.send`` of N pre-encoded
  ``interaction.recorded`` records (and a ``customer.dissatisfaction_signal``
  per negative contact, as the product publishes) to a topic of its own,
  awaiting every ack.
  The two parts run one after the other and their sum is the baseline (the
  product overlaps consuming and publishing, so the sum is the lenient
  baseline); each part is printed as a figure. The raw records go out in
  contact order, spread over every partition; the relay's batches follow the
  consumer's, which mostly hold one ingest partition, and the key (the
  customer id) is kept, so one relay batch mostly fills one partition.

The check reads ``crm.interactions.v1`` back: N records, N distinct event ids,
every one an ``interaction.recorded`` of a stored interaction.

The issue's target is at least half the raw baseline's throughput (ratio at
most 2.0); the harness prints the ratio and asserts nothing.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from bench import kafka
from bench.customers import seed_customers
from bench.events import KafkaRecord, encode
from bench.registry import Phases, Workload, register
from bench.service import (
    ServiceProcesses,
    Stack,
    check_rows_and_records,
    consumed_until,
    cpu_figure,
    fresh_stack,
)
from bench.workloads.consume import DDL, TABLE, copy_from_topic
from crm_contracts.interactions import (
    ContactReceived,
    DissatisfactionSignal,
    InteractionRecorded,
)
from crm_contracts.topics import INTERACTIONS, INTERACTIONS_INGEST
from crm_runtime.events import Envelope
from services.customers.app import SPEC as CUSTOMERS_SPEC
from services.interactions.app import SPEC
from services.interactions.domain import CHANNELS, DIRECTIONS, OUTCOMES

#: The service's schema (``ServiceSpec.schema`` of the interactions service).
SCHEMA = SPEC.schema
#: Kinds of contact that never open a case (so one contact = one row, one event).
KINDS = ("inquiry", "suggestion", "doubt", "purchase", "follow_up")
#: Schema of the baseline's plain table, in the round's database.
RAW_SCHEMA = "bench_raw"
#: Topic of the baseline's produce part, on the round's broker.
RAW_TOPIC = "bench.raw.interactions"
#: Pause between two counts of the service's tables.
POLL_S = 0.01
SOURCE = "/crm/bench"


def contact_envelopes(customers: list[uuid.UUID]) -> list[Envelope]:
    """A ``contact.received`` event of each customer; kind, channel,
    direction and outcome vary independently."""
    start = datetime.now(UTC) - timedelta(days=1)
    envelopes: list[Envelope] = []
    for i, customer_id in enumerate(customers):
        customer = str(customer_id)
        kind = KINDS[i % len(KINDS)]
        channel = CHANNELS[(i // len(KINDS)) % len(CHANNELS)]
        purchase = kind == "purchase"
        envelopes.append(Envelope(data=ContactReceived(
            idempotency_key=f"bench-{i:07d}-{uuid.uuid4().hex[:8]}", customer_id=customer,
            channel=channel, direction=DIRECTIONS[(i // 25) % len(DIRECTIONS)], kind=kind,
            touchpoint=f"touchpoint-{i % 7}", agent=f"agent-{i % 40}", unit=f"unit-{i % 3}",
            occurred_at=start + timedelta(milliseconds=i),
            outcome=OUTCOMES[(i // 50) % len(OUTCOMES)],
            notes=f"bench contact {i} by {channel}",
            amount_minor=1000 + i % 5000 if purchase else 0,
            currency="EUR" if purchase else ""), subject=customer, source=SOURCE))
    return envelopes


def recorded_records(contacts: list[Envelope]) -> list[KafkaRecord]:
    """What the service publishes for ``contacts``, pre-encoded, for the raw
    producer: one ``interaction.recorded`` each, and for a negative one its
    ``customer.dissatisfaction_signal``."""
    records = []
    for env in contacts:
        c = env.data
        assert isinstance(c, ContactReceived)
        interaction_id = str(uuid.uuid4())
        records.append(encode(Envelope(data=InteractionRecorded(
            interaction_id=interaction_id, customer_id=c.customer_id, channel=c.channel,
            direction=c.direction, kind=c.kind, occurred_at=c.occurred_at, outcome=c.outcome,
            touchpoint=c.touchpoint, unit=c.unit, amount_minor=c.amount_minor,
            currency=c.currency), subject=env.subject, source=SOURCE)))
        if c.outcome == "negative":
            records.append(encode(Envelope(data=DissatisfactionSignal(
                customer_id=c.customer_id, reason="negative_contact",
                occurred_at=c.occurred_at, interaction_id=interaction_id,
                touchpoint=c.touchpoint), subject=env.subject, source=SOURCE)))
    return records


def header(record: Any, name: str) -> str:
    return next((v.decode() for k, v in record.headers if k == name), "")


@register
class InteractionsIngest(Workload):
    name = "interactions.ingest"
    order = 35
    summary = ("interactions service (crm serve): contact.received on the ingest topic until "
               "every contact is stored and its interaction.recorded published")
    baseline_summary = ("AIOKafkaConsumer (no group) + asyncpg copy_records_to_table per batch "
                        "of the same records into a plain table, then AIOKafkaProducer.send of "
                        "N pre-encoded interaction.recorded records (sum of both)")
    target = "ratio at most 2.00x (at least half the raw baseline's throughput)"

    def describe(self) -> str:
        s = self.ctx.settings
        return (f"interactions service ({self.ctx.replicas} crm serve process(es), "
                f"consumer batches of up to "
                f"{s.consumer_batch_size}, relay of {s.relay_lanes} lanes, batches of "
                f"{s.relay_batch_size}) recording {self.events} contacts of "
                f"{len(KINDS)} kinds that open no case, until {SCHEMA}.interactions holds them "
                f"all and their {self.events} interaction.recorded events are acknowledged")

    def _deadline(self) -> float:
        """A guard against hanging, not a timing check."""
        return time.monotonic() + 120.0 + self.events / 50

    async def setup(self) -> None:
        self.stack: Stack = await self.resources.enter_async_context(
            fresh_stack(self.ctx, "ingest"))
        await self.stack.migrate(SPEC)
        await self.stack.migrate(CUSTOMERS_SPEC)
        conn = await self.stack.connect()
        self.resources.push_async_callback(conn.close)
        self.conn: asyncpg.Connection = conn
        contacts = contact_envelopes(await seed_customers(conn, self.events))
        self.keys = {e.data.idempotency_key for e in contacts
                     if isinstance(e.data, ContactReceived)}
        # Customers the service knows (customer.registered would have told it).
        await conn.execute(
            f"INSERT INTO {SCHEMA}.known_customers (customer_id) SELECT unnest($1::uuid[])",
            [e.data.customer_id for e in contacts if isinstance(e.data, ContactReceived)])
        bootstrap = self.stack.bootstrap_servers
        await kafka.produce(bootstrap, INTERACTIONS_INGEST, [encode(e) for e in contacts])
        self.raw_records = recorded_records(contacts)
        await kafka.create_topic(bootstrap, RAW_TOPIC,
                                 self.stack.settings.partitions_for(INTERACTIONS))
        self.raw_producer: Any = await kafka.start_producer(bootstrap)
        self.resources.push_async_callback(self.raw_producer.stop)
        async with conn.transaction():
            await conn.execute(f"CREATE SCHEMA {RAW_SCHEMA}")
            await conn.execute(f"SET LOCAL search_path TO {RAW_SCHEMA}")
            await conn.execute(DDL)
        self._copy_s = self._product_s = 0.0

    async def baseline(self) -> float:
        start_up, copy_s = await copy_from_topic(
            self.stack.settings, self.stack.bootstrap_servers, INTERACTIONS_INGEST, self.conn,
            schema=RAW_SCHEMA, fields=("customer_id", "amount_minor"), expect=self.events,
            deadline=self._deadline())
        started = time.perf_counter()
        await kafka.send_all(self.raw_producer, RAW_TOPIC, self.raw_records)
        produce_s = time.perf_counter() - started
        self.excluded["baseline consumer start (no group)"] = start_up
        self.figures["baseline consume + COPY (ms)"] = copy_s * 1000
        self.figures["baseline produce (ms)"] = produce_s * 1000
        self._copy_s = copy_s
        return copy_s + produce_s

    async def product(self) -> Phases:
        # Quiet hours off for the round (a night-time run would hold the
        # proactive contacts back); a CRM_QUIET_HOURS_* the user set wins.
        quiet = {"quiet_hours_start", "quiet_hours_end"}
        settings = self.stack.settings.model_copy(update={
            f: "00:00" for f in quiet - self.ctx.settings.model_fields_set})
        customers = ServiceProcesses(CUSTOMERS_SPEC, settings)
        started = time.perf_counter()
        await customers.start()
        self.excluded["product: the customers service's start-up (the contact gate)"] = (
            time.perf_counter() - started)
        gated = settings.model_copy(update={"customers_grpc_target": customers.target})
        service = ServiceProcesses(SPEC, gated, replicas=self.ctx.replicas)
        before = customers.cpu_seconds()
        try:
            seconds, start_up = await consumed_until(
                service, self.conn, f"crm-{SPEC.name}-ingest",
                count_sql=f"SELECT count(*) FROM {SCHEMA}.interactions",
                expected=self.events, what="contacts stored", published=True,
                deadline=self._deadline(), poll_s=POLL_S, broker_pid=self.stack.broker_pid)
        finally:
            after = customers.cpu_seconds()
            await service.stop()
            await customers.stop()
        if before is not None and after is not None:
            self.figures["product CPU per event (µs, the customers process: the contact "
                         "gate)"] = (after - before) / self.events * 1e6
        self.excluded["product start-up and ingest consumer group join"] = start_up
        cpu_figure(self.figures, service, self.events)
        self._product_s = seconds
        return {"ingest": seconds}

    async def verify(self) -> None:
        n = self.events
        published = len(self.raw_records)  # with the negative contacts' signals
        await check_rows_and_records(f"{self.name} baseline", self.conn,
                                     self.stack.bootstrap_servers, f"{RAW_SCHEMA}.{TABLE}",
                                     RAW_TOPIC, n, published)
        row = await self.conn.fetchrow(
            f"""SELECT (SELECT count(*) FROM {SCHEMA}.interactions) AS interactions,
                       (SELECT count(*) FROM {SCHEMA}.inbox) AS inbox,
                       (SELECT count(*) FROM {SCHEMA}.dead_letters) AS dead,
                       (SELECT count(*) FROM {SCHEMA}.cases) AS cases,
                       (SELECT count(*) FROM {SCHEMA}.outbox WHERE sent_at IS NULL) AS unsent""")
        assert row is not None
        # What was published is checked on the topic below.
        expected = {"interactions": n, "inbox": n, "dead": 0, "cases": 0, "unsent": 0}
        if dict(row) != expected:
            raise RuntimeError(f"{self.name}: {dict(row)}; expected {expected}")
        stored = await self.conn.fetch(
            f"SELECT interaction_id::text AS id, idempotency_key FROM {SCHEMA}.interactions")
        if {r["idempotency_key"] for r in stored} != self.keys:
            raise RuntimeError(f"{self.name}: the stored idempotency keys are not the "
                               f"{n} produced ones")
        records = await kafka.read_records(self.stack.bootstrap_servers, INTERACTIONS,
                                           expect=published)
        ids = [header(r, "ce_id") for r in records]
        types = {header(r, "ce_type") for r in records}
        recorded = {json.loads(r.value)["interaction_id"] for r in records
                    if header(r, "ce_type") == InteractionRecorded.event_type}
        kinds = {InteractionRecorded.event_type, DissatisfactionSignal.event_type}
        if (len(records), len(set(ids)), len(recorded)) != (published, published, n) or (
                not types <= kinds):
            raise RuntimeError(f"{self.name}: {len(records)} records on {INTERACTIONS}, "
                               f"{len(set(ids))} distinct event ids, types {sorted(types)}; "
                               f"expected {published} distinct, {n} interaction.recorded")
        if recorded != {r["id"] for r in stored}:
            raise RuntimeError(f"{self.name}: the interaction.recorded records on "
                               f"{INTERACTIONS} are not those of the stored interactions")
        if self._copy_s > 0:
            self.figures["ratio to the consume + COPY part alone (x)"] = (
                self._product_s / self._copy_s)
