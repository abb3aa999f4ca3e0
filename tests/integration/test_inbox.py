"""The database side of consuming on its own: decoded batches applied through
:class:`crm_runtime.inbox.Inbox` against a real PostgreSQL, no broker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiokafka import ConsumerRecord

from crm_runtime import metrics, sealing
from crm_runtime.db import Conn, create_pool
from crm_runtime.events import Envelope, PoisonMessage, decode
from crm_runtime.inbox import BatchHandler, Inbox, Item, dlq_topic
from crm_runtime.migrations import migrate, migrations_for
from tests.support.ledger import MIGRATIONS, EntryBooked, EntryRequested, make_handler

TOPIC = "t.inbox.requests"
REQUESTED = "test.entry_requested"


@pytest.fixture
async def pool(database_url: str, uid: str) -> AsyncIterator[asyncpg.Pool]:
    schema = f"inbox_{uid}"
    pool = await create_pool(database_url, schema)
    async with pool.acquire() as conn:
        await migrate(conn, schema, migrations_for(MIGRATIONS))
    yield pool
    await pool.close()


def _inbox(pool: asyncpg.Pool, uid: str, handlers: dict[str, BatchHandler]) -> Inbox:
    return Inbox(pool, group=f"g-{uid}", handlers=handlers, service="ledger", lanes=2)


def _record(offset: int, headers: list[tuple[str, bytes]], value: bytes) -> Any:
    return ConsumerRecord(TOPIC, 0, offset, 0, 0, b"c1", value, None, 2, len(value), headers)


def _item(offset: int, env: Envelope) -> Item:
    """The record of ``env`` at ``offset``, decoded as the consumer decodes it."""
    record = _record(offset, env.headers(), env.body())
    return Item(record, envelope=decode(record.headers, record.value))


def _poison(offset: int, env: Envelope) -> Item:
    """A record with ``env``'s headers and a body that is not JSON."""
    record = _record(offset, env.headers(), b"{not json")
    with pytest.raises(PoisonMessage) as caught:
        decode(record.headers, record.value)
    return Item(record, poison=caught.value)


def _entry(customer: str, amount: int) -> Envelope:
    return Envelope(data=EntryRequested(customer_id=customer, amount=amount), subject=customer,
                    source="/test/pos", topic_override=TOPIC)


def _count(series: Any) -> float:
    return float(series._value.get())


async def test_a_batch_applies_new_events_once_and_dead_letters_the_rest(
        pool: asyncpg.Pool, uid: str) -> None:
    """One batch with a redelivered event, the same event twice, a poison
    record and a record the handler refuses: the new events are applied once
    each, the two bad records become dead letters (rows, ``.dlq`` records in
    the outbox, out of the inbox), and a redelivery of the whole batch
    changes nothing and dead-letters nothing twice."""
    inbox = _inbox(pool, uid, {REQUESTED: make_handler("t.inbox.booked", 2)})
    seen, new, refused, other = (_entry("c1", 10), _entry("c1", 20), _entry("c1", 666),
                                 _entry("c2", 5))
    await inbox.apply([_item(0, seen)])
    consumed = metrics.CONSUMED.labels("ledger", TOPIC, REQUESTED)
    duplicates = metrics.DUPLICATES.labels("ledger", TOPIC)
    not_json = metrics.DEAD_LETTERED.labels("ledger", TOPIC, "not_json")
    handler_error = metrics.DEAD_LETTERED.labels("ledger", TOPIC, "handler_error")
    before = [_count(s) for s in (consumed, duplicates, not_json, handler_error)]
    batch = [_item(1, seen), _poison(2, other), _item(3, new), _item(4, new),
             _item(5, refused), _item(6, other)]

    await inbox.apply(batch)

    applied = await pool.fetch("SELECT event_id FROM applied_entries")
    assert {r[0] for r in applied} == {seen.id, new.id, other.id}
    totals = await pool.fetch("SELECT customer_id, total FROM balances")
    assert {r[0]: r[1] for r in totals} == {"c1": 30, "c2": 5}
    assert {r[0] for r in await pool.fetch("SELECT event_id FROM inbox")} == {
        seen.id, new.id, other.id}  # the refused event can be replayed
    dead = await pool.fetch("SELECT kafka_offset, error_kind, error_reason FROM dead_letters "
                            "ORDER BY kafka_offset")
    assert [(r[0], r[1]) for r in dead] == [(2, "not_json"), (5, "handler_error")]
    assert "666" in dead[1][2]
    queued = await pool.fetch(
        "SELECT event_id, message_key, header_keys, header_values, body FROM outbox "
        "WHERE topic = $1 ORDER BY id", dlq_topic(TOPIC))
    assert [r["event_id"] for r in queued] == [f"{TOPIC}:0:2", f"{TOPIC}:0:5"]
    poison_headers = dict(zip(queued[0]["header_keys"], queued[0]["header_values"], strict=True))
    # The value leaves sealed with the key its dead_letters row keeps.
    assert queued[0]["message_key"] == b"c1" and queued[0]["body"] != b"{not json"
    key = await pool.fetchval("SELECT value_key FROM dead_letters WHERE kafka_offset = 2")
    assert sealing.unseal(key, queued[0]["body"]) == b"{not json"
    assert poison_headers[sealing.SEALED_HEADER] == sealing.CIPHER
    assert {k: poison_headers[k] for k in poison_headers if k.startswith("dlq_")} == {
        "dlq_error_kind": b"not_json", "dlq_error_reason": dead[0][2].encode(),
        "dlq_original_topic": TOPIC.encode(), "dlq_original_partition": b"0",
        "dlq_original_offset": b"2", "dlq_consumer_group": f"g-{uid}".encode()}
    assert poison_headers["ce_id"] == other.id.encode()  # the original headers kept
    # Counted after the commit: each new event consumed once (the refused one
    # too), the redelivered and the repeated one as duplicates.
    assert [_count(s) - b for s, b in zip((consumed, duplicates, not_json, handler_error),
                                          before, strict=True)] == [3, 2, 1, 1]

    await inbox.apply(batch)  # the batch redelivered (a crash before the offset commit)

    assert await pool.fetchval("SELECT count(*) FROM applied_entries") == 3
    assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 2
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE topic = $1",
                               dlq_topic(TOPIC)) == 2
    assert _count(not_json) - before[2] == 1 and _count(handler_error) - before[3] == 1


async def test_handlers_get_the_longest_runs_of_their_new_events_in_order(
        pool: asyncpg.Pool, uid: str) -> None:
    """A redelivered event between two of one handler's does not split its run."""
    calls: list[tuple[str, list[str]]] = []

    def recording(name: str) -> BatchHandler:
        async def handle(conn: Conn, events: list[Envelope]) -> None:
            calls.append((name, [e.id for e in events]))

        return handle

    inbox = _inbox(pool, uid, {REQUESTED: recording("requested"),
                               "test.entry_booked": recording("booked")})
    r1, r2, r3, r4 = (_entry("c1", n) for n in range(4))
    booked = Envelope(data=EntryBooked(customer_id="c1", amount=1, balance=1), subject="c1",
                      source="/test/books", topic_override=TOPIC)
    await inbox.apply([_item(0, r1)])
    calls.clear()

    await inbox.apply([_item(1, r2), _item(2, booked), _item(3, r3), _item(4, r1),
                       _item(5, r4)])

    assert calls == [("requested", [r2.id]), ("booked", [booked.id]),
                     ("requested", [r3.id, r4.id])]


async def test_a_transient_failure_is_raised_with_nothing_applied_or_dead_lettered(
        pool: asyncpg.Pool, uid: str) -> None:
    """The consumer retries a batch that failed for a transient reason: the
    inbox rolls it back whole and never isolates or dead-letters it."""
    calls = 0

    async def deadlocked(conn: Conn, events: list[Envelope]) -> None:
        nonlocal calls
        calls += 1
        raise asyncpg.DeadlockDetectedError("deadlock detected")

    inbox = _inbox(pool, uid, {REQUESTED: deadlocked})
    with pytest.raises(asyncpg.DeadlockDetectedError):
        await inbox.apply([_item(0, _entry("c1", 1)), _item(1, _entry("c1", 2))])
    assert calls == 1
    assert await pool.fetchval("SELECT count(*) FROM inbox") == 0
    assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 0
