"""SQL of one consumed batch of the loyalty service
(:class:`services.loyalty.unit.Batch`), in few round trips: its first
statement (:func:`lock_views`: the views, the rules revision, what may make
a follow-up moot, the actions already recorded) and its last (:func:`write_unit`: every row the
batch buffered). Long statements, with the reasons for their shape beside
them; the rest of the schema's SQL is in :mod:`services.loyalty.store`.
Every function runs on the caller's connection, inside its transaction."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from crm_runtime import db
from crm_runtime.db import Conn
from services.loyalty.store import SCHEMA, VIEW_COLUMNS, VIEW_SELECT, View, rules_revision, view_of


@dataclass
class Locked:
    """What a batch (:class:`services.loyalty.unit.Batch`) loads in its first
    statement."""

    views: list[View]
    revision: int
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
                     trigger_event_ids: list[str]) -> Locked:
    """In one round trip: the views of these customers (created empty when
    first seen), locked; the rules revision; and per customer what moot
    follow-ups consult. Aliases are not followed here: the
    caller resolves ``merged_into``. A view another transaction created at
    the same moment may be missing; the caller then loads it on its own."""
    ids = sorted(set(customer_ids))
    rows = await conn.fetch(
        f"""WITH ins AS (
                INSERT INTO customer_view (customer_id, updated_at)
                SELECT id, $2 FROM unnest($1::uuid[]) AS t(id) ORDER BY id
                ON CONFLICT (customer_id) DO NOTHING RETURNING {VIEW_SELECT}),
            old AS (
                SELECT {VIEW_SELECT} FROM customer_view
                 WHERE customer_id = ANY($1::uuid[]) ORDER BY customer_id FOR UPDATE),
            v AS (SELECT * FROM ins UNION ALL SELECT * FROM old)
            SELECT v.*,
                   (SELECT revision FROM rules_revision) AS revision,
                   (SELECT coalesce(array_agg(DISTINCT t), '{{}}') FROM follow_ups f,
                           unnest(f.cancel_on) AS t
                     WHERE f.customer_id = v.customer_id AND f.status IN ('scheduled', 'due')
                       AND f.cancel_on <> '{{}}') AS cancellable,
                   (SELECT coalesce(array_agg(action_id), '{{}}')
                      FROM ({_ACTIONS_OF_TRIGGERS.format(ids="$3")}) AS d) AS done
              FROM v""", ids, now, trigger_event_ids)
    if not rows:
        return Locked([], await rules_revision(conn), {}, set())
    return Locked(
        views=[view_of({k: r[k] for k in VIEW_COLUMNS}) for r in rows],
        revision=int(rows[0]["revision"]),
        cancellable={r["customer_id"]: set(r["cancellable"]) for r in rows},
        done_actions=set(rows[0]["done"]))


async def actions_of_triggers(conn: Conn, trigger_event_ids: list[str]) -> set[uuid.UUID]:
    """Ids of actions already recorded for these trigger events."""
    rows = await conn.fetch(_ACTIONS_OF_TRIGGERS.format(ids="$1"), trigger_event_ids)
    return {r["action_id"] for r in rows}


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
    ("do_not_contact", "bool"), ("do_not_contact_at", "timestamptz"), ("at_risk", "bool"),
    ("erased_at", "timestamptz"),
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
           do_not_contact = v.do_not_contact, do_not_contact_at = v.do_not_contact_at,
           at_risk = v.at_risk,
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
                      x.do_not_contact_at, x.at_risk, x.erased_at, x.merged_into, now)
                     for x in views]}
