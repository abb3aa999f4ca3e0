"""Migration 003 over a schema that holds records from before it: keys become
unique per customer, the customers already on record become known, and a
merge of two customers who used one key keeps both records."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from crm_runtime.db import connect
from crm_runtime.migrations import migrate, migrations_for
from services.interactions import store
from services.interactions.app import SPEC as INTERACTIONS

AT = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
async def conn(database_url: str, uid: str) -> AsyncIterator[asyncpg.Connection]:
    schema = f"ixmig_{uid}"
    c = await connect(database_url)
    try:
        plan = migrations_for(INTERACTIONS.migrations)
        before = [m for m in plan if m.source == "runtime" or m.version <= 2]
        await migrate(c, schema, before)
        await c.execute(f"SET search_path TO {schema}")
        yield c
    finally:
        await c.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await c.close()


async def _contact(conn: asyncpg.Connection, customer: uuid.UUID, key: str,
                   notes: str = "") -> None:
    await conn.execute(
        """INSERT INTO interactions (interaction_id, idempotency_key, customer_id, channel,
                                     direction, kind, occurred_at, notes, recorded_at)
           VALUES ($1, $2, $3, 'web', 'reactive', 'inquiry', $4, $5, $4)""",
        uuid.uuid4(), key, customer, AT, notes)


async def test_existing_records_keep_their_keys_under_the_customer_and_are_known(
        conn: asyncpg.Connection, uid: str) -> None:
    a, b, c, merged = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await _contact(conn, a, "pos-1", "a's")
    await _contact(conn, b, "pos-2")
    await conn.execute(
        """INSERT INTO survey_responses (survey_response_id, idempotency_key, customer_id,
                                         occurred_at) VALUES ($1, 'survey-1', $2, $3)""",
        uuid.uuid4(), c, AT)
    await conn.execute("INSERT INTO customer_aliases VALUES ($1, $2)", merged, a)

    applied = await migrate(conn, f"ixmig_{uid}", migrations_for(INTERACTIONS.migrations))
    assert applied[0] == "service/003_customer_scoped_keys"
    await conn.execute(f"SET search_path TO ixmig_{uid}")
    known = {r["customer_id"] for r in await conn.fetch("SELECT * FROM known_customers")}
    assert known == {a, b, c}
    nobody = uuid.uuid4()
    # The merged id is known through its alias.
    assert await store.unknown_customers(conn, [a, b, c, merged, nobody]) == {nobody}
    assert await conn.fetchval(
        "SELECT count(*) FROM interactions WHERE request_digest IS NOT NULL") == 0

    # A key is unique per customer now: b may use a's key, a may not use it twice.
    await _contact(conn, b, "pos-1", "b's")
    with pytest.raises(asyncpg.UniqueViolationError):
        await _contact(conn, a, "pos-1")


async def test_a_merge_of_two_customers_who_used_one_key_renames_the_merged_ones(
        conn: asyncpg.Connection, uid: str) -> None:
    await migrate(conn, f"ixmig_{uid}", migrations_for(INTERACTIONS.migrations))
    await conn.execute(f"SET search_path TO ixmig_{uid}")
    survivor, merged = uuid.uuid4(), uuid.uuid4()
    await _contact(conn, survivor, "pos-1", "survivor's")
    await _contact(conn, merged, "pos-1", "merged one's")
    await _contact(conn, merged, "pos-2", "merged one's only")
    await store.remember_customers(conn, [survivor, merged])
    async with conn.transaction():
        await store.repoint_customer(conn, survivor, merged)
    rows = await conn.fetch("SELECT customer_id, idempotency_key, notes FROM interactions")
    assert sorted((r["customer_id"], r["idempotency_key"], r["notes"]) for r in rows) == sorted([
        (survivor, "pos-1", "survivor's"),
        (survivor, f"merged:{merged}:pos-1", "merged one's"),
        (survivor, "pos-2", "merged one's only")])
    # The merged id is known through its alias, not on its own.
    assert {r["customer_id"] for r in await conn.fetch("SELECT * FROM known_customers")} == {
        survivor}
    assert await store.unknown_customers(conn, [merged, survivor]) == set()
