"""SQL of segment membership and campaigns (tables of
``migrations/004_campaigns.sql``). Every function runs on the caller's
connection, inside its transaction; none commits.

Lock order, so that no two transactions wait for each other in a circle:
a campaign's row (its state: API calls, a run's start, a page), then the
members of a run (a page), then customer views (a page, a consumed batch),
then the run's row (a page's counters at its end; a late joiner, from a
consumed batch that holds its customer's view). The scheduler holds its
work row before all of these; API calls that cancel work delete it first.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from crm_runtime.db import Conn
from services.loyalty.campaigns import CampaignSpec
from services.loyalty.store import VIEW_SELECT, View, view_of

# --- segment membership ---------------------------------------------------------------


async def set_membership(conn: Conn, segment: str, customer_id: uuid.UUID, member: bool,
                         changed_at: datetime) -> tuple[bool, bool | None]:
    """Keep a change of membership unless the one held is as recent or
    newer: (whether it was kept, the membership held before; None when
    none was)."""
    row = await conn.fetchrow(
        """WITH old AS (
               SELECT member FROM segment_members WHERE segment = $1 AND customer_id = $2),
           up AS (
               INSERT INTO segment_members (segment, customer_id, member, changed_at)
               VALUES ($1, $2, $3, $4)
               ON CONFLICT (segment, customer_id) DO UPDATE
                  SET member = EXCLUDED.member, changed_at = EXCLUDED.changed_at
                WHERE segment_members.changed_at < EXCLUDED.changed_at
               RETURNING 1)
           SELECT EXISTS (SELECT 1 FROM up) AS fresh, (SELECT member FROM old) AS was""",
        segment, customer_id, member, changed_at)
    assert row is not None
    return bool(row["fresh"]), row["was"]


async def forget_memberships(conn: Conn, customer_id: uuid.UUID) -> None:
    """Erasure: the customer's memberships go (no segment_left follows),
    with those of the ids merged into them."""
    await conn.execute(
        """DELETE FROM segment_members
            WHERE customer_id = $1
               OR customer_id IN (SELECT customer_id FROM customer_view WHERE merged_into = $1)""",
        customer_id)


async def add_late_joiner(conn: Conn, segment: str, customer_id: uuid.UUID
                          ) -> list[tuple[str, int]]:
    """A customer entered ``segment``: they join the running or paused run
    of every campaign of the segment that takes late joiners (once; its
    ``targeted`` counts them). The run's row is locked first, so a page that
    finishes the run meanwhile either sees them pending or is done before
    (and they do not join). Returns the (campaign, run) they joined."""
    rows = await conn.fetch(
        """WITH target AS (
               SELECT r.campaign_id, r.run FROM campaign_runs r
                 JOIN campaigns c ON c.campaign_id = r.campaign_id
                WHERE c.segment = $1 AND c.include_late_joiners
                  AND r.state IN ('running', 'paused')
                ORDER BY r.campaign_id, r.run
                  FOR NO KEY UPDATE OF r),
           joined AS (
               INSERT INTO campaign_members (campaign_id, run, customer_id)
               SELECT campaign_id, run, $2 FROM target
               ON CONFLICT DO NOTHING RETURNING campaign_id, run)
           UPDATE campaign_runs r SET targeted = r.targeted + 1 FROM joined j
            WHERE r.campaign_id = j.campaign_id AND r.run = j.run
        RETURNING r.campaign_id, r.run""", segment, customer_id)
    return [(r["campaign_id"], r["run"]) for r in rows]


async def segment_page(conn: Conn, segment: str, after: uuid.UUID | None,
                       limit: int) -> list[uuid.UUID]:
    """Members of ``segment`` now, by id after ``after`` (a dry run's page)."""
    rows = await conn.fetch(
        """SELECT customer_id FROM segment_members
            WHERE segment = $1 AND member AND ($2::uuid IS NULL OR customer_id > $2)
            ORDER BY customer_id LIMIT $3""", segment, after, limit)
    return [r["customer_id"] for r in rows]


async def still_members(conn: Conn, segment: str, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Which of ``ids`` are members of ``segment`` now."""
    rows = await conn.fetch(
        """SELECT customer_id FROM segment_members
            WHERE segment = $1 AND customer_id = ANY($2::uuid[]) AND member""", segment, ids)
    return {r["customer_id"] for r in rows}


async def enrolments_in(conn: Conn, list_name: str, ids: Sequence[uuid.UUID]
                        ) -> dict[uuid.UUID, tuple[str, datetime | None]]:
    """(status, unsubscribed_at) of these customers' enrolments in a list."""
    rows = await conn.fetch(
        """SELECT customer_id, status, unsubscribed_at FROM enrolments
            WHERE list = $1 AND customer_id = ANY($2::uuid[])""", list_name, ids)
    return {r["customer_id"]: (r["status"], r["unsubscribed_at"]) for r in rows}


async def views_of(conn: Conn, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, View]:
    """The views of these customers, not locked (a dry run's)."""
    rows = await conn.fetch(
        f"SELECT {VIEW_SELECT} FROM customer_view WHERE customer_id = ANY($1::uuid[])", ids)
    return {r["customer_id"]: view_of(r) for r in rows}


# --- campaigns --------------------------------------------------------------------------

_CAMPAIGN = """c.campaign_id, c.uid, c.name, c.description, c.segment, c.action, c.start_at,
               c.members_per_minute, c.repeat_every, c.repeat_until, c.include_late_joiners,
               c.state, c.paused_from, c.next_run_at, c.runs, c.request, c.request_digest,
               c.created_by, c.created_at, c.updated_at"""


async def get_campaign(conn: Conn, campaign_id: str, *, lock: bool = False) -> Any:
    """The campaign's row (locked for the transaction when ``lock``), None
    when there is none."""
    return await conn.fetchrow(
        f"SELECT {_CAMPAIGN} FROM campaigns c WHERE c.campaign_id = $1"
        + (" FOR UPDATE" if lock else ""), campaign_id)


async def insert_campaign(conn: Conn, spec: CampaignSpec, now: datetime) -> Any:
    """Store a new campaign, scheduled for its start; None when its id is
    taken (a concurrent twin committed first)."""
    return await conn.fetchrow(
        f"""INSERT INTO campaigns AS c (campaign_id, uid, name, description, segment, action,
                                   start_at, members_per_minute, repeat_every, repeat_until,
                                   include_late_joiners, state, next_run_at, request,
                                   request_digest, created_by, created_at, updated_at)
            VALUES ($1, gen_random_uuid(), $2, $3, $4, $5, $6, $7, $8, $9, $10, 'scheduled',
                    $6, $11, $12, $13, $14, $14)
            ON CONFLICT (campaign_id) DO NOTHING RETURNING {_CAMPAIGN}""",
        spec.campaign_id, spec.name, spec.description, spec.segment, spec.action.to_json(),
        spec.start_at, spec.members_per_minute, spec.repeat_every, spec.repeat_until,
        spec.include_late_joiners, spec.stated, spec.digest, spec.created_by, now)


async def set_campaign(conn: Conn, campaign_id: str, *, state: str, paused_from: str | None,
                       next_run_at: datetime | None, now: datetime, runs: int | None = None
                       ) -> Any:
    """A campaign's new state (and run count, when a run starts)."""
    return await conn.fetchrow(
        f"""UPDATE campaigns AS c SET state = $2, paused_from = $3, next_run_at = $4,
                   runs = coalesce($5, runs), updated_at = $6
             WHERE campaign_id = $1 RETURNING {_CAMPAIGN}""",
        campaign_id, state, paused_from, next_run_at, runs, now)


async def list_campaigns(conn: Conn, state: str | None, after: tuple[datetime, uuid.UUID] | None,
                         limit: int) -> list[Any]:
    """Campaigns newest first (keyset: after (created_at, uid))."""
    return list(await conn.fetch(
        f"""SELECT {_CAMPAIGN} FROM campaigns c
             WHERE ($1::text IS NULL OR c.state = $1)
               AND ($2::timestamptz IS NULL OR (c.created_at, c.uid) < ($2, $3::uuid))
             ORDER BY c.created_at DESC, c.uid DESC LIMIT $4""",
        state, after[0] if after else None, after[1] if after else None, limit))


# --- runs ---------------------------------------------------------------------------------

_RUN = """campaign_id, run, state, scheduled_for, started_at, finished_at, targeted, sent,
          suppressed, skipped, suppressed_by_reason, skipped_by_reason, last_page_at,
          last_progress_at"""


async def get_run(conn: Conn, campaign_id: str, run: int, *, lock: bool = False) -> Any:
    return await conn.fetchrow(
        f"SELECT {_RUN} FROM campaign_runs WHERE campaign_id = $1 AND run = $2"
        + (" FOR NO KEY UPDATE" if lock else ""), campaign_id, run)


async def runs_of(conn: Conn, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], Any]:
    """Several runs by (campaign, run), in one statement."""
    rows = await conn.fetch(
        f"""SELECT {_RUN} FROM campaign_runs
             WHERE (campaign_id, run) IN (SELECT * FROM unnest($1::text[], $2::int[]))""",
        [k[0] for k in keys], [k[1] for k in keys])
    return {(r["campaign_id"], r["run"]): r for r in rows}


async def start_run(conn: Conn, campaign_id: str, run: int, segment: str,
                    scheduled_for: datetime, now: datetime) -> Any:
    """Open run ``run``: its members are the segment's members now, taken in
    this one statement (never through this process's memory), counted as
    ``targeted``."""
    return await conn.fetchrow(
        f"""WITH m AS (
                INSERT INTO campaign_members (campaign_id, run, customer_id)
                SELECT $1, $2, customer_id FROM segment_members WHERE segment = $3 AND member
                RETURNING 1)
            INSERT INTO campaign_runs (campaign_id, run, state, scheduled_for, started_at,
                                       last_progress_at, targeted)
            SELECT $1, $2, 'running', $4, $5, $5, count(*) FROM m RETURNING {_RUN}""",
        campaign_id, run, segment, scheduled_for, now)


async def pending_members(conn: Conn, campaign_id: str, run: int, limit: int
                          ) -> list[uuid.UUID]:
    """The next members not reached yet, by id, locked."""
    rows = await conn.fetch(
        """SELECT customer_id FROM campaign_members
            WHERE campaign_id = $1 AND run = $2 AND outcome IS NULL
            ORDER BY customer_id LIMIT $3 FOR UPDATE""", campaign_id, run, limit)
    return [r["customer_id"] for r in rows]


async def any_pending(conn: Conn, campaign_id: str, run: int) -> bool:
    return bool(await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM campaign_members
                           WHERE campaign_id = $1 AND run = $2 AND outcome IS NULL)""",
        campaign_id, run))


#: (customer, outcome, reason, action id)
Decided = tuple[uuid.UUID, str, str, uuid.UUID | None]


async def decide_members(conn: Conn, campaign_id: str, run: int, decided: Sequence[Decided],
                         now: datetime) -> None:
    """What each member of a page came to, in one statement."""
    await conn.execute(
        """UPDATE campaign_members m SET outcome = d.outcome, reason = d.reason,
                  action_id = d.action_id, decided_at = $7
             FROM unnest($3::uuid[], $4::text[], $5::text[], $6::uuid[])
                  AS d(customer_id, outcome, reason, action_id)
            WHERE m.campaign_id = $1 AND m.run = $2 AND m.customer_id = d.customer_id""",
        campaign_id, run, [d[0] for d in decided], [d[1] for d in decided],
        [d[2] for d in decided], [d[3] for d in decided], now)


async def count_page(conn: Conn, campaign_id: str, run: int, *, sent: int, suppressed: int,
                     skipped: int, suppressed_by_reason: dict[str, int],
                     skipped_by_reason: dict[str, int], page_at: datetime,
                     progress_at: datetime | None) -> Any:
    """Add a page's counts to its run (``*_by_reason``: the run's new totals)."""
    return await conn.fetchrow(
        f"""UPDATE campaign_runs SET sent = sent + $3, suppressed = suppressed + $4,
                   skipped = skipped + $5, suppressed_by_reason = $6, skipped_by_reason = $7,
                   last_page_at = $8, last_progress_at = coalesce($9, last_progress_at)
             WHERE campaign_id = $1 AND run = $2 RETURNING {_RUN}""",
        campaign_id, run, sent, suppressed, skipped, suppressed_by_reason, skipped_by_reason,
        page_at, progress_at)


async def set_run_state(conn: Conn, campaign_id: str, run: int, state: str,
                        now: datetime) -> Any:
    """A run's new state; a final one (done, cancelled) records when."""
    return await conn.fetchrow(
        f"""UPDATE campaign_runs SET state = $3::text,
                   finished_at = CASE WHEN $3::text IN ('done', 'cancelled')
                                      THEN $4::timestamptz END,
                   last_progress_at = $4::timestamptz
             WHERE campaign_id = $1 AND run = $2 RETURNING {_RUN}""",
        campaign_id, run, state, now)


# --- data-subject export (privacy.export) ------------------------------------------------


async def export_memberships(conn: Conn, ids: list[uuid.UUID]) -> list[Any]:
    return list(await conn.fetch(
        """SELECT customer_id, segment, member, changed_at FROM segment_members
            WHERE customer_id = ANY($1::uuid[]) ORDER BY segment, customer_id""", ids))


async def export_campaign_members(conn: Conn, ids: list[uuid.UUID]) -> list[Any]:
    return list(await conn.fetch(
        """SELECT campaign_id, run, customer_id, outcome, reason, action_id, decided_at
             FROM campaign_members WHERE customer_id = ANY($1::uuid[])
            ORDER BY campaign_id, run, customer_id""", ids))


# --- state gauges (metrics.GAUGES) ---------------------------------------------------------

#: ``crm_campaigns``.
CAMPAIGNS_SQL = "SELECT state, count(*) FROM campaigns GROUP BY state"

#: ``crm_campaign_pending``.
CAMPAIGN_PENDING_SQL = """
    SELECT campaign_id, targeted - sent - suppressed - skipped FROM campaign_runs
     WHERE state IN ('running', 'paused')"""

#: ``crm_campaign_stalled_seconds``.
CAMPAIGN_STALLED_SQL = """
    SELECT campaign_id,
           greatest(0, extract(epoch FROM $1::timestamptz
                                          - coalesce(last_page_at, started_at)))
      FROM campaign_runs
     WHERE state = 'running' AND targeted > sent + suppressed + skipped"""
