"""Migration 007 over the service cycles of before (one row per cycle,
overwritten in place): each becomes its version with requirements r1, r2,
... whose question ids are the ones the service computes, the moment's typed
priority becomes a weight, and the action plans' strings become planned
plans of their moment; the service reads the version back."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from crm_runtime.migrations import migrate, migrations_for
from services.interactions import cycles, matrix
from services.interactions.app import SPEC as INTERACTIONS
from tests.integration.interactions.conftest import migrated_up_to

DEFINED = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
async def conn(database_url: str, uid: str) -> AsyncIterator[asyncpg.Connection]:
    async with migrated_up_to(database_url, f"cymig_{uid}", 6) as c:
        yield c


async def test_cycles_from_before_become_their_versions(conn: asyncpg.Connection,
                                                        uid: str) -> None:
    name = f"in-store purchase {uuid.uuid4().hex[:6]}"
    moments = [
        {"touchpoint": "greeting", "requirements": ["a smile", "no queue"],
         "action_plans": ["two people at the door"], "priority": 2,
         "survey_questions": ["How satisfied were you with: a smile?"]},
        {"touchpoint": "delivery", "requirements": [], "action_plans": [], "priority": 1},
        {"touchpoint": "farewell", "requirements": ["a thank you"],
         "action_plans": ["say goodbye", "hold the door"], "priority": 9}]
    await conn.execute(
        "INSERT INTO service_cycles (name, version, moments, updated_at) VALUES ($1, 3, $2, $3)",
        name, moments, DEFINED)

    applied = await migrate(conn, f"cymig_{uid}", migrations_for(INTERACTIONS.migrations))
    assert applied == ["service/007_service_cycle"]
    await conn.execute(f"SET search_path TO cymig_{uid}")

    cycle = await cycles.load(conn, name)
    assert cycle.version == 3
    assert [(m.touchpoint, m.weight) for m in cycle.moments] == [
        ("greeting", 4), ("delivery", 5), ("farewell", 1)]  # priority 1 (highest) -> 5
    greeting = cycle.moments[0]
    assert [(r.requirement_id, r.text, r.scale, r.weight, r.channels, r.question)
            for r in greeting.requirements] == [
        ("r1", "a smile", "csat", 1, (), "How satisfied were you with: a smile?"),
        ("r2", "no queue", "csat", 1, (), "How satisfied were you with: no queue?")]
    assert [r.question_id for m in cycle.moments for r in m.requirements] == [
        matrix.question_id(name, 3, rid) for rid in ("r1", "r2", "r3")]
    questions = {str(r["question_id"]): (r["touchpoint"], r["requirement_id"])
                 for r in await conn.fetch("SELECT * FROM survey_questions WHERE cycle = $1",
                                           name)}
    assert questions == {matrix.question_id(name, 3, "r1"): ("greeting", "r1"),
                         matrix.question_id(name, 3, "r2"): ("greeting", "r2"),
                         matrix.question_id(name, 3, "r3"): ("farewell", "r3")}
    plans = await conn.fetch(
        "SELECT touchpoint, requirement_id, description, owner, due_on, state, source "
        "FROM action_plans WHERE cycle = $1 ORDER BY touchpoint, description", name)
    assert [tuple(p) for p in plans] == [
        ("farewell", "", "hold the door", "", None, "planned", "manual"),
        ("farewell", "", "say goodbye", "", None, "planned", "manual"),
        ("greeting", "", "two people at the door", "", None, "planned", "manual")]
    assert await conn.fetchval("SELECT to_regclass('service_cycles')") is None
