"""The batch state of one loyalty transaction, on top of the runtime's unit of work.

:class:`Context` is what every use case needs besides the connection. The
runtime's unit of work (:mod:`crm_runtime.uow`) is the transaction: its
connection and its after-commit hooks, opened by the consumer for a batch of
events, by the scheduler for a due item and by :func:`crm_runtime.uow.run`
for a gRPC call. A :class:`Batch` is what loyalty's use cases keep while they
run in it, so that a run of consumed events costs a few round trips, not a
few per event (a scheduled item or a gRPC call is a batch of one):

- **views**: the customers' views, locked and cached (one statement locks and
  loads a whole run's customers, :meth:`Batch.prefetch`), with what moot
  follow-ups consult about them;
- **buffered writes**: the rows of the common path (actions, discounts,
  follow-ups, scheduled work, changed views), written at :meth:`Batch.flush`
  in one statement (:func:`services.loyalty.batch_store.write_unit`);
- **events**, buffered in the order they were caused and written at
  :meth:`Batch.flush` through the service's emitter (``ctx.events``), so the
  outbox keeps that order;
- **counters**, incremented through the unit of work's after-commit hooks
  (:func:`crm_runtime.uow.on_commit`): a retried batch does not count twice.

Code on a rare path (consent withdrawn, erasure, merge) that reads or writes
tables directly calls :meth:`Batch.flush` first, so it sees every earlier
write and the outbox keeps the order events were caused in.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from crm_contracts.loyalty import FollowUpCancelled
from crm_runtime import logs, scheduler, uow
from crm_runtime.contact_gate import ContactGate
from crm_runtime.db import Conn
from crm_runtime.events import Envelope, EventPayload
from crm_runtime.uow import CommandContext
from services.loyalty import batch_store, domain, metrics, store
from services.loyalty.domain import TrustPolicy, View
from services.loyalty.rulebook import RuleBook, StoredRule

SOURCE = "/crm/loyalty"


@dataclass(frozen=True)
class Context(CommandContext):
    """What every command needs besides the connection."""

    source = SOURCE
    rules: RuleBook
    policy: TrustPolicy = field(default_factory=TrustPolicy)
    expiry_notice: timedelta = timedelta(days=3)
    #: The contact gate of the customers service, asked before every contact
    #: (:mod:`services.loyalty.contacting`); None: loyalty's own checks only
    #: (a dry run, a test of loyalty alone).
    gate: ContactGate | None = None


#: Kinds of the scheduled work loyalty's transactions write.
FOLLOW_UP_DUE = "loyalty.followup_due"
DISCOUNT_EXPIRING = "loyalty.discount_expiring"


class Batch:
    """What one loyalty transaction keeps between its use cases: views locked
    and cached, buffered writes and events (see the module doc).

    Follow-ups an event makes moot (:meth:`cancel_moot`) are the common path of
    a first purchase, so they are cancelled at :meth:`flush` for the whole
    batch at once: each event cancels what was open when it came (not what a
    later event of the batch scheduled), and its ``loyalty.followup_cancelled``
    events take its place in the outbox.
    """

    def __init__(self, conn: Conn, ctx: Context) -> None:
        self.conn = conn
        self.ctx = ctx
        self.now = ctx.clock.now()
        self._views: dict[uuid.UUID, View] = {}
        self._dirty: dict[uuid.UUID, View] = {}
        self._envelopes: list[Envelope] = []
        self._actions: list[batch_store.ActionRow] = []
        self._discounts: list[batch_store.DiscountRow] = []
        self._follow_ups: list[batch_store.FollowUpRow] = []
        #: (kind, key, due, traceparent): the work runs in the trace of the
        #: trigger that scheduled it.
        self._schedules: list[tuple[str, str, datetime, str]] = []
        self.done_actions: set[uuid.UUID] = set()
        self._cancellable: dict[uuid.UUID, set[str]] | None = None
        self._new_cancellable: dict[uuid.UUID, set[str]] = {}  # follow-ups of this batch
        #: Follow-ups scheduled in this batch, in the order they were.
        self._scheduled: dict[uuid.UUID, int] = {}
        self._moot: list[_Moot] = []
        self._trigger_ids: list[str] = []
        self._guard_loaded = False
        self._codes: list[str] = []
        #: Contacts waiting for the contact gate, and what settles them at
        #: :meth:`flush` (``actions.settle``: one gate call for all).
        self._deferred: list[Any] = []
        self._settle: Callable[[Batch, list[Any]], Awaitable[None]] | None = None

    # --- views ----------------------------------------------------------------

    async def prefetch(self, customer_ids: list[uuid.UUID],
                       trigger_event_ids: list[str]) -> list[StoredRule]:
        """Lock and load a run's customers and what the run will consult, in
        one round trip; returns the current rules."""
        locked = await batch_store.lock_views(self.conn, customer_ids, self.now,
                                              trigger_event_ids)
        survivors = [v.merged_into for v in locked.views if v.merged_into is not None]
        if survivors:
            more = await batch_store.lock_views(self.conn, survivors, self.now, [])
            locked.views += more.views
            locked.cancellable.update(more.cancellable)
        for v in locked.views:
            self._views[v.customer_id] = v
        self._cancellable = locked.cancellable
        self.done_actions |= locked.done_actions
        self._trigger_ids = trigger_event_ids
        self._guard_loaded = True
        return await self.ctx.rules.current(self.conn, locked.revision)

    async def view(self, customer_id: uuid.UUID, *, follow_alias: bool = True) -> View:
        """The customer's view, locked (created when first seen)."""
        v = self._views.get(customer_id)
        if v is None:
            v = await store.lock_view(self.conn, customer_id, self.now, follow_alias=False)
            self._views[customer_id] = v
        if follow_alias and v.merged_into is not None:
            return await self.view(v.merged_into)
        return v

    def save(self, view: View) -> None:
        """Write the view at :meth:`flush`."""
        self._dirty[view.customer_id] = view

    def cached_views(self) -> list[View]:
        return list(self._views.values())

    async def performed_before(self, action_id: uuid.UUID) -> bool:
        """The second guard of exactly-once: actions already recorded for the
        batch's trigger events (loaded once, at the first action)."""
        if not self._guard_loaded:
            self.done_actions |= await batch_store.actions_of_triggers(self.conn, self._trigger_ids)
            self._guard_loaded = True
        return action_id in self.done_actions

    # --- buffered writes and events -----------------------------------------------

    def emit(self, customer_id: uuid.UUID, *payloads: EventPayload) -> None:
        """Queue events about the customer, in the trace of the work at hand."""
        trace = logs.current_traceparent()
        self._envelopes += [self._envelope(customer_id, p, trace) for p in payloads]

    def _envelope(self, customer_id: uuid.UUID, payload: EventPayload,
                  traceparent: str) -> Envelope:
        return self.ctx.events.envelope(customer_id, payload, time=self.now,
                                        traceparent=traceparent)

    def record_action(self, row: batch_store.ActionRow) -> None:
        """Record what a rule's action came to (counted once committed)."""
        self.done_actions.add(row[0])
        self._actions.append(row)
        labels = (store.SCHEMA, row[2], row[5], row[9], row[10])
        uow.on_commit(lambda: metrics.ACTIONS.labels(*labels).inc())

    def add_follow_up(self, row: batch_store.FollowUpRow) -> None:
        """A new follow-up, and its due work."""
        self._follow_ups.append(row)
        self._scheduled[row[0]] = len(self._scheduled)
        self._schedules.append((FOLLOW_UP_DUE, str(row[0]), row[10],
                                logs.current_traceparent()))
        if row[8]:
            self._new_cancellable.setdefault(row[1], set()).update(row[8])

    def next_code(self) -> str:
        """A fresh discount code (drawn 64 at a time: the system's random
        source is read once per 64 codes)."""
        if not self._codes:
            self._codes = domain.new_codes(64)
        return self._codes.pop()

    def add_discount(self, row: batch_store.DiscountRow, notice_at: datetime | None) -> None:
        """A new discount, and the reminder of its expiry when there is one."""
        self._discounts.append(row)
        if notice_at is not None:
            self._schedules.append((DISCOUNT_EXPIRING, str(row[0]), notice_at,
                                    logs.current_traceparent()))

    def defer_contact(self, item: Any,
                      settle: Callable[[Batch, list[Any]], Awaitable[None]]) -> None:
        """Keep a decided contact for the contact gate: :meth:`flush` settles
        every deferred one with ``settle`` first, in one call to the gate."""
        self.done_actions.add(item.aid)
        self._deferred.append(item)
        self._settle = settle

    async def flush(self) -> None:
        """Settle the contacts waiting for the gate, then write what is
        buffered: one statement for the rows, the moot follow-ups'
        cancellation when there are any, then the outbox."""
        if self._deferred and self._settle is not None:
            deferred, self._deferred = self._deferred, []
            await self._settle(self, deferred)
        await batch_store.write_unit(self.conn, actions=self._actions, discounts=self._discounts,
                               follow_ups=self._follow_ups, schedules=self._schedules,
                               views=list(self._dirty.values()), now=self.now)
        if self._moot:
            await self._cancel_moot()
        await self.ctx.events.write(self.conn, self._envelopes)
        self._actions, self._discounts, self._follow_ups = [], [], []
        self._schedules, self._envelopes, self._dirty = [], [], {}

    # --- cancelling follow-ups ------------------------------------------------------

    async def cancel_follow_ups(self, rows: list[Any], reason: str,
                                published: str | None = None) -> int:
        """Cancel follow-ups read after a :meth:`flush` (two statements); returns
        how many. ``published``: the reason the events give, when ``reason``
        is a person's text (events carry no free text)."""
        await self._close_cancelled([(row["follow_up_id"], reason) for row in rows])
        for row in rows:
            self.emit(row["customer_id"], FollowUpCancelled(
                follow_up_id=str(row["follow_up_id"]), customer_id=str(row["customer_id"]),
                reason=published or reason))
        return len(rows)

    async def _close_cancelled(self, closing: list[tuple[uuid.UUID, str]]) -> None:
        """Mark these follow-ups (id, reason) cancelled and remove their due work."""
        await store.close_follow_ups(self.conn, closing, domain.FollowUpStatus.CANCELLED.value,
                                     self.now)
        await scheduler.cancel_many(self.conn, FOLLOW_UP_DUE, [str(fid) for fid, _ in closing])

    async def may_be_moot(self, customer_id: uuid.UUID, event_type: str) -> bool:
        """Whether an open follow-up of the customer may list ``event_type``
        in its ``cancel_on`` (a hint loaded once per batch; the caller asks
        the database when it says yes)."""
        if event_type not in self.ctx.rules.cancel_types:
            return False
        if self._cancellable is None:
            ids = list(self._views)
            self._cancellable = {cid: set() for cid in ids}
            self._cancellable.update(await batch_store.cancellable_types(self.conn, ids))
        if customer_id not in self._cancellable:
            return True  # not covered by the hint: ask the database
        return (event_type in self._cancellable[customer_id]
                or event_type in self._new_cancellable.get(customer_id, set()))

    def forget_moot_hints(self) -> None:
        """After a merge moved follow-ups, load the hint again."""
        self._cancellable = None

    def cancel_moot(self, customer_id: uuid.UUID, event_type: str) -> None:
        """Cancel (at :meth:`flush`) the customer's follow-ups open now whose
        ``cancel_on`` lists ``event_type``."""
        self._moot.append(_Moot(customer_id, event_type, len(self._envelopes),
                                len(self._scheduled), logs.current_traceparent()))

    async def _cancel_moot(self) -> None:
        """Cancel the follow-ups :meth:`cancel_moot` asked for, in three
        statements for the whole batch: read them locked, close them, remove
        their scheduled work. The rows this batch scheduled were just written."""
        moot, self._moot = self._moot, []
        rows = await store.open_follow_ups_listing(
            self.conn, sorted({m.customer_id for m in moot}), sorted({m.event_type for m in moot}))
        by_customer: dict[uuid.UUID, list[Any]] = {}
        for r in rows:  # each customer's in due order, as read
            by_customer.setdefault(r["customer_id"], []).append(r)
        closing: list[tuple[uuid.UUID, str]] = []
        taken: set[uuid.UUID] = set()
        placed: list[tuple[int, list[Envelope]]] = []
        for m in moot:
            reason = f"moot:{m.event_type}"
            cancelled = []
            for r in by_customer.get(m.customer_id, ()):
                fid = r["follow_up_id"]
                if (m.event_type not in r["cancel_on"] or fid in taken
                        or self._scheduled.get(fid, -1) >= m.scheduled_before):
                    continue  # not moot, cancelled already, or scheduled later
                taken.add(fid)
                closing.append((fid, reason))
                cancelled.append(self._envelope(m.customer_id, FollowUpCancelled(
                    follow_up_id=str(fid), customer_id=str(m.customer_id), reason=reason),
                    m.traceparent))
            placed.append((m.position, cancelled))
        await self._close_cancelled(closing)
        for position, envelopes in reversed(placed):  # later places first: earlier stay put
            self._envelopes[position:position] = envelopes


@dataclass(frozen=True)
class _Moot:
    """An event that made a customer's follow-ups moot (:meth:`Batch.cancel_moot`):
    where its cancellations go in the batch's events, how many follow-ups the
    batch had scheduled before it, and its trace."""

    customer_id: uuid.UUID
    event_type: str
    position: int
    scheduled_before: int
    traceparent: str
