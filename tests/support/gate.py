"""What the contact gate decides with, for tests that play the customers
service's events themselves.

Tests of interactions and loyalty publish ``customer.registered``,
``customer.consent_changed``, ``customer.erased`` and ``customer.merged`` as
the customers service would, for customer ids they make up. The contact
gate (a real customers service beside them) decides with the customers
service's own tables, so :func:`mirror` writes the same facts there
(customers, consents, do-not-contact, erasure, merges; the latest decision
per purpose wins, as ``SetConsent`` does): the gate then answers as it would
for customers the service had announced itself."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime

import asyncpg

from crm_contracts.customers import (
    ConsentChanged,
    CustomerErased,
    CustomerRegistered,
    CustomersMerged,
)
from crm_contracts.vocabulary import DO_NOT_CONTACT
from crm_runtime.db import Conn
from crm_runtime.events import Envelope

SCHEMA = "customers"


async def mirror(pool: asyncpg.Pool, envelopes: Iterable[Envelope]) -> None:
    """Write into the customers service's tables what these events say (on a
    service's pool of the same database, with the runtime's JSON codecs;
    other events are left alone)."""
    async with pool.acquire() as conn, conn.transaction():
        for env in envelopes:
            data = env.data
            if isinstance(data, CustomerRegistered):
                await _known(conn, data.customer_id, env.time, data.time_zone)
            elif isinstance(data, ConsentChanged):
                await _known(conn, data.customer_id, env.time)
                await _consent(conn, data.customer_id, data.purpose, data.granted,
                               data.changed_at or env.time)
            elif isinstance(data, CustomerErased):  # of customers it has only
                await conn.execute(
                    f"""UPDATE {SCHEMA}.customers SET erased_at = $2, do_not_contact = true
                         WHERE customer_id = $1""", uuid.UUID(data.customer_id), env.time)
            elif isinstance(data, CustomersMerged):  # of customers it has only
                await conn.execute(
                    f"UPDATE {SCHEMA}.customers SET merged_into = $1 WHERE customer_id = $2",
                    uuid.UUID(data.customer_id), uuid.UUID(data.merged_customer_id))


async def _known(conn: Conn, customer_id: str, at: datetime,
                 time_zone: str = "") -> None:
    profile = {"time_zone": time_zone} if time_zone else {}  # the pools' jsonb codec
    await conn.execute(
        f"""INSERT INTO {SCHEMA}.customers (customer_id, profile, created_at, updated_at)
            VALUES ($1, $2::jsonb, $3, $3)
            ON CONFLICT (customer_id) DO UPDATE SET profile = customers.profile || $2::jsonb""",
        uuid.UUID(customer_id), profile, at)


async def _consent(conn: Conn, customer_id: str, purpose: str, granted: bool,
                   at: datetime) -> None:
    cid = uuid.UUID(customer_id)
    await conn.execute(
        f"""INSERT INTO {SCHEMA}.consents (customer_id, purpose, granted, at, source)
            VALUES ($1, $2, $3, $4, 'test')
            ON CONFLICT (customer_id, purpose) DO UPDATE
               SET granted = EXCLUDED.granted, at = EXCLUDED.at
             WHERE consents.at <= EXCLUDED.at""", cid, purpose, granted, at)
    if purpose == DO_NOT_CONTACT:
        await conn.execute(
            f"""UPDATE {SCHEMA}.customers c SET do_not_contact = k.granted
                  FROM {SCHEMA}.consents k
                 WHERE c.customer_id = $1 AND k.customer_id = c.customer_id
                   AND k.purpose = $2""", cid, DO_NOT_CONTACT)
