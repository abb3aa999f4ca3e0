"""SQL for the customers schema. Every function runs on the caller's
connection, inside the caller's transaction; none commits.

Why over 500 lines: all SQL of the schema is here (the customer record and
its related rows read in one round trip, purchases by batch, consent,
segments, links, merges, risk, the export's column map and the state gauges'
queries), each a small function."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from crm_contracts.money import MAX_TOTAL_MINOR
from crm_contracts.vocabulary import Stage
from crm_runtime.db import Conn
from crm_runtime.errors import FailedPrecondition, NotFound
from services.customers.domain import ConsentRecord as ConsentRecord
from services.customers.domain import CustomerRecord as CustomerRecord
from services.customers.domain import Identity

_COLUMNS = """c.customer_id, display_name, profile, stage, purchase_count, first_purchase_at,
              last_purchase_at, do_not_contact, version, created_at, updated_at, closed_at,
              erased_at, merged_into, at_risk, risk_reasons, last_csat, last_nps,
              last_survey_at"""


#: The rows related to a customer, aggregated into the customer's own row so a
#: full read is one round trip however many customers it reads.
_RELATED = """,
    (SELECT coalesce(json_agg(json_build_array(i.kind, i.value) ORDER BY i.position, i.value),
                     '[]') FROM customer_identifiers i WHERE i.customer_id = c.customer_id)
        AS identifiers,
    (SELECT coalesce(json_agg(json_build_array(s.currency, s.total_minor) ORDER BY s.currency),
                     '[]') FROM customer_spend s WHERE s.customer_id = c.customer_id) AS spend,
    (SELECT coalesce(json_agg(json_build_array(k.purpose, k.granted, k.at, k.source)
                              ORDER BY k.purpose), '[]')
       FROM consents k WHERE k.customer_id = c.customer_id) AS consents,
    (SELECT coalesce(json_agg(json_build_array(l.requester_id, l.decision_maker_id, l.role)
                              ORDER BY l.created_at), '[]')
       FROM customer_links l WHERE l.requester_id = c.customer_id
                                OR l.decision_maker_id = c.customer_id) AS links"""
_LISTS = ("identifiers", "spend", "consents", "links")


async def load(conn: Conn, customer_id: uuid.UUID, *, lock: bool = False,
               follow_alias: bool = True, full: bool = True) -> CustomerRecord:
    """The customer; NotFound if unknown. A merged id resolves to its survivor
    unless ``follow_alias`` is off. ``full`` adds identifiers, spend, consents
    and links (in the same query); commands that only change the customer row
    skip them."""
    target = ("coalesce((SELECT merged_into FROM customers WHERE customer_id = $1), $1)"
              if follow_alias else "$1")
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS}{_RELATED if full else ''} FROM customers c"
        f" WHERE c.customer_id = {target}" + (" FOR UPDATE OF c" if lock else ""), customer_id)
    if row is None:
        raise NotFound("customer", str(customer_id))
    return _record(row)


async def load_many(conn: Conn, ids: list[uuid.UUID]) -> list[CustomerRecord]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS}{_RELATED} FROM customers c WHERE c.customer_id = ANY($1::uuid[])",
        ids)
    by_id = {r["customer_id"]: r for r in rows}
    return [_record(by_id[i]) for i in ids if i in by_id]


def aware(value: datetime) -> datetime:
    """A ``timestamptz`` as read, always with its offset: asyncpg reads
    PostgreSQL's ``infinity`` and ``-infinity`` (rows written before event
    times were checked: a year-1 time is stored as ``-infinity``) as naive
    ``datetime.max`` and ``datetime.min``; they become the same instants in
    UTC, so they compare with aware times and are written back unchanged."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _record(row: Any) -> CustomerRecord:
    values: dict[str, Any] = {k: aware(v) if isinstance(v, datetime) else v
                              for k, v in dict(row).items()}
    related = {k: values.pop(k) for k in _LISTS if k in values}
    rec = CustomerRecord(**{**values, "stage": Stage(row["stage"]),
                            "risk_reasons": list(row["risk_reasons"])})
    for kind, value in related.get("identifiers", []):
        {"email": rec.emails, "phone": rec.phones, "external": rec.external_ids}[kind].append(
            value)
    rec.spend = {currency: total for currency, total in related.get("spend", [])}
    rec.consents = [ConsentRecord(purpose, granted, datetime.fromisoformat(at), source)
                    for purpose, granted, at, source in related.get("consents", [])]
    for requester, decider, role in related.get("links", []):
        if uuid.UUID(requester) == rec.customer_id:
            rec.links.append(("requester", uuid.UUID(decider), role))
        else:
            rec.links.append(("decision_maker", uuid.UUID(requester), role))
    return rec


async def find_by_identity(conn: Conn, identity: Identity) -> list[uuid.UUID]:
    keys = identity.keys()
    rows = await conn.fetch(
        """SELECT DISTINCT customer_id FROM customer_identifiers
            WHERE (kind, value) IN (SELECT * FROM unnest($1::text[], $2::text[]))""",
        [k for k, _ in keys], [v for _, v in keys])
    return [r["customer_id"] for r in rows]


async def insert(conn: Conn, customer_id: uuid.UUID, display_name: str,
                 profile: dict[str, Any], now: datetime) -> None:
    await conn.execute(
        """INSERT INTO customers (customer_id, display_name, profile, created_at, updated_at)
           VALUES ($1, $2, $3, $4, $4)""", customer_id, display_name, profile, now)


async def add_identifiers(conn: Conn, customer_id: uuid.UUID, identity: Identity) -> list[str]:
    """Attach identifiers; returns those already owned by another customer."""
    keys = identity.keys()
    rows = await conn.fetch(
        """INSERT INTO customer_identifiers (kind, value, customer_id, position)
           SELECT k, v, $3, p FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(k, v, p)
           ON CONFLICT (kind, value) DO NOTHING RETURNING kind, value""",
        [k for k, _ in keys], [v for _, v in keys], customer_id)
    added = {(r["kind"], r["value"]) for r in rows}
    taken = [v for k, v in keys if (k, v) not in added]
    owners = await conn.fetch(
        """SELECT value FROM customer_identifiers
            WHERE value = ANY($1::text[]) AND customer_id <> $2""", taken, customer_id)
    return [r["value"] for r in owners]


async def save_core(conn: Conn, rec: CustomerRecord, now: datetime) -> int:
    """Write the mutable columns and bump the version; returns the new version."""
    version: int = await conn.fetchval(
        """UPDATE customers SET display_name = $2, profile = $3, stage = $4,
                  purchase_count = $5, first_purchase_at = $6, last_purchase_at = $7,
                  do_not_contact = $8, closed_at = $9, erased_at = $10, updated_at = $11,
                  merged_into = $12, at_risk = $13, risk_reasons = $14, last_csat = $15,
                  last_nps = $16, last_survey_at = $17, version = version + 1
            WHERE customer_id = $1 RETURNING version""",
        rec.customer_id, rec.display_name, rec.profile, rec.stage.value, rec.purchase_count,
        rec.first_purchase_at, rec.last_purchase_at, rec.do_not_contact, rec.closed_at,
        rec.erased_at, now, rec.merged_into, rec.at_risk, rec.risk_reasons, rec.last_csat,
        rec.last_nps, rec.last_survey_at)
    rec.version = version
    rec.updated_at = now
    return version


async def set_consent(conn: Conn, customer_id: uuid.UUID, purpose: str, granted: bool,
                      at: datetime, source: str) -> None:
    await conn.execute(
        """INSERT INTO consents (customer_id, purpose, granted, at, source)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (customer_id, purpose)
           DO UPDATE SET granted = EXCLUDED.granted, at = EXCLUDED.at, source = EXCLUDED.source""",
        customer_id, purpose, granted, at, source)


async def add_stage_history(conn: Conn, customer_id: uuid.UUID, from_stage: str, to_stage: str,
                            cause: str, causing_event_id: str, at: datetime) -> None:
    await conn.execute(
        """INSERT INTO stage_history (customer_id, from_stage, to_stage, cause, causing_event_id,
                                      at) VALUES ($1, $2, $3, $4, $5, $6)""",
        customer_id, from_stage, to_stage, cause, causing_event_id, at)


async def stage_history(conn: Conn, customer_id: uuid.UUID) -> list[Any]:
    return list(await conn.fetch(
        """SELECT from_stage, to_stage, cause, causing_event_id, at FROM stage_history
            WHERE customer_id = $1 ORDER BY id""", customer_id))


async def list_page(conn: Conn, stage: str | None, after: uuid.UUID | None,
                    limit: int) -> list[uuid.UUID]:
    rows = await conn.fetch(
        """SELECT customer_id FROM customers
            WHERE ($1::text IS NULL OR stage = $1) AND ($2::uuid IS NULL OR customer_id > $2)
              AND erased_at IS NULL AND merged_into IS NULL
            ORDER BY customer_id LIMIT $3""", stage, after, limit)
    return [r["customer_id"] for r in rows]


async def purchases(conn: Conn, customer_id: uuid.UUID) -> list[Any]:
    return list(await conn.fetch(
        """SELECT purchase_id, amount_minor, currency, occurred_at, causing_event_id
             FROM purchases WHERE customer_id = $1 ORDER BY occurred_at, purchase_id""",
        customer_id))


async def links(conn: Conn, customer_id: uuid.UUID) -> list[Any]:
    """The customer's links on either side, with their role and date."""
    return list(await conn.fetch(
        """SELECT requester_id, decision_maker_id, role, created_at FROM customer_links
            WHERE requester_id = $1 OR decision_maker_id = $1
            ORDER BY created_at, requester_id, decision_maker_id""", customer_id))


async def aliases(conn: Conn, customer_id: uuid.UUID) -> list[uuid.UUID]:
    """The ids merged into this customer (aliases that resolve to it)."""
    rows = await conn.fetch(
        "SELECT customer_id FROM customers WHERE merged_into = $1 ORDER BY customer_id",
        customer_id)
    return [r["customer_id"] for r in rows]


async def risk_signal_rows(conn: Conn, customer_id: uuid.UUID) -> list[Any]:
    return list(await conn.fetch(
        """SELECT event_id, reason, occurred_at FROM risk_signals WHERE customer_id = $1
            ORDER BY occurred_at, event_id""", customer_id))


async def scrub(conn: Conn, customer_id: uuid.UUID) -> None:
    """Remove personal data: identifiers, consent and links to other people
    (who the customer works or buys for); profile cleared by caller."""
    await conn.execute("DELETE FROM customer_identifiers WHERE customer_id = $1", customer_id)
    await conn.execute("DELETE FROM consents WHERE customer_id = $1", customer_id)
    await conn.execute(
        "DELETE FROM customer_links WHERE requester_id = $1 OR decision_maker_id = $1",
        customer_id)
    # Nobody contacts an erased customer again: their contacts count for nothing.
    await conn.execute("DELETE FROM contact_ledger WHERE customer_id = $1", customer_id)


async def segment_members(conn: Conn, where_sql: str, params: list[Any],
                          after: uuid.UUID | None, limit: int) -> list[uuid.UUID]:
    """Customers matching a compiled segment filter, keyset-paginated by id."""
    n = len(params)
    rows = await conn.fetch(
        f"""SELECT c.customer_id FROM customers c
             WHERE c.erased_at IS NULL AND c.merged_into IS NULL AND {where_sql}
               AND (${n + 1}::uuid IS NULL OR c.customer_id > ${n + 1})
             ORDER BY c.customer_id LIMIT ${n + 2}""", *params, after, limit)
    return [r["customer_id"] for r in rows]


async def upsert_segment(conn: Conn, name: str, description: str, definition: Any,
                         churn_window_days: int | None, now: datetime) -> int:
    version: int = await conn.fetchval(
        """INSERT INTO segments (name, version, description, definition, churn_window_days,
                                 updated_at) VALUES ($1, 1, $2, $3, $4, $5)
           ON CONFLICT (name) DO UPDATE SET version = segments.version + 1,
               description = EXCLUDED.description, definition = EXCLUDED.definition,
               churn_window_days = EXCLUDED.churn_window_days, updated_at = EXCLUDED.updated_at
           RETURNING version""", name, description, definition, churn_window_days, now)
    await conn.execute(
        """INSERT INTO segment_versions (name, version, description, definition,
                                         churn_window_days, defined_at)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        name, version, description, definition, churn_window_days, now)
    return version


async def get_segment(conn: Conn, name: str) -> Any:
    row = await conn.fetchrow(
        "SELECT name, version, description, definition, churn_window_days FROM segments"
        " WHERE name = $1", name)
    if row is None:
        raise NotFound("segment", name)
    return row


async def all_segments(conn: Conn) -> list[Any]:
    """Every segment, those with the shortest churn-window override first."""
    return list(await conn.fetch(
        """SELECT name, definition, churn_window_days FROM segments
            ORDER BY churn_window_days NULLS LAST, name"""))


async def recompute_purchases(conn: Conn, rec: CustomerRecord) -> None:
    """Purchase count, first/last purchase and spend from the purchases table."""
    row = await conn.fetchrow(
        """SELECT count(*) AS n, min(occurred_at) AS first, max(occurred_at) AS last
             FROM purchases WHERE customer_id = $1""", rec.customer_id)
    assert row is not None
    rec.purchase_count = row["n"]
    rec.first_purchase_at = aware(row["first"]) if row["first"] is not None else None
    rec.last_purchase_at = aware(row["last"]) if row["last"] is not None else None
    over = await conn.fetchval(
        """SELECT min(currency) FROM (SELECT currency FROM purchases WHERE customer_id = $1
                                        GROUP BY currency HAVING sum(amount_minor) > $2) o""",
        rec.customer_id, MAX_TOTAL_MINOR)
    if over is not None:
        raise FailedPrecondition(f"the purchases of both customers add up to more in {over} "
                                 f"than a total can hold ({MAX_TOTAL_MINOR} minor units)")
    await conn.execute("DELETE FROM customer_spend WHERE customer_id = $1", rec.customer_id)
    await conn.execute(
        """INSERT INTO customer_spend (customer_id, currency, total_minor)
           SELECT customer_id, currency, sum(amount_minor) FROM purchases
            WHERE customer_id = $1 GROUP BY customer_id, currency""", rec.customer_id)


async def move_records(conn: Conn, survivor: uuid.UUID, merged: uuid.UUID) -> None:
    """Re-point everything held under ``merged`` to ``survivor``."""
    await conn.execute("UPDATE customer_identifiers SET customer_id = $1 WHERE customer_id = $2",
                       survivor, merged)
    # The same sale recorded under both ids is one sale.
    await conn.execute(
        """DELETE FROM purchases m WHERE m.customer_id = $2 AND EXISTS (
               SELECT 1 FROM purchases s WHERE s.customer_id = $1
                  AND s.purchase_id = m.purchase_id)""", survivor, merged)
    await conn.execute("UPDATE purchases SET customer_id = $1 WHERE customer_id = $2",
                       survivor, merged)
    await conn.execute("DELETE FROM customer_spend WHERE customer_id = $1", merged)
    # Consent: the most recent decision per purpose wins.
    await conn.execute(
        """INSERT INTO consents (customer_id, purpose, granted, at, source)
           SELECT $1, purpose, granted, at, source FROM consents WHERE customer_id = $2
           ON CONFLICT (customer_id, purpose) DO UPDATE
              SET granted = EXCLUDED.granted, at = EXCLUDED.at, source = EXCLUDED.source
            WHERE consents.at < EXCLUDED.at""", survivor, merged)
    await conn.execute("DELETE FROM consents WHERE customer_id = $1", merged)
    await conn.execute("UPDATE stage_history SET customer_id = $1 WHERE customer_id = $2",
                       survivor, merged)
    await conn.execute(
        """INSERT INTO risk_signals (customer_id, event_id, reason, occurred_at)
           SELECT $1, event_id, reason, occurred_at FROM risk_signals WHERE customer_id = $2
           ON CONFLICT DO NOTHING""", survivor, merged)
    await conn.execute("DELETE FROM risk_signals WHERE customer_id = $1", merged)
    await conn.execute(
        """INSERT INTO customer_links (requester_id, decision_maker_id, role, created_at)
           SELECT $1, decision_maker_id, role, created_at FROM customer_links
            WHERE requester_id = $2 AND decision_maker_id <> $1
           ON CONFLICT DO NOTHING""", survivor, merged)
    await conn.execute(
        """INSERT INTO customer_links (requester_id, decision_maker_id, role, created_at)
           SELECT requester_id, $1, role, created_at FROM customer_links
            WHERE decision_maker_id = $2 AND requester_id <> $1
           ON CONFLICT DO NOTHING""", survivor, merged)
    await conn.execute(
        "DELETE FROM customer_links WHERE requester_id = $1 OR decision_maker_id = $1", merged)
    # The contact gate's cap counts the merged customer's contacts for the survivor.
    await conn.execute("UPDATE contact_ledger SET customer_id = $1 WHERE customer_id = $2",
                       survivor, merged)
    # Earlier aliases of the merged customer now point at the survivor too.
    await conn.execute("UPDATE customers SET merged_into = $1 WHERE merged_into = $2",
                       survivor, merged)


async def insert_link(conn: Conn, requester: uuid.UUID, decision_maker: uuid.UUID, role: str,
                      now: datetime) -> bool:
    status = await conn.execute(
        """INSERT INTO customer_links (requester_id, decision_maker_id, role, created_at)
           VALUES ($1, $2, $3, $4)
           ON CONFLICT (requester_id, decision_maker_id) DO UPDATE SET role = EXCLUDED.role
            WHERE customer_links.role <> EXCLUDED.role""", requester, decision_maker, role, now)
    return not status.endswith(" 0")


async def add_risk_signal(conn: Conn, customer_id: uuid.UUID, event_id: str, reason: str,
                          at: datetime) -> None:
    await conn.execute(
        """INSERT INTO risk_signals (customer_id, event_id, reason, occurred_at)
           VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING""", customer_id, event_id, reason, at)


async def risk_signals(conn: Conn, customer_id: uuid.UUID) -> list[tuple[str, datetime]]:
    rows = await conn.fetch(
        "SELECT reason, occurred_at FROM risk_signals WHERE customer_id = $1", customer_id)
    return [(r["reason"], aware(r["occurred_at"])) for r in rows]


async def clear_risk_signals(conn: Conn, customer_id: uuid.UUID, up_to: datetime) -> None:
    await conn.execute("DELETE FROM risk_signals WHERE customer_id = $1 AND occurred_at <= $2",
                       customer_id, up_to)


# --- batch purchase path (one statement per step for a whole consumed batch) ---

async def resolve_many(conn: Conn, ids: list[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
    """Each known id -> the id to act on (a merged id's survivor)."""
    rows = await conn.fetch(
        """SELECT customer_id, coalesce(merged_into, customer_id) AS target FROM customers
            WHERE customer_id = ANY($1::uuid[])""", ids)
    return {r["customer_id"]: r["target"] for r in rows}


async def lock_many(conn: Conn, ids: list[uuid.UUID]) -> dict[uuid.UUID, CustomerRecord]:
    """Customer rows locked in id order (concurrent batches cannot deadlock)."""
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM customers c WHERE c.customer_id = ANY($1::uuid[])
             ORDER BY c.customer_id FOR UPDATE OF c""", ids)
    return {r["customer_id"]: _record(r) for r in rows}


async def insert_purchases(conn: Conn, rows: list[tuple[uuid.UUID, str, int, str, datetime, str]]
                           ) -> set[tuple[uuid.UUID, str]]:
    """Insert purchases once; returns the (customer, purchase id) pairs that were new."""
    if not rows:
        return set()
    cols = list(zip(*rows, strict=True))
    got = await conn.fetch(
        """INSERT INTO purchases (customer_id, purchase_id, amount_minor, currency, occurred_at,
                                  causing_event_id)
           SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[],
                                $5::timestamptz[], $6::text[])
           ON CONFLICT DO NOTHING RETURNING customer_id, purchase_id""", *[list(c) for c in cols])
    return {(r["customer_id"], r["purchase_id"]) for r in got}


async def add_spend_many(conn: Conn, deltas: dict[tuple[uuid.UUID, str], int]
                         ) -> list[tuple[uuid.UUID, str]]:
    """Add to the customers' totals, in one statement; returns the (customer,
    currency) totals that would pass :data:`MAX_TOTAL_MINOR` and were left
    as they were (the caller refuses the purchase; the sum is taken in
    ``numeric``, so it never overflows the ``bigint`` column on the way)."""
    if not deltas:
        return []
    over = [k for k, delta in deltas.items() if delta > MAX_TOTAL_MINOR]
    keys = [k for k in deltas if deltas[k] <= MAX_TOTAL_MINOR]
    rows = await conn.fetch(
        """WITH d AS (SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[])
                          AS d(customer_id, currency, delta)),
           added AS (
               INSERT INTO customer_spend (customer_id, currency, total_minor)
               SELECT customer_id, currency, delta FROM d
               ON CONFLICT (customer_id, currency)
               DO UPDATE SET total_minor = customer_spend.total_minor + EXCLUDED.total_minor
                WHERE customer_spend.total_minor::numeric + EXCLUDED.total_minor <= $4
               RETURNING customer_id, currency)
           SELECT d.customer_id, d.currency FROM d
            WHERE NOT EXISTS (SELECT 1 FROM added a WHERE a.customer_id = d.customer_id
                                 AND a.currency = d.currency)""",
        [k[0] for k in keys], [k[1] for k in keys], [deltas[k] for k in keys], MAX_TOTAL_MINOR)
    return over + [(r["customer_id"], r["currency"]) for r in rows]


async def purchases_by_id(conn: Conn, keys: list[tuple[uuid.UUID, str]]
                          ) -> dict[tuple[uuid.UUID, str], tuple[int, str, datetime]]:
    """(amount, currency, time) of these (customer, purchase id) purchases."""
    if not keys:
        return {}
    rows = await conn.fetch(
        """SELECT p.customer_id, p.purchase_id, p.amount_minor, p.currency, p.occurred_at
             FROM purchases p, unnest($1::uuid[], $2::text[]) AS k(customer_id, purchase_id)
            WHERE p.customer_id = k.customer_id AND p.purchase_id = k.purchase_id""",
        [k[0] for k in keys], [k[1] for k in keys])
    return {(r["customer_id"], r["purchase_id"]): (r["amount_minor"], r["currency"],
                                                   aware(r["occurred_at"])) for r in rows}


async def add_stage_history_many(conn: Conn, rows: list[tuple[uuid.UUID, str, str, str, str,
                                                               datetime]]) -> None:
    if not rows:
        return
    cols = list(zip(*rows, strict=True))
    await conn.execute(
        """INSERT INTO stage_history (customer_id, from_stage, to_stage, cause, causing_event_id,
                                      at)
           SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                                $6::timestamptz[])""", *[list(c) for c in cols])


async def save_purchase_state_many(conn: Conn, recs: list[CustomerRecord], now: datetime) -> None:
    """Write what purchases change (stage, counts, first/last purchase) for many
    customers in one statement, bumping each version."""
    if not recs:
        return
    await conn.execute(
        """UPDATE customers c SET stage = u.stage, purchase_count = u.purchase_count,
                  first_purchase_at = u.first_at, last_purchase_at = u.last_at,
                  closed_at = u.closed_at, updated_at = $7, version = c.version + 1
             FROM unnest($1::uuid[], $2::text[], $3::int[], $4::timestamptz[],
                         $5::timestamptz[], $6::timestamptz[])
                  AS u(id, stage, purchase_count, first_at, last_at, closed_at)
            WHERE c.customer_id = u.id""",
        [r.customer_id for r in recs], [r.stage.value for r in recs],
        [r.purchase_count for r in recs], [r.first_purchase_at for r in recs],
        [r.last_purchase_at for r in recs], [r.closed_at for r in recs], now)
    for r in recs:
        r.version += 1
        r.updated_at = now


async def matching_ids(conn: Conn, ids: list[uuid.UUID], where_sql: str,
                       params: list[Any]) -> set[uuid.UUID]:
    """Which of ``ids`` match a compiled segment filter."""
    n = len(params)
    rows = await conn.fetch(
        f"SELECT c.customer_id FROM customers c WHERE c.customer_id = ANY(${n + 1}::uuid[])"
        f" AND {where_sql}", *params, ids)
    return {r["customer_id"] for r in rows}


async def lock_identifiers(conn: Conn, keys: Iterable[tuple[str, str]]) -> None:
    """Serialise registrations of the same identifiers (``(kind, value)``),
    so two concurrent calls cannot both create a customer: transaction-level
    advisory locks, taken in sorted order so that no two callers deadlock."""
    ordered = [f"{kind}:{value}" for kind, value in sorted(keys)]
    if ordered:
        # A function scan yields the array's elements in order.
        await conn.execute("SELECT count(pg_advisory_xact_lock(hashtext(k))) "
                           "FROM unnest($1::text[]) AS k", ordered)


#: Where each column of the customers schema appears in the export (a path in
#: the document: ``key``, ``key[]`` an entry of a list, ``key[].field`` a
#: field of its entries). ``tests/integration/test_export_coverage.py`` fails
#: when a migration adds a column that is not listed here, so nothing held about
#: a customer can be left out of a data-subject export by accident.
EXPORT_COLUMNS: dict[str, dict[str, str]] = {
    "customers": {
        "customer_id": "customer_id", "display_name": "display_name", "profile": "profile",
        "stage": "stage", "purchase_count": "purchase_count",
        "first_purchase_at": "first_purchase_at", "last_purchase_at": "last_purchase_at",
        "do_not_contact": "do_not_contact", "version": "version", "created_at": "created_at",
        "updated_at": "updated_at", "closed_at": "closed_at", "erased_at": "erased_at",
        "merged_into": "merged_aliases[]",  # the ids whose merged_into is this customer
        "at_risk": "at_risk", "risk_reasons": "risk_reasons", "last_csat": "last_csat",
        "last_nps": "last_nps", "last_survey_at": "last_survey_at",
    },
    "customer_identifiers": {"kind": "emails", "value": "emails[]",
                             "customer_id": "customer_id", "position": "emails[]"},
    "purchases": {"customer_id": "customer_id", "purchase_id": "purchases[].purchase_id",
                  "amount_minor": "purchases[].amount_minor",
                  "currency": "purchases[].currency", "occurred_at": "purchases[].occurred_at",
                  "causing_event_id": "purchases[].causing_event_id"},
    "customer_spend": {"customer_id": "customer_id", "currency": "total_spent[].currency",
                       "total_minor": "total_spent[].amount_minor"},
    "consents": {"customer_id": "customer_id", "purpose": "consents[].purpose",
                 "granted": "consents[].granted", "at": "consents[].at",
                 "source": "consents[].source"},
    "stage_history": {"id": "stage_history[]", "customer_id": "customer_id",
                      "from_stage": "stage_history[].from", "to_stage": "stage_history[].to",
                      "cause": "stage_history[].cause",
                      "causing_event_id": "stage_history[].causing_event_id",
                      "at": "stage_history[].at"},
    "customer_links": {"requester_id": "links[].other_customer_id",
                       "decision_maker_id": "links[].other_customer_id",
                       "role": "links[].role", "created_at": "links[].created_at"},
    "risk_signals": {"customer_id": "customer_id", "event_id": "risk_signals[].event_id",
                     "reason": "risk_signals[].reason",
                     "occurred_at": "risk_signals[].occurred_at"},
    "contact_ledger": {"contact_id": "contacts[].contact_id", "customer_id": "customer_id",
                       "purpose": "contacts[].purpose", "channel": "contacts[].channel",
                       "service": "contacts[].service", "at": "contacts[].at",
                       "recorded_at": "contacts[].recorded_at"},
    "segment_members": {"segment": "segment_memberships[].segment",
                        "customer_id": "customer_id",
                        "since": "segment_memberships[].since"},
}
#: Tables of the schema that hold nothing about a particular customer.
NOT_CUSTOMER_DATA = {"segments": "segment definitions (membership is exported as segments)",
                     "segment_versions": "earlier segment definitions",
                     "erasures": "an erasure's progress through the services (ids and "
                                 "times, no personal data): GetErasureStatus answers it"}


# --- state gauges (the queries of metrics.GAUGES) --------------------

#: ``crm_customers_by_stage``.
CUSTOMERS_BY_STAGE_SQL = """
    SELECT stage, count(*) FROM customers WHERE erased_at IS NULL AND merged_into IS
    NULL GROUP BY stage"""

#: ``crm_customers_at_risk``.
CUSTOMERS_AT_RISK_SQL = "SELECT count(*) FROM customers WHERE at_risk"
