"""SQL for the loyalty schema. Every function runs on the caller's
connection, inside the caller's transaction; none commits.

Rows come back as asyncpg records, except the customer view
(:class:`services.loyalty.domain.View`) and a discount's state
(:func:`discount_state`), which the domain's rules take.

Why over 500 lines: every statement of the schema is here, and a batch's two
(:func:`lock_views`, :func:`write_unit`) are long, with the reasons for their
shape beside them."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from crm_runtime import db
from crm_runtime.db import Conn
from crm_runtime.errors import NotFound
from services.loyalty.domain import DiscountState
from services.loyalty.domain import View as View  # re-exported: views are read here

# --- the customer view --------------------------------------------------------

_VIEW_COLUMNS = ("customer_id", "stage", "purchase_count", "last_purchase_at", "segments",
                 "preferred_channel", "time_zone", "referred_by", "referral_code",
                 "newsletter_consent", "newsletter_consent_at", "promotional_consent",
                 "promotional_consent_at", "do_not_contact", "at_risk", "erased_at",
                 "merged_into")
_VIEW_SELECT = ", ".join(_VIEW_COLUMNS)


def aware(value: datetime) -> datetime:
    """A ``timestamptz`` as read, always with its offset: asyncpg reads
    PostgreSQL's ``infinity`` and ``-infinity`` (a year-1 time is stored as
    ``-infinity``) as naive ``datetime.max`` and ``datetime.min``; they
    become the same instants in UTC, so they never meet an aware time naive
    (and are written back unchanged)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _view(row: Any) -> View:
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
        f"SELECT {_VIEW_SELECT} FROM customer_view WHERE customer_id = $1 FOR UPDATE",
        customer_id)
    assert row is not None
    return _view(row)


async def get_view(conn: Conn, customer_id: uuid.UUID, *, lock: bool = False) -> View:
    """The view of a known customer (alias resolved); NotFound otherwise."""
    customer_id = await resolve(conn, customer_id)
    row = await conn.fetchrow(
        f"SELECT {_VIEW_SELECT} FROM customer_view WHERE customer_id = $1"
        + (" FOR UPDATE" if lock else ""), customer_id)
    if row is None:
        raise NotFound("customer", str(customer_id))
    return _view(row)


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
    await conn.execute("UPDATE follow_ups SET note = '' WHERE customer_id = $1", customer_id)


# --- newsletters ----------------------------------------------------------------


async def enrolment(conn: Conn, customer_id: uuid.UUID, list_name: str) -> Any:
    return await conn.fetchrow(
        "SELECT status FROM enrolments WHERE customer_id = $1 AND list = $2",
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


# --- batches (one consumed batch, few round trips) --------------------------------


@dataclass
class Locked:
    """What a batch (:class:`services.loyalty.unit.Batch`) loads in its first
    statement."""

    views: list[View]
    revision: int
    #: Promotional contacts in the cap's window, per customer.
    promotional: dict[uuid.UUID, list[datetime]]
    #: Event types that may make an open follow-up moot, per customer.
    cancellable: dict[uuid.UUID, set[str]]
    #: Actions already recorded for the batch's trigger events.
    done_actions: set[uuid.UUID]


#: Action ids recorded for the trigger event ids in parameter ``{ids}``: one
#: index probe per id. With ``trigger_event_id = ANY(...)``, the generic plan
#: PostgreSQL made while the table had a few hundred or thousand rows was a
#: sequential scan comparing every row with every id, and it was kept as the
#: table grew, until the next ANALYZE (26 ms a batch at 10,000 actions, in
#: the loyalty.latency bench). ``OFFSET 0`` keeps the lateral subquery from
#: being flattened into a join that could be planned the same way.
_ACTIONS_OF_TRIGGERS = """
    SELECT x.action_id FROM unnest({ids}::text[]) AS t(id),
           LATERAL (SELECT a.action_id FROM actions a
                     WHERE a.trigger_event_id = t.id OFFSET 0) AS x"""


async def lock_views(conn: Conn, customer_ids: list[uuid.UUID], now: datetime,
                     since: datetime, trigger_event_ids: list[str]) -> Locked:
    """In one round trip: the views of these customers (created empty when
    first seen), locked; the rules revision; and per customer what the trust
    rules and moot follow-ups consult. Aliases are not followed here: the
    caller resolves ``merged_into``. A view another transaction created at
    the same moment may be missing; the caller then loads it on its own."""
    ids = sorted(set(customer_ids))
    rows = await conn.fetch(
        f"""WITH ins AS (
                INSERT INTO customer_view (customer_id, updated_at)
                SELECT id, $2 FROM unnest($1::uuid[]) AS t(id) ORDER BY id
                ON CONFLICT (customer_id) DO NOTHING RETURNING {_VIEW_SELECT}),
            old AS (
                SELECT {_VIEW_SELECT} FROM customer_view
                 WHERE customer_id = ANY($1::uuid[]) ORDER BY customer_id FOR UPDATE),
            v AS (SELECT * FROM ins UNION ALL SELECT * FROM old)
            SELECT v.*,
                   (SELECT revision FROM rules_revision) AS revision,
                   (SELECT coalesce(array_agg(a.at), '{{}}') FROM actions a
                     WHERE a.customer_id = v.customer_id AND a.purpose = 'promotional'
                       AND a.outcome = 'performed' AND a.at > $3) AS promotional,
                   (SELECT coalesce(array_agg(DISTINCT t), '{{}}') FROM follow_ups f,
                           unnest(f.cancel_on) AS t
                     WHERE f.customer_id = v.customer_id AND f.status IN ('scheduled', 'due')
                       AND f.cancel_on <> '{{}}') AS cancellable,
                   (SELECT coalesce(array_agg(action_id), '{{}}')
                      FROM ({_ACTIONS_OF_TRIGGERS.format(ids="$4")}) AS d) AS done
              FROM v""", ids, now, since, trigger_event_ids)
    if not rows:
        return Locked([], await rules_revision(conn), {}, {}, set())
    return Locked(
        views=[_view({k: r[k] for k in _VIEW_COLUMNS}) for r in rows],
        revision=int(rows[0]["revision"]),
        promotional={r["customer_id"]: list(r["promotional"]) for r in rows},
        cancellable={r["customer_id"]: set(r["cancellable"]) for r in rows},
        done_actions=set(rows[0]["done"]))


async def actions_of_triggers(conn: Conn, trigger_event_ids: list[str]) -> set[uuid.UUID]:
    """Ids of actions already recorded for these trigger events."""
    rows = await conn.fetch(_ACTIONS_OF_TRIGGERS.format(ids="$1"), trigger_event_ids)
    return {r["action_id"] for r in rows}


async def promotional_times_many(conn: Conn, customer_ids: list[uuid.UUID],
                                 since: datetime) -> dict[uuid.UUID, list[datetime]]:
    rows = await conn.fetch(
        """SELECT customer_id, at FROM actions
            WHERE customer_id = ANY($1::uuid[]) AND purpose = 'promotional'
              AND outcome = 'performed' AND at > $2""", customer_ids, since)
    out: dict[uuid.UUID, list[datetime]] = {cid: [] for cid in customer_ids}
    for r in rows:
        out[r["customer_id"]].append(r["at"])
    return out


async def cancellable_types(conn: Conn, customer_ids: list[uuid.UUID]
                            ) -> dict[uuid.UUID, set[str]]:
    """Per customer, the event types that would make an open follow-up moot."""
    rows = await conn.fetch(
        """SELECT customer_id, cancel_on FROM follow_ups
            WHERE customer_id = ANY($1::uuid[]) AND status IN ('scheduled', 'due')
              AND cancel_on <> '{}'""", customer_ids)
    out: dict[uuid.UUID, set[str]] = {}
    for r in rows:
        out.setdefault(r["customer_id"], set()).update(r["cancel_on"])
    return out


ActionRow = tuple[uuid.UUID, uuid.UUID, str, int, int, str, str, str, str, str, str, datetime]


DiscountRow = tuple[uuid.UUID, str, uuid.UUID, str, str, int | None, int | None, str, int, str,
                    str, datetime, datetime]


FollowUpRow = tuple[uuid.UUID, uuid.UUID, str, str, str, str, str, str, list[str], datetime,
                    datetime, datetime]


_SEP = "\x1f"  # joins a row's text[] values: unnest() cannot take arrays of arrays

#: The service's schema (and name: ``commands.SERVICE``).
SCHEMA = "loyalty"

#: A batch's buffered rows, one set per table (arrays or COPY, by
#: size: :class:`db.Rows`).
_ACTION_ROWS = db.Rows("loyalty_action_batch", [
    ("action_id", "uuid"), ("customer_id", "uuid"), ("rule_id", "text"),
    ("rule_version", "int"), ("action_index", "int"), ("action_type", "text"),
    ("purpose", "text"), ("trigger_event_id", "text"), ("trigger_type", "text"),
    ("outcome", "text"), ("reason", "text"), ("at", "timestamptz")], schema=SCHEMA,
    into="actions")
_DISCOUNT_ROWS = db.Rows("loyalty_discount_batch", [
    ("discount_id", "uuid"), ("code", "text"), ("customer_id", "uuid"), ("rule_id", "text"),
    ("kind", "text"), ("percent", "int"), ("amount_minor", "bigint"), ("currency", "text"),
    ("min_purchase_minor", "bigint"), ("purpose", "text"), ("reason", "text"),
    ("issued_at", "timestamptz"), ("expires_at", "timestamptz")], schema=SCHEMA,
    into="discounts")
_FOLLOW_UP_ROWS = db.Rows("loyalty_follow_up_batch", [
    ("follow_up_id", "uuid"), ("customer_id", "uuid"), ("rule_id", "text"), ("channel", "text"),
    ("template", "text"), ("reason", "text"), ("purpose", "text"), ("list", "text"),
    ("cancel_on", "text"), ("requested_at", "timestamptz"), ("due_at", "timestamptz"),
    ("created_at", "timestamptz")], schema=SCHEMA)
_SCHEDULE_ROWS = db.Rows("loyalty_schedule_batch", [
    ("kind", "text"), ("item_key", "text"), ("due_at", "timestamptz"), ("traceparent", "text")],
    schema=SCHEMA)
_VIEW_ROWS = db.Rows("loyalty_view_batch", [
    ("customer_id", "uuid"), ("stage", "text"), ("purchase_count", "int"),
    ("last_purchase_at", "timestamptz"), ("segments", "text"), ("preferred_channel", "text"),
    ("time_zone", "text"), ("referred_by", "uuid"), ("referral_code", "text"),
    ("newsletter_consent", "bool"), ("newsletter_consent_at", "timestamptz"),
    ("promotional_consent", "bool"), ("promotional_consent_at", "timestamptz"),
    ("do_not_contact", "bool"), ("at_risk", "bool"), ("erased_at", "timestamptz"),
    ("merged_into", "uuid"), ("updated_at", "timestamptz")], schema=SCHEMA, copy_from=None)

_WRITE_UNIT = """
    WITH action_rows AS ({loyalty_action_batch}),
    discount_rows AS ({loyalty_discount_batch}),
    follow_up_rows AS ({loyalty_follow_up_batch}),
    schedule_rows AS ({loyalty_schedule_batch}),
    v AS ({loyalty_view_batch}),
    a AS (
      INSERT INTO actions (action_id, customer_id, rule_id, rule_version, action_index,
                           action_type, purpose, trigger_event_id, trigger_type, outcome,
                           reason, at)
      SELECT * FROM action_rows),
    d AS (
      INSERT INTO discounts (discount_id, code, customer_id, rule_id, kind, percent,
                             amount_minor, currency, min_purchase_minor, purpose, reason,
                             issued_at, expires_at)
      SELECT * FROM discount_rows),
    f AS (
      INSERT INTO follow_ups (follow_up_id, customer_id, rule_id, channel, template, reason,
                              purpose, list, cancel_on, status, requested_at, due_at,
                              created_at)
      SELECT b.follow_up_id, b.customer_id, b.rule_id, b.channel, b.template, b.reason,
             b.purpose, b.list, string_to_array(b.cancel_on, {sep}), 'scheduled',
             b.requested_at, b.due_at, b.created_at
        FROM follow_up_rows AS b),
    s AS (
      INSERT INTO scheduled_work (kind, item_key, due_at, payload, traceparent)
      SELECT b.kind, b.item_key, b.due_at, '{}'::jsonb, b.traceparent
        FROM schedule_rows AS b
      ON CONFLICT (kind, item_key)
      DO UPDATE SET due_at = EXCLUDED.due_at, payload = EXCLUDED.payload, attempts = 0,
                    last_error = NULL, traceparent = EXCLUDED.traceparent)
    UPDATE customer_view c SET stage = v.stage, purchase_count = v.purchase_count,
           last_purchase_at = v.last_purchase_at,
           segments = string_to_array(v.segments, {sep}),
           preferred_channel = v.preferred_channel, time_zone = v.time_zone,
           referred_by = v.referred_by, referral_code = v.referral_code,
           newsletter_consent = v.newsletter_consent,
           newsletter_consent_at = v.newsletter_consent_at,
           promotional_consent = v.promotional_consent,
           promotional_consent_at = v.promotional_consent_at,
           do_not_contact = v.do_not_contact, at_risk = v.at_risk,
           erased_at = v.erased_at, merged_into = v.merged_into, updated_at = v.updated_at
      FROM v
     WHERE c.customer_id = v.customer_id""".replace("{sep}", f"chr({ord(_SEP)})")


async def write_unit(conn: Conn, *, actions: list[ActionRow], discounts: list[DiscountRow],
                     follow_ups: list[FollowUpRow],
                     schedules: list[tuple[str, str, datetime, str]],
                     views: list[View], now: datetime) -> None:
    """Write a batch's buffered rows in one statement: actions,
    discounts, follow-ups, scheduled work (the same upsert as
    ``crm_runtime.scheduler.schedule``) and the changed views. A second
    record of an action (a replay that bypassed the inbox) or a clash of
    random codes violates a unique key and fails the transaction."""
    if not (actions or discounts or follow_ups or schedules or views):
        return
    await db.fetch_rows(conn, _WRITE_UNIT,
                        _unit_batches(actions, discounts, follow_ups, schedules, views, now))


def _unit_batches(actions: list[ActionRow], discounts: list[DiscountRow],
                  follow_ups: list[FollowUpRow], schedules: list[tuple[str, str, datetime, str]],
                  views: list[View], now: datetime
                  ) -> dict[db.Rows, Sequence[tuple[Any, ...]]]:
    return {
        _ACTION_ROWS: actions,
        _DISCOUNT_ROWS: discounts,
        _FOLLOW_UP_ROWS: [(*f[:8], _SEP.join(f[8]), *f[9:]) for f in follow_ups],
        _SCHEDULE_ROWS: schedules,
        _VIEW_ROWS: [(x.customer_id, x.stage, x.purchase_count, x.last_purchase_at,
                      _SEP.join(x.segments), x.preferred_channel, x.time_zone, x.referred_by,
                      x.referral_code, x.newsletter_consent, x.newsletter_consent_at,
                      x.promotional_consent, x.promotional_consent_at, x.do_not_contact,
                      x.at_risk, x.erased_at, x.merged_into, now) for x in views]}


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
