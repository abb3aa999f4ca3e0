"""What the loyalty service does, one function per use case.

Each function runs inside the caller's transaction (a consumed batch, a
scheduled item or a gRPC call) with that transaction's :class:`Batch`: it
applies the pure rules of :mod:`domain` and :mod:`rules`, buffers its writes
and events in the batch, and flushes them, so state and events commit
together. Every change to one customer starts by locking that
customer's view row, which keeps their events in order.

A consumed event goes to the function of its payload class (:func:`_apply`
dispatches on it): that function updates loyalty's view of the customer;
then the event cancels the follow-ups it makes moot and runs the rules it
triggers (:func:`_react`).

Exactly once: the runtime's inbox drops a redelivered trigger event; as a
second guard every action has an id derived from (rule, trigger event id,
action index) and is recorded in ``actions`` under that id, so a trigger can
never yield an action twice.

Why over 500 lines: a function per consumed payload class (nine) beside the
gRPC and scheduled use cases; erasure, merges and consent changes share the
follow-up and newsletter steps of those. What a rule's actions do is
:mod:`actions`; a due follow-up and the contact gate are :mod:`contacting`;
the discount codes' use cases are :mod:`discounts`; the batch state is
:mod:`unit`.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias, get_args

from crm_contracts.customers import (
    ConsentChanged,
    CustomerAtRisk,
    CustomerErased,
    CustomerRegistered,
    CustomerRiskCleared,
    CustomersMerged,
    CustomerWonBack,
    PurchaseRecorded,
    StageChanged,
)
from crm_contracts.interactions import (
    CaseBreached,
    CaseResolved,
    DissatisfactionSignal,
    InteractionRecorded,
    SurveyResponseRecorded,
)
from crm_contracts.loyalty import (
    ConsentWithdrawn,
    FollowUpCompleted,
    NewsletterUnsubscribed,
)
from crm_contracts.privacy import LoyaltyErasureCompleted
from crm_contracts.times import check_event_time
from crm_contracts.vocabulary import DO_NOT_CONTACT, ConsentPurpose
from crm_runtime import ids, logs, scheduler, sealing
from crm_runtime.db import Conn
from crm_runtime.errors import FailedPrecondition, InvalidArgument
from crm_runtime.events import Envelope, EventPayload, PoisonMessage
from services.loyalty import actions, domain, memberships, store
from services.loyalty.domain import Decision, Outcome, Purpose, Suppression, View
from services.loyalty.rulebook import StoredRule
from services.loyalty.rules import (
    TRIGGERS,
    Evaluation,
    ReferralRewardAction,
    Rule,
    action_id,
    action_purpose,
    evaluate,
    fact_value_ok,
    facts_of,
    matches,
)
from services.loyalty.unit import DISCOUNT_EXPIRING as DISCOUNT_EXPIRING
from services.loyalty.unit import FOLLOW_UP_DUE as FOLLOW_UP_DUE
from services.loyalty.unit import Batch
from services.loyalty.unit import Context as Context

log = logging.getLogger(__name__)


# --- consuming events -----------------------------------------------------------

#: Consumed payloads about one customer (their ``customer_id``).
OneCustomer: TypeAlias = (
    CustomerRegistered | StageChanged | CustomerWonBack | PurchaseRecorded | ConsentChanged
    | CustomerErased | CustomerAtRisk | CustomerRiskCleared | InteractionRecorded
    | CaseBreached | CaseResolved | SurveyResponseRecorded | DissatisfactionSignal
    | memberships.SegmentChange)
#: Every payload loyalty consumes (``crm.customers.v1``, ``crm.interactions.v1``):
#: a merge is about two customers.
LoyaltyInput: TypeAlias = OneCustomer | CustomersMerged
#: The classes of :data:`LoyaltyInput`, for the consumer's routes.
CONSUMED: tuple[type[LoyaltyInput], ...] = get_args(LoyaltyInput)


async def on_events(conn: Conn, ctx: Context, events: Sequence[Envelope]) -> None:
    """Apply a run of consumed events (of :data:`LoyaltyInput`) in one batch:
    its customers locked and loaded in one statement, its writes flushed at
    the end."""
    batch = Batch(conn, ctx)
    customer_ids: list[uuid.UUID] = []
    for env in events:
        customer_ids += _customers(env.data)
    rules = await batch.prefetch(customer_ids, [env.id for env in events])
    for env in logs.each(events):  # the actions' events continue each trigger's trace
        await on_event(batch, env, rules)
    await batch.flush()


async def on_event(batch: Batch, env: Envelope, rules: list[StoredRule]) -> None:
    """Apply one consumed event: the function of its payload class."""
    await _apply(env.data, batch, env, rules)


def _read_uuid(raw: str, name: str) -> uuid.UUID:
    try:
        return ids.read_uuid(raw)
    except (ValueError, TypeError, AttributeError):
        raise PoisonMessage("invalid_payload", f"{name}: {raw!r} is not a UUID") from None


#: The most purchases a view counts (its ``integer`` column).
MAX_COUNT = 2**31 - 1


def _count(value: int, name: str = "purchase_count") -> int:
    """A count from an event, if the view's column holds it; a
    ``PoisonMessage`` (``out_of_range``) naming the field otherwise."""
    if not 0 <= value <= MAX_COUNT:
        raise PoisonMessage("out_of_range", f"{name}: {value} is not 0 to {MAX_COUNT}")
    return value


def _event_time(value: datetime, now: datetime) -> datetime | None:
    """When something happened, if it can be (with an offset, from 2000 to a
    little ahead of ``now``: :func:`crm_contracts.times.check_event_time`);
    None otherwise, so an implausible time (a naive one, a year-1 one that
    PostgreSQL stores as ``-infinity``) never meets the aware times of the
    view."""
    try:
        return check_event_time(value, now, "occurred_at")
    except InvalidArgument:
        return None


@functools.singledispatch
def _customers(data: EventPayload) -> list[uuid.UUID]:
    """The customers an event is about, to lock before the batch applies it."""
    raise TypeError(f"loyalty does not consume {data.event_type}")


@_customers.register
def _the_customer(data: OneCustomer) -> list[uuid.UUID]:
    return [_read_uuid(data.customer_id, "customer_id")]


@_customers.register
def _both_customers(data: CustomersMerged) -> list[uuid.UUID]:
    return [_read_uuid(data.customer_id, "customer_id"),
            _read_uuid(data.merged_customer_id, "merged_customer_id")]


@functools.singledispatch
async def _apply(data: EventPayload, batch: Batch, env: Envelope,
                 rules: list[StoredRule]) -> None:
    """Apply one event of ``data``'s class (each has its function below)."""
    raise TypeError(f"loyalty does not consume {data.event_type}")


async def _live_view(batch: Batch, customer_id: str) -> View | None:
    """The customer's view (a merged customer's survivor's), locked; None for
    an erased customer: nothing more happens for them, and nothing is kept."""
    view = await batch.view(_read_uuid(customer_id, "customer_id"))
    return None if view.erased_at is not None else view


async def _react(batch: Batch, view: View, env: Envelope, rules: list[StoredRule],
                 derived: Mapping[str, Any] | None = None) -> None:
    """What an event does once it is applied to the customer's view: cancel
    the follow-ups it makes moot, then run the rules it triggers. ``derived``:
    facts only the change itself told (``newly_at_risk``)."""
    event_type = env.type  # a property: looked up once, then compared many times
    if await batch.may_be_moot(view.customer_id, event_type):
        batch.cancel_moot(view.customer_id, event_type)
    facts: dict[str, Any] | None = None
    for stored in rules:
        if stored.rule.trigger != event_type or not stored.rule.enabled:
            continue
        if facts is None:
            facts = {**facts_of(view, env.data, batch.now), **(derived or {})}
        if matches(stored.rule, facts):
            for index, action in enumerate(stored.rule.actions):
                await actions.perform(batch, view, stored, index, action, env)


@_apply.register
async def _registered(data: CustomerRegistered, batch: Batch, env: Envelope,
                      rules: list[StoredRule]) -> None:
    """A new customer: their stage, channel, time zone (quiet hours follow it)
    and referrer, and a referral code of their own."""
    view = await _live_view(batch, data.customer_id)
    if view is None:
        return
    if view.purchase_count == 0:  # never undo a stage later events brought
        view.stage = data.stage or view.stage
    view.preferred_channel = data.preferred_channel
    view.time_zone = data.time_zone or view.time_zone
    if data.referred_by:
        try:
            referrer = uuid.UUID(data.referred_by)
        except ValueError:
            log.warning("customer %s: referred_by %r is not a UUID; ignored",
                        view.customer_id, data.referred_by)
        else:
            if referrer != view.customer_id:
                view.referred_by = referrer
    _ensure_referral_code(view)
    batch.save(view)
    if data.referral_code:
        await _referred_by_code(batch, view, data.referral_code, env, rules)
    await _react(batch, view, env, rules)


@_apply.register
async def _stage_changed(data: StageChanged, batch: Batch, env: Envelope,
                         rules: list[StoredRule]) -> None:
    view = await _live_view(batch, data.customer_id)
    if view is None:
        return
    view.stage = data.to_stage
    view.purchase_count = _count(data.purchase_count)
    view.segments = list(data.segment_keys)
    batch.save(view)
    await _react(batch, view, env, rules)


@_apply.register
async def _purchase_recorded(data: PurchaseRecorded, batch: Batch, env: Envelope,
                             rules: list[StoredRule]) -> None:
    view = await _live_view(batch, data.customer_id)
    if view is None:
        return
    view.purchase_count = max(view.purchase_count, _count(data.purchase_count))
    occurred_at = _event_time(data.occurred_at, batch.now)
    if occurred_at is None:
        log.warning("customer %s: purchase %s has an implausible time (%s); the last "
                    "purchase stays %s", view.customer_id, data.purchase_id,
                    data.occurred_at.isoformat(), view.last_purchase_at)
    else:
        view.last_purchase_at = max(filter(None, [view.last_purchase_at, occurred_at]))
    batch.save(view)
    await _react(batch, view, env, rules)


@_apply.register
async def _consent_changed(data: ConsentChanged, batch: Batch, env: Envelope,
                           rules: list[StoredRule]) -> None:
    """The customer's decision, as the customers service holds it. The
    latest decision per purpose wins (an older one, relayed late or
    replayed, changes nothing and triggers no rule), so a withdrawal is
    undone only by a newer grant. Withdrawn consent takes effect at once:
    pending contacts it covered are cancelled, and newsletter lists are left."""
    view = await _live_view(batch, data.customer_id)
    if view is None:
        return
    cid, granted, at = view.customer_id, data.granted, data.changed_at or env.time
    if data.purpose == DO_NOT_CONTACT:
        if not domain.decided_before(view.do_not_contact_at, at):
            return
        view.do_not_contact, view.do_not_contact_at = granted, at
        if granted:
            await batch.flush()
            await batch.cancel_follow_ups(await store.open_follow_ups(batch.conn, cid),
                                          "do_not_contact")
            await _leave_lists(batch, cid, None, "do_not_contact")
    elif data.purpose == ConsentPurpose.NEWSLETTER:
        if not domain.decided_before(view.newsletter_consent_at, at):
            return
        view.newsletter_consent, view.newsletter_consent_at = granted, at
        if not granted:
            await _withdraw_newsletter(batch, cid, "consent_withdrawn", at)
    elif data.purpose == ConsentPurpose.PROMOTIONAL_OFFERS:
        if not domain.decided_before(view.promotional_consent_at, at):
            return
        view.promotional_consent, view.promotional_consent_at = granted, at
        if not granted:
            await batch.flush()
            await batch.cancel_follow_ups(await store.open_follow_ups(
                batch.conn, cid, purposes=[Purpose.PROMOTIONAL.value]), "consent_withdrawn")
    batch.save(view)
    await _react(batch, view, env, rules)


async def _withdraw_newsletter(batch: Batch, customer_id: uuid.UUID, reason: str,
                               at: datetime) -> None:
    """Newsletter consent was withdrawn at ``at``: cancel the pending sends
    and leave every list."""
    await batch.flush()
    await batch.cancel_follow_ups(await store.open_follow_ups(
        batch.conn, customer_id, purposes=[Purpose.NEWSLETTER.value]), reason)
    await _leave_lists(batch, customer_id, None, reason, at)


@_apply.register
async def _at_risk(data: CustomerAtRisk, batch: Batch, env: Envelope,
                   rules: list[StoredRule]) -> None:
    view = await _live_view(batch, data.customer_id)
    if view is None:
        return
    newly = not view.at_risk
    view.at_risk = True
    batch.save(view)
    await _react(batch, view, env, rules, {"newly_at_risk": newly})


@_apply.register
async def _risk_cleared(data: CustomerRiskCleared, batch: Batch, env: Envelope,
                        rules: list[StoredRule]) -> None:
    view = await _live_view(batch, data.customer_id)
    if view is None:
        return
    view.at_risk = False
    batch.save(view)
    await _react(batch, view, env, rules, {"newly_at_risk": False})


@_apply.register
async def _erased(data: CustomerErased, batch: Batch, env: Envelope,
                  rules: list[StoredRule]) -> None:
    """Nothing more happens for an erased customer: no rule runs. Every
    erasure is acknowledged (``loyalty.erasure_completed``), held data or not."""
    customer_id = _read_uuid(data.customer_id, "customer_id")
    view = await batch.view(customer_id)
    if view.erased_at is None:
        await erase(batch, view)
    batch.emit(customer_id, LoyaltyErasureCompleted(
        customer_id=str(customer_id), service=store.SCHEMA, erased_at=view.erased_at or batch.now))


@_apply.register
async def _merged(data: CustomersMerged, batch: Batch, env: Envelope,
                  rules: list[StoredRule]) -> None:
    await merge(batch, _read_uuid(data.customer_id, "customer_id"),
                _read_uuid(data.merged_customer_id, "merged_customer_id"),
                stage=data.stage, purchase_count=_count(data.purchase_count))


@_apply.register
async def _trigger_only(data: CustomerWonBack | InteractionRecorded | CaseBreached
                        | CaseResolved | SurveyResponseRecorded | DissatisfactionSignal,
                        batch: Batch, env: Envelope, rules: list[StoredRule]) -> None:
    """Events that change nothing loyalty keeps: they make follow-ups moot and
    trigger rules."""
    view = await _live_view(batch, data.customer_id)
    if view is not None:
        await _react(batch, view, env, rules)

_apply.register(memberships.SegmentChange, functools.partial(memberships.on_change, react=_react))

async def _referred_by_code(batch: Batch, view: View, code: str, env: Envelope,
                            rules: list[StoredRule]) -> None:
    """The customer signed up with a friend's referral code: the friend (the
    code's owner) becomes their referrer, so the referral rules reward them
    later. A code loyalty never issued (mistyped, or its owner was erased) is
    not dropped: each enabled rule's ``referral_reward`` action is recorded as
    suppressed (``unknown_referral_code``) and ``loyalty.action_suppressed``
    published, for marketing to follow up."""
    if view.referred_by is not None:
        return  # referred by id already (customers never sends both)
    owner = next((v.customer_id for v in batch.cached_views() if v.referral_code == code), None)
    if owner is None:
        owner = await store.owner_of_referral_code(batch.conn, code)
        if owner is not None and any(v.customer_id == owner and v.referral_code != code
                                     for v in batch.cached_views()):
            owner = None  # erased in this batch, not flushed yet
    if owner is not None and owner != view.customer_id:
        view.referred_by = owner
        batch.save(view)
        return
    log.info("customer %s signed up with referral code %s, which is unknown", view.customer_id,
             code)
    reason = Suppression.UNKNOWN_REFERRAL_CODE.value
    for stored in rules:
        if not stored.rule.enabled:
            continue
        for index, action in enumerate(stored.rule.actions):
            if not isinstance(action, ReferralRewardAction):
                continue
            aid = action_id(stored.rule.id, env.id, index)
            if await batch.performed_before(aid):
                continue
            actions.record(batch, aid, view.customer_id, stored, index, action,
                           action_purpose(action), env, Outcome.SUPPRESSED, reason)


def _ensure_referral_code(view: View) -> None:
    """A random code (50 bits); a clash violates the unique key and the
    consumer retries the event, with a new code."""
    if view.referral_code is None:
        view.referral_code = domain.new_referral_code()


# --- follow-ups --------------------------------------------------------------------


async def _locked_follow_up(batch: Batch, follow_up_id: uuid.UUID) -> Any:
    row = await store.get_follow_up(batch.conn, follow_up_id)
    await batch.view(row["customer_id"])
    return await store.get_follow_up(batch.conn, follow_up_id, lock=True)


async def complete_follow_up(conn: Conn, ctx: Context, follow_up_id: uuid.UUID, outcome: str,
                             note: str) -> Any:
    """Done (from scheduled or due); completing again returns it unchanged."""
    outcome = outcome.strip()
    if not outcome:
        raise InvalidArgument("outcome", "required, e.g. 'contacted' or 'no_answer'")
    batch = Batch(conn, ctx)
    row = await _locked_follow_up(batch, follow_up_id)
    if row["status"] == domain.FollowUpStatus.COMPLETED.value:
        return row
    if row["status"] == domain.FollowUpStatus.CANCELLED.value:
        raise FailedPrecondition(f"follow-up {follow_up_id} was cancelled ({row['outcome']})")
    done = await store.close_follow_up(conn, follow_up_id,
                                       domain.FollowUpStatus.COMPLETED.value, outcome,
                                       note.strip(), batch.now)
    await scheduler.cancel(conn, FOLLOW_UP_DUE, str(follow_up_id))
    batch.emit(row["customer_id"], FollowUpCompleted(
        follow_up_id=str(follow_up_id), customer_id=str(row["customer_id"]), outcome=outcome,
        completed_at=batch.now))
    await batch.flush()
    return done


async def cancel_follow_up(conn: Conn, ctx: Context, follow_up_id: uuid.UUID,
                           reason: str) -> Any:
    batch = Batch(conn, ctx)
    row = await _locked_follow_up(batch, follow_up_id)
    if row["status"] == domain.FollowUpStatus.CANCELLED.value:
        return row
    if row["status"] == domain.FollowUpStatus.COMPLETED.value:
        raise FailedPrecondition(f"follow-up {follow_up_id} was completed already")
    await batch.cancel_follow_ups([row], reason.strip() or "cancelled_by_user",
                                  published="cancelled_by_user")
    await batch.flush()
    return await store.get_follow_up(conn, follow_up_id)


# --- newsletters ----------------------------------------------------------------------


async def _leave_lists(batch: Batch, customer_id: uuid.UUID, list_name: str | None,
                       reason: str, at: datetime | None = None) -> list[str]:
    """Leave one list or all, as of ``at`` (the customer's decision; default
    now)."""
    lists = await store.unsubscribe(batch.conn, customer_id, list_name, at or batch.now)
    batch.emit(customer_id, *[NewsletterUnsubscribed(
        customer_id=str(customer_id), list=name, reason=reason) for name in lists])
    return lists


async def unsubscribe(conn: Conn, ctx: Context, customer_id: uuid.UUID,
                      list_name: str) -> tuple[list[str], int]:
    """Leave one list, or every list when ``list_name`` is empty, at once,
    and cancel the pending newsletter sends it covered. Returns (lists left,
    sends cancelled).

    Leaving every list is withdrawing the newsletter consent: honoured here
    at once, and published as ``loyalty.consent_withdrawn`` for the customers
    service, which owns consent, to record (it need not be up now). One list
    is a list preference loyalty keeps: that list is not enrolled again
    until the customer grants newsletter consent anew."""
    batch = Batch(conn, ctx)
    await store.get_view(conn, customer_id)  # NOT_FOUND for customers loyalty never saw
    view = await batch.view(customer_id)
    only = list_name.strip() or None
    if only is None and view.erased_at is None:
        view.newsletter_consent, view.newsletter_consent_at = False, batch.now
        batch.save(view)
        batch.emit(view.customer_id, ConsentWithdrawn(
            customer_id=str(view.customer_id), purpose=ConsentPurpose.NEWSLETTER.value,
            source="loyalty:unsubscribe", withdrawn_at=batch.now))
    lists = await _leave_lists(batch, view.customer_id, only, "customer_request")
    pending = await store.open_follow_ups(conn, view.customer_id,
                                          purposes=[Purpose.NEWSLETTER.value], list_name=only)
    cancelled = await batch.cancel_follow_ups(pending, "unsubscribed")
    await batch.flush()
    return lists, cancelled


# --- erasure and merge --------------------------------------------------------------------


async def erase(batch: Batch, view: View) -> None:
    """Cancel everything pending and scrub personal data; the id stays."""
    await batch.flush()
    conn, cid, now = batch.conn, view.customer_id, batch.now
    await batch.cancel_follow_ups(await store.open_follow_ups(conn, cid),
                                  Suppression.ERASED.value)
    await _leave_lists(batch, cid, None, Suppression.ERASED.value)
    await scheduler.cancel_many(conn, DISCOUNT_EXPIRING, [
        str(discount_id) for discount_id in await store.void_discounts(conn, cid, "erased", now)])
    await store.scrub_follow_up_notes(conn, cid)
    await store.scrub_order_ids(conn, cid)
    await memberships.forget(conn, cid)
    await sealing.forget(conn, str(cid))
    view.erase(now)
    batch.save(view)


async def merge(batch: Batch, survivor_id: uuid.UUID, merged_id: uuid.UUID, *, stage: str,
                purchase_count: int) -> None:
    """``merged_id`` became an alias of ``survivor_id``: re-point its follow-ups,
    discounts, enrolments, actions and referrals, and combine what we know
    (:meth:`View.absorb`: do-not-contact from either; per consent the most
    recent decision). ``stage`` and ``purchase_count``: the survivor's, as
    customers computed them."""
    if survivor_id == merged_id:
        raise PoisonMessage("invalid_payload", "merged_customer_id equals customer_id")
    survivor = await batch.view(survivor_id, follow_alias=False)
    merged = await batch.view(merged_id, follow_alias=False)
    if merged.merged_into == survivor_id:
        return
    await batch.flush()
    await store.move_records(batch.conn, survivor_id, merged_id)
    await store.point_aliases(batch.conn, survivor_id, merged_id)
    survivor.absorb(merged, stage=stage, purchase_count=purchase_count)
    batch.save(merged)  # its referral code stays its own
    batch.save(survivor)
    # Cached views aliased to the merged id now resolve to the survivor.
    for cached in batch.cached_views():
        if cached.merged_into == merged_id:
            cached.merged_into = survivor_id
    if survivor.do_not_contact:
        await batch.cancel_follow_ups(await store.open_follow_ups(batch.conn, survivor_id),
                                      "do_not_contact")
    batch.forget_moot_hints()


# --- reading -----------------------------------------------------------------------------


@dataclass
class Profile:
    view: View
    follow_ups: list[Any]
    discounts: list[Any]
    enrolments: list[Any]
    suppressed: list[Any]
    referrals: list[Any]


async def profile(conn: Conn, customer_id: uuid.UUID) -> Profile:
    view = await store.get_view(conn, customer_id)
    cid = view.customer_id
    return Profile(view, await store.customer_follow_ups(conn, cid),
                   await store.customer_discounts(conn, cid), await store.enrolments(conn, cid),
                   await store.suppressed_actions(conn, cid),
                   await store.referrals_made(conn, cid))


@dataclass(frozen=True)
class DryRun:
    evaluation: Evaluation
    decisions: list[Decision]
    facts: dict[str, Any]


async def dry_run(conn: Conn, ctx: Context, rule: Rule, customer_id: uuid.UUID,
                  trigger_facts: dict[str, Any]) -> DryRun:
    """What ``rule`` would do for the customer if its trigger arrived now with
    ``trigger_facts``; writes nothing."""
    known = TRIGGERS[rule.trigger]
    for name, value in trigger_facts.items():
        if name not in known:
            raise InvalidArgument(f"trigger_facts_json.{name}",
                                  f"not a fact of {rule.trigger}; known: {sorted(known)}")
        if not fact_value_ok(known[name], value):
            raise InvalidArgument(f"trigger_facts_json.{name}",
                                  f"expected a {known[name]} value, got {value!r}")
    view = await store.get_view(conn, customer_id)
    batch = Batch(conn, ctx)
    facts = {**facts_of(view, None, batch.now), **trigger_facts}
    evaluation = evaluate(rule.model_copy(update={"enabled": True}), facts)
    decisions = []
    if evaluation.matched:
        decisions = [await actions.decide(batch, view, action, dry_run=True)
                     for action in rule.actions]
    return DryRun(evaluate(rule, facts), decisions, facts)
