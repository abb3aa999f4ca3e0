"""SQL of the promises: policies, business-hours calendars and the calendar
of each unit, the milestones of cases, and the segments each customer is in.
Every function runs on the caller's connection, inside the caller's
transaction; none commits. Rows come back as asyncpg records, or as the
pure values of :mod:`promises` and :mod:`business_time`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from crm_runtime.db import Conn
from services.interactions import business_time, promises
from services.interactions.business_time import ALWAYS, Calendar
from services.interactions.promises import Milestone, Policy

#: The unit whose calendar counts for every unit without one of its own.
ANY_UNIT = "*"


# --- policies -------------------------------------------------------------------

def _policy(r: Any) -> Policy:
    return Policy(r["kind"], r["channel"], timedelta(seconds=r["min_seconds"]),
                  timedelta(seconds=r["max_seconds"]), timedelta(seconds=r["warn_before_seconds"]),
                  timedelta(seconds=r["first_response_seconds"]),
                  timedelta(seconds=r["first_response_warn_before_seconds"]), r["clock"],
                  r["segment"])


async def policies(conn: Conn) -> list[Policy]:
    """The policies set (the defaults are :data:`promises.DEFAULT_POLICIES`)."""
    return [_policy(r) for r in await conn.fetch("SELECT * FROM promise_policies")]


async def upsert_policy(conn: Conn, p: Policy) -> None:
    await conn.execute(
        """INSERT INTO promise_policies (kind, channel, segment, min_seconds, max_seconds,
               warn_before_seconds, first_response_seconds, first_response_warn_before_seconds,
               clock) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
           ON CONFLICT (kind, channel, segment) DO UPDATE SET
               min_seconds = EXCLUDED.min_seconds, max_seconds = EXCLUDED.max_seconds,
               warn_before_seconds = EXCLUDED.warn_before_seconds,
               first_response_seconds = EXCLUDED.first_response_seconds,
               first_response_warn_before_seconds = EXCLUDED.first_response_warn_before_seconds,
               clock = EXCLUDED.clock""",
        p.kind, p.channel, p.segment, _seconds(p.min_time), _seconds(p.max_time),
        _seconds(p.warn_before), _seconds(p.first_response),
        _seconds(p.first_response_warn_before), p.clock)


async def delete_policy(conn: Conn, kind: str, channel: str, segment: str) -> Policy | None:
    row = await conn.fetchrow(
        """DELETE FROM promise_policies WHERE kind = $1 AND channel = $2 AND segment = $3
           RETURNING *""", kind, channel, segment)
    return _policy(row) if row is not None else None


def _seconds(t: timedelta) -> int:
    return int(t.total_seconds())


# --- calendars ------------------------------------------------------------------

def to_calendar(r: Any) -> Calendar:
    return business_time.calendar(r["name"], r["time_zone"], r["hours"], r["closed_dates"],
                                  r["version"])


async def calendar_row(conn: Conn, name: str, version: int = 0) -> Any:
    """The stored version (0: the latest) of a calendar, or None."""
    return await conn.fetchrow(
        """SELECT * FROM calendars WHERE name = $1 AND ($2 = 0 OR version = $2)
            ORDER BY version DESC LIMIT 1""", name, version)


async def calendar(conn: Conn, name: str, version: int) -> Calendar:
    """A version of a calendar a case counts on (``always``: the built-in)."""
    if name == ALWAYS.name:
        return ALWAYS
    row = await calendar_row(conn, name, version)
    return to_calendar(row) if row is not None else ALWAYS


async def lock_calendar_name(conn: Conn, name: str) -> None:
    """Serialise definitions of one calendar (its versions are numbered in order)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('calendar:' || $1, 0))",
                       name)


async def insert_calendar(conn: Conn, cal: Calendar, at: datetime) -> Any:
    return await conn.fetchrow(
        """INSERT INTO calendars (name, version, time_zone, hours, closed_dates, defined_at)
           VALUES ($1, $2, $3, $4, $5, $6) RETURNING *""",
        cal.name, cal.version, cal.time_zone, business_time.to_hours(cal),
        business_time.to_closed_dates(cal), at)


async def latest_calendars(conn: Conn) -> list[Any]:
    """The latest version of every calendar, by name."""
    return list(await conn.fetch(
        "SELECT DISTINCT ON (name) * FROM calendars ORDER BY name, version DESC"))


async def units_by_calendar(conn: Conn) -> dict[str, list[str]]:
    units: dict[str, list[str]] = {}
    for r in await conn.fetch("SELECT unit, calendar FROM unit_calendars ORDER BY unit"):
        units.setdefault(r["calendar"], []).append(r["unit"])
    return units


async def unit_calendar(conn: Conn, unit: str) -> Calendar:
    """The latest version of the calendar of ``unit`` (its own, else the one
    of every unit, else ``always``)."""
    row = await conn.fetchrow(
        """SELECT u.calendar, c.name, c.version, c.time_zone, c.hours, c.closed_dates
             FROM unit_calendars u
             LEFT JOIN LATERAL (SELECT * FROM calendars k WHERE k.name = u.calendar
                                 ORDER BY k.version DESC LIMIT 1) c ON true
            WHERE u.unit = $1 OR u.unit = $2
            ORDER BY u.unit = $2 LIMIT 1""", unit, ANY_UNIT)
    if row is None or row["name"] is None:
        return ALWAYS
    return to_calendar(row)


async def set_unit_calendar(conn: Conn, unit: str, calendar: str, at: datetime) -> Any:
    return await conn.fetchrow(
        """INSERT INTO unit_calendars (unit, calendar, set_at) VALUES ($1, $2, $3)
           ON CONFLICT (unit) DO UPDATE SET calendar = EXCLUDED.calendar,
               set_at = EXCLUDED.set_at RETURNING *""", unit, calendar, at)


async def open_cases_on(conn: Conn, name: str, below: int, limit: int) -> list[uuid.UUID]:
    """Up to ``limit`` unresolved cases counting on a version of calendar
    ``name`` before ``below``."""
    return [r["case_id"] for r in await conn.fetch(
        """SELECT case_id FROM cases WHERE calendar = $1 AND calendar_version < $2
              AND status <> 'resolved' ORDER BY case_id LIMIT $3""", name, below, limit)]


# --- milestones -------------------------------------------------------------------

_MILESTONE_COLUMNS = ("limit_time", "warn_before", "state", "due_at", "warn_at", "warned_at",
                      "remaining", "met_at", "took", "missed_at")


def _milestone(r: Any) -> Milestone:
    return Milestone(r["milestone"], r["limit_time"], r["warn_before"], r["state"], r["due_at"],
                     r["warn_at"], r["warned_at"], r["remaining"], r["met_at"], r["took"],
                     r["missed_at"])


async def milestones(conn: Conn, case_id: uuid.UUID) -> dict[str, Milestone]:
    """The case's milestones by name, first response first."""
    rows = await conn.fetch("SELECT * FROM case_milestones WHERE case_id = $1", case_id)
    found = {r["milestone"]: _milestone(r) for r in rows}
    return {name: found[name] for name in promises.MILESTONES if name in found}


async def milestones_of(conn: Conn, case_ids: Sequence[uuid.UUID]
                        ) -> dict[uuid.UUID, list[Milestone]]:
    """The milestones of many cases (a page of ``ListCases``)."""
    found: dict[uuid.UUID, list[Milestone]] = {c: [] for c in case_ids}
    for r in await conn.fetch(
            """SELECT * FROM case_milestones WHERE case_id = ANY($1::uuid[])
                ORDER BY case_id, milestone""", list(case_ids)):
        found[r["case_id"]].append(_milestone(r))
    return found


async def save_milestones(conn: Conn, case_id: uuid.UUID, ms: Iterable[Milestone]) -> None:
    rows = [(case_id, m.name, m.limit, m.warn_before, m.state, m.due_at, m.warn_at, m.warned_at,
             m.remaining, m.met_at, m.took, m.missed_at) for m in ms]
    await conn.executemany(
        f"""INSERT INTO case_milestones (case_id, milestone, {', '.join(_MILESTONE_COLUMNS)})
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
            ON CONFLICT (case_id, milestone) DO UPDATE SET
            {', '.join(f'{c} = EXCLUDED.{c}' for c in _MILESTONE_COLUMNS)}""", rows)


async def set_case_promise(conn: Conn, case_id: uuid.UUID, *, promised_by: datetime | None,
                           warn_at: datetime | None, calendar: Calendar | None = None,
                           paused_at: datetime | None = None, pause_reason: str = "",
                           pausing: bool | None = None) -> None:
    """Mirror the resolution's due time (and warning) on the case row; move
    it to another calendar; pause it (``pausing`` True) or resume it (False)."""
    await conn.execute(
        """UPDATE cases SET promised_by = coalesce($2, promised_by),
                  warn_at = coalesce($3, warn_at),
                  calendar = coalesce($4, calendar),
                  calendar_version = coalesce($5, calendar_version),
                  paused_at = CASE WHEN $6::boolean IS NULL THEN paused_at
                                   WHEN $6 THEN $7 ELSE NULL END,
                  pause_reason = CASE WHEN $6::boolean IS NULL THEN pause_reason
                                      WHEN $6 THEN $8 ELSE '' END
            WHERE case_id = $1""",
        case_id, promised_by, warn_at, calendar.name if calendar else None,
        calendar.version if calendar else None, pausing, paused_at, pause_reason)


# --- segments (entitlements) --------------------------------------------------------

async def segments_of(conn: Conn, customer_id: uuid.UUID) -> set[str]:
    return {r["segment"] for r in await conn.fetch(
        "SELECT segment FROM customer_segments WHERE customer_id = $1 AND member", customer_id)}


async def apply_segment_changes(conn: Conn,
                                rows: Sequence[tuple[uuid.UUID, str, bool, datetime]]) -> None:
    """Changes of membership, rows of (customer, segment, member, changed_at):
    the latest change wins whatever order they arrive in (a change that
    arrives late changes nothing)."""
    latest: dict[tuple[uuid.UUID, str], tuple[uuid.UUID, str, bool, datetime]] = {}
    for r in rows:  # one row per key: the latest (of equal times, the last to arrive)
        held = latest.get((r[0], r[1]))
        if held is None or held[3] <= r[3]:
            latest[r[0], r[1]] = r
    if not latest:
        return
    columns = list(zip(*latest.values(), strict=True))
    await conn.execute(
        """INSERT INTO customer_segments (customer_id, segment, member, changed_at)
           SELECT * FROM unnest($1::uuid[], $2::text[], $3::boolean[], $4::timestamptz[])
           ON CONFLICT (customer_id, segment) DO UPDATE SET member = EXCLUDED.member,
               changed_at = EXCLUDED.changed_at
            WHERE customer_segments.changed_at <= EXCLUDED.changed_at""",
        *(list(c) for c in columns))


async def forget_segments(conn: Conn, customer_id: uuid.UUID) -> None:
    """An erased or merged-away customer is in no segment (customers
    re-evaluates a merge's survivor and says so)."""
    await conn.execute("DELETE FROM customer_segments WHERE customer_id = $1", customer_id)
