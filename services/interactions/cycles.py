"""Service cycles: defining their versions, reading them, the questions
their requirements ask, and the touchpoints the active ones know.

* Every definition that changes a cycle (its matrix or its periodic survey)
  is a new version; the same definition again returns the latest version
  (a retry adds none). Definitions of one name are serialised by a lock on
  the name, so versions are numbered in order. Each version's questions go
  to ``survey_questions``, for answers to name.
* The latest version of every cycle is the active one: its moments' keys
  are the touchpoints the company knows. A contact or a case naming another
  touchpoint is counted in ``crm_touchpoints_unmapped_total``
  (:func:`note_touchpoints`), against a small cache of the active keys
  (:class:`_ActiveKeys`) so that recording contacts costs no query.
* A version with a periodic survey (every N days, to a segment) schedules
  its runs here (:data:`PERIODIC_RUN`, run by :mod:`surveys`).

Every function runs in the caller's transaction.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from crm_contracts.interactions import SurveyQuestion
from crm_contracts.vocabulary import CONTACT_CHANNELS
from crm_runtime import scheduler, uow
from crm_runtime.db import Conn
from crm_runtime.errors import InvalidArgument, NotFound
from services.interactions import matrix, metrics
from services.interactions.matrix import Cycle
from services.interactions.store import SERVICE

#: Longest period of a periodic survey, in days.
MAX_EVERY_DAYS = 366
#: The channel of a periodic survey that names none.
DEFAULT_SURVEY_CHANNEL = "email"
#: Scheduled work: a run of a cycle's periodic survey, a page of its
#: segment at a time (key: the cycle's name; :func:`surveys.run_periodic`).
PERIODIC_RUN = "surveys.periodic"
#: The most questions one survey request carries (a cycle has at most
#: :data:`matrix.MAX_REQUIREMENTS`; several cycles may share a touchpoint).
MAX_QUESTIONS = matrix.MAX_REQUIREMENTS


@dataclass(frozen=True)
class Defined:
    """A stored version of a cycle, with its periodic survey."""

    cycle: Cycle
    defined_at: datetime
    survey_every_days: int = 0
    survey_segment: str = ""
    survey_channel: str = ""

    @property
    def survey(self) -> tuple[int, str, str]:
        return self.survey_every_days, self.survey_segment, self.survey_channel


def _defined(row: Any) -> Defined:
    return Defined(matrix.from_json(row["name"], row["version"], row["moments"]),
                   row["defined_at"], row["survey_every_days"], row["survey_segment"],
                   row["survey_channel"])


def check_survey(every_days: int, segment: str, channel: str) -> tuple[int, str, str]:
    """A cycle's periodic survey, checked: every 0 (none) to 366 days, to a
    segment (required when periodic), on a contact channel (default email
    when periodic)."""
    if not 0 <= every_days <= MAX_EVERY_DAYS:
        raise InvalidArgument("survey_every_days",
                              f"must be 0 (none) to {MAX_EVERY_DAYS}, got {every_days}")
    segment, channel = segment.strip(), channel.strip().lower()
    if every_days and not segment:
        raise InvalidArgument("survey_segment", "required with survey_every_days")
    if every_days and not channel:
        channel = DEFAULT_SURVEY_CHANNEL
    if channel and channel not in CONTACT_CHANNELS:
        raise InvalidArgument("survey_channel",
                              f"{channel[:40]!r} is not one of {list(CONTACT_CHANNELS)}")
    return every_days, segment, channel


# --- defining ---------------------------------------------------------------------

async def define(conn: Conn, now: datetime, name: str, moments: Sequence[Mapping[str, Any]],
                 *, every_days: int = 0, segment: str = "", channel: str = "") -> Defined:
    """A new version of the cycle (its first: version 1) with its questions;
    the same matrix and periodic survey as the latest version return that
    version. A new version with a new periodic survey runs it at once and
    then every N days (:data:`PERIODIC_RUN`, replacing a pending run of the
    cycle); one with the same periodic survey as the latest leaves its
    pending run as it is; one without stops the runs of the cycle."""
    survey = check_survey(every_days, segment, channel)
    checked = matrix.define(name, 1, moments)  # errors before any lock
    await lock(conn, checked.name)
    latest = await _row(conn, checked.name)
    if latest is not None:
        held = _defined(latest)
        cycle = matrix.define(name, held.cycle.version + 1, moments)
        if matrix.same_matrix(cycle, held.cycle) and survey == held.survey:
            return held
    else:
        cycle = checked
    row = await conn.fetchrow(
        """INSERT INTO service_cycle_versions (name, version, moments, survey_every_days,
                                              survey_segment, survey_channel, defined_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *""",
        cycle.name, cycle.version, matrix.to_json(cycle), *survey, now)
    questions = [(r.question_id, m.touchpoint, r.requirement_id, r.scale, r.question)
                 for m in cycle.moments for r in m.requirements]
    if questions:
        columns = list(zip(*questions, strict=True))
        await conn.execute(
            """INSERT INTO survey_questions (question_id, cycle, version, touchpoint,
                                             requirement_id, scale, text)
               SELECT q.id, $1, $2, q.touchpoint, q.requirement_id, q.scale, q.text
                 FROM unnest($3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[])
                      AS q(id, touchpoint, requirement_id, scale, text)""",
            cycle.name, cycle.version, *(list(c) for c in columns))
    uow.on_commit(_ACTIVE.invalidate)
    defined = _defined(row)
    if defined.survey_every_days:
        if latest is None or survey != held.survey:
            await scheduler.schedule(conn, PERIODIC_RUN, cycle.name, now,
                                     run_payload(defined, now))
        # else the same periodic survey: its pending run goes on untouched (it
        # may be running this very moment), asking the latest version's
        # questions from its next page on.
    else:
        await scheduler.cancel(conn, PERIODIC_RUN, cycle.name)
    return defined


async def lock(conn: Conn, name: str) -> None:
    """Hold the cycle's lock until the transaction ends (its definitions take
    it, so versions are numbered in order). The pages of a periodic run do
    not: they hold their work item, which a definition may wait for, and
    check the latest version instead."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('cycle:' || $1, 0))",
                       name)


def run_payload(defined: Defined, run_at: datetime, after: str = "") -> dict[str, Any]:
    """The payload of a periodic run of ``defined`` at ``run_at``, its next
    page starting after customer ``after``."""
    return {"version": defined.cycle.version, "run_at": run_at.isoformat(), "after": after,
            "survey": list(defined.survey)}


# --- reading ------------------------------------------------------------------------

async def _row(conn: Conn, name: str, version: int = 0) -> Any:
    return await conn.fetchrow(
        """SELECT * FROM service_cycle_versions WHERE name = $1 AND ($2 = 0 OR version = $2)
            ORDER BY version DESC LIMIT 1""", name, version)


async def get(conn: Conn, name: str, version: int = 0) -> Defined:
    """A version of a cycle (0: its latest), as a request names it: the name
    is required; NotFound names the cycle or the version that does not
    exist."""
    if not name.strip():
        raise InvalidArgument("name", "required")
    if version < 0:
        raise InvalidArgument("version", "0 (the latest) or a version number")
    return await _fetch(conn, name.strip(), version)


async def _fetch(conn: Conn, name: str, version: int) -> Defined:
    row = await _row(conn, name, version)
    if row is None:
        if version and await _row(conn, name) is not None:
            raise NotFound("service cycle version", f"{name} version {version}")
        raise NotFound("service cycle", name)
    return _defined(row)


async def load(conn: Conn, name: str, version: int = 0) -> Cycle:
    """The matrix of a version of a cycle (0: its latest); NotFound names
    the cycle or the version that does not exist."""
    return (await _fetch(conn, name, version)).cycle


async def latest(conn: Conn, after: str, limit: int) -> list[Defined]:
    """A page of the active cycles (the latest version of each) by name,
    after the name ``after``."""
    return [_defined(r) for r in await conn.fetch(
        """SELECT DISTINCT ON (name) * FROM service_cycle_versions WHERE name > $1
            ORDER BY name, version DESC LIMIT $2""", after, limit)]


async def history(conn: Conn, name: str) -> list[Defined]:
    """Every version of a cycle, newest first; NotFound if it has none."""
    name = name.strip()
    if not name:
        raise InvalidArgument("name", "required")
    rows = await conn.fetch(
        "SELECT * FROM service_cycle_versions WHERE name = $1 ORDER BY version DESC", name)
    if not rows:
        raise NotFound("service cycle", name)
    return [_defined(r) for r in rows]


# --- questions ----------------------------------------------------------------------

def questions(cycle: Cycle, channel: str,
              touchpoints: Iterable[str] | None = None) -> list[SurveyQuestion]:
    """The survey questions of a version's requirements that apply on
    ``channel``, of the moments ``touchpoints`` names (None: every moment),
    in the matrix's order."""
    wanted = None if touchpoints is None else set(touchpoints)
    return [SurveyQuestion(question_id=r.question_id, cycle=cycle.name,
                           cycle_version=cycle.version, touchpoint=m.touchpoint,
                           requirement_id=r.requirement_id, text=r.question, scale=r.scale)
            for m in cycle.moments if wanted is None or m.touchpoint in wanted
            for r in m.requirements if r.applies_to(channel)]


async def active_questions(conn: Conn, touchpoints: Iterable[str],
                           channel: str) -> list[SurveyQuestion]:
    """The questions every active cycle asks at these touchpoints on
    ``channel``, by cycle name (none: no active cycle knows them), the
    first :data:`MAX_QUESTIONS` of them (an event stays far below the
    broker's message size)."""
    keys = sorted({t for t in touchpoints if t})
    if not keys:
        return []
    rows = await conn.fetch(
        """SELECT * FROM (SELECT DISTINCT ON (name) * FROM service_cycle_versions
                           ORDER BY name, version DESC) v
            WHERE EXISTS (SELECT 1 FROM jsonb_array_elements(v.moments) m
                           WHERE m ->> 'touchpoint' = ANY($1::text[]))
            ORDER BY name""", keys)
    asked = [q for r in rows for q in questions(_defined(r).cycle, channel, keys)]
    return asked[:MAX_QUESTIONS]


# --- touchpoints the active cycles know ----------------------------------------------

class _ActiveKeys:
    """The moment keys of the active cycles, read at most every
    :attr:`MAX_AGE` seconds per process (and at once after a definition
    this process committed; other replicas see it within that time)."""

    MAX_AGE = 10.0

    def __init__(self) -> None:
        self._keys: frozenset[str] | None = None
        self._read_at = 0.0
        self._generation = 0

    def invalidate(self) -> None:
        self._keys = None
        self._generation += 1

    async def keys(self, conn: Conn) -> frozenset[str]:
        if self._keys is not None and time.monotonic() - self._read_at < self.MAX_AGE:
            return self._keys
        generation, read_at = self._generation, time.monotonic()
        keys = await active_touchpoints(conn)
        if generation == self._generation:  # no definition committed meanwhile
            self._keys, self._read_at = keys, read_at
        return keys


_ACTIVE = _ActiveKeys()


async def active_touchpoints(conn: Conn) -> frozenset[str]:
    """The moment keys of the active cycles, as stored now (uncached)."""
    return frozenset(r["touchpoint"] for r in await conn.fetch(
        """SELECT DISTINCT m ->> 'touchpoint' AS touchpoint
             FROM (SELECT DISTINCT ON (name) moments FROM service_cycle_versions
                    ORDER BY name, version DESC) v, jsonb_array_elements(v.moments) m"""))


async def known_touchpoints(conn: Conn) -> frozenset[str]:
    """The moment keys of the active cycles (cached, see :class:`_ActiveKeys`)."""
    return await _ACTIVE.keys(conn)


async def note_touchpoints(conn: Conn, touchpoints: Iterable[tuple[str, str]]) -> None:
    """Count, once the transaction commits, each non-empty touchpoint of
    (touchpoint, record) pairs (record: ``contact`` or ``case``) that no
    active cycle knows, in ``crm_touchpoints_unmapped_total`` by record
    (the touchpoint itself is no label: its values are unbounded)."""
    named = [(t, record) for t, record in touchpoints if t]
    if not named:
        return
    known = await known_touchpoints(conn)
    unmapped = Counter(record for t, record in named if t not in known)
    for record, count in unmapped.items():
        uow.on_commit(partial(metrics.TOUCHPOINTS_UNMAPPED.labels(SERVICE, record).inc, count))
