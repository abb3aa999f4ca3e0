"""What a rule's actions do, in the transaction's :class:`Batch`.

An action that a trigger asks for is done once (its id derives from the rule,
the trigger event and the action's index, :func:`rules.action_id`): loyalty's
trust rules decide first (:func:`decide`: performed, suppressed or skipped);
an action that reaches the customer now (a discount, a referral reward, a
newsletter enrolment) then passes the contact gate of the customers service
(:func:`contacting.reserve_now`: the frequency cap of every service's
contacts, the authoritative consent); what it came to is recorded
(:func:`record`; a suppressed action is also published as
``loyalty.action_suppressed``), then a performed one schedules its follow-up
(which passes the gate when due), issues its discount, enrols in its
newsletter or rewards the referrer (:func:`perform`). The dry run asks
:func:`decide` alone: it reserves nothing.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, replace
from datetime import timedelta

from crm_contracts.loyalty import (
    ActionSuppressed,
    DiscountIssued,
    FollowUpScheduled,
    NewsletterEnrolled,
    ReferralRewarded,
)
from crm_runtime import logs
from crm_runtime.db import Conn
from crm_runtime.errors import NotFound
from crm_runtime.events import Envelope
from crm_runtime.quiet_hours import outside_quiet_hours, time_zone
from services.loyalty import contacting, domain, store
from services.loyalty.domain import Decision, Outcome, Purpose, Suppression, View
from services.loyalty.rulebook import StoredRule
from services.loyalty.rules import (
    Action,
    DiscountAction,
    DiscountTerms,
    FollowUpAction,
    NewsletterAction,
    ReferralRewardAction,
    action_id,
    action_purpose,
)
from services.loyalty.unit import Batch

log = logging.getLogger(__name__)


async def decide(batch: Batch, view: View, action: Action, *, dry_run: bool = False
                 ) -> Decision:
    """Apply the trust rules to one action. Reads only (a dry run does not
    even lock the referrer's view)."""
    conn = batch.conn
    purpose = action_purpose(action)
    target = view
    if isinstance(action, ReferralRewardAction):
        if view.referred_by is None:
            return Decision(action.type, purpose, None, Outcome.SKIPPED, "not_referred")
        if await store.referral_rewarded(conn, view.customer_id):
            return Decision(action.type, purpose, None, Outcome.SKIPPED, "already_rewarded")
        target = (await _peek_view(conn, view.referred_by) if dry_run
                  else await batch.view(view.referred_by))
        if target.customer_id == view.customer_id:
            return Decision(action.type, purpose, None, Outcome.SKIPPED, "self_referral")
    refusal = domain.trust_decision(purpose, target.contact_state())
    if refusal is not None:
        return Decision(action.type, purpose, target, Outcome.SUPPRESSED, refusal.value)
    if isinstance(action, NewsletterAction):
        row = await store.enrolment(conn, target.customer_id, action.list)
        if row is not None and row["status"] == "enrolled":
            return Decision(action.type, purpose, target, Outcome.SKIPPED, "already_enrolled")
        if row is not None and not domain.may_enrol_again(row["unsubscribed_at"],
                                                          target.newsletter_consent_at):
            return Decision(action.type, purpose, target, Outcome.SUPPRESSED,
                            Suppression.UNSUBSCRIBED.value)
    return Decision(action.type, purpose, target, Outcome.PERFORMED)


async def _peek_view(conn: Conn, customer_id: uuid.UUID) -> View:
    try:
        return await store.get_view(conn, customer_id)
    except NotFound:
        return View(customer_id=customer_id)


def record(batch: Batch, aid: uuid.UUID, customer_id: uuid.UUID, stored: StoredRule,
            index: int, action: Action, purpose: Purpose, env: Envelope, outcome: Outcome,
            reason: str) -> None:
    """Record what a rule's action came to; a suppressed one is also
    published (``loyalty.action_suppressed``), for marketing to see."""
    rule = stored.rule
    batch.record_action((aid, customer_id, rule.id, stored.version, index, action.type,
                         purpose.value, env.id, env.type, outcome.value, reason, batch.now))
    if outcome is Outcome.SUPPRESSED:
        log.info("rule %s: %s for %s suppressed (%s)", rule.id, action.type, customer_id,
                 reason)
        batch.emit(customer_id, ActionSuppressed(
            action_id=str(aid), customer_id=str(customer_id), rule_id=rule.id,
            action_type=action.type, purpose=purpose.value, reason=reason,
            trigger_event_id=env.id))


async def perform(batch: Batch, view: View, stored: StoredRule, index: int, action: Action,
                  env: Envelope) -> None:
    """Perform one action of a rule that matched ``env``, once: decided, recorded,
    then done (buffered in the batch)."""
    rule = stored.rule
    aid = action_id(rule.id, env.id, index)
    if await batch.performed_before(aid):
        return  # this trigger yielded this action before
    decision = await decide(batch, view, action)
    target = decision.target or view
    if decision.outcome is Outcome.PERFORMED and isinstance(action, DiscountAction):
        # The batch's discounts pass the gate together, at its flush.
        batch.defer_contact(Deferred(aid, target, stored, index, action, env,
                                     decision.purpose, logs.current_traceparent()), settle)
        return
    if decision.outcome is Outcome.PERFORMED and not isinstance(action, FollowUpAction):
        refusal = await contacting.reserve_now(batch, target, aid, decision.purpose)
        if refusal is not None:
            decision = replace(decision, outcome=Outcome.SUPPRESSED, reason=refusal)
    record(batch, aid, target.customer_id, stored, index, action, decision.purpose, env,
            decision.outcome, decision.reason)
    if decision.outcome is not Outcome.PERFORMED:
        return
    if isinstance(action, FollowUpAction):
        _schedule_follow_up(batch, target, aid, stored, action, env.id)
    elif isinstance(action, DiscountAction):
        _issue_discount(batch, target, aid, rule.id, action)
    elif isinstance(action, NewsletterAction):
        await store.enrol(batch.conn, target.customer_id, action.list, rule.id, batch.now)
        batch.emit(target.customer_id, NewsletterEnrolled(
            customer_id=str(target.customer_id), list=action.list, rule_id=rule.id))
    elif isinstance(action, ReferralRewardAction):
        await store.insert_referral_reward(batch.conn, view.customer_id, target.customer_id,
                                           aid, rule.id, batch.now)
        _issue_discount(batch, target, aid, rule.id, action.discount)
        batch.emit(target.customer_id, ReferralRewarded(
            customer_id=str(target.customer_id), referred_customer_id=str(view.customer_id),
            discount_id=str(aid), rule_id=rule.id))


@dataclass(frozen=True)
class Deferred:
    """A discount decided in a consumed batch, waiting for the contact gate:
    the batch's discounts are put to it in one call when the batch flushes
    (:func:`settle`), not one call each."""

    aid: uuid.UUID
    target: View
    stored: StoredRule
    index: int
    action: DiscountAction
    env: Envelope
    purpose: Purpose
    traceparent: str


async def settle(batch: Batch, deferred: list[Deferred]) -> None:
    """Put the deferred discounts to the gate in one call, then record each
    and issue the allowed ones (suppressed with the gate's reason otherwise),
    each in its trigger's trace. Their events follow the batch's others."""
    refusals = await contacting.reserve_all(batch, [(d.target, d.aid, d.purpose)
                                                    for d in deferred])
    for d, refusal in zip(deferred, refusals, strict=True):
        with logs.context(event_id=d.env.id, customer_id=d.env.subject,
                          traceparent=d.traceparent):
            outcome = Outcome.PERFORMED if refusal is None else Outcome.SUPPRESSED
            record(batch, d.aid, d.target.customer_id, d.stored, d.index, d.action, d.purpose,
                   d.env, outcome, refusal or "")
            if refusal is None:
                _issue_discount(batch, d.target, d.aid, d.stored.rule.id, d.action)


def _schedule_follow_up(batch: Batch, target: View, aid: uuid.UUID, stored: StoredRule,
                        action: FollowUpAction, trigger_event_id: str) -> None:
    policy = batch.ctx.policy
    requested = batch.now + action.delay_td
    zone = time_zone(target.time_zone, policy.default_time_zone)
    due = outside_quiet_hours(requested, zone, policy.quiet_start, policy.quiet_end)
    batch.add_follow_up((aid, target.customer_id, stored.rule.id, action.channel,
                         action.template, action.reason, action.purpose.value, action.list,
                         list(action.cancel_on), requested, due, batch.now))
    batch.emit(target.customer_id, FollowUpScheduled(
        follow_up_id=str(aid), customer_id=str(target.customer_id), rule_id=stored.rule.id,
        rule_version=stored.version, channel=action.channel, template=action.template,
        reason=action.reason, purpose=action.purpose.value, due_at=due,
        trigger_event_id=trigger_event_id))


def _issue_discount(batch: Batch, target: View, discount_id: uuid.UUID, rule_id: str,
                    terms: DiscountTerms) -> None:
    now = batch.now
    expires_at = now + timedelta(days=terms.valid_days)
    code = batch.next_code()
    batch.add_discount((discount_id, code, target.customer_id, rule_id, terms.kind,
                        terms.percent, terms.amount_minor, terms.currency,
                        terms.min_purchase_minor, terms.purpose, terms.reason, now, expires_at),
                       domain.expiring_notice_at(now, expires_at, batch.ctx.expiry_notice))
    batch.emit(target.customer_id, DiscountIssued(
        discount_id=str(discount_id), customer_id=str(target.customer_id), code=code,
        kind=terms.kind, percent=terms.percent, amount_minor=terms.amount_minor,
        currency=terms.currency, min_purchase_minor=terms.min_purchase_minor,
        expires_at=expires_at, rule_id=rule_id, purpose=terms.purpose, reason=terms.reason))
