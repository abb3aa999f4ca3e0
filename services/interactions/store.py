"""SQL for the interactions schema. Every function runs on the caller's
connection, inside the caller's transaction; none commits.

Contacts go in as a batch (:func:`insert_contacts`: one statement, or a
straight ``COPY`` for a large batch of new keys); the rest is one small
statement per function, rows returned as asyncpg records.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from crm_runtime import db
from crm_runtime.db import Conn
from crm_runtime.errors import NotFound
from services.interactions.business_time import Calendar

SERVICE = "interactions"

#: The columns of a contact as :func:`insert_contacts` takes it, in order.
CONTACT_COLUMNS = [
    ("interaction_id", "uuid"), ("idempotency_key", "text"), ("customer_id", "uuid"),
    ("channel", "text"), ("direction", "text"), ("kind", "text"), ("attention", "text"),
    ("requester_id", "uuid"), ("decision_maker_id", "uuid"), ("touchpoint", "text"),
    ("agent", "text"), ("unit", "text"), ("occurred_at", "timestamptz"), ("outcome", "text"),
    ("notes", "text"), ("amount_minor", "bigint"), ("currency", "text"),
    ("recorded_at", "timestamptz"), ("request_digest", "bytea"), ("cause", "text")]

#: A batch of contacts as rows (arrays or COPY, by size: :class:`db.Rows`).
_CONTACT_ROWS = db.Rows("interactions_batch", CONTACT_COLUMNS, schema=SERVICE)

_INSERT_CONTACTS = """
    WITH batch AS ({interactions_batch})
    INSERT INTO interactions (interaction_id, idempotency_key, customer_id, channel, direction,
                              kind, attention, requester_id, decision_maker_id, touchpoint, agent,
                              unit, occurred_at, outcome, notes, amount_minor, currency,
                              recorded_at, request_digest, cause)
    SELECT * FROM batch
    ON CONFLICT (customer_id, idempotency_key) DO NOTHING RETURNING customer_id, idempotency_key"""

#: A customer's idempotency key.
ScopedKey = tuple[uuid.UUID, str]


# --- contacts ---------------------------------------------------------------

async def insert_contacts(conn: Conn, rows: Sequence[tuple[Any, ...]]) -> set[ScopedKey]:
    """Store contacts (rows of :data:`CONTACT_COLUMNS`) once per customer and
    idempotency key; returns the (customer, key) pairs stored now (a pair
    stored before, or repeated in the batch, keeps its first row)."""
    if await _CONTACT_ROWS.copy_unless_taken(conn, "interactions", rows):
        return {(r[2], r[1]) for r in rows}
    # A small batch, or a key seen before: the statement keeps the first.
    return {(r["customer_id"], r["idempotency_key"])
            for r in await _CONTACT_ROWS.fetch(conn, _INSERT_CONTACTS, rows)}


async def contacts_by_keys(conn: Conn, keys: Iterable[ScopedKey]) -> dict[ScopedKey, Any]:
    """The stored contacts of these (customer, key) pairs, by pair."""
    pairs = list(set(keys))
    rows = await conn.fetch(
        """SELECT i.* FROM unnest($1::uuid[], $2::text[]) AS k(customer_id, idempotency_key)
             JOIN interactions i USING (customer_id, idempotency_key)""",
        [p[0] for p in pairs], [p[1] for p in pairs])
    return {(r["customer_id"], r["idempotency_key"]): r for r in rows}


async def set_case_of_interaction(conn: Conn, interaction_id: uuid.UUID,
                                  case_id: uuid.UUID) -> None:
    await conn.execute("UPDATE interactions SET case_id = $1 WHERE interaction_id = $2",
                       case_id, interaction_id)


async def interaction_by_key(conn: Conn, customer_id: uuid.UUID, key: str) -> Any:
    """The customer's contact stored under ``key``, if any."""
    return await conn.fetchrow(
        "SELECT * FROM interactions WHERE customer_id = $1 AND idempotency_key = $2",
        customer_id, key)


async def interaction_of_customer(conn: Conn, interaction_id: uuid.UUID,
                                  customer_id: uuid.UUID) -> Any:
    """The customer's contact of that id (its touchpoint and cause), if any."""
    return await conn.fetchrow(
        "SELECT touchpoint, cause FROM interactions WHERE interaction_id = $1 "
        "AND customer_id = $2", interaction_id, customer_id)


#: One part of a timeline: the contacts in which the customer (``$1``, with
#: the ids merged into them ``$7``) took ``role``, newest first, filtered and
#: after the cursor. Each part reads an index of its own (the customer's
#: timeline, the requesters', the decision makers'); a contact appears in the
#: first part it belongs to only.
_TIMELINE_PART = """
    (SELECT i.*, '{role}' AS role FROM interactions i
      WHERE {who}
        AND (cardinality($2::text[]) = 0 OR channel = ANY($2))
        AND (cardinality($3::text[]) = 0 OR kind = ANY($3))
        AND ($4::timestamptz IS NULL OR (occurred_at, interaction_id) < ($4, $5::uuid))
      ORDER BY occurred_at DESC, interaction_id DESC LIMIT $6)"""
_TIMELINE_ROLES = (
    ("customer", "customer_id = $1"),
    ("requester", "requester_id = ANY($7::uuid[]) AND customer_id <> $1"),
    ("decision_maker", "decision_maker_id = ANY($7::uuid[]) AND customer_id <> $1 "
                       "AND NOT coalesce(requester_id = ANY($7::uuid[]), false)"))
_TIMELINE = ("SELECT * FROM ("
             + " UNION ALL ".join(_TIMELINE_PART.format(role=role, who=who)
                                  for role, who in _TIMELINE_ROLES)
             + ") AS t ORDER BY occurred_at DESC, interaction_id DESC LIMIT $6")


async def timeline(conn: Conn, customer_id: uuid.UUID, channels: list[str], kinds: list[str],
                   after: tuple[datetime, uuid.UUID] | None, limit: int) -> list[Any]:
    """The customer's contacts and those they were the requester or decision
    maker of (column ``role``: customer, requester, decision_maker; a
    contact once, in the first role that applies), newest first, optionally
    of some channels and kinds only (empty: all), after a (occurred_at,
    interaction_id) cursor. ``customer_id`` is a survivor: contacts naming
    the ids merged into it count as theirs."""
    merged = await conn.fetch("SELECT merged_customer_id FROM customer_aliases "
                              "WHERE survivor_customer_id = $1", customer_id)
    return list(await conn.fetch(
        _TIMELINE, customer_id, channels, kinds, after[0] if after else None,
        after[1] if after else None, limit,
        [customer_id, *(r["merged_customer_id"] for r in merged)]))


# --- cases ------------------------------------------------------------------

async def case_by_key(conn: Conn, customer_id: uuid.UUID, idempotency_key: str) -> Any:
    """The customer's case opened under ``idempotency_key``, if any."""
    return await conn.fetchrow(
        "SELECT * FROM cases WHERE customer_id = $1 AND idempotency_key = $2",
        customer_id, idempotency_key)


async def insert_case(conn: Conn, case_id: uuid.UUID, idempotency_key: str,
                      customer_id: uuid.UUID, kind: str, channel: str, unit: str, summary: str,
                      interaction_id: uuid.UUID | None, opened_at: datetime,
                      promised_earliest_at: datetime, promised_by: datetime, warn_at: datetime,
                      callback_phone: str, request_digest: bytes | None, *,
                      calendar: Calendar, clock: str, policy: dict[str, Any],
                      policy_reason: str, cause: str = "", touchpoint: str = "") -> Any:
    """Store the case, with the calendar its promise counts on and the
    policy it got and why; returns its row, or None (nothing stored) when
    the customer has a case of that key already (a concurrent request with
    the same key committed)."""
    return await conn.fetchrow(
        """INSERT INTO cases (case_id, idempotency_key, customer_id, kind, channel, unit, summary,
                              interaction_id, opened_at, promised_earliest_at, promised_by,
                              warn_at, callback_phone, request_digest, calendar,
                              calendar_version, clock, policy, policy_reason, cause, touchpoint)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                   $18, $19, $20, $21)
           ON CONFLICT (customer_id, idempotency_key) DO NOTHING RETURNING *""",
        case_id, idempotency_key, customer_id, kind, channel, unit, summary, interaction_id,
        opened_at, promised_earliest_at, promised_by, warn_at, callback_phone, request_digest,
        calendar.name, calendar.version, clock, policy, policy_reason, cause, touchpoint)


async def case_owners(conn: Conn, case_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
    """The customer of each of these cases that exists."""
    rows = await conn.fetch("SELECT case_id, customer_id FROM cases WHERE case_id = ANY($1)",
                            list(case_ids))
    return {r["case_id"]: r["customer_id"] for r in rows}


async def other_complaints_opened_at(conn: Conn, customer_id: uuid.UUID,
                                     case_id: uuid.UUID) -> list[datetime]:
    """When the customer's complaints other than ``case_id`` were opened."""
    rows = await conn.fetch(
        """SELECT opened_at FROM cases WHERE customer_id = $1 AND kind = 'complaint'
              AND case_id <> $2""", customer_id, case_id)
    return [r["opened_at"] for r in rows]


async def load_case(conn: Conn, case_id: uuid.UUID, *, lock: bool = False) -> Any:
    """The case's row (``lock``: for update); NotFound if unknown."""
    row = await conn.fetchrow("SELECT * FROM cases WHERE case_id = $1"
                              + (" FOR UPDATE" if lock else ""), case_id)
    if row is None:
        raise NotFound("case", str(case_id))
    return row


async def acknowledge_case(conn: Conn, case_id: uuid.UUID, at: datetime) -> None:
    await conn.execute("UPDATE cases SET status = 'acknowledged', acknowledged_at = $2 "
                       "WHERE case_id = $1", case_id, at)


async def transfer_case(conn: Conn, case_id: uuid.UUID, from_unit: str, to_unit: str,
                        reason: str, at: datetime) -> None:
    """Move the case to ``to_unit`` and record the transfer."""
    await conn.execute("UPDATE cases SET unit = $2 WHERE case_id = $1", case_id, to_unit)
    await conn.execute("INSERT INTO case_transfers VALUES ($1, $2, $3, $4, $5)",
                       case_id, from_unit, to_unit, reason, at)


async def mark_breached(conn: Conn, case_id: uuid.UUID) -> None:
    await conn.execute("UPDATE cases SET breached = true WHERE case_id = $1", case_id)


async def resolve_case(conn: Conn, case_id: uuid.UUID, at: datetime, resolution: str,
                       late: bool) -> None:
    await conn.execute(
        """UPDATE cases SET status = 'resolved', resolved_at = $2, resolution = $3,
                  resolved_late = $4 WHERE case_id = $1""", case_id, at, resolution, late)


async def open_complaints(conn: Conn, customer_id: uuid.UUID) -> int:
    """How many of the customer's complaints are not resolved."""
    count: int = await conn.fetchval(
        """SELECT count(*) FROM cases WHERE customer_id = $1 AND kind = 'complaint'
              AND status <> 'resolved'""", customer_id)
    return count


async def reopen_case(conn: Conn, case_id: uuid.UUID, reason: str) -> None:
    await conn.execute(
        """UPDATE cases SET status = 'open', resolved_at = NULL, resolution = '',
                  resolved_late = false, reopen_reason = $2 WHERE case_id = $1""",
        case_id, reason)


async def list_cases(conn: Conn, which: str, now: datetime, unit: str,
                     customer_id: uuid.UUID | None, after: uuid.UUID | None,
                     limit: int) -> list[Any]:
    """A page of cases by ``case_id``: ``which`` is one of open, breaching
    (unresolved and running, a milestone not missed yet past its warning at
    ``now``), breached (a milestone missed), paused, resolved or all;
    ``unit`` '' and ``customer_id`` None mean any."""
    return list(await conn.fetch(
        """SELECT * FROM cases c
            WHERE ($1 = 'all'
                   OR ($1 = 'open' AND status <> 'resolved')
                   OR ($1 = 'resolved' AND status = 'resolved')
                   OR ($1 = 'paused' AND status <> 'resolved' AND paused_at IS NOT NULL)
                   OR ($1 = 'breached' AND (breached OR EXISTS (
                       SELECT 1 FROM case_milestones m
                        WHERE m.case_id = c.case_id AND m.state = 'missed')))
                   OR ($1 = 'breaching' AND status <> 'resolved' AND paused_at IS NULL
                       AND EXISTS (SELECT 1 FROM case_milestones m
                                    WHERE m.case_id = c.case_id
                                      AND (m.state = 'warning'
                                           OR (m.state = 'pending' AND m.warn_at <= $2)))))
              AND ($3 = '' OR unit = $3)
              AND ($4::uuid IS NULL OR customer_id = $4)
              AND ($5::uuid IS NULL OR case_id > $5)
            ORDER BY case_id LIMIT $6""",
        which, now, unit, customer_id, after, limit))


async def transfers(conn: Conn, case_id: uuid.UUID) -> list[Any]:
    return list(await conn.fetch(
        "SELECT from_unit, to_unit, reason, at FROM case_transfers WHERE case_id = $1"
        " ORDER BY at", case_id))


# --- satisfaction -----------------------------------------------------------

async def survey_by_key(conn: Conn, customer_id: uuid.UUID, idempotency_key: str) -> Any:
    """The customer's survey response stored under ``idempotency_key``, if any."""
    return await conn.fetchrow(
        "SELECT * FROM survey_responses WHERE customer_id = $1 AND idempotency_key = $2",
        customer_id, idempotency_key)


async def insert_survey(conn: Conn, survey_response_id: uuid.UUID, idempotency_key: str,
                        customer_id: uuid.UUID, touchpoint: str, channel: str, unit: str,
                        interaction_id: uuid.UUID | None, case_id: uuid.UUID | None,
                        csat: float | None, nps: int | None, answers: list[dict[str, Any]],
                        occurred_at: datetime, request_digest: bytes | None) -> Any:
    """Store a survey response; returns its row, or None (nothing stored)
    when the customer has a response of that key already (a concurrent
    request with the same key committed)."""
    return await conn.fetchrow(
        """INSERT INTO survey_responses (survey_response_id, idempotency_key, customer_id,
               touchpoint, channel, unit, interaction_id, case_id, csat, nps, answers,
               occurred_at, request_digest)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
           ON CONFLICT (customer_id, idempotency_key) DO NOTHING RETURNING *""",
        survey_response_id, idempotency_key, customer_id, touchpoint, channel, unit,
        interaction_id, case_id, csat, nps, answers, occurred_at, request_digest)


# --- customers: erasure and merges ---------------------------------------------

async def scrub_customer(conn: Conn, customer_id: uuid.UUID) -> None:
    """Erasure: notes, people's free text and contact details go; counts and
    scores stay. Other customers' contacts that named the customer as the
    requester or decision maker forget them (their timeline no longer finds
    those contacts, nor does an export)."""
    await conn.execute("UPDATE interactions SET notes = '' WHERE customer_id = $1", customer_id)
    for column in ("requester_id", "decision_maker_id"):  # the ids merged into it too
        await conn.execute(
            f"""UPDATE interactions SET {column} = NULL
                 WHERE {column} = $1 OR {column} IN (
                       SELECT merged_customer_id FROM customer_aliases
                        WHERE survivor_customer_id = $1)""", customer_id)
    await conn.execute(
        "UPDATE cases SET summary = '', resolution = '', callback_phone = '', reopen_reason = '', "
        "pause_reason = '' WHERE customer_id = $1", customer_id)
    await conn.execute(
        """UPDATE case_transfers t SET reason = '' FROM cases c
            WHERE c.case_id = t.case_id AND c.customer_id = $1""", customer_id)
    rows = await conn.fetch(
        "SELECT survey_response_id, answers FROM survey_responses WHERE customer_id = $1",
        customer_id)
    for r in rows:
        answers = [{**a, "comment": ""} for a in r["answers"]]
        await conn.execute("UPDATE survey_responses SET answers = $2 WHERE survey_response_id = $1",
                           r["survey_response_id"], answers)


async def survivors(conn: Conn, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
    """The survivor of each id the customers service merged away (ids not
    merged are absent): one statement for a whole batch."""
    rows = await conn.fetch(
        """SELECT merged_customer_id, survivor_customer_id FROM customer_aliases
            WHERE merged_customer_id = ANY($1::uuid[])""", list(set(ids)))
    return {r["merged_customer_id"]: r["survivor_customer_id"] for r in rows}


async def survivor(conn: Conn, customer_id: uuid.UUID) -> uuid.UUID:
    """The customer's survivor, or the customer when not merged away."""
    return (await survivors(conn, [customer_id])).get(customer_id, customer_id)


#: What a merged customer's idempotency key becomes when the survivor has a
#: record of the same key: ``merged:<merged customer id>:<key>``.
MERGED_KEY_PREFIX = "merged:"


async def repoint_customer(conn: Conn, survivor: uuid.UUID, merged: uuid.UUID) -> None:
    """Move the merged customer's records to the survivor and remember the
    alias, so records that arrive later under the merged id follow too.

    Keys are unique per customer: a merged record whose key the survivor
    has used too keeps both records, the moved one under
    ``merged:<merged id>:<key>`` (:data:`MERGED_KEY_PREFIX`), so the merge
    never fails on a key. The survivor is known from now on; the merged id
    is known through its alias."""
    await conn.execute(
        """INSERT INTO customer_aliases (merged_customer_id, survivor_customer_id)
           VALUES ($1, $2) ON CONFLICT (merged_customer_id)
           DO UPDATE SET survivor_customer_id = EXCLUDED.survivor_customer_id""",
        merged, survivor)
    # Ids merged into the merged one earlier now resolve to the survivor too.
    await conn.execute(
        "UPDATE customer_aliases SET survivor_customer_id = $1 WHERE survivor_customer_id = $2",
        survivor, merged)
    for table in ("interactions", "cases", "survey_responses"):
        await conn.execute(
            f"""UPDATE {table} AS m SET customer_id = $1,
                       idempotency_key = CASE WHEN EXISTS (
                           SELECT 1 FROM {table} AS s
                            WHERE s.customer_id = $1 AND s.idempotency_key = m.idempotency_key)
                         THEN $3 || $2::text || ':' || m.idempotency_key
                         ELSE m.idempotency_key END
                 WHERE m.customer_id = $2""",
            survivor, merged, MERGED_KEY_PREFIX)
    for table in ("suppressed_contacts", "survey_answers"):
        await conn.execute(f"UPDATE {table} SET customer_id = $1 WHERE customer_id = $2",
                           survivor, merged)
    await remember_customers(conn, [survivor])
    # The survivor's time zone, or else the merged one's.
    await conn.execute(
        """UPDATE known_customers s SET time_zone = m.time_zone FROM known_customers m
            WHERE s.customer_id = $1 AND m.customer_id = $2 AND s.time_zone = ''""",
        survivor, merged)
    await conn.execute("DELETE FROM known_customers WHERE customer_id = $1", merged)


# --- known customers ----------------------------------------------------------

async def unknown_customers(conn: Conn, ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
    """Of ``ids``, those this service does not know as customers: neither in
    ``known_customers`` (and not erased) nor merged into a customer that is
    (one statement)."""
    wanted = list(set(ids))
    if not wanted:
        return set()
    rows = await conn.fetch(
        """SELECT i.id FROM unnest($1::uuid[]) AS i(id)
             LEFT JOIN customer_aliases a ON a.merged_customer_id = i.id
            WHERE NOT EXISTS (SELECT 1 FROM known_customers k
                               WHERE k.customer_id = coalesce(a.survivor_customer_id, i.id)
                                 AND k.erased_at IS NULL)""",
        wanted)
    return {r["id"] for r in rows}


async def remember_customers(conn: Conn, ids: Iterable[uuid.UUID]) -> None:
    """Know these ids as customers (the customers service said so); an
    erased one stays erased."""
    known = list(set(ids))
    if known:
        await conn.execute("INSERT INTO known_customers (customer_id) "
                           "SELECT unnest($1::uuid[]) ON CONFLICT DO NOTHING", known)


async def register_customers(conn: Conn, customers: Sequence[tuple[uuid.UUID, str]]) -> None:
    """``customer.registered``: know these (customer id, time zone) pairs; a
    time zone given replaces the one held (an erased customer keeps none)."""
    if customers:
        await conn.execute(
            """INSERT INTO known_customers (customer_id, time_zone)
               SELECT * FROM unnest($1::uuid[], $2::text[])
               ON CONFLICT (customer_id) DO UPDATE SET time_zone = EXCLUDED.time_zone
                WHERE known_customers.erased_at IS NULL AND EXCLUDED.time_zone <> ''""",
            [c for c, _ in customers], [tz for _, tz in customers])


async def forget_customer(conn: Conn, customer_id: uuid.UUID, at: datetime) -> None:
    """``customer.erased`` at ``at``: the id is no customer any more. Its row
    stays as a tombstone (do-not-contact on, no consent, no time zone), so
    that nothing heard later makes it a customer again or lets anyone
    contact it."""
    await conn.execute(
        """INSERT INTO known_customers (customer_id, do_not_contact, do_not_contact_at,
                                        surveys_consent, surveys_consent_at, erased_at)
           VALUES ($1, true, $2, false, $2, $2)
           ON CONFLICT (customer_id) DO UPDATE SET do_not_contact = true,
               do_not_contact_at = $2, surveys_consent = false, surveys_consent_at = $2,
               time_zone = '', erased_at = coalesce(known_customers.erased_at, $2)""",
        customer_id, at)


# --- consent view and suppressed contacts ---------------------------------------

async def consent_rows(conn: Conn, ids: Iterable[uuid.UUID], *, lock: bool) -> list[Any]:
    """The consent columns of these customers' rows (those that have one);
    ``lock``: for update, when the caller writes them back."""
    return list(await conn.fetch(
        """SELECT customer_id, do_not_contact, do_not_contact_at, surveys_consent,
                  surveys_consent_at, erased_at
             FROM known_customers WHERE customer_id = ANY($1::uuid[])
            ORDER BY customer_id""" + (" FOR UPDATE" if lock else ""), list(set(ids))))


async def save_consent(conn: Conn, rows: Sequence[tuple[Any, ...]]) -> None:
    """Write these customers' consent, rows of (customer_id, do_not_contact,
    do_not_contact_at, surveys_consent, surveys_consent_at), knowing the ones
    without a row (an erased customer's row is kept as is)."""
    if not rows:
        return
    columns = list(zip(*rows, strict=True))
    await conn.execute(
        """INSERT INTO known_customers (customer_id, do_not_contact, do_not_contact_at,
                                        surveys_consent, surveys_consent_at)
           SELECT * FROM unnest($1::uuid[], $2::boolean[], $3::timestamptz[], $4::boolean[],
                                $5::timestamptz[])
           ON CONFLICT (customer_id) DO UPDATE SET do_not_contact = EXCLUDED.do_not_contact,
               do_not_contact_at = EXCLUDED.do_not_contact_at,
               surveys_consent = EXCLUDED.surveys_consent,
               surveys_consent_at = EXCLUDED.surveys_consent_at
            WHERE known_customers.erased_at IS NULL""",
        *(list(c) for c in columns))


async def insert_suppressed(conn: Conn, rows: Sequence[tuple[Any, ...]]) -> set[uuid.UUID]:
    """Record suppressed contacts, rows of the columns of
    ``suppressed_contacts`` in order, once per contact id; returns the ids
    recorded now."""
    if not rows:
        return set()
    columns = list(zip(*rows, strict=True))
    inserted = await conn.fetch(
        """INSERT INTO suppressed_contacts (contact_id, customer_id, contact_type, purpose,
                                            reason, case_id, interaction_id, at)
           SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                                $6::uuid[], $7::uuid[], $8::timestamptz[])
           ON CONFLICT (contact_id) DO NOTHING RETURNING contact_id""",
        *(list(c) for c in columns))
    return {r["contact_id"] for r in inserted}


# --- state gauges (the queries of metrics.GAUGES) --------------------

#: ``crm_cases_open``.
CASES_OPEN_SQL = "SELECT count(*) FROM cases WHERE status <> 'resolved'"

#: ``crm_cases_overdue``.
CASES_OVERDUE_SQL = "SELECT count(*) FROM cases WHERE status <> 'resolved' AND breached"

#: ``crm_cases_paused``.
CASES_PAUSED_SQL = ("SELECT count(*) FROM cases WHERE status <> 'resolved' "
                    "AND paused_at IS NOT NULL")
