"""SQL for the loyalty schema. Every function runs on the caller's
connection, inside the caller's transaction; none commits.

Rows come back as asyncpg records, except the customer view
(:class:`services.loyalty.domain.View`) and a discount's state
(:func:`discount_state`), which the domain's rules take.

The statements of one consumed batch (its first, which locks the views, and
its last, which writes everything the batch buffered) are in
:mod:`services.loyalty.batch_store`."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from crm_runtime.db import Conn
from crm_runtime.errors import NotFound
from services.loyalty.domain import DiscountState
from services.loyalty.domain import View as View  # re-exported: views are read here

#: The service's schema (and name: ``commands.SERVICE``).
SCHEMA = "loyalty"

# --- the customer view --------------------------------------------------------

VIEW_COLUMNS = ("customer_id", "stage", "purchase_count", "last_purchase_at", "segments",
                 "preferred_channel", "time_zone", "referred_by", "referral_code",
                 "newsletter_consent", "newsletter_consent_at", "promotional_consent",
                 "promotional_consent_at", "do_not_contact", "do_not_contact_at", "at_risk",
                 "erased_at", "merged_into")
VIEW_SELECT = ", ".join(VIEW_COLUMNS)


def aware(value: datetime) -> datetime:
    """A ``timestamptz`` as read, always with its offset: asyncpg reads
    PostgreSQL's ``infinity`` and ``-infinity`` (a year-1 time is stored as
    ``-infinity``) as naive ``datetime.max`` and ``datetime.min``; they
    become the same instants in UTC, so they never meet an aware time naive
    (and are written back unchanged)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def view_of(row: Any) -> View:
    """The customer view of a row of ``customer_view``, its times aware."""
    values: dict[str, Any] = {k: aware(v) if isinstance(v, datetime) else v
                              for k, v in dict(row).items()}
    return View(**{**values, "segments": list(row["segments"])})


async def cancel_types(conn: Conn) -> set[str]:
    """Every event type any version of any rule listed in ``cancel_on``: only
    these can make an open follow-up moot."""
    rows = await conn.fetch(
        """SELECT DISTINCT jsonb_array_elements_text(a -> 'cancel_on') AS t
             FROM rule_changes, jsonb_array_elements(definition -> 'actions') AS a
            WHERE a ? 'cancel_on'""")
    return {r["t"] for r in rows}


async def resolve(conn: Conn, customer_id: uuid.UUID) -> uuid.UUID:
    """A merged customer's survivor, else the id itself."""
    survivor = await conn.fetchval(
        "SELECT merged_into FROM customer_view WHERE customer_id = $1", customer_id)
    return survivor or customer_id


async def lock_view(conn: Conn, customer_id: uuid.UUID, now: datetime, *,
                    follow_alias: bool = True) -> View:
    """The customer's view, locked for this transaction (created empty when
    first seen: events of one customer on two topics can arrive in any order).
    Locking serialises one customer's changes so their events keep order."""
    if follow_alias:
        customer_id = await resolve(conn, customer_id)
    await conn.execute(
        """INSERT INTO customer_view (customer_id, updated_at) VALUES ($1, $2)
           ON CONFLICT (customer_id) DO NOTHING""", customer_id, now)
    row = await conn.fetchrow(
        f"SELECT {VIEW_SELECT} FROM customer_view WHERE customer_id = $1 FOR UPDATE",
        customer_id)
    assert row is not None
    return view_of(row)


async def get_view(conn: Conn, customer_id: uuid.UUID, *, lock: bool = False) -> View:
    """The view of a known customer (alias resolved); NotFound otherwise."""
    customer_id = await resolve(conn, customer_id)
    row = await conn.fetchrow(
        f"SELECT {VIEW_SELECT} FROM customer_view WHERE customer_id = $1"
        + (" FOR UPDATE" if lock else ""), customer_id)
    if row is None:
        raise NotFound("customer", str(customer_id))
    return view_of(row)


async def owner_of_referral_code(conn: Conn, code: str) -> uuid.UUID | None:
    """The customer a referral code was issued to (an erased customer's code is
    gone); None for a code never issued."""
    owner: uuid.UUID | None = await conn.fetchval(
        "SELECT customer_id FROM customer_view WHERE referral_code = $1", code)
    return owner


async def point_aliases(conn: Conn, survivor: uuid.UUID, merged: uuid.UUID) -> None:
    """Earlier aliases of ``merged`` now point at ``survivor`` too."""
    await conn.execute("UPDATE customer_view SET merged_into = $1 WHERE merged_into = $2",
                       survivor, merged)


# --- rules --------------------------------------------------------------------


async def rules_revision(conn: Conn) -> int:
    revision: int = await conn.fetchval("SELECT revision FROM rules_revision")
    return revision


async def lock_rules_file(conn: Conn) -> None:
    """Until the transaction ends, the only one applying the rules file:
    replicas starting together apply it one after the other."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('loyalty.rules'))")


async def all_rules(conn: Conn) -> list[Any]:
    return list(await conn.fetch(
        """SELECT rule_id, version, enabled, trigger, definition, origin, file_digest,
                  updated_at, updated_by FROM rules ORDER BY rule_id"""))


async def get_rule(conn: Conn, rule_id: str, *, lock: bool = False) -> Any:
    return await conn.fetchrow(
        """SELECT rule_id, version, enabled, trigger, definition, origin, file_digest,
                  updated_at, updated_by FROM rules WHERE rule_id = $1"""
        + (" FOR UPDATE" if lock else ""), rule_id)


async def write_rule(conn: Conn, *, rule_id: str, version: int, enabled: bool, trigger: str,
                     definition: dict[str, Any], origin: str, file_digest: str | None,
                     change: str, actor: str, note: str, now: datetime) -> None:
    """Store a new version of a rule, record the change, bump the revision."""
    await conn.execute(
        """INSERT INTO rules (rule_id, version, enabled, trigger, definition, origin,
                              file_digest, updated_at, updated_by)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
           ON CONFLICT (rule_id) DO UPDATE SET version = EXCLUDED.version,
               enabled = EXCLUDED.enabled, trigger = EXCLUDED.trigger,
               definition = EXCLUDED.definition, origin = EXCLUDED.origin,
               file_digest = EXCLUDED.file_digest, updated_at = EXCLUDED.updated_at,
               updated_by = EXCLUDED.updated_by""",
        rule_id, version, enabled, trigger, definition, origin, file_digest, now, actor)
    await conn.execute(
        """INSERT INTO rule_changes (rule_id, version, change, enabled, definition, actor, note,
                                     at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        rule_id, version, change, enabled, definition, actor, note, now)
    await conn.execute("UPDATE rules_revision SET revision = revision + 1")


# --- actions ------------------------------------------------------------------


async def suppressed_actions(conn: Conn, customer_id: uuid.UUID, limit: int = 50) -> list[Any]:
    return list(await conn.fetch(
        """SELECT action_id, rule_id, action_type, purpose, reason, trigger_event_id, at
             FROM actions WHERE customer_id = $1 AND outcome = 'suppressed'
            ORDER BY at DESC LIMIT $2""", customer_id, limit))


# --- follow-ups -----------------------------------------------------------------

_FOLLOW_UP_COLUMNS = """follow_up_id, customer_id, rule_id, channel, template, reason, purpose,
                        list, cancel_on, status, requested_at, due_at, created_at, fired_at,
                        closed_at, outcome, note"""


async def get_follow_up(conn: Conn, follow_up_id: uuid.UUID, *, lock: bool = False) -> Any:
    row = await conn.fetchrow(
        f"SELECT {_FOLLOW_UP_COLUMNS} FROM follow_ups WHERE follow_up_id = $1"
        + (" FOR UPDATE" if lock else ""), follow_up_id)
    if row is None:
        raise NotFound("follow-up", str(follow_up_id))
    return row


async def mark_due(conn: Conn, follow_up_id: uuid.UUID, now: datetime) -> Any:
    """Scheduled -> due; None when it is no longer scheduled."""
    return await conn.fetchrow(
        f"""UPDATE follow_ups SET status = 'due', fired_at = $2
             WHERE follow_up_id = $1 AND status = 'scheduled'
         RETURNING {_FOLLOW_UP_COLUMNS}""", follow_up_id, now)


async def move_follow_up(conn: Conn, follow_up_id: uuid.UUID, due_at: datetime) -> None:
    """A scheduled follow-up is due later (the customer's quiet hours)."""
    await conn.execute("UPDATE follow_ups SET due_at = $2 WHERE follow_up_id = $1",
                       follow_up_id, due_at)


async def close_follow_up(conn: Conn, follow_up_id: uuid.UUID, status: str, outcome: str,
                          note: str, now: datetime) -> Any:
    return await conn.fetchrow(
        f"""UPDATE follow_ups SET status = $2, outcome = $3, note = $4, closed_at = $5
             WHERE follow_up_id = $1 RETURNING {_FOLLOW_UP_COLUMNS}""",
        follow_up_id, status, outcome, note, now)


async def close_follow_ups(conn: Conn, closing: list[tuple[uuid.UUID, str]], status: str,
                           now: datetime) -> None:
    """Close these follow-ups (id, outcome) with one status, in one statement."""
    if closing:
        await conn.execute(
            """UPDATE follow_ups AS f SET status = $3, outcome = c.outcome, note = '',
                      closed_at = $4
                 FROM unnest($1::uuid[], $2::text[]) AS c(follow_up_id, outcome)
                WHERE f.follow_up_id = c.follow_up_id""",
            [fid for fid, _ in closing], [outcome for _, outcome in closing], status, now)


async def open_follow_ups_listing(conn: Conn, customer_ids: list[uuid.UUID],
                                  event_types: list[str]) -> list[Any]:
    """Open follow-ups of these customers whose ``cancel_on`` lists one of
    ``event_types``, locked, by customer and due time."""
    return list(await conn.fetch(
        """SELECT follow_up_id, customer_id, cancel_on FROM follow_ups
            WHERE customer_id = ANY($1::uuid[]) AND status IN ('scheduled', 'due')
              AND cancel_on <> '{}'  -- the follow_ups_cancellable index's predicate
              AND cancel_on && $2::text[]
            ORDER BY customer_id, due_at, follow_up_id FOR UPDATE""",
        customer_ids, event_types))


async def open_follow_ups(conn: Conn, customer_id: uuid.UUID, *,
                          purposes: list[str] | None = None,
                          list_name: str | None = None) -> list[Any]:
    """Scheduled or due follow-ups of a customer, optionally only those of
    some purposes or of one newsletter list."""
    return list(await conn.fetch(
        f"""SELECT {_FOLLOW_UP_COLUMNS} FROM follow_ups
             WHERE customer_id = $1 AND status IN ('scheduled', 'due')
               AND ($2::text[] IS NULL OR purpose = ANY($2::text[]))
               AND ($3::text IS NULL OR list = $3)
             ORDER BY due_at FOR UPDATE""", customer_id, purposes, list_name))


async def customer_follow_ups(conn: Conn, customer_id: uuid.UUID, limit: int = 100) -> list[Any]:
    return list(await conn.fetch(
        f"""SELECT {_FOLLOW_UP_COLUMNS} FROM follow_ups WHERE customer_id = $1
             ORDER BY due_at DESC LIMIT $2""", customer_id, limit))


async def due_follow_ups(conn: Conn, channel: str | None, after: tuple[datetime, uuid.UUID] | None,
                         limit: int) -> list[Any]:
    """Follow-ups waiting to be done, oldest due first (keyset pagination)."""
    return list(await conn.fetch(
        f"""SELECT {_FOLLOW_UP_COLUMNS} FROM follow_ups
             WHERE status = 'due' AND ($1::text IS NULL OR channel = $1)
               AND ($2::timestamptz IS NULL OR (due_at, follow_up_id) > ($2, $3::uuid))
             ORDER BY due_at, follow_up_id LIMIT $4""",
        channel, after[0] if after else None, after[1] if after else None, limit))


async def scrub_follow_up_notes(conn: Conn, customer_id: uuid.UUID) -> None:
    """Erasure: notes go, and outcomes that are people's text (a reason
    typed when cancelling); outcome codes (``contacted``, ``moot:...``) stay."""
    await conn.execute(
        r"""UPDATE follow_ups SET note = '',
                  outcome = CASE WHEN outcome ~ '^[a-z_]+(:[a-z_.]+)?$' THEN outcome ELSE '' END
            WHERE customer_id = $1""", customer_id)


# --- newsletters ----------------------------------------------------------------


async def enrolment(conn: Conn, customer_id: uuid.UUID, list_name: str) -> Any:
    return await conn.fetchrow(
        "SELECT status, unsubscribed_at FROM enrolments WHERE customer_id = $1 AND list = $2",
        customer_id, list_name)


async def enrol(conn: Conn, customer_id: uuid.UUID, list_name: str, rule_id: str,
                now: datetime) -> bool:
    """Enrol (again); False when already enrolled."""
    row = await conn.fetchval(
        """INSERT INTO enrolments (customer_id, list, status, rule_id, enrolled_at)
           VALUES ($1, $2, 'enrolled', $3, $4)
           ON CONFLICT (customer_id, list) DO UPDATE
              SET status = 'enrolled', rule_id = EXCLUDED.rule_id,
                  enrolled_at = EXCLUDED.enrolled_at, unsubscribed_at = NULL
            WHERE enrolments.status <> 'enrolled'
           RETURNING list""", customer_id, list_name, rule_id, now)
    return row is not None


async def unsubscribe(conn: Conn, customer_id: uuid.UUID, list_name: str | None,
                      now: datetime) -> list[str]:
    """Unsubscribe from one list (or all when None); the lists that changed."""
    rows = await conn.fetch(
        """UPDATE enrolments SET status = 'unsubscribed', unsubscribed_at = $3
            WHERE customer_id = $1 AND status = 'enrolled' AND ($2::text IS NULL OR list = $2)
           RETURNING list""", customer_id, list_name, now)
    return sorted(r["list"] for r in rows)


async def enrolments(conn: Conn, customer_id: uuid.UUID) -> list[Any]:
    return list(await conn.fetch(
        """SELECT list, status, rule_id, enrolled_at, unsubscribed_at FROM enrolments
            WHERE customer_id = $1 ORDER BY list""", customer_id))


# --- discounts ------------------------------------------------------------------

_DISCOUNT_COLUMNS = """discount_id, code, customer_id, rule_id, kind, percent, amount_minor,
                       currency, min_purchase_minor, purpose, reason, issued_at, expires_at,
                       redeemed_at, order_id, order_minor, discount_minor, voided_at,
                       void_reason"""


async def discount_by_code(conn: Conn, code: str) -> Any:
    row = await conn.fetchrow(f"SELECT {_DISCOUNT_COLUMNS} FROM discounts WHERE code = $1", code)
    if row is None:
        raise NotFound("discount code", code)
    return row


def discount_state(row: Any) -> DiscountState:
    """What the domain's discount rules need of a ``discounts`` row."""
    return DiscountState(
        kind=row["kind"], percent=row["percent"], amount_minor=row["amount_minor"],
        currency=row["currency"], min_purchase_minor=row["min_purchase_minor"],
        expires_at=row["expires_at"], redeemed_at=row["redeemed_at"],
        voided_at=row["voided_at"])


async def discount_by_id(conn: Conn, discount_id: uuid.UUID) -> Any:
    return await conn.fetchrow(
        f"SELECT {_DISCOUNT_COLUMNS} FROM discounts WHERE discount_id = $1", discount_id)


async def redeem(conn: Conn, code: str, *, order_id: str, order_minor: int, currency: str,
                 now: datetime) -> Any:
    """Redeem atomically: one UPDATE whose WHERE holds only for an unused,
    unexpired, valid code; of concurrent callers exactly one gets the row."""
    return await conn.fetchrow(
        f"""UPDATE discounts SET redeemed_at = $2, order_id = $3, order_minor = $4,
                   discount_minor = CASE WHEN kind = 'percent' THEN $4 * percent / 100
                                         ELSE least(amount_minor, $4) END
             WHERE code = $1 AND redeemed_at IS NULL AND voided_at IS NULL
               AND expires_at > $2 AND currency = $5 AND min_purchase_minor <= $4
         RETURNING {_DISCOUNT_COLUMNS}""", code, now, order_id, order_minor, currency)


async def void_discounts(conn: Conn, customer_id: uuid.UUID, reason: str,
                         now: datetime) -> list[uuid.UUID]:
    rows = await conn.fetch(
        """UPDATE discounts SET voided_at = $2, void_reason = $3
            WHERE customer_id = $1 AND redeemed_at IS NULL AND voided_at IS NULL
           RETURNING discount_id""", customer_id, now, reason)
    return [r["discount_id"] for r in rows]


async def customer_discounts(conn: Conn, customer_id: uuid.UUID, limit: int = 100) -> list[Any]:
    return list(await conn.fetch(
        f"""SELECT {_DISCOUNT_COLUMNS} FROM discounts WHERE customer_id = $1
             ORDER BY issued_at DESC LIMIT $2""", customer_id, limit))


async def scrub_order_ids(conn: Conn, customer_id: uuid.UUID) -> None:
    await conn.execute(
        "UPDATE discounts SET order_id = '' WHERE customer_id = $1 AND order_id IS NOT NULL",
        customer_id)


# --- referrals ------------------------------------------------------------------


async def insert_referral_reward(conn: Conn, referred: uuid.UUID, referrer: uuid.UUID,
                                 discount_id: uuid.UUID, rule_id: str, now: datetime) -> bool:
    """Reward a referrer for ``referred`` once; False when rewarded before."""
    row = await conn.fetchval(
        """INSERT INTO referral_rewards (referred_customer_id, referrer_id, discount_id, rule_id,
                                         at)
           VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING referrer_id""",
        referred, referrer, discount_id, rule_id, now)
    return row is not None


async def referral_rewarded(conn: Conn, referred: uuid.UUID) -> bool:
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM referral_rewards WHERE referred_customer_id = $1)",
        referred))


async def referrals_made(conn: Conn, referrer: uuid.UUID) -> list[Any]:
    return list(await conn.fetch(
        """SELECT referred_customer_id, discount_id, at FROM referral_rewards
            WHERE referrer_id = $1 ORDER BY at""", referrer))


# --- merge ------------------------------------------------------------------------


async def move_records(conn: Conn, survivor: uuid.UUID, merged: uuid.UUID) -> None:
    """Re-point everything held under ``merged`` to ``survivor``."""
    for table in ("actions", "follow_ups", "discounts"):
        await conn.execute(f"UPDATE {table} SET customer_id = $1 WHERE customer_id = $2",
                           survivor, merged)
    # Enrolments: where both have a row for a list the survivor's stands (an
    # unsubscribe there is honoured); the merged record's other lists carry over.
    await conn.execute(
        """INSERT INTO enrolments (customer_id, list, status, rule_id, enrolled_at,
                                   unsubscribed_at)
           SELECT $1, list, status, rule_id, enrolled_at, unsubscribed_at FROM enrolments
            WHERE customer_id = $2
           ON CONFLICT (customer_id, list) DO NOTHING""", survivor, merged)
    await conn.execute("DELETE FROM enrolments WHERE customer_id = $1", merged)
    await conn.execute("UPDATE referral_rewards SET referrer_id = $1 WHERE referrer_id = $2",
                       survivor, merged)
    await conn.execute(
        """UPDATE referral_rewards SET referred_customer_id = $1
            WHERE referred_customer_id = $2 AND NOT EXISTS (
                  SELECT 1 FROM referral_rewards WHERE referred_customer_id = $1)""",
        survivor, merged)


# --- data-subject export (privacy.export) ------------------------------------------
# Every column of a customer's rows, as services.loyalty.privacy.EXPORT_COLUMNS maps them.

async def export_views(conn: Conn, survivor: uuid.UUID, ids: list[uuid.UUID]) -> list[Any]:
    """The views of ``ids`` and of every id merged into ``survivor``."""
    return list(await conn.fetch(
        f"""SELECT {VIEW_SELECT}, updated_at FROM customer_view
             WHERE customer_id = ANY($2::uuid[]) OR merged_into = $1
             ORDER BY customer_id""", survivor, ids))


async def export_actions(conn: Conn, ids: list[uuid.UUID]) -> list[Any]:
    return list(await conn.fetch(
        """SELECT action_id, customer_id, rule_id, rule_version, action_index, action_type,
                  purpose, trigger_event_id, trigger_type, outcome, reason, at
             FROM actions WHERE customer_id = ANY($1::uuid[]) ORDER BY at, action_id""", ids))


async def export_follow_ups(conn: Conn, ids: list[uuid.UUID]) -> list[Any]:
    return list(await conn.fetch(
        f"""SELECT {_FOLLOW_UP_COLUMNS} FROM follow_ups WHERE customer_id = ANY($1::uuid[])
             ORDER BY created_at, follow_up_id""", ids))


async def export_enrolments(conn: Conn, ids: list[uuid.UUID]) -> list[Any]:
    return list(await conn.fetch(
        """SELECT customer_id, list, status, rule_id, enrolled_at, unsubscribed_at
             FROM enrolments WHERE customer_id = ANY($1::uuid[]) ORDER BY list, customer_id""",
        ids))


async def export_discounts(conn: Conn, ids: list[uuid.UUID]) -> list[Any]:
    return list(await conn.fetch(
        f"""SELECT {_DISCOUNT_COLUMNS} FROM discounts WHERE customer_id = ANY($1::uuid[])
             ORDER BY issued_at, discount_id""", ids))


async def export_referrals(conn: Conn, ids: list[uuid.UUID]) -> list[Any]:
    """Referral rewards where one of ``ids`` is the referrer or the referred."""
    return list(await conn.fetch(
        """SELECT referred_customer_id, referrer_id, discount_id, rule_id, at
             FROM referral_rewards
            WHERE referrer_id = ANY($1::uuid[]) OR referred_customer_id = ANY($1::uuid[])
            ORDER BY at, referred_customer_id""", ids))


# --- state gauges (the queries of metrics.GAUGES) --------------------

#: ``crm_loyalty_follow_ups``.
LOYALTY_FOLLOW_UPS_SQL = """
    SELECT status, count(*) FROM follow_ups WHERE status IN ('scheduled', 'due') GROUP
    BY status"""

#: ``crm_loyalty_active_discounts``.
LOYALTY_ACTIVE_DISCOUNTS_SQL = """
    SELECT count(*) FROM discounts WHERE redeemed_at IS NULL AND voided_at IS NULL AND
    expires_at > $1::timestamptz"""

#: ``crm_loyalty_discounts``.
LOYALTY_DISCOUNTS_SQL = """
    SELECT CASE WHEN redeemed_at IS NOT NULL THEN 'redeemed' WHEN voided_at IS NOT NULL
    THEN 'withdrawn' WHEN expires_at <= $1::timestamptz THEN 'expired' ELSE 'active'
    END, count(*) FROM discounts GROUP BY 1"""

#: ``crm_loyalty_follow_ups_overdue``.
LOYALTY_FOLLOW_UPS_OVERDUE_SQL = """
    SELECT count(*) FROM follow_ups WHERE status = 'due' AND due_at < $1::timestamptz -
    interval '1 day'"""
