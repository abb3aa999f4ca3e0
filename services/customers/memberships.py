"""Segment membership: who is in which segment, kept in ``segment_members``
and published as ``customer.segment_entered`` / ``customer.segment_left``, so
other services learn it from events, never from this schema.

Two ways a membership changes, both diffing the evaluation against the
stored rows and emitting one event per difference in the same transaction
(a retry or a crash never emits a difference twice: the rows say it was
made):

- :func:`refresh`: a command changed what a filter can read (a purchase, the
  profile, a consent, the stage, the risk mark, a survey score, a
  registration, a merge) for some customers, whose rows it holds locked; every
  defined segment is evaluated for them, one query per segment for the batch.
  With no segment defined it costs nothing but the cached segment list.
- the scheduled pass (:data:`EVALUATE`, keyed by the segment's name): a
  segment was defined, redefined or deleted, or its filter reads the time
  since something (which changes with no command). Each run evaluates one
  page of customers (:data:`PAGE_SIZE`, by id after the cursor in its
  payload), locking them so that no command changes them meanwhile, and
  schedules the next page; the work row's removal, the page's writes and
  events and the next page commit together. Redefining the segment
  restarts the pass from the first page (the schedule is an upsert).

The segment list commands evaluate is cached for
:attr:`commands.SegmentCache.TTL_S` seconds per process, so a pass starts
:data:`SETTLE` after the definition: by then no process evaluates with the
definition it replaced, and whatever one did before is evaluated again by
the pass.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from crm_contracts.customers import SegmentEntered, SegmentLeft
from crm_runtime import scheduler
from crm_runtime.convert import parse_uuid
from crm_runtime.db import Conn
from crm_runtime.errors import InvalidArgument
from crm_runtime.events import EventPayload
from services.customers import segments, store

if TYPE_CHECKING:
    from services.customers.commands import Context

log = logging.getLogger(__name__)

#: Scheduled work: one page of a segment's pass (key: the segment's name;
#: payload: ``after``, the last customer id of the page before, null for the
#: first page, and ``cause`` when it is not ``segment_defined``).
EVALUATE = "segments.evaluate"
#: Customers a run of the pass evaluates.
PAGE_SIZE = 1000
#: How long after a definition its pass starts: twice the segment cache's
#: lifetime (a replica whose clock runs a little ahead starts it no sooner
#: than every cache holds the new definition).
SETTLE = timedelta(seconds=10)
#: Between two passes of a segment whose filter reads the time since
#: something (days since the last purchase, since registration).
REPEAT = timedelta(days=1)
#: The fields whose value changes with time alone.
TIME_FIELDS = frozenset({"days_since_last_purchase", "days_since_registered"})

#: (segment, customer id)
Member = tuple[str, uuid.UUID]


@dataclass(frozen=True)
class Changes:
    """What an evaluation changes in the stored membership."""

    entered: list[Member]
    left: list[Member]


def diff(matching: Iterable[Member], held: Iterable[Member]) -> Changes:
    """The memberships to add (matching, not held) and to remove (held, no
    longer matching), each sorted by customer and segment."""
    matching, held = set(matching), set(held)
    return Changes(entered=sorted(matching - held, key=_by_customer),
                   left=sorted(held - matching, key=_by_customer))


def _by_customer(member: Member) -> tuple[uuid.UUID, str]:
    return member[1], member[0]


def reads_time(definition: Any) -> bool:
    """Whether a (valid) filter reads a field that changes with time alone."""
    if "field" in definition:
        return definition["field"] in TIME_FIELDS
    if "not" in definition:
        return reads_time(definition["not"])
    return any(reads_time(child) for child in definition.get("all", definition.get("any", [])))


def compiled(seg: Any, now: datetime) -> segments.Compiled | None:
    """A stored segment's filter as SQL; None (and a warning) for one that no
    longer validates (stored before a check was added, e.g. a number beyond
    ``bigint``): it matches no one rather than failing every purchase."""
    try:
        return segments.compile_sql(seg["definition"], now)
    except InvalidArgument as exc:
        log.warning("segment %s is skipped: its filter is invalid (%s)", seg["name"], exc)
        return None


# --- use cases ----------------------------------------------------------------

@dataclass(frozen=True)
class Evaluation:
    """Every defined segment evaluated for some customers: what they match."""

    ids: list[uuid.UUID]
    names: list[str]  # the segments evaluated
    matching: list[Member]

    def segments_of(self, customer_id: uuid.UUID) -> list[str]:
        """The segments the customer matches, by name."""
        return sorted(s for s, c in self.matching if c == customer_id)


async def evaluate(conn: Conn, ctx: Context, ids: Sequence[uuid.UUID]) -> Evaluation:
    """Evaluate every defined segment for these customers (one query per
    segment for them all); nothing when no segment is defined."""
    defined = await ctx.segments.get(conn) if ids else []
    ids = sorted(set(ids))
    now = ctx.clock.now()
    matching: list[Member] = []
    for seg in defined:
        where = compiled(seg, now)
        if where is not None:
            matching += [(seg["name"], cid) for cid in await _matching(conn, ids, where)]
    return Evaluation(ids, [seg["name"] for seg in defined], matching)


async def settle(conn: Conn, ctx: Context, evaluation: Evaluation, cause: str, *,
                 traces: Mapping[uuid.UUID, str] | None = None) -> None:
    """Store what ``evaluation`` found and publish each difference with the
    stored membership, with ``cause``. ``traces``: the trace each customer's
    events continue (default: the work in progress)."""
    if not evaluation.names:
        return
    held = await _held(conn, evaluation.ids, evaluation.names)
    await _apply(conn, ctx, diff(evaluation.matching, held), cause, ctx.clock.now(),
                 traces or {})


async def refresh(conn: Conn, ctx: Context, ids: Sequence[uuid.UUID], cause: str, *,
                  traces: Mapping[uuid.UUID, str] | None = None) -> None:
    """Re-evaluate every defined segment for these customers (whose rows the
    caller holds locked, after changing them) and publish each difference,
    with ``cause`` (:func:`evaluate`, then :func:`settle`). Segments this
    process does not know yet are left to their pass."""
    await settle(conn, ctx, await evaluate(conn, ctx, ids), cause, traces=traces)


async def merged(conn: Conn, ctx: Context, survivor: Evaluation, merged_id: uuid.UUID) -> None:
    """A merge: the merged id leaves each of its segments (cause ``merge``)
    and the survivor's segments, evaluated after the merge, are settled."""
    now = ctx.clock.now()
    rows = await conn.fetch(
        "DELETE FROM segment_members WHERE customer_id = $1 RETURNING segment", merged_id)
    await _publish(conn, ctx, [], sorted((r["segment"], merged_id) for r in rows), "merge", now)
    await settle(conn, ctx, survivor, "merge")


async def forget(conn: Conn, customer_id: uuid.UUID) -> None:
    """An erasure: the customer's rows go, with no event (``customer.erased``
    tells every consumer to forget the customer)."""
    await conn.execute("DELETE FROM segment_members WHERE customer_id = $1", customer_id)


async def held_by(conn: Conn, customer_id: uuid.UUID) -> list[Any]:
    """The customer's stored memberships (``segment``, ``since``), by segment."""
    return list(await conn.fetch(
        "SELECT segment, since FROM segment_members WHERE customer_id = $1 ORDER BY segment",
        customer_id))


async def start_pass(conn: Conn, ctx: Context, name: str) -> None:
    """Evaluate everyone for the segment ``name`` (just defined, redefined or
    deleted), from the first page, :data:`SETTLE` from now."""
    await scheduler.schedule(conn, EVALUATE, name, ctx.clock.now() + SETTLE, {"after": None})


async def evaluate_page(conn: Conn, ctx: Context, name: str, after: str | None,
                        cause: str = "segment_defined") -> None:
    """One run of a segment's pass (see the module's doc): the page of
    customers after ``after``, then the next page, or the next pass a day
    later for a filter that reads the time."""
    now = ctx.clock.now()
    seg = await conn.fetchrow("SELECT name, definition FROM segments WHERE name = $1", name)
    if seg is None:
        cause = "segment_deleted"  # everyone leaves
    # Locked in id order, as purchases lock them: a command changing one of
    # these customers waits for the page, or the page for it, so neither
    # writes a membership from what the other is changing.
    page = [r["customer_id"] for r in await conn.fetch(
        """SELECT customer_id FROM customers WHERE ($1::uuid IS NULL OR customer_id > $1)
            ORDER BY customer_id LIMIT $2 FOR SHARE""",
        None if after is None else parse_uuid(after, "after"), PAGE_SIZE)]
    where = None if seg is None else compiled(seg, now)
    if page:
        matching = [] if where is None else [(name, cid)
                                             for cid in await _matching(conn, page, where)]
        await _apply(conn, ctx, diff(matching, await _held(conn, page, [name])), cause, now, {})
    if len(page) == PAGE_SIZE:
        await scheduler.schedule(conn, EVALUATE, name, now,
                                 {"after": str(page[-1]), "cause": cause})
    elif seg is not None and reads_time(seg["definition"]):
        await scheduler.schedule(conn, EVALUATE, name, now + REPEAT,
                                 {"after": None, "cause": "schedule"})


# --- SQL and events -------------------------------------------------------------

async def _matching(conn: Conn, ids: list[uuid.UUID], where: segments.Compiled
                    ) -> list[uuid.UUID]:
    """Which of ``ids`` (live customers: neither erased nor merged) match."""
    return sorted(await store.matching_ids(
        conn, ids, f"c.erased_at IS NULL AND c.merged_into IS NULL AND ({where.sql})",
        where.params))


async def _held(conn: Conn, ids: list[uuid.UUID], names: list[str]) -> list[Member]:
    rows = await conn.fetch(
        """SELECT segment, customer_id FROM segment_members
            WHERE customer_id = ANY($1::uuid[]) AND segment = ANY($2::text[])""", ids, names)
    return [(r["segment"], r["customer_id"]) for r in rows]


async def _apply(conn: Conn, ctx: Context, changes: Changes, cause: str, now: datetime,
                 traces: Mapping[uuid.UUID, str]) -> None:
    """Write the changes and publish those the rows took: each is made
    once, whoever makes it (the customers are locked, so none is taken by
    another transaction first, and if one were, it would publish it)."""
    entered: list[Member] = []
    left: list[Member] = []
    if changes.entered:
        rows = await conn.fetch(
            """INSERT INTO segment_members (segment, customer_id, since)
               SELECT *, $3::timestamptz FROM unnest($1::text[], $2::uuid[])
               ON CONFLICT DO NOTHING RETURNING segment, customer_id""",
            [s for s, _ in changes.entered], [c for _, c in changes.entered], now)
        entered = [(r["segment"], r["customer_id"]) for r in rows]
    if changes.left:
        rows = await conn.fetch(
            """DELETE FROM segment_members m USING unnest($1::text[], $2::uuid[]) AS d(s, c)
                WHERE m.segment = d.s AND m.customer_id = d.c
            RETURNING m.segment, m.customer_id""",
            [s for s, _ in changes.left], [c for _, c in changes.left])
        left = [(r["segment"], r["customer_id"]) for r in rows]
    await _publish(conn, ctx, entered, left, cause, now, traces)


async def _publish(conn: Conn, ctx: Context, entered: list[Member], left: list[Member],
                   cause: str, now: datetime,
                   traces: Mapping[uuid.UUID, str] | None = None) -> None:
    events: list[tuple[uuid.UUID, str, EventPayload]] = [
        (cid, seg, SegmentEntered(customer_id=str(cid), segment=seg, changed_at=now,
                                  cause=cause)) for seg, cid in entered]
    events += [(cid, seg, SegmentLeft(customer_id=str(cid), segment=seg, changed_at=now,
                                      cause=cause)) for seg, cid in left]
    if not events:
        return
    events.sort(key=lambda e: (e[0], e[1]))
    await ctx.events.write(conn, [
        ctx.events.envelope(cid, payload, time=now, traceparent=(traces or {}).get(cid) or None)
        for cid, _, payload in events])
