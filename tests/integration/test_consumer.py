"""The batched idempotent consumer over a real PostgreSQL and a real broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor

from crm_runtime import consumer as consumer_module
from crm_runtime import db, metrics
from crm_runtime.consumer import (
    ASSIGNORS,
    IDLE_OPTIONS,
    INBOX_COPY_FROM,
    EventConsumer,
    dlq_topic,
)
from crm_runtime.db import Conn, create_pool
from crm_runtime.events import Envelope
from crm_runtime.migrations import migrate, migrations_for
from crm_runtime.outbox import OutboxRelay
from crm_runtime.retry import Backoff
from crm_runtime.settings import Settings
from tests.support.kafka import (
    caught_up,
    create_topics,
    produce,
    produce_envelopes,
    read_topic,
    wait_for,
)
from tests.support.ledger import MIGRATIONS, EntryBooked, EntryRequested, make_handler


@dataclass
class Ledger:
    pool: asyncpg.Pool
    schema: str
    requests: str
    booked: str
    bootstrap: str
    options: dict[str, int]

    def consumer(self, *, batch_wait_ms: int = 50, **kwargs: object) -> EventConsumer:
        return EventConsumer(self.pool, bootstrap_servers=self.bootstrap,
                             group=f"g-{self.schema}", topics=[self.requests],
                             handlers={"test.entry_requested": make_handler(self.booked, 2)},
                             service="ledger", lanes=2, batch_wait_ms=batch_wait_ms,
                             consumer_options=self.options, **kwargs)  # type: ignore[arg-type]

    async def applied(self) -> int:
        return int(await self.pool.fetchval("SELECT count(*) FROM applied_entries"))


@pytest.fixture
async def ledger(settings: Settings, uid: str) -> AsyncIterator[Ledger]:
    schema = f"ledger_{uid}"
    requests, booked = f"t.req.{uid}", f"t.booked.{uid}"
    assert settings.database_url and settings.kafka_bootstrap_servers
    await create_topics(settings.kafka_bootstrap_servers, [requests, booked, dlq_topic(requests)])
    pool = await create_pool(settings.database_url, schema)
    async with pool.acquire() as conn:
        await migrate(conn, schema, migrations_for(MIGRATIONS))
    yield Ledger(pool, schema, requests, booked, settings.kafka_bootstrap_servers,
                 settings.consumer_options())
    await pool.close()


def _aiokafka(options: dict[str, int]) -> dict[str, int]:
    """The consumer options a bare aiokafka client takes (not the idle probe's)."""
    return {k: v for k, v in options.items() if k not in IDLE_OPTIONS}


def entry(ledger: Ledger, customer: str, amount: int) -> Envelope:
    return Envelope(data=EntryRequested(customer_id=customer, amount=amount), subject=customer,
                    source="/test/pos", topic_override=ledger.requests)




async def test_interest_skips_unwanted_types_undecoded_and_no_ids_recorded(
        ledger: Ledger) -> None:
    """While the group's interest leaves a handled type out, its records are
    skipped (a broken one is no dead letter); once wanted, they are applied.
    A group of natural-key handlers records no inbox ids."""
    wanted: set[str] = set()

    async def interest() -> frozenset[str]:
        return frozenset(wanted)

    broken = (ledger.requests, b"c1", b"{not json", [("ce_specversion", b"1.0"),
              ("ce_type", b"test.entry_requested"), ("ce_id", b"x-1"),
              ("ce_source", b"/test/pos")])
    await produce(ledger.bootstrap, [broken])
    await produce_envelopes(ledger.bootstrap, [entry(ledger, f"c{i}", i) for i in range(5)])
    consumer = ledger.consumer(interest=interest, record_ids=False)
    task = asyncio.create_task(consumer.run())
    try:
        await wait_for(lambda: caught_up(ledger.bootstrap, f"g-{ledger.schema}",
                                         [ledger.requests]), what="the skipped records consumed")
        assert await ledger.applied() == 0
        wanted.add("test.entry_requested")
        await produce_envelopes(ledger.bootstrap, [entry(ledger, f"c{i}", i) for i in range(3)])
        await wait_for(lambda: _eq(ledger.applied(), 3), what="3 entries applied")
        assert await ledger.pool.fetchval("SELECT count(*) FROM inbox") == 0
        assert await ledger.pool.fetchval("SELECT count(*) FROM dead_letters") == 0
    finally:
        consumer.stop()
        await task


async def test_redelivered_events_change_nothing(ledger: Ledger) -> None:
    events = [entry(ledger, f"c{i % 7}", i) for i in range(300)]
    # Every event twice on the topic, as a producer retry or a replay would do.
    await produce_envelopes(ledger.bootstrap, events + events[:150])
    consumer = ledger.consumer(batch_size=64)
    task = asyncio.create_task(consumer.run())
    try:
        await wait_for(lambda: _eq(ledger.applied(), 300), what="300 entries applied")
        await asyncio.sleep(0.5)
        assert await ledger.applied() == 300
        rows = await ledger.pool.fetch("SELECT customer_id, total FROM balances")
        totals = {r[0]: r[1] for r in rows}
        expected: dict[str, int] = {}
        for i in range(300):
            expected[f"c{i % 7}"] = expected.get(f"c{i % 7}", 0) + i
        assert totals == expected
        inbox = await ledger.pool.fetchval("SELECT count(*) FROM inbox")
        assert inbox == 300
    finally:
        consumer.stop()
        await task
    # A second consumer in the same group starts from the committed offsets.
    again = ledger.consumer()
    task = asyncio.create_task(again.run())
    await asyncio.wait_for(again.ready.wait(), 30)
    await asyncio.sleep(0.5)
    again.stop()
    await task
    assert await ledger.applied() == 300


async def test_large_batches_enter_the_inbox_by_copy_and_redeliveries_fall_back(
        ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch of at least ``INBOX_COPY_FROM`` new events goes into the inbox
    by COPY; a batch with an event seen before is refused whole by the
    primary key and claimed by the ``ON CONFLICT`` statement instead, so only
    its new events are applied."""
    copies: list[tuple[int, bool]] = []
    copy_unless_taken = db.copy_unless_taken

    async def spy(conn: Conn, table: str, columns: Sequence[str],
                  rows: Sequence[tuple[Any, ...]]) -> bool:
        taken = await copy_unless_taken(conn, table, columns, rows)
        if table == "inbox":
            copies.append((len(rows), taken))
        return taken

    monkeypatch.setattr(db, "copy_unless_taken", spy)
    def amount(i: int) -> int:
        return 2 * i + 1  # never the 666 the ledger refuses

    events = [entry(ledger, f"c{i % 12}", amount(i)) for i in range(600)]
    await produce_envelopes(ledger.bootstrap, events)
    await _apply_until(ledger, ledger.consumer(batch_size=500), 600)
    assert copies and all(taken and n >= INBOX_COPY_FROM for n, taken in copies)
    copies.clear()
    # Every event again (a replay), then 100 new ones: the replayed ids are in
    # the inbox, so COPY is refused and the statement keeps only the new ones.
    more = [entry(ledger, f"c{i % 12}", amount(i)) for i in range(600, 700)]
    await produce_envelopes(ledger.bootstrap, events + more)
    await _apply_until(ledger, ledger.consumer(batch_size=500), 700, settle=0.5)
    assert any(not taken for _, taken in copies)
    assert await ledger.applied() == 700
    assert await ledger.pool.fetchval("SELECT count(*) FROM inbox") == 700
    rows = await ledger.pool.fetch("SELECT customer_id, total FROM balances")
    assert {r[0]: r[1] for r in rows} == {
        f"c{c}": sum(amount(i) for i in range(700) if i % 12 == c) for c in range(12)}


async def _eq(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def _apply_until(ledger: Ledger, consumer: EventConsumer, applied: int, *,
                       settle: float = 0.0) -> None:
    """Run ``consumer`` until the ledger has applied ``applied`` entries (and
    ``settle`` seconds more, for any that should not come), then stop it."""
    task = asyncio.create_task(consumer.run())
    try:
        await wait_for(lambda: _eq(ledger.applied(), applied),
                       what=f"{applied} entries applied")
        await asyncio.sleep(settle)
    finally:
        consumer.stop()
        await task


async def test_bad_messages_are_dead_lettered_and_the_rest_processed(ledger: Ledger) -> None:
    good = entry(ledger, "c1", 10)
    bad_schema = entry(ledger, "c1", 20)
    headers = dict(bad_schema.headers())
    records: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = [
        (ledger.requests, b"c1", good.body(), good.headers()),
        (ledger.requests, b"c1", b"{not json", list(headers.items())),
        (ledger.requests, b"c1", json.dumps({"customer_id": "c1", "amount": -5}).encode(),
         list(headers.items())),
        (ledger.requests, b"c1", b"{}", [(k, (b"test.no_such_type" if k == "ce_type" else v))
                                         for k, v in headers.items()]),
        (ledger.requests, b"c1", b"plain text, no headers", []),
    ]
    later = [entry(ledger, "c1", n) for n in (1, 2, 3)]
    records += [(ledger.requests, b"c1", e.body(), e.headers()) for e in later]
    await produce(ledger.bootstrap, records)
    consumer = ledger.consumer()
    relay_producer = await _producer(ledger.bootstrap)
    relay = OutboxRelay(ledger.pool, relay_producer, service="ledger", schema=ledger.schema,
                        lanes=2)
    tasks = [asyncio.create_task(consumer.run()), asyncio.create_task(relay.run())]
    try:
        await wait_for(lambda: _eq(ledger.applied(), 4), what="valid entries applied")
        dead = await read_topic(ledger.bootstrap, dlq_topic(ledger.requests), expect=4)
        assert len(dead) == 4
        kinds = {}
        for r in dead:
            h = dict(r.headers)
            assert h["dlq_original_topic"] == ledger.requests.encode()
            assert h["dlq_original_partition"] == str(r.partition).encode() or True
            kinds[int(h["dlq_original_offset"])] = (h["dlq_error_kind"].decode(),
                                                    h["dlq_error_reason"].decode())
            assert h["dlq_consumer_group"] == f"g-{ledger.schema}".encode()
        assert [k for k, _ in (kinds[o] for o in sorted(kinds))] == [
            "not_json", "invalid_payload", "unknown_type", "not_cloudevent"]
        assert "amount" in kinds[sorted(kinds)[1]][1]  # the reason names the field
        assert (await ledger.pool.fetchval("SELECT total FROM balances WHERE customer_id='c1'")
                == 16)
        rows = await ledger.pool.fetchval("SELECT count(*) FROM dead_letters")
        assert rows == 4
    finally:
        consumer.stop()
        relay.stop()
        await asyncio.gather(*tasks)
        await relay_producer.stop()


async def test_known_events_without_a_handler_are_skipped_unrecorded(ledger: Ledger) -> None:
    # test.entry_booked is a registered type this consumer has no handler for:
    # it is counted as consumed, but neither decoded (a broken body is not a
    # dead letter here, nor is a header that is not UTF-8) nor recorded in
    # the inbox; a batch of nothing else still moves the group's offsets on.
    booked = [Envelope(data=EntryBooked(customer_id="c1", amount=n, balance=n),
                       subject="c1", source="/test/books", topic_override=ledger.requests)
              for n in range(5)]
    broken = dict(booked[0].headers())
    broken["ce_id"] = b"broken-booked"
    not_utf8 = {**dict(booked[1].headers()), "ce_source": b"\xff/books"}
    # In structured mode the type is in the body: read, then skipped.
    as_structured = json.dumps({"specversion": "1.0", "id": "structured-booked",
                                "type": "test.entry_booked", "source": "/test/books",
                                "data": json.loads(booked[2].body())}).encode()
    await produce_envelopes(ledger.bootstrap, booked)
    await produce(ledger.bootstrap, [(ledger.requests, b"c1", b"{not json", list(broken.items())),
                                     (ledger.requests, b"c1", booked[1].body(),
                                      list(not_utf8.items())),
                                     (ledger.requests, b"c1", as_structured,
                                      [("content-type", b"application/cloudevents+json")])])
    consumed = metrics.CONSUMED.labels("ledger", ledger.requests, "test.entry_booked")
    before = consumed._value.get()
    consumer = ledger.consumer()
    task = asyncio.create_task(consumer.run())
    try:
        await wait_for(lambda: _eq(_committed(consumer, ledger.requests), 8),
                       what="offsets past the skipped records")
        assert await ledger.pool.fetchval("SELECT count(*) FROM inbox") == 0
        await produce_envelopes(ledger.bootstrap, [entry(ledger, "c1", 7)])
        await wait_for(lambda: _eq(ledger.applied(), 1), what="the entry applied")
        assert await ledger.pool.fetchval("SELECT count(*) FROM inbox") == 1
        assert await ledger.pool.fetchval("SELECT count(*) FROM dead_letters") == 0
        assert consumed._value.get() - before == 8
    finally:
        consumer.stop()
        await task


async def test_offsets_go_to_the_broker_at_most_once_an_interval_and_at_once_when_idle(
        ledger: Ledger) -> None:
    # One record a batch, six batches back to back (one key, one partition),
    # and an interval far longer than the test: the first batch's offsets go
    # at once, the next five's wait for the interval, which never comes, and
    # go together as soon as a poll finds nothing more.
    await produce_envelopes(ledger.bootstrap, [entry(ledger, "c1", n) for n in range(6)])
    consumer = ledger.consumer(batch_size=1, commit_interval_ms=60_000)
    sent: list[dict[TopicPartition, int]] = []
    commit = consumer._kafka.commit

    async def counted(offsets: dict[TopicPartition, int]) -> None:
        sent.append(dict(offsets))
        await commit(offsets)

    consumer._kafka.commit = counted
    task = asyncio.create_task(consumer.run())
    try:
        await wait_for(lambda: _eq(_committed(consumer, ledger.requests), 6),
                       what="the offsets of all six records committed")
        assert await ledger.applied() == 6
        assert [sum(offsets.values()) for offsets in sent] == [1, 6]
    finally:
        consumer.stop()
        await task


async def test_a_rebalance_commits_what_is_done_before_partitions_move(
        ledger: Ledger) -> None:
    # One record a batch, an interval longer than the test and a poll that
    # waits longer than it too: of the 30 records applied, only the first
    # batch's offset went to the broker when a second member joins. The
    # first member commits the rest before giving partitions up, so the
    # second starts after them and redelivers nothing.
    await produce_envelopes(ledger.bootstrap,
                            [entry(ledger, f"c{n % 6}", n) for n in range(30)])
    first = ledger.consumer(batch_size=1, batch_wait_ms=60_000, commit_interval_ms=60_000)
    duplicates = metrics.DUPLICATES.labels("ledger", ledger.requests)
    before = duplicates._value.get()
    tasks = [asyncio.create_task(first.run())]
    second: EventConsumer | None = None
    try:
        await wait_for(lambda: _eq(ledger.applied(), 30), what="30 entries applied")
        assert await _committed(first, ledger.requests) < 30
        second = ledger.consumer()
        tasks.append(asyncio.create_task(second.run()))
        await wait_for(lambda: _eq(_committed(first, ledger.requests), 30),
                       what="the first member's offsets committed at the rebalance")
        await asyncio.wait_for(second.ready.wait(), 30)
        await produce_envelopes(ledger.bootstrap, [entry(ledger, "c1", 100)])
        await wait_for(lambda: _eq(ledger.applied(), 31), what="a later entry applied")
        assert duplicates._value.get() == before
    finally:
        first.stop()
        tasks[0].cancel()  # its poll would wait out its minute
        if second is not None:
            second.stop()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _committed(consumer: EventConsumer, topic: str) -> int:
    """The offsets the consumer's group committed on ``topic``, summed over partitions."""
    kafka = consumer._kafka  # the group's own client: Tansu answers its OffsetFetch
    parts = [TopicPartition(topic, p) for p in sorted(kafka.partitions_for_topic(topic) or ())]
    return sum([max(0, await kafka.committed(tp) or 0) for tp in parts])


async def test_a_failing_handler_dead_letters_only_its_record(ledger: Ledger) -> None:
    events = [entry(ledger, "c2", n) for n in (1, 666, 2, 3)]
    await produce_envelopes(ledger.bootstrap, events)
    consumer = ledger.consumer()
    task = asyncio.create_task(consumer.run())
    try:
        await wait_for(lambda: _eq(ledger.applied(), 3), what="three entries applied")
        row = await ledger.pool.fetchrow("SELECT error_kind, error_reason FROM dead_letters")
        assert row is not None
        assert row["error_kind"] == "handler_error"
        assert "666" in row["error_reason"]
        # Its event id is not in the inbox: a replay after a fix is processed.
        assert await ledger.pool.fetchval(
            "SELECT count(*) FROM inbox WHERE event_id = $1", events[1].id) == 0
        assert await ledger.pool.fetchval("SELECT count(*) FROM inbox") == 3
    finally:
        consumer.stop()
        await task


async def _producer(bootstrap: str):  # type: ignore[no-untyped-def]
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await p.start()
    return p


async def test_database_outage_is_retried_never_dead_lettered(
        settings: Settings, uid: str) -> None:
    from tests.support.proxy import ToggleProxy

    assert settings.database_url and settings.kafka_bootstrap_servers
    proxy = ToggleProxy(settings.database_url)
    await proxy.up()
    schema = f"outage_{uid}"
    requests, booked = f"t.req.{uid}", f"t.booked.{uid}"
    await create_topics(settings.kafka_bootstrap_servers, [requests, booked, dlq_topic(requests)])
    direct = await create_pool(settings.database_url, schema)
    async with direct.acquire() as conn:
        await migrate(conn, schema, migrations_for(MIGRATIONS))
    pool = await create_pool(proxy.dsn, schema)
    ledger = Ledger(pool, schema, requests, booked, settings.kafka_bootstrap_servers,
                    settings.consumer_options())
    from crm_runtime.retry import Backoff

    consumer = ledger.consumer(backoff=Backoff(0.05, 0.3))
    task = asyncio.create_task(consumer.run())
    try:
        first = [entry(ledger, f"c{i % 3}", i + 1) for i in range(50)]
        await produce_envelopes(ledger.bootstrap, first)

        async def count() -> int:
            return int(await direct.fetchval("SELECT count(*) FROM applied_entries"))

        await wait_for(lambda: _eq(count(), 50), what="first entries applied")
        await proxy.down()  # the database disappears for this consumer
        second = [entry(ledger, f"c{i % 3}", 100 + i) for i in range(50)]
        await produce_envelopes(ledger.bootstrap, second)
        await asyncio.sleep(2)
        assert await count() == 50 and not task.done()
        await proxy.up()
        await wait_for(lambda: _eq(count(), 100), timeout=60, what="all entries applied")
        assert await direct.fetchval("SELECT count(*) FROM dead_letters") == 0
        total = await direct.fetchval("SELECT sum(total) FROM balances")
        assert total == sum(range(1, 51)) + sum(range(100, 150))
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 30)
        await pool.close()
        await direct.close()
        await proxy.down()


async def test_a_rebalance_moves_partitions_without_crashing_either_member(
        ledger: Ledger) -> None:
    await produce_envelopes(ledger.bootstrap, [entry(ledger, f"c{i}", i + 1) for i in range(30)])
    first = ledger.consumer()
    one = asyncio.create_task(first.run())
    second = ledger.consumer()
    two: asyncio.Task[None] | None = None
    try:
        await wait_for(lambda: _eq(ledger.applied(), 30), what="first entries applied")
        two = asyncio.create_task(second.run())  # the group rebalances over both members
        await asyncio.wait_for(second.ready.wait(), 30)
        await produce_envelopes(ledger.bootstrap,
                                [entry(ledger, f"d{i}", i + 1) for i in range(60)])
        await wait_for(lambda: _eq(ledger.applied(), 90), timeout=60, what="all applied")
        assert not one.done() and not two.done()  # nobody died of the rebalance
    finally:
        first.stop()
        second.stop()
        await asyncio.gather(one, *([two] if two else []))


async def test_members_of_a_group_get_the_same_partition_numbers_of_every_topic(
        ledger: Ledger) -> None:
    """Two members reading two topics of three partitions each: each member
    holds the same partition numbers of both, so one customer's events on
    the two topics (one key, one partition number) reach one member. Round
    robin, aiokafka's default, gives one member partitions 0 and 2 of the
    first topic but 1 of the second."""
    second_topic = f"{ledger.requests}.second"
    await create_topics(ledger.bootstrap, [second_topic])
    members = [EventConsumer(ledger.pool, bootstrap_servers=ledger.bootstrap,
                             group=f"g2-{ledger.schema}", topics=[ledger.requests, second_topic],
                             handlers={"test.entry_requested": make_handler(ledger.booked, 2)},
                             service="ledger", lanes=2, consumer_options=ledger.options)
               for _ in range(2)]
    tasks = [asyncio.create_task(m.run()) for m in members]

    def held() -> list[dict[str, set[int]]]:
        out = []
        for m in members:
            by_topic: dict[str, set[int]] = {ledger.requests: set(), second_topic: set()}
            for tp in m._kafka.assignment():
                by_topic[tp.topic].add(tp.partition)
            out.append(by_topic)
        return out

    async def settled() -> bool:
        parts = held()
        return all(p[ledger.requests] or p[second_topic] for p in parts) and sum(
            len(p[ledger.requests]) + len(p[second_topic]) for p in parts) == 6

    try:
        await wait_for(settled, timeout=60, what="both members assigned all six partitions")
        for p in held():
            assert p[ledger.requests] == p[second_topic], held()
    finally:
        for m in members:
            m.stop()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_member_of_the_previous_release_still_shares_the_group(ledger: Ledger) -> None:
    """During a rolling upgrade a member that knows only round robin (aiokafka's
    default, what earlier releases used) and a new one agree on a protocol:
    both get partitions, and none is left out."""
    second_topic = f"{ledger.requests}.second"
    await create_topics(ledger.bootstrap, [second_topic])
    group = f"g3-{ledger.schema}"
    new = EventConsumer(ledger.pool, bootstrap_servers=ledger.bootstrap, group=group,
                        topics=[ledger.requests, second_topic],
                        handlers={"test.entry_requested": make_handler(ledger.booked, 2)},
                        service="ledger", lanes=2, consumer_options=ledger.options)
    old = AIOKafkaConsumer(bootstrap_servers=ledger.bootstrap, group_id=group,
                           enable_auto_commit=False, **_aiokafka(ledger.options))
    old.subscribe([ledger.requests, second_topic])
    await old.start()
    task = asyncio.create_task(new.run())

    async def shared() -> bool:
        with contextlib.suppress(TimeoutError):  # a poll keeps the old member in the group
            await asyncio.wait_for(old.getone(), 0.2)
        mine, theirs = new._kafka.assignment(), old.assignment()
        return bool(mine) and bool(theirs) and len(mine | theirs) == 6 and not mine & theirs

    try:
        await wait_for(shared, timeout=60, what="both members assigned, all six partitions")
    finally:
        new.stop()
        await asyncio.gather(task, return_exceptions=True)
        await old.stop()


async def test_a_consumer_the_group_refuses_retries_with_a_new_client_and_stops(
        ledger: Ledger, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A member that shares no partition assignor with the group is refused
    (InconsistentGroupProtocol). The consumer logs the reason and retries
    with a new client (aiokafka will not start a client twice: the previous
    code logged "start twice" forever and never joined), joins once the cause
    is gone, and a stop ends it at once even while it waits to retry."""
    monkeypatch.setattr(consumer_module, "ASSIGNORS", (RangePartitionAssignor,))
    ledger.options = {**ledger.options, **_QUICK_GROUP}
    async with _round_robin_member(ledger, f"g-{ledger.schema}") as old:  # ledger.consumer's
        refused = ledger.consumer(backoff=Backoff(initial=0.1, maximum=0.5))
        task = asyncio.create_task(refused.run())
        try:
            await wait_for(lambda: _true(caplog.text.count("cannot start (Inconsistent") >= 2),
                           what="two refused joins, each logged with its reason")
            assert "start` twice" not in caplog.text
            # The cause goes away (this release's assignors again): the next
            # retry's client joins and shares the partitions with the old member.
            monkeypatch.setattr(consumer_module, "ASSIGNORS", ASSIGNORS)
            await wait_for(lambda: _true(bool(refused._kafka.assignment())), timeout=60,
                           what="the refused consumer joined once it could")
            assert not refused._kafka.assignment() & old.assignment()
        finally:
            refused.stop()
            await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 10)
    # One that stays refused stops at once, not after its backoff.
    async with _round_robin_member(ledger, f"g5-{ledger.schema}"):
        stuck = EventConsumer(ledger.pool, bootstrap_servers=ledger.bootstrap,
                              group=f"g5-{ledger.schema}", topics=[ledger.requests],
                              handlers={}, service="ledger", lanes=2,
                              consumer_options=ledger.options,
                              backoff=Backoff(initial=30.0, maximum=30.0))
        task = asyncio.create_task(stuck.run())
        await wait_for(lambda: _true(caplog.text.count("cannot start (Inconsistent") >= 3),
                       what="a refused join in the second group")
        stuck.stop()
        await asyncio.wait_for(task, 3)


#: Group timings as the embedded broker's settings have them: a member learns
#: of a rebalance within a heartbeat, so the group meets the newcomer's
#: protocol at once.
_QUICK_GROUP = {"session_timeout_ms": 3000, "heartbeat_interval_ms": 300,
                "rebalance_timeout_ms": 1000}


@contextlib.asynccontextmanager
async def _round_robin_member(ledger: Ledger, group: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A member of ``group`` with aiokafka's default assignor only, polling
    (so it rejoins when the group rebalances) until the block ends."""
    member = AIOKafkaConsumer(bootstrap_servers=ledger.bootstrap, group_id=group,
                              enable_auto_commit=False, **_aiokafka(ledger.options))
    member.subscribe([ledger.requests])
    await member.start()

    async def poll() -> None:
        while True:
            await member.getmany(timeout_ms=100)

    polling = asyncio.create_task(poll())
    try:
        await wait_for(lambda: _true(bool(member.assignment())), what="the member joined")
        yield member
    finally:
        polling.cancel()
        await asyncio.gather(polling, return_exceptions=True)
        await member.stop()


async def _true(value: bool) -> bool:
    return value


async def test_two_workers_apply_a_backlog_at_once_never_one_partition_twice(
        ledger: Ledger) -> None:
    """With ``concurrency=2`` and a backlog, both workers run transactions
    at the same time, each of partitions the other does not hold; a
    partition may pass from one worker to the other between batches, and
    each customer's entries are still applied once and in order."""
    entered: set[str] = set()  # the workers that ran a transaction
    open_customers: set[str] = set()
    both = asyncio.Event()
    overlapped: list[bool] = []
    shared: list[set[str]] = []
    inner = make_handler(ledger.booked, 2)

    async def handler(conn: Conn, events: list[Envelope]) -> None:
        task = asyncio.current_task()
        assert task is not None
        worker = task.get_name().rsplit("-", 1)[-1]
        first = worker not in entered
        customers = {e.subject for e in events}
        if customers & open_customers:  # a partition in two transactions at once
            shared.append(customers & open_customers)
        open_customers.update(customers)
        try:
            entered.add(worker)
            if len(entered) == 2:
                both.set()
            if first:  # hold the first transaction open until the other worker is in one too
                try:
                    await asyncio.wait_for(both.wait(), timeout=10)
                    overlapped.append(True)
                except TimeoutError:
                    overlapped.append(False)
            await inner(conn, events)
        finally:
            open_customers.difference_update(customers)

    events = [entry(ledger, f"c{i % 12}", i) for i in range(600)]
    await produce_envelopes(ledger.bootstrap, events)
    consumer = EventConsumer(ledger.pool, bootstrap_servers=ledger.bootstrap,
                             group=f"g-{ledger.schema}", topics=[ledger.requests],
                             handlers={"test.entry_requested": handler}, service="ledger",
                             lanes=2, batch_size=50, batch_wait_ms=50,
                             consumer_options=ledger.options, concurrency=2)
    await _apply_until(ledger, consumer, 600)
    assert sorted(entered) == ["0", "1"] and overlapped == [True, True]
    assert shared == []
    # Each customer's balance after each entry is the running sum in produced order.
    rows = await ledger.pool.fetch(
        "SELECT body FROM outbox WHERE event_type = 'test.entry_booked' ORDER BY id")
    seen: dict[str, list[tuple[int, int]]] = {}
    for r in rows:
        body = json.loads(r["body"])
        seen.setdefault(body["customer_id"], []).append((body["amount"], body["balance"]))
    for c in range(12):
        amounts = [i for i in range(600) if i % 12 == c]
        running = [sum(amounts[:n + 1]) for n in range(len(amounts))]
        assert seen[f"c{c}"] == list(zip(amounts, running, strict=True))
    assert await ledger.pool.fetchval("SELECT count(*) FROM inbox") == 600


async def test_without_a_backlog_one_transaction_at_a_time_takes_what_came_meanwhile(
        ledger: Ledger) -> None:
    """With ``concurrency=2`` but no backlog (fewer than half a batch
    waiting), the second worker does not start a transaction of its own
    beside the first: what arrives while the first is open waits for it and
    then goes in a few batches, one transaction after the other (the
    fetcher holds one fetched chunk per partition, so what came after that
    chunk is fetched once it is taken)."""
    inner = make_handler(ledger.booked, 2)
    hold = asyncio.Event()
    held = asyncio.Event()
    batches: list[int] = []
    open_now = [0]
    most_open = [0]

    async def handler(conn: Conn, events: list[Envelope]) -> None:
        open_now[0] += 1
        most_open[0] = max(most_open[0], open_now[0])
        try:
            batches.append(len(events))
            if any(isinstance(e.data, EntryRequested) and e.data.amount == 100 for e in events):
                held.set()
                await asyncio.wait_for(hold.wait(), timeout=10)
            await inner(conn, events)
        finally:
            open_now[0] -= 1

    consumer = EventConsumer(ledger.pool, bootstrap_servers=ledger.bootstrap,
                             group=f"g-{ledger.schema}", topics=[ledger.requests],
                             handlers={"test.entry_requested": handler}, service="ledger",
                             lanes=2, batch_size=50, batch_wait_ms=50,
                             consumer_options=ledger.options, concurrency=2)
    task = asyncio.create_task(consumer.run())
    try:
        # Every partition applied from once, so the consumer knows it is caught up.
        await produce_envelopes(ledger.bootstrap, [entry(ledger, f"c{i}", 1) for i in range(12)])
        await wait_for(lambda: _eq(ledger.applied(), 12), what="12 entries applied")
        await produce_envelopes(ledger.bootstrap, [entry(ledger, "c0", 100)])
        await asyncio.wait_for(held.wait(), timeout=10)
        batches.clear()
        most_open[0] = 1
        for i in range(1, 12):  # a trickle on every partition while c0's transaction is open
            await produce_envelopes(ledger.bootstrap, [entry(ledger, f"c{i}", 2)])
        await asyncio.sleep(1.0)  # time enough for the other worker to take them, if it would
        assert batches == [] and most_open[0] == 1
        hold.set()
        await wait_for(lambda: _eq(ledger.applied(), 24), what="24 entries applied")
        assert sum(batches) == 11 and len(batches) <= 3 and most_open[0] == 1
    finally:
        hold.set()
        consumer.stop()
        await task
