"""SQL of the service's quality: mystery-shopping evaluations and their
scores, action plans, the tallies a scorecard is built from, and the
gauges of scores and overdue plans. Every function runs on the caller's
connection, inside the caller's transaction; none commits. Rows come back
as asyncpg records, or as the pure values of :mod:`scorecard`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from crm_runtime.db import Conn
from services.interactions import scorecard
from services.interactions.scorecard import Plan

# --- evaluations ----------------------------------------------------------------


async def evaluation_by_key(conn: Conn, key: str) -> Any:
    return await conn.fetchrow("SELECT * FROM evaluations WHERE idempotency_key = $1", key)


async def evaluation(conn: Conn, evaluation_id: uuid.UUID) -> Any:
    return await conn.fetchrow("SELECT * FROM evaluations WHERE evaluation_id = $1",
                               evaluation_id)


async def insert_evaluation(conn: Conn, evaluation_id: uuid.UUID, key: str, digest: bytes,
                            cycle: str, version: int, evaluator: str, unit: str,
                            channel: str, visited_at: datetime, notes: str, score: float,
                            recorded_at: datetime) -> Any:
    """Store an evaluation; None when one of that key exists already (a
    concurrent request of the same key committed)."""
    return await conn.fetchrow(
        """INSERT INTO evaluations (evaluation_id, idempotency_key, request_digest, cycle,
               version, evaluator, unit, channel, visited_at, notes, score, recorded_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
           ON CONFLICT (idempotency_key) DO NOTHING RETURNING *""",
        evaluation_id, key, digest, cycle, version, evaluator, unit, channel, visited_at,
        notes, score, recorded_at)


async def insert_scores(conn: Conn, evaluation_id: uuid.UUID,
                        scores: Sequence[dict[str, Any]]) -> None:
    """The criteria of an evaluation (mappings of ``evaluation_scores``'
    columns but the id), in their order."""
    await conn.execute(
        """INSERT INTO evaluation_scores (evaluation_id, requirement_id, touchpoint, scale,
               weight, score, note, position)
           SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::int[], $6::int[],
                                    $7::text[], $8::int[])""",
        evaluation_id, [s["requirement_id"] for s in scores], [s["touchpoint"] for s in scores],
        [s["scale"] for s in scores], [s["weight"] for s in scores],
        [s["score"] for s in scores], [s["note"] for s in scores], list(range(len(scores))))


async def scores_of(conn: Conn, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[Any]]:
    """The criteria of each evaluation, in their order."""
    out: dict[uuid.UUID, list[Any]] = {i: [] for i in ids}
    for r in await conn.fetch(
            "SELECT * FROM evaluation_scores WHERE evaluation_id = ANY($1::uuid[]) "
            "ORDER BY evaluation_id, position", list(ids)):
        out[r["evaluation_id"]].append(r)
    return out


async def list_evaluations(conn: Conn, *, cycle: str, unit: str, channel: str,
                           since: datetime | None, until: datetime | None,
                           after: tuple[datetime, uuid.UUID] | None, limit: int) -> list[Any]:
    """Evaluations newest visit first (then by id, descending), after the
    (visited_at, id) of the last one of the page before."""
    return await conn.fetch(
        """SELECT * FROM evaluations
           WHERE ($1 = '' OR cycle = $1) AND ($2 = '' OR unit = $2)
             AND ($3 = '' OR channel = $3)
             AND ($4::timestamptz IS NULL OR visited_at >= $4)
             AND ($5::timestamptz IS NULL OR visited_at < $5)
             AND ($6::timestamptz IS NULL OR (visited_at, evaluation_id) < ($6, $7::uuid))
           ORDER BY visited_at DESC, evaluation_id DESC LIMIT $8""",
        cycle, unit, channel, since, until, after[0] if after else None,
        after[1] if after else None, limit)


async def scored(conn: Conn, evaluation_id: uuid.UUID) -> list[Any]:
    """(requirement_id, touchpoint) of the criteria an evaluation scored."""
    return await conn.fetch(
        "SELECT requirement_id, touchpoint FROM evaluation_scores WHERE evaluation_id = $1",
        evaluation_id)


# --- action plans ----------------------------------------------------------------

def to_plan(r: Any) -> Plan:
    return Plan(action_plan_id=str(r["action_plan_id"]), cycle=r["cycle"],
                touchpoint=r["touchpoint"], requirement_id=r["requirement_id"],
                description=r["description"], owner=r["owner"], due_on=r["due_on"],
                state=r["state"], source=r["source"],
                evaluation_id=str(r["evaluation_id"] or ""), created_at=r["created_at"],
                updated_at=r["updated_at"])


async def plan_by_key(conn: Conn, key: str) -> Any:
    return await conn.fetchrow("SELECT * FROM action_plans WHERE idempotency_key = $1", key)


async def plan_for_update(conn: Conn, action_plan_id: uuid.UUID) -> Any:
    return await conn.fetchrow(
        "SELECT * FROM action_plans WHERE action_plan_id = $1 FOR UPDATE", action_plan_id)


async def insert_plan(conn: Conn, action_plan_id: uuid.UUID, key: str, digest: bytes,
                      cycle: str, touchpoint: str, requirement_id: str, description: str,
                      owner: str, due_on: date, source: str, evaluation_id: uuid.UUID | None,
                      now: datetime) -> Any:
    """Store a plan (planned); None when one of that key exists already."""
    return await conn.fetchrow(
        """INSERT INTO action_plans (action_plan_id, idempotency_key, request_digest, cycle,
               touchpoint, requirement_id, description, owner, due_on, source, evaluation_id,
               created_at, updated_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)
           ON CONFLICT (idempotency_key) DO NOTHING RETURNING *""",
        action_plan_id, key, digest, cycle, touchpoint, requirement_id, description, owner,
        due_on, source, evaluation_id, now)


async def update_plan(conn: Conn, action_plan_id: uuid.UUID, *, state: str, owner: str,
                      due_on: date | None, description: str, now: datetime) -> Any:
    return await conn.fetchrow(
        """UPDATE action_plans SET state = $2, owner = $3, due_on = $4, description = $5,
               updated_at = $6
           WHERE action_plan_id = $1 RETURNING *""",
        action_plan_id, state, owner, due_on, description, now)


async def list_plans(conn: Conn, *, cycle: str, state: str, overdue_before: date | None,
                     after: tuple[datetime, uuid.UUID] | None, limit: int) -> list[Any]:
    """Plans newest first (then by id, descending), after the (created_at,
    id) of the last one of the page before; ``overdue_before``: only plans
    due before that day and still planned or in progress."""
    return await conn.fetch(
        """SELECT * FROM action_plans
           WHERE ($1 = '' OR cycle = $1) AND ($2 = '' OR state = $2)
             AND ($3::date IS NULL OR (due_on < $3 AND state = ANY($4::text[])))
             AND ($5::timestamptz IS NULL OR (created_at, action_plan_id) < ($5, $6::uuid))
           ORDER BY created_at DESC, action_plan_id DESC LIMIT $7""",
        cycle, state, overdue_before, list(scorecard.OPEN_STATES),
        after[0] if after else None, after[1] if after else None, limit)


async def scorecard_plans(conn: Conn, cycle: str, since: datetime,
                          until: datetime) -> list[Plan]:
    """The plans a scorecard shows: every plan of the cycle still planned or
    in progress, and those done or dropped in the window."""
    return [to_plan(r) for r in await conn.fetch(
        """SELECT * FROM action_plans
           WHERE cycle = $1 AND (state = ANY($2::text[])
                                 OR (updated_at >= $3 AND updated_at < $4))
           ORDER BY created_at, action_plan_id""",
        cycle, list(scorecard.OPEN_STATES), since, until)]


# --- the scorecard's tallies ----------------------------------------------------------

async def tallies(conn: Conn, cycle: str, since: datetime, until: datetime, unit: str,
                  channel: str) -> scorecard.Tallies:
    """What the window [since, until) adds up to for a cycle (any version),
    for one unit and channel ('' : all)."""
    answers = await conn.fetch(
        """SELECT requirement_id, scale, sum(score)::bigint AS total, count(*) AS n
           FROM survey_answers
           WHERE cycle = $1 AND occurred_at >= $2 AND occurred_at < $3
             AND ($4 = '' OR unit = $4) AND ($5 = '' OR channel = $5)
           GROUP BY requirement_id, scale""", cycle, since, until, unit, channel)
    scores = await conn.fetch(
        """SELECT s.requirement_id, s.scale, sum(s.score)::bigint AS total, count(*) AS n
           FROM evaluations e JOIN evaluation_scores s USING (evaluation_id)
           WHERE e.cycle = $1 AND e.visited_at >= $2 AND e.visited_at < $3
             AND ($4 = '' OR e.unit = $4) AND ($5 = '' OR e.channel = $5)
           GROUP BY s.requirement_id, s.scale""", cycle, since, until, unit, channel)
    contacts = await conn.fetch(
        """SELECT touchpoint, count(*) AS contacts,
                  count(*) FILTER (WHERE outcome = 'negative') AS negative,
                  count(*) FILTER (WHERE kind = 'complaint') AS complaints
           FROM interactions
           WHERE occurred_at >= $1 AND occurred_at < $2
             AND ($3 = '' OR unit = $3) AND ($4 = '' OR channel = $4)
           GROUP BY touchpoint
           UNION ALL
           SELECT touchpoint, 0, 0, count(*) FROM cases
           WHERE kind = 'complaint' AND interaction_id IS NULL AND touchpoint <> ''
             AND opened_at >= $1 AND opened_at < $2
             AND ($3 = '' OR unit = $3) AND ($4 = '' OR channel = $4)
           GROUP BY touchpoint""", since, until, unit, channel)
    return scorecard.Tallies(
        customers=scorecard.means(
            (r["requirement_id"], r["scale"], r["total"], r["n"]) for r in answers),
        evaluators=scorecard.means(
            (r["requirement_id"], r["scale"], r["total"], r["n"]) for r in scores),
        contacts=scorecard.contact_counts(
            (r["touchpoint"], r["contacts"], r["negative"], r["complaints"])
            for r in contacts))


# --- gauges --------------------------------------------------------------------------

#: A score on its scale read on 0-1 (:func:`matrix.normalise` in SQL).
_NORMALISED = """CASE {t}.scale WHEN 'nps' THEN {t}.score / 10.0
                     WHEN 'yes_no' THEN {t}.score::numeric
                     ELSE ({t}.score - 1) / 4.0 END"""

#: Scores of the moments of every cycle's latest version over the 30 days
#: before now ($1), by source (customers, evaluators), 0-100: the mean of
#: each requirement's scores, weighted by the requirements' weights, as the
#: scorecard computes it. At most 2000 series.
SCORES_SQL = f"""
WITH latest AS (
    SELECT DISTINCT ON (name) name, moments FROM service_cycle_versions
    ORDER BY name, version DESC),
requirements AS (
    SELECT l.name AS cycle, m ->> 'touchpoint' AS touchpoint,
           r ->> 'requirement_id' AS requirement_id, (r ->> 'weight')::int AS weight
    FROM latest l, jsonb_array_elements(l.moments) AS m,
         jsonb_array_elements(m -> 'requirements') AS r),
means AS (
    SELECT a.cycle, a.requirement_id, 'customers' AS source,
           avg({_NORMALISED.format(t="a")}) AS mean
    FROM latest l JOIN survey_answers a ON a.cycle = l.name
    WHERE a.occurred_at >= $1::timestamptz - interval '30 days' AND a.occurred_at < $1
    GROUP BY a.cycle, a.requirement_id
    UNION ALL
    SELECT e.cycle, s.requirement_id, 'evaluators', avg({_NORMALISED.format(t="s")})
    FROM latest l JOIN evaluations e ON e.cycle = l.name
         JOIN evaluation_scores s ON s.evaluation_id = e.evaluation_id
    WHERE e.visited_at >= $1::timestamptz - interval '30 days' AND e.visited_at < $1
    GROUP BY e.cycle, s.requirement_id)
SELECT q.cycle, q.touchpoint, m.source,
       round(100 * sum(q.weight * m.mean) / sum(q.weight), 2) AS score
FROM requirements q JOIN means m USING (cycle, requirement_id)
GROUP BY q.cycle, q.touchpoint, m.source
ORDER BY q.cycle, q.touchpoint, m.source
LIMIT 2000"""

#: Plans due before today (UTC, on the service's clock: $1) and still
#: planned or in progress, by cycle (every cycle, 0 included).
OVERDUE_PLANS_SQL = """
SELECT c.name, count(p.action_plan_id)
FROM (SELECT DISTINCT name FROM service_cycle_versions) c
LEFT JOIN action_plans p
       ON p.cycle = c.name AND p.state IN ('planned', 'in_progress')
      AND p.due_on < ($1::timestamptz AT TIME ZONE 'UTC')::date
GROUP BY c.name"""
