"""Webhooks: every SQL statement over ``webhooks``, ``webhook_events`` and
``webhook_deliveries`` (migration 005).

Times here are the database's (``clock_timestamp()``): deliveries are
real-time I/O, retried after real seconds, whatever clock the rest of the
service runs on. A pending delivery is due at ``next_attempt_at``; while an
attempt is on its way that time is the end of the attempt's lease, so no
other worker (or replica) takes it, and a worker that died mid-attempt
leaves it due again when the lease ends.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from crm_runtime.db import Conn
from services.loyalty.webhooks import StoredEvent, WebhookSpec

#: The NOTIFY channel that wakes the delivering worker of ``schema``.
CHANNEL = "crm_webhooks"


def channel(schema: str) -> str:
    """The channel the workers of ``schema`` listen on."""
    return f"{CHANNEL}.{schema[:48]}"


# --- subscriptions ---------------------------------------------------------------------

_WEBHOOK_COLUMNS = """w.webhook_id, w.url, w.event_types, w.customer_id, w.content_mode,
    w.max_attempts, w.secret, w.secret_generated, w.description, w.state, w.created_at,
    w.deleted_at"""

_COUNTS = """
    coalesce((SELECT count(*) FROM webhook_deliveries d
               WHERE d.webhook_id = w.webhook_id AND d.state = 'pending'), 0) AS pending,
    coalesce((SELECT count(*) FROM webhook_deliveries d
               WHERE d.webhook_id = w.webhook_id AND d.state = 'delivered'), 0) AS delivered,
    coalesce((SELECT count(*) FROM webhook_deliveries d
               WHERE d.webhook_id = w.webhook_id AND d.state = 'failed'), 0) AS failed"""


async def insert_webhook(conn: Conn, spec: WebhookSpec) -> bool:
    """Store a new subscription; False when the id is taken."""
    row = await conn.fetchrow(
        """INSERT INTO webhooks (webhook_id, url, event_types, customer_id, content_mode,
                                 max_attempts, secret, secret_generated, description)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
           ON CONFLICT (webhook_id) DO NOTHING RETURNING webhook_id""",
        spec.webhook_id, spec.url, list(spec.event_types), spec.customer_id,
        spec.content_mode, spec.max_attempts, spec.secret, spec.secret_generated,
        spec.description)
    return row is not None


async def webhook(conn: Conn, webhook_id: str, *, lock: bool = False) -> Any:
    """The subscription with its delivery counts, or None."""
    return await conn.fetchrow(
        f"""SELECT {_WEBHOOK_COLUMNS}, {_COUNTS} FROM webhooks w WHERE w.webhook_id = $1
            {"FOR UPDATE" if lock else ""}""", webhook_id)


async def webhooks(conn: Conn, include_deleted: bool) -> list[Any]:
    return list(await conn.fetch(
        f"""SELECT {_WEBHOOK_COLUMNS}, {_COUNTS} FROM webhooks w
             WHERE $1 OR w.state = 'active' ORDER BY w.webhook_id""", include_deleted))


async def delete_webhook(conn: Conn, webhook_id: str) -> None:
    """Mark an active subscription deleted; its pending deliveries are never
    sent (state ``deleted``)."""
    changed = await conn.fetchval(
        """UPDATE webhooks SET state = 'deleted', deleted_at = clock_timestamp()
            WHERE webhook_id = $1 AND state = 'active' RETURNING webhook_id""", webhook_id)
    if changed is not None:
        dropped = await conn.fetch(
            """UPDATE webhook_deliveries SET state = 'deleted', updated_at = clock_timestamp()
                WHERE webhook_id = $1 AND state = 'pending' RETURNING delivery_id,
                      erase_when_done""", webhook_id)
        await _delete_deliveries(conn, [r["delivery_id"] for r in dropped
                                        if r["erase_when_done"]])


@dataclass(frozen=True)
class Filter:
    """What an active subscription takes."""

    webhook_id: str
    event_types: tuple[str, ...]
    customer_id: str | None


async def active_patterns(pool: asyncpg.Pool) -> tuple[str, ...]:
    """Every event-type pattern of an active webhook, sorted, each once."""
    patterns: list[str] = await pool.fetchval(
        """SELECT coalesce(array_agg(DISTINCT p ORDER BY p), '{}')
             FROM webhooks, unnest(event_types) AS p WHERE state = 'active'""")
    return tuple(patterns)


async def active_filters(conn: Conn) -> list[Filter]:
    """The active subscriptions, share-locked until the batch commits: a
    DeleteWebhook waits for the batch (whose deliveries it then drops), or
    the batch waits for it and no longer sees the webhook; never a pending
    delivery of a deleted webhook that nothing would ever send or drop."""
    rows = await conn.fetch(
        """SELECT webhook_id, event_types, customer_id FROM webhooks WHERE state = 'active'
            ORDER BY webhook_id FOR SHARE""")
    return [Filter(r["webhook_id"], tuple(r["event_types"]),
                   str(r["customer_id"]) if r["customer_id"] is not None else None)
            for r in rows]


# --- enqueueing --------------------------------------------------------------------------


async def enqueue(conn: Conn, events: Sequence[StoredEvent],
                  deliveries: Sequence[tuple[str, StoredEvent]]) -> int:
    """Store ``events`` (once: an event stored before stays) and one pending
    delivery per (webhook id, event), in the given order; a delivery that
    exists already is left alone. Returns how many were new. A delivery
    about a customer loyalty knows as erased (an event that followed the
    erasure: loyalty's own reactions to it) is deleted once it is done, as
    those pending at the erasure are."""
    await conn.execute(
        """INSERT INTO webhook_events (event_id, event_type, source, subject, time,
                                       traceparent, data)
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                                $5::timestamptz[], $6::text[], $7::bytea[])
           ON CONFLICT (event_id) DO NOTHING""",
        [e.event_id for e in events], [e.event_type for e in events],
        [e.source for e in events], [e.subject for e in events], [e.time for e in events],
        [e.traceparent for e in events], [e.data for e in events])
    rows = await conn.fetch(
        """INSERT INTO webhook_deliveries (delivery_id, webhook_id, event_id, event_type,
                                           subject, erase_when_done)
           SELECT gen_random_uuid(), w, e, t, s,
                  CASE WHEN s ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                       THEN EXISTS (SELECT 1 FROM customer_view v
                                     WHERE v.customer_id = s::uuid
                                       AND v.erased_at IS NOT NULL)
                       ELSE false END
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY
                  AS r(w, e, t, s, n)
            ORDER BY n
           ON CONFLICT (webhook_id, event_id) DO NOTHING RETURNING delivery_id""",
        [w for w, _ in deliveries], [e.event_id for _, e in deliveries],
        [e.event_type for _, e in deliveries], [e.subject for _, e in deliveries])
    return len(rows)


async def notify(conn: Conn) -> None:
    """Wake the delivering workers of this schema once the transaction commits
    (their channel: :func:`channel`)."""
    await conn.execute(f"SELECT pg_notify('{CHANNEL}.' || left(current_schema(), 48), '')")


# --- delivering --------------------------------------------------------------------------

#: Of each active webhook, up to ``$1`` due deliveries that head their
#: (webhook, subject) queue (no earlier pending delivery of the same webhook
#: and subject), locked until the transaction ends (others skip them): the
#: caller leases the ones it takes. Per webhook, so that one webhook's
#: backlog never hides another's due deliveries.
_CANDIDATES = """
    SELECT d.delivery_id, d.webhook_id, d.next_attempt_at
      FROM webhooks w CROSS JOIN LATERAL (
           SELECT d.delivery_id, d.webhook_id, d.next_attempt_at, d.seq
             FROM webhook_deliveries d
            WHERE d.webhook_id = w.webhook_id AND d.state = 'pending'
              AND d.next_attempt_at <= clock_timestamp()
              AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p
                               WHERE p.webhook_id = d.webhook_id AND p.subject = d.subject
                                 AND p.state = 'pending' AND p.seq < d.seq)
            ORDER BY d.next_attempt_at, d.seq
            LIMIT $1
              FOR UPDATE OF d SKIP LOCKED) AS d
     WHERE w.state = 'active'
     ORDER BY d.next_attempt_at, d.seq"""

_LEASE = """
    UPDATE webhook_deliveries d
       SET attempts = d.attempts + 1, updated_at = clock_timestamp(),
           next_attempt_at = clock_timestamp() + make_interval(secs => $2)
      FROM webhook_events e, webhooks w
     WHERE d.delivery_id = ANY($1::uuid[]) AND e.event_id = d.event_id
       AND w.webhook_id = d.webhook_id
    RETURNING d.delivery_id, d.webhook_id, d.attempts, w.url, w.secret, w.content_mode,
              w.max_attempts, e.event_id, e.event_type, e.source, e.subject, e.time,
              e.traceparent, e.data"""


@dataclass(frozen=True)
class Claimed:
    """A delivery leased for one attempt (``attempt``: its number, 1 first)."""

    delivery_id: uuid.UUID
    webhook_id: str
    attempt: int
    url: str
    secret: str
    content_mode: str
    max_attempts: int
    event: StoredEvent


async def candidates(conn: Conn, per_webhook: int) -> list[tuple[uuid.UUID, str]]:
    """(delivery id, webhook id) of due queue heads, up to ``per_webhook`` of
    each webhook, the earliest due first; locked until the transaction ends.

    Planned on every call (a custom plan): a generic plan made while the
    table was nearly empty stays in the statement cache until the next
    ANALYZE and cost 20 times more on a backlog of 20,000 (measured)."""
    await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
    return [(r["delivery_id"], r["webhook_id"])
            for r in await conn.fetch(_CANDIDATES, per_webhook)]


async def lease(conn: Conn, delivery_ids: Sequence[uuid.UUID], seconds: float) -> list[Claimed]:
    """Count an attempt of each and keep it from others for ``seconds``."""
    if not delivery_ids:
        return []
    rows = await conn.fetch(_LEASE, list(delivery_ids), seconds)
    return [Claimed(delivery_id=r["delivery_id"], webhook_id=r["webhook_id"],
                    attempt=r["attempts"], url=r["url"], secret=r["secret"],
                    content_mode=r["content_mode"], max_attempts=r["max_attempts"],
                    event=StoredEvent(event_id=r["event_id"], event_type=r["event_type"],
                                      source=r["source"], subject=r["subject"], time=r["time"],
                                      traceparent=r["traceparent"], data=r["data"]))
            for r in rows]


async def record(conn: Conn, claimed: Claimed, *, state: str, status_code: int, error: str,
                 response: str, retry_in: float | None) -> bool:
    """The outcome of ``claimed``'s attempt: ``state`` pending (again due in
    ``retry_in`` seconds), delivered or failed. False when the delivery
    moved on meanwhile (its webhook was deleted, or its lease ended and
    another attempt took it): nothing is recorded. A finished delivery of
    an erased subject is deleted."""
    row = await conn.fetchrow(
        """UPDATE webhook_deliveries
              SET state = $3, last_status_code = $4, last_error = $5, last_response = $6,
                  next_attempt_at = CASE WHEN $3 = 'pending'
                                         THEN clock_timestamp() + make_interval(secs => $7)
                                         ELSE next_attempt_at END,
                  delivered_at = CASE WHEN $3 = 'delivered' THEN clock_timestamp() END,
                  updated_at = clock_timestamp()
            WHERE delivery_id = $1 AND attempts = $2 AND state = 'pending'
           RETURNING erase_when_done""",
        claimed.delivery_id, claimed.attempt, state, status_code, error, response,
        retry_in or 0.0)
    if row is None:
        return False
    if row["erase_when_done"] and state != "pending":
        await _delete_deliveries(conn, [claimed.delivery_id])
    return True


async def _delete_deliveries(conn: Conn, delivery_ids: Sequence[uuid.UUID]) -> None:
    """Delete deliveries, and their events that no delivery needs any more."""
    gone = await conn.fetch(
        "DELETE FROM webhook_deliveries WHERE delivery_id = ANY($1::uuid[]) RETURNING event_id",
        list(delivery_ids))
    await _drop_orphans(conn, sorted({r["event_id"] for r in gone}))


async def _drop_orphans(conn: Conn, event_ids: list[str]) -> None:
    if event_ids:
        await conn.execute(
            """DELETE FROM webhook_events e WHERE e.event_id = ANY($1::text[])
                 AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d
                                  WHERE d.event_id = e.event_id)""", event_ids)


async def prune(conn: Conn, retention_days: int, limit: int) -> int:
    """Delete up to ``limit`` deliveries finished (delivered, parked or
    dropped) more than ``retention_days`` ago, with their events no delivery
    needs any more; returns how many."""
    gone = await conn.fetch(
        """DELETE FROM webhook_deliveries WHERE delivery_id IN (
               SELECT delivery_id FROM webhook_deliveries
                WHERE state <> 'pending'
                  AND updated_at < clock_timestamp() - make_interval(days => $1)
                LIMIT $2)
           RETURNING event_id""", retention_days, limit)
    await _drop_orphans(conn, sorted({r["event_id"] for r in gone}))
    return len(gone)


# --- the API's reads and replays ---------------------------------------------------------

_DELIVERY_COLUMNS = """delivery_id, webhook_id, event_id, event_type, subject, state, attempts,
    last_status_code, last_error, last_response, next_attempt_at, delivered_at, created_at"""


async def deliveries(conn: Conn, webhook_id: str, *, state: str, subject: str,
                     after: tuple[datetime, uuid.UUID] | None, limit: int) -> list[Any]:
    """A webhook's deliveries newest first, after the keyset position ``after``."""
    return list(await conn.fetch(
        f"""SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries
             WHERE webhook_id = $1 AND ($2 = '' OR state = $2) AND ($3 = '' OR subject = $3)
               AND ($4::timestamptz IS NULL OR (created_at, delivery_id) < ($4, $5::uuid))
             ORDER BY created_at DESC, delivery_id DESC LIMIT $6""",
        webhook_id, state, subject, after[0] if after else None, after[1] if after else None,
        limit))


async def failed_among(conn: Conn, webhook_id: str, delivery_ids: Sequence[uuid.UUID]
                       ) -> set[uuid.UUID]:
    """Which of these are failed deliveries of the webhook."""
    rows = await conn.fetch(
        """SELECT delivery_id FROM webhook_deliveries
            WHERE webhook_id = $1 AND delivery_id = ANY($2::uuid[]) AND state = 'failed'""",
        webhook_id, list(delivery_ids))
    return {r["delivery_id"] for r in rows}


async def replay(conn: Conn, webhook_id: str, delivery_ids: Sequence[uuid.UUID] | None) -> int:
    """Failed deliveries of the webhook (these, or all) pending again, from
    the first attempt, due now; returns how many."""
    rows = await conn.fetch(
        """UPDATE webhook_deliveries
              SET state = 'pending', attempts = 0, next_attempt_at = clock_timestamp(),
                  updated_at = clock_timestamp()
            WHERE webhook_id = $1 AND state = 'failed'
              AND ($2::uuid[] IS NULL OR delivery_id = ANY($2::uuid[]))
           RETURNING delivery_id""",
        webhook_id, list(delivery_ids) if delivery_ids is not None else None)
    return len(rows)


# --- privacy -----------------------------------------------------------------------------


async def erase_subjects(conn: Conn, subjects: Sequence[str]) -> None:
    """Erasure of these customers (their ids as event subjects): their
    finished deliveries and the events only those held are deleted; the
    pending ones still go out (events carry ids, not contact details) and
    are deleted once delivered or parked."""
    finished = await conn.fetch(
        """SELECT delivery_id FROM webhook_deliveries
            WHERE subject = ANY($1::text[]) AND state <> 'pending'""", list(subjects))
    await _delete_deliveries(conn, [r["delivery_id"] for r in finished])
    await conn.execute(
        """UPDATE webhook_deliveries SET erase_when_done = true
            WHERE subject = ANY($1::text[]) AND state = 'pending'""", list(subjects))


async def aliases(conn: Conn, customer_id: str) -> list[str]:
    """The ids merged into this customer, as loyalty knows them."""
    rows = await conn.fetch("SELECT customer_id FROM customer_view WHERE merged_into = $1::uuid",
                            customer_id)
    return [str(r["customer_id"]) for r in rows]


# --- gauges ------------------------------------------------------------------------------

BACKLOG_SQL = """SELECT webhook_id, count(*) FROM webhook_deliveries
                  WHERE state = 'pending' GROUP BY webhook_id"""
OLDEST_PENDING_SQL = """SELECT webhook_id,
                               extract(epoch FROM clock_timestamp() - min(created_at))
                          FROM webhook_deliveries WHERE state = 'pending' GROUP BY webhook_id"""
FAILED_SQL = """SELECT webhook_id, count(*) FROM webhook_deliveries
                 WHERE state = 'failed' GROUP BY webhook_id"""
