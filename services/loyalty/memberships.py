"""Loyalty's view of segment membership, learnt from the customers
service's ``customer.segment_entered`` / ``customer.segment_left``
(consumed with the other customer events, in the same batch: see
:mod:`commands`, which dispatches them here).

Per (segment, customer) the change with the latest ``changed_at`` wins
(``segment_members``): an older or equal one (a redelivery, a replay, a late
relay) changes nothing and triggers nothing. A change that is kept and
changes the membership loyalty held (or is the first it hears of):

- updates the ``segments`` of the customer's view;
- on entering, adds the customer to the running or paused run of each
  campaign of the segment that takes late joiners
  (:func:`campaign_store.add_late_joiner`);
- runs the rules triggered by ``customer.segment_entered`` /
  ``customer.segment_left`` (facts ``segment`` and ``cause``), as any
  trigger does.

Merges: the customers service moves no membership to the survivor; the
merged id leaves its segments (cause ``merge``) and the survivor enters
those it matches, each with events of its own. So a change is kept under the
id it names, and one about an id merged into another triggers no rule (the
survivor's own changes do). Erasure forgets the customer's memberships
(:func:`forget`); later changes about an erased customer are dropped.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import TypeAlias

from crm_contracts.customers import SegmentEntered, SegmentLeft
from crm_runtime import ids
from crm_runtime.db import Conn
from crm_runtime.events import Envelope, PoisonMessage
from services.loyalty import campaign_store
from services.loyalty.domain import View
from services.loyalty.rulebook import StoredRule
from services.loyalty.unit import Batch

#: The segment events loyalty consumes.
SegmentChange: TypeAlias = SegmentEntered | SegmentLeft
#: ``commands._react``: what a consumed event does once applied.
React = Callable[[Batch, View, Envelope, list[StoredRule]], Awaitable[None]]


async def on_change(data: SegmentChange, batch: Batch, env: Envelope, rules: list[StoredRule],
                    *, react: React) -> None:
    """Apply one segment event (see the module doc); ``react`` runs the
    rules it triggers."""
    try:
        customer_id = ids.read_uuid(data.customer_id)
    except (ValueError, TypeError, AttributeError):
        raise PoisonMessage("invalid_payload",
                            f"customer_id: {data.customer_id!r} is not a UUID") from None
    segment = data.segment.strip()
    if not segment:
        raise PoisonMessage("invalid_payload", "segment: empty")
    if data.changed_at.tzinfo is None:
        raise PoisonMessage("invalid_payload", "changed_at: no UTC offset")
    view = await batch.view(customer_id, follow_alias=False)
    if view.erased_at is not None:
        return  # nothing more is kept of an erased customer
    entered = isinstance(data, SegmentEntered)
    fresh, was = await campaign_store.set_membership(batch.conn, segment, customer_id,
                                                     entered, data.changed_at)
    if not fresh or was == entered or view.merged_into is not None:
        return
    if entered and segment not in view.segments:
        view.segments = [*view.segments, segment]
    elif not entered and segment in view.segments:
        view.segments = [s for s in view.segments if s != segment]
    batch.save(view)
    if entered:
        await campaign_store.add_late_joiner(batch.conn, segment, customer_id)
    await react(batch, view, env, rules)


async def forget(conn: Conn, customer_id: uuid.UUID) -> None:
    """Erasure: the customer's memberships go."""
    await campaign_store.forget_memberships(conn, customer_id)
