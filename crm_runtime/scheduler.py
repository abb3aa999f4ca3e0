"""Durable scheduler for delayed work (a case deadline, a follow-up, a churn window).

Work lives in the service schema's ``scheduled_work`` table; (kind, item_key)
is unique, so scheduling the same item again moves its due time instead of
adding a second one. Any number of replicas poll it: each takes a due row
with ``FOR UPDATE SKIP LOCKED`` and runs the handler for the row's kind in the
same transaction that deletes the row, so the work's effects (state and outbox
rows) and its removal commit together: it happens once, even when a replica
dies mid-way (its lock is released and another replica takes the row).

Lock order: a runner locks one work row, then what its handler locks, and
commits before it claims the next row. Code that cancels or moves an item and
also locks the state the item's handler locks should delete the work row
first, in the same order (as ``ResolveCase`` does).

Time comes from an injectable :class:`~crm_runtime.clock.Clock`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from crm_runtime import logs, metrics, uow
from crm_runtime.clock import Clock
from crm_runtime.db import Conn, is_transient
from crm_runtime.retry import Backoff

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DueWork:
    kind: str
    key: str
    due_at: datetime
    payload: dict[str, Any]
    attempts: int


WorkHandler = Callable[[Conn, DueWork], Awaitable[None]]


async def schedule(conn: Conn, kind: str, key: str, due_at: datetime,
                   payload: Mapping[str, Any] | None = None,
                   traceparent: str | None = None) -> None:
    """Schedule (or move) the work item ``(kind, key)`` in the caller's
    transaction. The item keeps ``traceparent`` (default: the trace of the
    work in progress), and runs in that trace when due."""
    await schedule_many(conn, kind, [(key, due_at, payload or {})], [traceparent or ""])


async def schedule_many(conn: Conn, kind: str,
                        items: list[tuple[str, datetime, Mapping[str, Any]]],
                        traceparents: Sequence[str] | None = None) -> None:
    """:func:`schedule` for many items of one kind in one statement
    (``traceparents``: one per item; an empty one, or none given, means the
    trace of the work in progress)."""
    if not items:
        return
    current = logs.current_traceparent()
    traces = [t or current for t in traceparents or [""] * len(items)]
    await conn.execute(
        """INSERT INTO scheduled_work (kind, item_key, due_at, payload, traceparent)
           SELECT $1, * FROM unnest($2::text[], $3::timestamptz[], $4::jsonb[], $5::text[])
           ON CONFLICT (kind, item_key)
           DO UPDATE SET due_at = EXCLUDED.due_at, payload = EXCLUDED.payload, attempts = 0,
                         last_error = NULL, traceparent = EXCLUDED.traceparent""",
        kind, [i[0] for i in items], [i[1] for i in items], [dict(i[2]) for i in items], traces)


async def pending(conn: Conn, kind: str, key: str) -> DueWork | None:
    """The pending item ``(kind, key)``, None when there is none."""
    row = await conn.fetchrow(
        """SELECT kind, item_key, due_at, payload, attempts FROM scheduled_work
            WHERE kind = $1 AND item_key = $2""", kind, key)
    return None if row is None else DueWork(row["kind"], row["item_key"], row["due_at"],
                                            row["payload"], row["attempts"])


async def cancel(conn: Conn, kind: str, key: str) -> bool:
    """Remove a pending item; True if there was one."""
    status = await conn.execute("DELETE FROM scheduled_work WHERE kind = $1 AND item_key = $2",
                                kind, key)
    return bool(status.endswith(" 1"))


async def cancel_many(conn: Conn, kind: str, keys: list[str]) -> None:
    """Remove the pending items of ``kind`` with these keys, in one statement."""
    if keys:
        await conn.execute(
            "DELETE FROM scheduled_work WHERE kind = $1 AND item_key = ANY($2::text[])",
            kind, keys)


#: Items a runner runs side by side, each in a transaction on a connection of
#: its own (a pool of 10 keeps 6 for the consumers, the relay and the API).
LANES = 4


class Scheduler:
    """Polls due work and runs its handler in the transaction that removes it."""

    def __init__(self, pool: asyncpg.Pool, clock: Clock, handlers: Mapping[str, WorkHandler], *,
                 service: str, batch_size: int = 100, poll_interval: float = 0.2,
                 retry_after: timedelta = timedelta(seconds=30),
                 backoff: Backoff | None = None, lanes: int = 0) -> None:
        self._pool = pool
        self._clock = clock
        self._handlers = dict(handlers)
        self._service = service
        self._batch = batch_size
        self._lanes = lanes or LANES
        self._poll = poll_interval
        self._retry_after = retry_after
        self._backoff = backoff or Backoff()
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                ran = await self.run_due()
                self._backoff.reset()
                # A round that ran something looks again at once: work that
                # comes in pages (a segment's evaluation, a campaign's sends)
                # schedules its next page due now, which would otherwise
                # wait a poll interval per page.
                delay = 0.0 if ran > 0 else self._poll
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = self._backoff.next()
                log.warning("scheduler failed (%s: %s); retrying in %.1fs",
                            type(exc).__name__, exc, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)

    async def run_due(self) -> int:
        """Run the items due now, at most one batch; returns how many ran.

        Each item is claimed, run and removed in a transaction of its own,
        so a runner holds the locks of one item at a time: its work row
        first (claimed ``FOR UPDATE SKIP LOCKED`` in ``(due_at, id)`` order,
        so it never waits for another runner's row), then whatever the
        handler locks. Holding a whole batch of claimed rows while the
        handlers lock their customers, cases or views one after another
        (in no common order) deadlocked when a clock jump made many items
        due at once: two runners, or a runner and a consumer cancelling an
        item of the batch, each waited for a row the other held.

        A transaction an item costs a commit an item; :data:`LANES` lanes,
        each on a connection of its own, run items side by side so their
        commits overlap (decisions/0040). One lane looks first, and the others
        join only once it found an item due: an idle round (most rounds) is
        one statement on one connection, not one per lane.
        """
        now = self._clock.now()
        kinds = list(self._handlers)
        budget = [self._batch]  # items this round may still run, shared by the lanes
        # Items that failed this round: between a failed item's rollback and
        # its move another lane could claim it again, so no lane takes them.
        failed: list[int] = []

        found = asyncio.Event()  # the first lane found an item due: the others join

        async def lane(first: bool) -> int:
            if not first:
                await found.wait()
            ran = 0
            async with self._pool.acquire() as conn:
                while budget[0] > 0:
                    budget[0] -= 1
                    outcome = await self._run_one(conn, now, kinds, failed)
                    if outcome is None:
                        break
                    found.set()
                    ran += outcome
            return ran

        first = asyncio.ensure_future(lane(True))
        others = [asyncio.ensure_future(lane(False))
                  for _ in range(min(self._lanes, self._batch) - 1)]
        try:
            results: list[int | BaseException] = list(
                await asyncio.gather(first, return_exceptions=True))
            if not found.is_set():
                for task in others:
                    task.cancel()  # nothing was due: they never started
            results += await asyncio.gather(*others, return_exceptions=True)
        finally:
            for task in (first, *others):
                task.cancel()  # only if this round was cancelled itself
        for result in results:
            if isinstance(result, BaseException) and not isinstance(
                    result, asyncio.CancelledError):
                raise result
        return sum(r for r in results if isinstance(r, int))

    async def _run_one(self, conn: Conn, now: datetime, kinds: list[str],
                       failed: list[int]) -> int | None:
        """Claim the first due item no other runner holds (nor one of
        ``failed``), run it and remove it in one transaction (the claim is
        the ``DELETE``: four round trips): 1 if it ran, 0 if it failed
        (rolled back, then moved; its id added to ``failed``), None if none
        was due."""
        row = None
        try:
            async with uow.unit_on(conn) as unit:
                row = await conn.fetchrow(
                    """DELETE FROM scheduled_work
                        WHERE id = (SELECT id FROM scheduled_work
                                     WHERE due_at <= $1 AND kind = ANY($2::text[])
                                       AND id <> ALL($3::bigint[])
                                     ORDER BY due_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
                    RETURNING id, kind, item_key, due_at, payload, attempts, traceparent""",
                    now, kinds, failed,
                )
                if row is None:
                    return None
                work = DueWork(row["kind"], row["item_key"], row["due_at"], row["payload"],
                               row["attempts"])
                # The work runs in the trace of what scheduled it (a span when
                # tracing is on).
                with logs.context(traceparent=row["traceparent"], span=f"run {work.kind}"):
                    try:
                        await self._handlers[work.kind](conn, work)
                    except Exception:
                        failed.append(row["id"])  # before the rollback frees it
                        raise
                unit.on_commit(metrics.SCHEDULED_FIRED.labels(self._service, work.kind).inc)
                return 1
        except Exception as exc:
            if row is None or is_transient(exc):
                raise
            # Rolled back, the item is back; it is moved, not lost.
            log.error("scheduled %s/%s failed (%s: %s); retrying later", row["kind"],
                      row["item_key"], type(exc).__name__, exc)
            await conn.execute(
                """UPDATE scheduled_work SET attempts = attempts + 1, last_error = $2,
                          due_at = $3 WHERE id = $1""",
                row["id"], f"{type(exc).__name__}: {exc}", now + self._retry_after)
            return 0
