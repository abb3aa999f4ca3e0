"""Data of the customers workloads: customers stored straight into the
service's tables, and the purchase events the service consumes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import asyncpg

from crm_contracts.interactions import InteractionRecorded
from crm_runtime.events import Envelope

#: The service's schema (``ServiceSpec.schema`` of the customers service).
SCHEMA = "customers"

_PROFILE = json.dumps({"preferred_channel": "email", "birth_year": 1984,
                       "buyer_type": "individual"})


async def seed_customers(conn: asyncpg.Connection, count: int,
                         consents: Sequence[str] = ()) -> list[uuid.UUID]:
    """Store ``count`` customers (stage potential, one email each, each
    having granted ``consents``) with COPY, as registration and ``SetConsent``
    would have left them, then ANALYZE the tables; returns their ids.
    ``conn`` is a plain connection (no runtime codecs)."""
    ids = [uuid.uuid4() for _ in range(count)]
    now = datetime.now(UTC)
    async with conn.transaction():
        await conn.copy_records_to_table(
            "customers", schema_name=SCHEMA,
            columns=("customer_id", "display_name", "profile", "created_at", "updated_at"),
            records=((cid, f"Customer {i}", _PROFILE, now, now) for i, cid in enumerate(ids)))
        await conn.copy_records_to_table(
            "customer_identifiers", schema_name=SCHEMA,
            columns=("kind", "value", "customer_id", "position"),
            records=(("email", f"customer{i}@bench.example.com", cid, 1)
                     for i, cid in enumerate(ids)))
        await conn.copy_records_to_table(
            "consents", schema_name=SCHEMA,
            columns=("customer_id", "purpose", "granted", "at", "source"),
            records=((cid, purpose, True, now, "bench") for cid in ids for purpose in consents))
    await conn.execute(
        f"ANALYZE {SCHEMA}.customers, {SCHEMA}.customer_identifiers, {SCHEMA}.consents")
    return ids


def purchase_envelopes(customers: list[uuid.UUID], count: int) -> list[Envelope]:
    """``count`` ``interaction.recorded`` purchases: one for every customer,
    then a second one for the first ``count - len(customers)`` of them, so each
    moves a stage (potential -> one_time, then one_time -> repeat)."""
    if not len(customers) <= count <= 2 * len(customers):
        raise ValueError(f"{count} purchases cannot move {len(customers)} customers once or "
                         "twice each")
    start = datetime.now(UTC) - timedelta(days=30)
    order = [*customers, *customers[:count - len(customers)]]
    envelopes: list[Envelope] = []
    for i, cid in enumerate(order):
        subject = str(cid)
        envelopes.append(Envelope(data=InteractionRecorded(
            interaction_id=str(uuid.uuid4()), customer_id=subject, channel="web",
            direction="reactive", kind="purchase", occurred_at=start + timedelta(seconds=i),
            amount_minor=1000 + i % 5000, currency="EUR"), subject=subject,
            source="/crm/bench"))
    return envelopes
