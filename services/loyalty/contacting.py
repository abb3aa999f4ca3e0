"""Loyalty's contacts pass the contact gate of the customers service.

Loyalty's own trust rules (:func:`domain.trust_decision`: erased,
do-not-contact, consent, on its view of the customer) are a cheap first
filter; the gate (``Customers/ReserveContacts``,
:mod:`crm_runtime.contact_gate`) decides last, with the authoritative
consent, the one frequency cap every service's contacts share, and quiet
hours:

* an action that reaches the customer when its rule fires (a discount, a
  referral reward, a newsletter enrolment) is put to the gate in the
  consumed batch's transaction once loyalty's checks passed: the batch's
  discounts all in one call when it flushes (:func:`reserve_all`, from
  ``actions.settle``), a referral reward or an enrolment one call each
  (:func:`reserve_now`). In the customer's quiet hours it is counted
  at their end (the gate is asked again for then: marketing delivers it
  then); refused, it is suppressed with the gate's reason;
* a follow-up, and a discount's expiry reminder, are put to the gate when
  they are due (:func:`follow_up_due`, :func:`when_due`): in quiet hours
  they wait for their end; refused, the follow-up is cancelled with the
  reason.

A contact's id is its action's (a follow-up's and a discount's ids are
their action's id; an expiry reminder's derives from its discount's), so a
redelivered batch or a retried item never counts a contact twice. The
customers service unreachable: a consumed batch fails as transient (it
waits and runs again); a due item waits :data:`GATE_RETRY` and asks again.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from datetime import datetime, timedelta

from crm_contracts.loyalty import FollowUpDue
from crm_contracts.vocabulary import ACTION_CHANNELS
from crm_runtime import ids, scheduler
from crm_runtime.contact_gate import ContactRequest
from crm_runtime.db import Conn
from services.loyalty import domain, store
from services.loyalty.domain import Purpose, View
from services.loyalty.unit import FOLLOW_UP_DUE, Batch, Context

log = logging.getLogger(__name__)

#: How long a due contact waits when the contact gate cannot be asked.
GATE_RETRY = timedelta(seconds=30)

_REMINDER = uuid.UUID("9d4c2f0e-51b7-4a8e-b0f3-6a2d7c1e8b45")


def reminder_id(discount_id: uuid.UUID) -> str:
    """The contact id of a discount's expiry reminder."""
    return str(ids.uuid5(_REMINDER, str(discount_id)))


def _channel(view: View) -> str:
    return view.preferred_channel if view.preferred_channel in ACTION_CHANNELS else ""


async def reserve_all(batch: Batch, asks: list[tuple[View, uuid.UUID, Purpose]]
                      ) -> list[str | None]:
    """Put contacts made now (target, contact id, purpose) to the gate in
    one call (one more for those in the customer's quiet hours: they are
    counted at their end): per contact None when allowed (counted), else
    the gate's reason. ConnectionError while the gate cannot be asked."""
    gate = batch.ctx.gate
    if gate is None or not asks:
        return [None] * len(asks)
    requests = [ContactRequest(contact_id=str(cid), customer_id=target.customer_id,
                               purpose=purpose.gate_purpose, at=batch.now,
                               channel=_channel(target)) for target, cid, purpose in asks]
    decisions = await gate.reserve(requests)
    later = [(i, d.not_before) for i, d in enumerate(decisions) if d.deferred and d.not_before]
    if later:
        again = await gate.reserve([replace(requests[i], at=at) for i, at in later])
        for (i, _), decision in zip(later, again, strict=True):
            decisions[i] = decision
    return [None if d.allowed else d.reason for d in decisions]


async def reserve_now(batch: Batch, target: View, contact_id: uuid.UUID,
                      purpose: Purpose) -> str | None:
    """:func:`reserve_all` for one contact."""
    [refusal] = await reserve_all(batch, [(target, contact_id, purpose)])
    return refusal


async def when_due(batch: Batch, view: View, contact_id: str, purpose: Purpose, channel: str,
                   kind: str, key: str) -> str | datetime | None:
    """Put a contact that is due now (scheduled work ``kind``/``key``) to the
    gate: None when it may go ahead (counted); the time it was moved to (the
    end of the customer's quiet hours, or a little later when the gate
    cannot be asked); else the gate's reason."""
    gate = batch.ctx.gate
    if gate is None:
        return None
    try:
        [decision] = await gate.reserve([ContactRequest(
            contact_id=contact_id, customer_id=view.customer_id,
            purpose=purpose.gate_purpose, at=batch.now, channel=channel)])
    except ConnectionError as exc:
        log.warning("%s %s waits: %s", kind, key, exc)
        later = batch.now + GATE_RETRY
    else:
        if not decision.deferred:
            return None if decision.allowed else decision.reason
        assert decision.not_before is not None
        later = decision.not_before
    await scheduler.schedule(batch.conn, kind, key, later)
    return later


async def follow_up_due(conn: Conn, ctx: Context, follow_up_id: uuid.UUID) -> None:
    """A follow-up's time came (run by the durable scheduler). Consent and
    do-not-contact are checked again (they may have changed since), then the
    gate: in the customer's quiet hours it is due at their end; refused, it
    is cancelled with the reason."""
    batch = Batch(conn, ctx)
    row = await store.get_follow_up(conn, follow_up_id)
    if row["status"] != domain.FollowUpStatus.SCHEDULED.value:
        return
    view = await batch.view(row["customer_id"])
    purpose = Purpose(row["purpose"])
    refusal = domain.trust_decision(purpose, view.contact_state())
    answer = refusal.value if refusal is not None else await when_due(
        batch, view, str(follow_up_id), purpose, row["channel"], FOLLOW_UP_DUE,
        str(follow_up_id))
    if isinstance(answer, datetime):
        await store.move_follow_up(conn, follow_up_id, answer)
    elif answer is not None:
        await batch.cancel_follow_ups([row], answer)
    else:
        due = await store.mark_due(conn, follow_up_id, batch.now)
        if due is not None:
            batch.emit(due["customer_id"], FollowUpDue(
                follow_up_id=str(follow_up_id), customer_id=str(due["customer_id"]),
                channel=due["channel"], template=due["template"], reason=due["reason"],
                purpose=due["purpose"], due_at=due["due_at"]))
    await batch.flush()
