"""Contacts stored a batch at a time, on both ways a batch reaches the
database (arrays below ``db.Rows.COPY_FROM`` contacts, COPY from it)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from crm_contracts.topics import INTERACTIONS
from crm_runtime import uow
from crm_runtime.db import Conn, Rows
from services.interactions import commands, contacts
from tests.integration.interactions.conftest import Pair
from tests.support.kafka import sent_records


def _contacts(pair: Pair, keys: list[str],
              customer: uuid.UUID | None = None) -> list[contacts.Contact]:
    """Contacts of one customer (a new one unless given), a key each."""
    customer = customer or uuid.uuid4()
    return [contacts.check_contact(idempotency_key=key, customer_id=customer, channel="web",
                                   direction="reactive", kind="inquiry",
                                   occurred_at=pair.clock.now(), now=pair.clock.now(),
                                   notes=f"note {key}")
            for key in keys]



@pytest.mark.parametrize("size", [3, Rows.COPY_FROM, 4 * Rows.COPY_FROM])
async def test_a_batch_stores_each_key_once(pair: Pair, size: int) -> None:
    ctx = commands.Context(clock=pair.clock, lanes=4)
    run = uuid.uuid4().hex[:8]
    keys = [f"{run}-{i}" for i in range(size)]
    customer = uuid.uuid4()
    async with uow.transaction(pair.pool) as conn:
        await contacts.record_contacts(conn, ctx, _contacts(pair, keys[: size // 2], customer))
    # Half the keys are known, and the batch repeats its last key.
    batch = _contacts(pair, [*keys, keys[-1]], customer)
    async with uow.transaction(pair.pool) as conn:
        result = await contacts.record_contacts(conn, ctx, batch)
        # A second batch in the same transaction (the consumer's isolating
        # re-run does this) sees nothing of the first one's rows.
        again = await contacts.record_contacts(conn, ctx, batch)
    fresh = [c.idempotency_key for c, new in result if new]
    assert fresh == keys[size // 2:]
    assert not any(new for _, new in again)
    rows = await pair.pool.fetch(
        "SELECT idempotency_key, notes, recorded_at FROM interactions "
        "WHERE idempotency_key LIKE $1 ORDER BY idempotency_key", f"{run}-%")
    assert sorted(r["idempotency_key"] for r in rows) == sorted(keys)
    assert all(r["notes"] == f"note {r['idempotency_key']}" for r in rows)
    assert all(r["recorded_at"] == pair.clock.now() for r in rows)
    events = await sent_records(pair.pool, pair.bootstrap, INTERACTIONS,
                                str(batch[0].customer_id).encode(), "interaction.recorded")
    assert len(events) == size  # one per key: the first transaction's and the batch's new ones


async def test_copied_rows_leave_nothing_behind(pair: Pair) -> None:
    """The connection's batch table is empty after the statement, after a
    rollback, and its file is truncated at commit: it never grows."""
    ctx = commands.Context(clock=pair.clock, lanes=4)
    run = uuid.uuid4().hex[:8]
    size = 2 * Rows.COPY_FROM
    async with pair.pool.acquire() as conn:
        for attempt in range(3):
            async with conn.transaction():
                await contacts.record_contacts(conn, ctx, _contacts(
                    pair, [f"{run}-{attempt}-{i}" for i in range(size)]))
                assert await conn.fetchval("SELECT count(*) FROM pg_temp.interactions_batch") == 0
            assert await conn.fetchval(
                "SELECT pg_relation_size('pg_temp.interactions_batch')") == 0
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "interactions_batch", schema_name="pg_temp",
                    records=[(uuid.uuid4(), f"{run}-x", uuid.uuid4(), "web", "reactive",
                              "inquiry", "direct", None, None, "", "", "", pair.clock.now(),
                              "neutral", "", 0, "", pair.clock.now(), None, "")])
                raise RuntimeError("handler failed")
        assert await conn.fetchval("SELECT count(*) FROM pg_temp.interactions_batch") == 0
    stored = await pair.pool.fetchval(
        "SELECT count(*) FROM interactions WHERE idempotency_key LIKE $1", f"{run}-%")
    assert stored == 3 * size


async def test_only_the_service_that_copies_batches_has_their_table(pair: Pair) -> None:
    # Every crm serve process imports every service; a connection creates the
    # temporary tables of its own service's batches only.
    customers = pair.customers.runner.pool
    assert customers is not None
    present = "SELECT to_regclass('pg_temp.interactions_batch') IS NOT NULL"
    assert await pair.pool.fetchval(present)
    assert not await customers.fetchval(present)


async def test_a_batch_of_new_keys_is_copied_straight_into_the_table(pair: Pair) -> None:
    ctx = commands.Context(clock=pair.clock, lanes=4)
    run = uuid.uuid4().hex[:8]
    size = 2 * Rows.COPY_FROM
    # Rows inserted by this backend (the counts it has not reported yet).
    inserted = ("SELECT coalesce(sum(n_tup_ins) FILTER (WHERE relid = 'interactions'::regclass),"
                " 0), coalesce(sum(n_tup_ins) FILTER (WHERE relid = "
                "'pg_temp.interactions_batch'::regclass), 0) FROM pg_stat_xact_user_tables")
    async with uow.transaction(pair.pool) as conn:
        before = await conn.fetchrow(inserted)
        result = await contacts.record_contacts(
            conn, ctx, _contacts(pair, [f"{run}-{i}" for i in range(size)]))
        after = await conn.fetchrow(inserted)
    assert before is not None and after is not None
    assert all(new for _, new in result)
    # Every row went into the table, none through the batch table.
    assert (after[0] - before[0], after[1] - before[1]) == (size, 0)
    stored = await pair.pool.fetchval(
        "SELECT count(*) FROM interactions WHERE idempotency_key LIKE $1", f"{run}-%")
    assert stored == size


async def test_a_key_a_concurrent_transaction_commits_is_stored_once(pair: Pair) -> None:
    """The straight COPY waits for the other writer of a key; once that one
    commits, the batch falls back to the statement and stores the rest."""
    ctx = commands.Context(clock=pair.clock, lanes=4)
    run = uuid.uuid4().hex[:8]
    keys = [f"{run}-{i}" for i in range(2 * Rows.COPY_FROM)]
    customer = uuid.uuid4()
    async with pair.pool.acquire() as first, pair.pool.acquire() as second:
        tx = first.transaction()
        await tx.start()
        await contacts.record_contacts(first, ctx, _contacts(pair, keys[:1], customer))
        batch = asyncio.create_task(_record_in_transaction(
            second, ctx, _contacts(pair, keys, customer)))
        await asyncio.sleep(0.3)
        assert not batch.done()  # the COPY waits on the uncommitted key
        await tx.commit()
        result = await asyncio.wait_for(batch, 10)
    assert [c.idempotency_key for c, new in result if new] == keys[1:]
    stored = await pair.pool.fetchval(
        "SELECT count(*) FROM interactions WHERE idempotency_key LIKE $1", f"{run}-%")
    assert stored == len(keys)


async def _record_in_transaction(conn: Conn, ctx: commands.Context,
                                 batch: list[contacts.Contact]
                                 ) -> list[tuple[contacts.Contact, bool]]:
    async with conn.transaction():
        return await contacts.record_contacts(conn, ctx, batch)
