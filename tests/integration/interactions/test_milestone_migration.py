"""Migration 006 over cases opened before milestones: each gets its
resolution milestone in the state its promise was in (met, missed, warned
or pending), counting calendar time on the 24x7 calendar, and the items the
scheduler holds for it keep working."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from crm_runtime.migrations import migrate, migrations_for
from services.interactions import cases
from services.interactions.app import SPEC as INTERACTIONS
from tests.integration.interactions.conftest import migrated_up_to

H = timedelta(hours=1)
NOW = datetime.now(UTC)


@pytest.fixture
async def conn(database_url: str, uid: str) -> AsyncIterator[asyncpg.Connection]:
    async with migrated_up_to(database_url, f"msmig_{uid}", 5) as c:
        yield c


async def _case(conn: asyncpg.Connection, opened: datetime, *, status: str = "open",
                breached: bool = False, warning_scheduled: bool = False) -> uuid.UUID:
    case_id = uuid.uuid4()
    await conn.execute(
        """INSERT INTO cases (case_id, idempotency_key, customer_id, kind, channel, status,
                              opened_at, promised_earliest_at, promised_by, warn_at,
                              resolved_at, breached)
           VALUES ($1, $2, $3, 'complaint', 'phone', $4, $5::timestamptz,
                   $5::timestamptz + interval '1 hour', $5::timestamptz + interval '48 hours',
                   $5::timestamptz + interval '40 hours', $6, $7)""",
        case_id, str(case_id), uuid.uuid4(), status, opened,
        opened + 2 * H if status == "resolved" else None, breached)
    if warning_scheduled:
        await conn.execute(
            """INSERT INTO scheduled_work (kind, item_key, due_at, payload)
               VALUES ('cases.breach_warning', $1, $2, '{}')""", str(case_id), opened + 40 * H)
    return case_id


async def test_cases_from_before_get_their_resolution_milestone(
        conn: asyncpg.Connection, uid: str) -> None:
    resolved = await _case(conn, NOW - 10 * H, status="resolved")
    missed = await _case(conn, NOW - 50 * H, breached=True)
    warned = await _case(conn, NOW - 45 * H)  # the warning ran: no item left
    behind = await _case(conn, NOW - 45 * H, warning_scheduled=True)  # the scheduler is behind
    pending = await _case(conn, NOW - 2 * H, warning_scheduled=True)

    applied = await migrate(conn, f"msmig_{uid}", migrations_for(INTERACTIONS.migrations))
    assert applied[0] == "service/006_business_hours"
    await conn.execute(f"SET search_path TO msmig_{uid}")
    rows = {r["case_id"]: r for r in await conn.fetch("SELECT * FROM case_milestones")}
    assert {c: rows[c]["state"] for c in rows} == {
        resolved: "hit", missed: "missed", warned: "warning", behind: "pending",
        pending: "pending"}
    assert all(r["milestone"] == "resolution" and r["limit_time"] == 48 * H
               and r["warn_before"] == 8 * H for r in rows.values())
    assert rows[resolved]["took"] == 2 * H
    assert rows[warned]["warned_at"] == rows[warned]["warn_at"]
    case = await conn.fetchrow("SELECT * FROM cases WHERE case_id = $1", pending)
    assert case is not None and (case["calendar"], case["clock"]) == ("always", "calendar")
    # An item scheduled before milestones, keyed by the case alone, is the
    # resolution's.
    assert cases.parse_work_key(str(pending)) == (pending, "resolution")
