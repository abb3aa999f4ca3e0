"""What the loyalty service does, one function per command.

Each function runs inside the caller's transaction (a consumed batch, a
scheduled item or a gRPC call), applies the pure rules of :mod:`domain`,
writes through :mod:`store` and queues the events it causes in the outbox, so
state and events commit together. Every change to one customer starts by
locking that customer's view row, which keeps their events in order.

Exactly once: the runtime's inbox drops a redelivered trigger event; as a
second guard every action has an id derived from (rule, trigger event id,
action index) and is recorded in ``actions`` under that id, so a trigger can
never yield an action twice.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from crm_contracts.loyalty import (
    ActionSuppressed,
    DiscountExpiring,
    DiscountIssued,
    DiscountRedeemed,
    FollowUpCancelled,
    FollowUpCompleted,
    FollowUpDue,
    FollowUpScheduled,
    NewsletterEnrolled,
    NewsletterUnsubscribed,
    ReferralRewarded,
)
from crm_runtime import ids, logs, scheduler, uow
from crm_runtime.db import Conn
from crm_runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from crm_runtime.events import Envelope, EventPayload, PoisonMessage
from crm_runtime.uow import CommandContext
from services.loyalty import domain, metrics, store
from services.loyalty.domain import (
    Action,
    DiscountAction,
    DiscountTerms,
    FollowUpAction,
    NewsletterAction,
    Outcome,
    Purpose,
    ReferralRewardAction,
    Suppression,
    TrustPolicy,
)
from services.loyalty.rulebook import RuleBook, StoredRule
from services.loyalty.store import View

log = logging.getLogger(__name__)

SOURCE = "/crm/loyalty"
SERVICE = store.SCHEMA
FOLLOW_UP_DUE = "loyalty.followup_due"
DISCOUNT_EXPIRING = "loyalty.discount_expiring"


@dataclass(frozen=True)
class Context(CommandContext):
    """What every command needs besides the connection."""

    source = SOURCE
    rules: RuleBook
    policy: TrustPolicy = field(default_factory=TrustPolicy)
    expiry_notice: timedelta = timedelta(days=3)


class Unit:
    """The unit of work of one transaction (a consumed batch, a scheduled item,
    a gRPC call): customers' views locked and cached, and the writes of the
    common path (actions, discounts, follow-ups, schedules, views, outbox
    rows) buffered and written at :meth:`flush` with one statement plus the
    outbox's. A run of consumed events costs a few round trips, not a few
    per event.

    Code on a rare path (consent withdrawn, erasure, merge) that reads or
    writes tables directly calls :meth:`flush` first, so it sees every earlier
    write and the outbox keeps the order events were caused in.

    Follow-ups an event makes moot (:meth:`cancel_moot`) are the common path of
    a first purchase, so they are cancelled at :meth:`flush` for the whole
    unit at once: each event cancels what was open when it came (not what a
    later event of the unit scheduled), and its ``loyalty.followup_cancelled``
    events take its place in the outbox.
    """

    def __init__(self, conn: Conn, ctx: Context) -> None:
        self.conn = conn
        self.ctx = ctx
        self.now = ctx.clock.now()
        self._views: dict[uuid.UUID, View] = {}
        self._dirty: dict[uuid.UUID, View] = {}
        self._envelopes: list[Envelope] = []
        self._actions: list[store.ActionRow] = []
        self._discounts: list[store.DiscountRow] = []
        self._follow_ups: list[store.FollowUpRow] = []
        #: (kind, key, due, traceparent): the work runs in the trace of the
        #: trigger that scheduled it.
        self._schedules: list[tuple[str, str, datetime, str]] = []
        self.done_actions: set[uuid.UUID] = set()
        self._promo: dict[uuid.UUID, list[datetime]] = {}
        self._cancellable: dict[uuid.UUID, set[str]] | None = None
        self._new_cancellable: dict[uuid.UUID, set[str]] = {}  # follow-ups of this unit
        #: Follow-ups scheduled in this unit, in the order they were.
        self._scheduled: dict[uuid.UUID, int] = {}
        self._moot: list[_Moot] = []
        self._trigger_ids: list[str] = []
        self._guard_loaded = False
        self._codes: list[str] = []

    async def prefetch(self, customer_ids: list[uuid.UUID],
                       trigger_event_ids: list[str]) -> list[StoredRule]:
        """Lock and load a run's customers and what the run will consult, in
        one round trip; returns the current rules."""
        since = self.now - self.ctx.policy.window
        locked = await store.lock_views(self.conn, customer_ids, self.now, since,
                                        trigger_event_ids)
        survivors = [v.merged_into for v in locked.views if v.merged_into is not None]
        if survivors:
            more = await store.lock_views(self.conn, survivors, self.now, since, [])
            locked.views += more.views
            locked.promotional.update(more.promotional)
            locked.cancellable.update(more.cancellable)
        for v in locked.views:
            self._views[v.customer_id] = v
        self._promo.update(locked.promotional)
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
        self._dirty[view.customer_id] = view

    def cached_views(self) -> list[View]:
        return list(self._views.values())

    def forget_moot_hints(self) -> None:
        """After a merge moved follow-ups, load the hint again."""
        self._cancellable = None

    def emit(self, customer_id: uuid.UUID, *payloads: EventPayload) -> None:
        trace = logs.current_traceparent()
        self._envelopes += [self._envelope(customer_id, p, trace) for p in payloads]

    def _envelope(self, customer_id: uuid.UUID, payload: EventPayload,
                  traceparent: str) -> Envelope:
        return self.ctx.events.envelope(customer_id, payload, time=self.now,
                                        traceparent=traceparent)

    async def promotional_times(self, customer_id: uuid.UUID) -> list[datetime]:
        """Times of promotional contacts in the cap's window (loaded for every
        customer of the unit at the first need)."""
        if customer_id not in self._promo:
            ids = list({customer_id, *self._views})
            self._promo.update(await store.promotional_times_many(
                self.conn, ids, self.now - self.ctx.policy.window))
        return self._promo[customer_id]

    async def performed_before(self, action_id: uuid.UUID) -> bool:
        """The second guard of exactly-once: actions already recorded for the
        unit's trigger events (loaded once, at the first action)."""
        if not self._guard_loaded:
            self.done_actions |= await store.actions_of_triggers(self.conn, self._trigger_ids)
            self._guard_loaded = True
        return action_id in self.done_actions

    async def may_be_moot(self, customer_id: uuid.UUID, event_type: str) -> bool:
        """Whether an open follow-up of the customer may list ``event_type``
        in its ``cancel_on`` (a hint loaded once per unit; the caller asks
        the database when it says yes)."""
        if event_type not in self.ctx.rules.cancel_types:
            return False
        if self._cancellable is None:
            ids = list(self._views)
            self._cancellable = {cid: set() for cid in ids}
            self._cancellable.update(await store.cancellable_types(self.conn, ids))
        if customer_id not in self._cancellable:
            return True  # not covered by the hint: ask the database
        return (event_type in self._cancellable[customer_id]
                or event_type in self._new_cancellable.get(customer_id, set()))

    def record_action(self, row: store.ActionRow) -> None:
        self.done_actions.add(row[0])
        self._actions.append(row)
        labels = (SERVICE, row[2], row[5], row[9], row[10])
        uow.on_commit(lambda: metrics.ACTIONS.labels(*labels).inc())

    def add_follow_up(self, row: store.FollowUpRow) -> None:
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

    def add_discount(self, row: store.DiscountRow, notice_at: datetime | None) -> None:
        self._discounts.append(row)
        if notice_at is not None:
            self._schedules.append((DISCOUNT_EXPIRING, str(row[0]), notice_at,
                                    logs.current_traceparent()))

    def cancel_moot(self, customer_id: uuid.UUID, event_type: str) -> None:
        """Cancel (at :meth:`flush`) the customer's follow-ups open now whose
        ``cancel_on`` lists ``event_type``."""
        self._moot.append(_Moot(customer_id, event_type, len(self._envelopes),
                                len(self._scheduled), logs.current_traceparent()))

    async def flush(self) -> None:
        """Write what is buffered: one statement for the rows, the moot
        follow-ups' cancellation when there are any, then the outbox."""
        await store.write_unit(self.conn, actions=self._actions, discounts=self._discounts,
                               follow_ups=self._follow_ups, schedules=self._schedules,
                               views=list(self._dirty.values()), now=self.now)
        if self._moot:
            await self._cancel_moot()
        await self.ctx.events.write(self.conn, self._envelopes)
        self._actions, self._discounts, self._follow_ups = [], [], []
        self._schedules, self._envelopes, self._dirty = [], [], {}

    async def _cancel_moot(self) -> None:
        """Cancel the follow-ups :meth:`cancel_moot` asked for, in three
        statements for the whole unit: read them locked, close them, remove
        their scheduled work. The rows this unit scheduled were just written."""
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
        await _close_cancelled(self, closing)
        for position, envelopes in reversed(placed):  # later places first: earlier stay put
            self._envelopes[position:position] = envelopes


@dataclass(frozen=True)
class _Moot:
    """An event that made a customer's follow-ups moot (:meth:`Unit.cancel_moot`):
    where its cancellations go in the unit's events, how many follow-ups the
    unit had scheduled before it, and its trace."""

    customer_id: uuid.UUID
    event_type: str
    position: int
    scheduled_before: int
    traceparent: str


def _event_customer(env: Envelope) -> uuid.UUID:
    return _event_uuid(env, "customer_id")


def _event_uuid(env: Envelope, name: str) -> uuid.UUID:
    raw = getattr(env.data, name, "")
    try:
        return ids.read_uuid(raw)
    except (ValueError, TypeError, AttributeError):
        raise PoisonMessage("invalid_payload", f"{name}: {raw!r} is not a UUID") from None


# --- consuming events -----------------------------------------------------------


async def on_events(conn: Conn, ctx: Context, events: list[Envelope]) -> None:
    """Apply a run of consumed events in one unit of work."""
    unit = Unit(conn, ctx)
    ids: list[uuid.UUID] = []
    for env in events:
        ids.append(_event_customer(env))
        if env.type == "customer.merged":
            ids.append(_event_uuid(env, "merged_customer_id"))
    rules = await unit.prefetch(ids, [env.id for env in events])
    for env in logs.each(events):  # the actions' events continue each trigger's trace
        await on_event(unit, env, rules)
    await unit.flush()


async def on_event(unit: Unit, env: Envelope, rules: list[StoredRule]) -> None:
    """Apply one consumed event: update loyalty's view of the customer, cancel
    what it makes moot, then run the rules it triggers."""
    event_type = env.type  # a property: looked up once, then compared many times
    customer_id = _event_customer(env)
    if event_type == "customer.merged":
        await merge(unit, customer_id, _event_uuid(env, "merged_customer_id"), env)
        return
    view = await unit.view(customer_id)
    if view.erased_at is not None:
        return  # nothing more happens for an erased customer, and nothing is kept
    derived = await _project(unit, view, env)
    if view.erased_at is not None:
        return
    if event_type == "customer.registered" and _referral_code_of(env):
        await _referred_by_code(unit, view, env, rules)
    if await unit.may_be_moot(view.customer_id, event_type):
        unit.cancel_moot(view.customer_id, event_type)
    facts: dict[str, Any] | None = None
    for stored in rules:
        if stored.rule.trigger != event_type or not stored.rule.enabled:
            continue
        if facts is None:
            facts = {**facts_of(view, env.data, unit.now), **derived}
        if domain.matches(stored.rule, facts):
            for index, action in enumerate(stored.rule.actions):
                await _perform(unit, view, stored, index, action, env)


async def _project(unit: Unit, view: View, env: Envelope) -> dict[str, Any]:
    """Keep loyalty's view of the customer current; react to consent changes.
    Returns the facts only the change itself tells (``newly_at_risk``)."""
    data: Any = env.data
    event_type = env.type
    derived: dict[str, Any] = {}
    changed = True
    if event_type == "customer.registered":
        if view.purchase_count == 0:  # never undo a stage later events brought
            view.stage = data.stage or view.stage
        view.preferred_channel = data.preferred_channel
        # Quiet hours follow the customer's zone when registration gave one.
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
    elif event_type == "customer.stage_changed":
        view.stage = data.to_stage
        view.purchase_count = data.purchase_count
        view.segments = list(data.segment_keys)
    elif event_type == "customer.purchase_recorded":
        view.purchase_count = max(view.purchase_count, data.purchase_count)
        view.last_purchase_at = max(filter(None, [view.last_purchase_at, data.occurred_at]))
    elif event_type == "customer.consent_changed":
        await _consent_changed(unit, view, data.purpose, data.granted, env.time)
    elif event_type in ("customer.at_risk", "customer.risk_cleared"):
        derived["newly_at_risk"] = event_type == "customer.at_risk" and not view.at_risk
        view.at_risk = event_type == "customer.at_risk"
    elif event_type == "customer.erased":
        await erase(unit, view)
    else:
        changed = False
    if changed:
        unit.save(view)
    return derived


def _referral_code_of(env: Envelope) -> str:
    code: str = getattr(env.data, "referral_code", "")
    return code


async def _referred_by_code(unit: Unit, view: View, env: Envelope,
                            rules: list[StoredRule]) -> None:
    """The customer signed up with a friend's referral code: the friend (the
    code's owner) becomes their referrer, so the referral rules reward them
    later. A code loyalty never issued (mistyped, or its owner was erased) is
    not dropped: each enabled rule's ``referral_reward`` action is recorded as
    suppressed (``unknown_referral_code``) and ``loyalty.action_suppressed``
    published, for marketing to follow up."""
    if view.referred_by is not None:
        return  # referred by id already (customers never sends both)
    code = _referral_code_of(env)
    owner = next((v.customer_id for v in unit.cached_views() if v.referral_code == code), None)
    if owner is None:
        owner = await store.owner_of_referral_code(unit.conn, code)
        if owner is not None and any(v.customer_id == owner and v.referral_code != code
                                     for v in unit.cached_views()):
            owner = None  # erased in this unit, not flushed yet
    if owner is not None and owner != view.customer_id:
        view.referred_by = owner
        unit.save(view)
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
            aid = domain.action_id(stored.rule.id, env.id, index)
            if await unit.performed_before(aid):
                continue
            _record(unit, aid, view.customer_id, stored, index, action,
                    domain.action_purpose(action), env, Outcome.SUPPRESSED, reason)


def _ensure_referral_code(view: View) -> None:
    """A random code (50 bits); a clash violates the unique key and the
    consumer retries the event, with a new code."""
    if view.referral_code is None:
        view.referral_code = domain.new_referral_code()


async def _consent_changed(unit: Unit, view: View, purpose: str, granted: bool,
                           at: datetime) -> None:
    """Withdrawn consent takes effect at once: pending contacts it covered are
    cancelled, and newsletter lists are left."""
    cid = view.customer_id
    if purpose == "do_not_contact":
        view.do_not_contact = granted
        if granted:
            await unit.flush()
            await _cancel_follow_ups(unit, await store.open_follow_ups(unit.conn, cid),
                                     "do_not_contact")
            await _leave_lists(unit, cid, None, "do_not_contact")
    elif purpose == "newsletter":
        view.newsletter_consent, view.newsletter_consent_at = granted, at
        if not granted:
            await unit.flush()
            await _cancel_follow_ups(unit, await store.open_follow_ups(
                unit.conn, cid, purposes=[Purpose.NEWSLETTER.value]), "consent_withdrawn")
            await _leave_lists(unit, cid, None, "consent_withdrawn")
    elif purpose == "promotional_offers":
        view.promotional_consent, view.promotional_consent_at = granted, at
        if not granted:
            await unit.flush()
            await _cancel_follow_ups(unit, await store.open_follow_ups(
                unit.conn, cid, purposes=[Purpose.PROMOTIONAL.value]), "consent_withdrawn")


def facts_of(view: View, data: EventPayload | None, now: datetime,
             trigger: str | None = None) -> dict[str, Any]:
    """The facts rules are evaluated on: the customer's, then the event's."""
    facts: dict[str, Any] = {
        "stage": view.stage,
        "purchase_count": view.purchase_count,
        "segments": view.segments,
        "days_since_last_purchase": (now - view.last_purchase_at).days
        if view.last_purchase_at else None,
        "referred": view.referred_by is not None,
        "at_risk": view.at_risk,
        "preferred_channel": view.preferred_channel,
        "newsletter_consent": view.newsletter_consent,
        "promotional_consent": view.promotional_consent,
    }
    if data is not None:
        for name in domain.TRIGGERS.get(trigger or data.event_type, {}):
            value = getattr(data, name, None)
            facts[name] = list(value) if isinstance(value, list | tuple) else value
    return facts


# --- performing actions -----------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What an action would do for whom: performed, suppressed or skipped."""

    action_type: str
    purpose: Purpose
    target: View | None
    outcome: Outcome
    reason: str = ""


async def decide(unit: Unit, view: View, action: Action, *, dry_run: bool = False) -> Decision:
    """Apply the trust rules to one action. Reads only (a dry run does not
    even lock the referrer's view)."""
    conn, now = unit.conn, unit.now
    purpose = domain.action_purpose(action)
    target: View | None = view
    if isinstance(action, ReferralRewardAction):
        if view.referred_by is None:
            return Decision(action.type, purpose, None, Outcome.SKIPPED, "not_referred")
        if await store.referral_rewarded(conn, view.customer_id):
            return Decision(action.type, purpose, None, Outcome.SKIPPED, "already_rewarded")
        target = (await _peek_view(conn, view.referred_by) if dry_run
                  else await unit.view(view.referred_by))
        if target.customer_id == view.customer_id:
            return Decision(action.type, purpose, None, Outcome.SKIPPED, "self_referral")
    assert target is not None
    earlier: list[datetime] = []
    if purpose is Purpose.PROMOTIONAL:
        earlier = await unit.promotional_times(target.customer_id)
    refusal = domain.trust_decision(purpose, target.contact_state(), earlier, now,
                                    unit.ctx.policy)
    if refusal is not None:
        return Decision(action.type, purpose, target, Outcome.SUPPRESSED, refusal.value)
    if isinstance(action, NewsletterAction):
        row = await store.enrolment(conn, target.customer_id, action.list)
        if row is not None and row["status"] == "enrolled":
            return Decision(action.type, purpose, target, Outcome.SKIPPED, "already_enrolled")
    return Decision(action.type, purpose, target, Outcome.PERFORMED)


async def _peek_view(conn: Conn, customer_id: uuid.UUID) -> View:
    try:
        return await store.get_view(conn, customer_id)
    except NotFound:
        return View(customer_id=customer_id)


def _record(unit: Unit, aid: uuid.UUID, customer_id: uuid.UUID, stored: StoredRule,
            index: int, action: Action, purpose: Purpose, env: Envelope, outcome: Outcome,
            reason: str) -> None:
    """Record what a rule's action came to; a suppressed one is also
    published (``loyalty.action_suppressed``), for marketing to see."""
    rule = stored.rule
    unit.record_action((aid, customer_id, rule.id, stored.version, index, action.type,
                        purpose.value, env.id, env.type, outcome.value, reason, unit.now))
    if outcome is Outcome.SUPPRESSED:
        log.info("rule %s: %s for %s suppressed (%s)", rule.id, action.type, customer_id,
                 reason)
        unit.emit(customer_id, ActionSuppressed(
            action_id=str(aid), customer_id=str(customer_id), rule_id=rule.id,
            action_type=action.type, purpose=purpose.value, reason=reason,
            trigger_event_id=env.id))


async def _perform(unit: Unit, view: View, stored: StoredRule, index: int, action: Action,
                   env: Envelope) -> None:
    rule = stored.rule
    aid = domain.action_id(rule.id, env.id, index)
    if await unit.performed_before(aid):
        return  # this trigger yielded this action before
    decision = await decide(unit, view, action)
    target = decision.target or view
    _record(unit, aid, target.customer_id, stored, index, action, decision.purpose, env,
            decision.outcome, decision.reason)
    if decision.outcome is not Outcome.PERFORMED:
        return
    if decision.purpose is Purpose.PROMOTIONAL:
        (await unit.promotional_times(target.customer_id)).append(unit.now)
    if isinstance(action, FollowUpAction):
        _schedule_follow_up(unit, target, aid, stored, action, env.id)
    elif isinstance(action, DiscountAction):
        _issue_discount(unit, target, aid, rule.id, action)
    elif isinstance(action, NewsletterAction):
        await store.enrol(unit.conn, target.customer_id, action.list, rule.id, unit.now)
        unit.emit(target.customer_id, NewsletterEnrolled(
            customer_id=str(target.customer_id), list=action.list, rule_id=rule.id))
    elif isinstance(action, ReferralRewardAction):
        await store.insert_referral_reward(unit.conn, view.customer_id, target.customer_id,
                                           aid, rule.id, unit.now)
        _issue_discount(unit, target, aid, rule.id, action.discount)
        unit.emit(target.customer_id, ReferralRewarded(
            customer_id=str(target.customer_id), referred_customer_id=str(view.customer_id),
            discount_id=str(aid), rule_id=rule.id))


def _schedule_follow_up(unit: Unit, target: View, aid: uuid.UUID, stored: StoredRule,
                        action: FollowUpAction, trigger_event_id: str) -> None:
    policy = unit.ctx.policy
    requested = unit.now + action.delay_td
    zone = domain.time_zone(target.time_zone, policy.default_time_zone)
    due = domain.outside_quiet_hours(requested, zone, policy.quiet_start, policy.quiet_end)
    unit.add_follow_up((aid, target.customer_id, stored.rule.id, action.channel,
                        action.template, action.reason, action.purpose.value, action.list,
                        list(action.cancel_on), requested, due, unit.now))
    unit.emit(target.customer_id, FollowUpScheduled(
        follow_up_id=str(aid), customer_id=str(target.customer_id), rule_id=stored.rule.id,
        rule_version=stored.version, channel=action.channel, template=action.template,
        reason=action.reason, purpose=action.purpose.value, due_at=due,
        trigger_event_id=trigger_event_id))


def _issue_discount(unit: Unit, target: View, discount_id: uuid.UUID, rule_id: str,
                    terms: DiscountTerms) -> None:
    now = unit.now
    expires_at = now + timedelta(days=terms.valid_days)
    code = unit.next_code()
    unit.add_discount((discount_id, code, target.customer_id, rule_id, terms.kind,
                       terms.percent, terms.amount_minor, terms.currency,
                       terms.min_purchase_minor, terms.purpose, terms.reason, now, expires_at),
                      domain.expiring_notice_at(now, expires_at, unit.ctx.expiry_notice))
    unit.emit(target.customer_id, DiscountIssued(
        discount_id=str(discount_id), customer_id=str(target.customer_id), code=code,
        kind=terms.kind, percent=terms.percent, amount_minor=terms.amount_minor,
        currency=terms.currency, min_purchase_minor=terms.min_purchase_minor,
        expires_at=expires_at, rule_id=rule_id, purpose=terms.purpose, reason=terms.reason))


# --- follow-ups --------------------------------------------------------------------


async def _cancel_follow_ups(unit: Unit, rows: list[Any], reason: str) -> int:
    """Cancel follow-ups read after a :meth:`Unit.flush` (two statements)."""
    await _close_cancelled(unit, [(row["follow_up_id"], reason) for row in rows])
    for row in rows:
        unit.emit(row["customer_id"], FollowUpCancelled(
            follow_up_id=str(row["follow_up_id"]), customer_id=str(row["customer_id"]),
            reason=reason))
    return len(rows)


async def _close_cancelled(unit: Unit, closing: list[tuple[uuid.UUID, str]]) -> None:
    """Mark these follow-ups (id, reason) cancelled and remove their due work."""
    await store.close_follow_ups(unit.conn, closing, domain.FollowUpStatus.CANCELLED.value,
                                 unit.now)
    await scheduler.cancel_many(unit.conn, FOLLOW_UP_DUE, [str(fid) for fid, _ in closing])


async def follow_up_due(conn: Conn, ctx: Context, follow_up_id: uuid.UUID) -> None:
    """A follow-up's time came (run by the durable scheduler). Consent and
    do-not-contact are checked again: they may have changed since."""
    unit = Unit(conn, ctx)
    row = await store.get_follow_up(conn, follow_up_id)
    if row["status"] != domain.FollowUpStatus.SCHEDULED.value:
        return
    view = await unit.view(row["customer_id"])
    refusal = domain.trust_decision(Purpose(row["purpose"]), view.contact_state(), [],
                                    unit.now, ctx.policy)
    if refusal is not None:
        await _cancel_follow_ups(unit, [row], refusal.value)
    else:
        due = await store.mark_due(conn, follow_up_id, unit.now)
        if due is not None:
            unit.emit(due["customer_id"], FollowUpDue(
                follow_up_id=str(follow_up_id), customer_id=str(due["customer_id"]),
                channel=due["channel"], template=due["template"], reason=due["reason"],
                purpose=due["purpose"], due_at=due["due_at"]))
    await unit.flush()


async def _locked_follow_up(unit: Unit, follow_up_id: uuid.UUID) -> Any:
    row = await store.get_follow_up(unit.conn, follow_up_id)
    await unit.view(row["customer_id"])
    return await store.get_follow_up(unit.conn, follow_up_id, lock=True)


async def complete_follow_up(conn: Conn, ctx: Context, follow_up_id: uuid.UUID, outcome: str,
                             note: str) -> Any:
    """Done (from scheduled or due); completing again returns it unchanged."""
    outcome = outcome.strip()
    if not outcome:
        raise InvalidArgument("outcome", "required, e.g. 'contacted' or 'no_answer'")
    unit = Unit(conn, ctx)
    row = await _locked_follow_up(unit, follow_up_id)
    if row["status"] == domain.FollowUpStatus.COMPLETED.value:
        return row
    if row["status"] == domain.FollowUpStatus.CANCELLED.value:
        raise FailedPrecondition(f"follow-up {follow_up_id} was cancelled ({row['outcome']})")
    done = await store.close_follow_up(conn, follow_up_id,
                                       domain.FollowUpStatus.COMPLETED.value, outcome,
                                       note.strip(), unit.now)
    await scheduler.cancel(conn, FOLLOW_UP_DUE, str(follow_up_id))
    unit.emit(row["customer_id"], FollowUpCompleted(
        follow_up_id=str(follow_up_id), customer_id=str(row["customer_id"]), outcome=outcome,
        completed_at=unit.now))
    await unit.flush()
    return done


async def cancel_follow_up(conn: Conn, ctx: Context, follow_up_id: uuid.UUID,
                           reason: str) -> Any:
    unit = Unit(conn, ctx)
    row = await _locked_follow_up(unit, follow_up_id)
    if row["status"] == domain.FollowUpStatus.CANCELLED.value:
        return row
    if row["status"] == domain.FollowUpStatus.COMPLETED.value:
        raise FailedPrecondition(f"follow-up {follow_up_id} was completed already")
    await _cancel_follow_ups(unit, [row], reason.strip() or "cancelled_by_user")
    await unit.flush()
    return await store.get_follow_up(conn, follow_up_id)


# --- newsletters ----------------------------------------------------------------------


async def _leave_lists(unit: Unit, customer_id: uuid.UUID, list_name: str | None,
                       reason: str) -> list[str]:
    lists = await store.unsubscribe(unit.conn, customer_id, list_name, unit.now)
    unit.emit(customer_id, *[NewsletterUnsubscribed(
        customer_id=str(customer_id), list=name, reason=reason) for name in lists])
    return lists


async def unsubscribe(conn: Conn, ctx: Context, customer_id: uuid.UUID,
                      list_name: str) -> tuple[list[str], int]:
    """Leave one list (or every list when empty) at once, and cancel the
    pending newsletter sends it covered. Returns (lists left, sends cancelled)."""
    unit = Unit(conn, ctx)
    await store.get_view(conn, customer_id)  # NOT_FOUND for customers loyalty never saw
    view = await unit.view(customer_id)
    only = list_name.strip() or None
    lists = await _leave_lists(unit, view.customer_id, only, "customer_request")
    pending = await store.open_follow_ups(conn, view.customer_id,
                                          purposes=[Purpose.NEWSLETTER.value], list_name=only)
    cancelled = await _cancel_follow_ups(unit, pending, "unsubscribed")
    await unit.flush()
    return lists, cancelled


# --- discounts ------------------------------------------------------------------------


def discount_state(row: Any) -> domain.DiscountState:
    return domain.DiscountState(
        kind=row["kind"], percent=row["percent"], amount_minor=row["amount_minor"],
        currency=row["currency"], min_purchase_minor=row["min_purchase_minor"],
        expires_at=row["expires_at"], redeemed_at=row["redeemed_at"],
        voided_at=row["voided_at"])


def check_order(order_minor: int, currency: str) -> str:
    if order_minor < 0:
        raise InvalidArgument("order_amount.amount_minor", f"must not be negative, got "
                                                           f"{order_minor}")
    code = currency.strip().upper()
    if len(code) != 3 or not code.isalpha():
        raise InvalidArgument("order_amount.currency", f"{currency!r} is not an ISO 4217 code "
                                                       "like 'EUR'")
    return code


async def _check_owner(conn: Conn, row: Any, customer_id: uuid.UUID | None) -> None:
    if customer_id is not None and await store.resolve(conn, customer_id) != row["customer_id"]:
        raise FailedPrecondition(f"discount code {row['code']} was issued to another customer")


async def validate_discount(conn: Conn, ctx: Context, code: str, customer_id: uuid.UUID | None,
                            order_minor: int, currency: str) -> tuple[Any, int, str | None]:
    """(discount, amount off this order, reason it cannot be used or None)."""
    currency = check_order(order_minor, currency)
    row = await store.discount_by_code(conn, domain.normalise_code(code))
    await _check_owner(conn, row, customer_id)
    state = discount_state(row)
    refusal = domain.redeem_refusal(state, ctx.clock.now(), order_minor, currency)
    amount = 0 if refusal else domain.discount_amount(state, order_minor)
    return row, amount, refusal


async def redeem_discount(conn: Conn, ctx: Context, code: str, *, order_id: str,
                          customer_id: uuid.UUID | None, order_minor: int,
                          currency: str) -> Any:
    """Use a code once. Of concurrent calls exactly one wins (one UPDATE whose
    WHERE holds only while the code is unused); a retry with the same order id
    returns the same redemption; others fail with the reason."""
    order_id = order_id.strip()
    if not order_id:
        raise InvalidArgument("order_id", "required: the checkout's id of the order")
    currency = check_order(order_minor, currency)
    code = domain.normalise_code(code)
    row = await store.discount_by_code(conn, code)
    await _check_owner(conn, row, customer_id)
    unit = Unit(conn, ctx)
    await unit.view(row["customer_id"], follow_alias=False)  # keeps the customer's events in order
    won = await store.redeem(conn, code, order_id=order_id, order_minor=order_minor,
                             currency=currency, now=unit.now)
    if won is None:
        fresh = await store.discount_by_code(conn, code)
        if fresh["redeemed_at"] is not None and fresh["order_id"] == order_id:
            return fresh
        metrics.REDEMPTIONS.labels(SERVICE, "refused").inc()
        reason = domain.redeem_refusal(discount_state(fresh), unit.now, order_minor, currency)
        raise FailedPrecondition(f"discount code {code}: {reason or 'cannot be redeemed'}")
    uow.on_commit(lambda: metrics.REDEMPTIONS.labels(SERVICE, "redeemed").inc())
    await scheduler.cancel(conn, DISCOUNT_EXPIRING, str(won["discount_id"]))
    unit.emit(won["customer_id"], DiscountRedeemed(
        discount_id=str(won["discount_id"]), customer_id=str(won["customer_id"]),
        order_id=order_id, discount_minor=won["discount_minor"], currency=won["currency"],
        redeemed_at=unit.now))
    await unit.flush()
    return won


async def discount_expiring(conn: Conn, ctx: Context, discount_id: uuid.UUID) -> None:
    """Remind (through marketing) that an unused discount expires soon; not
    for customers who since asked not to be contacted."""
    row = await store.discount_by_id(conn, discount_id)
    if row is None or row["redeemed_at"] is not None or row["voided_at"] is not None:
        return
    unit = Unit(conn, ctx)
    view = await unit.view(row["customer_id"])
    refusal = domain.trust_decision(Purpose(row["purpose"]), view.contact_state(), [],
                                    unit.now, ctx.policy)
    if refusal is not None:
        log.info("discount %s: no expiry reminder (%s)", discount_id, refusal.value)
        return
    unit.emit(row["customer_id"], DiscountExpiring(
        discount_id=str(discount_id), customer_id=str(row["customer_id"]), code=row["code"],
        expires_at=row["expires_at"]))
    await unit.flush()


# --- erasure and merge --------------------------------------------------------------------


async def erase(unit: Unit, view: View) -> None:
    """Cancel everything pending and scrub personal data; the id stays."""
    await unit.flush()
    conn, cid, now = unit.conn, view.customer_id, unit.now
    await _cancel_follow_ups(unit, await store.open_follow_ups(conn, cid),
                             Suppression.ERASED.value)
    await _leave_lists(unit, cid, None, Suppression.ERASED.value)
    await scheduler.cancel_many(conn, DISCOUNT_EXPIRING, [
        str(discount_id) for discount_id in await store.void_discounts(conn, cid, "erased", now)])
    await store.scrub_follow_up_notes(conn, cid)
    await store.scrub_order_ids(conn, cid)
    view.erased_at = now
    view.do_not_contact = True
    view.newsletter_consent = view.promotional_consent = False
    view.newsletter_consent_at = view.promotional_consent_at = None
    view.referral_code = None
    view.referred_by = None
    view.time_zone = view.preferred_channel = ""
    view.segments = []
    view.last_purchase_at = None
    unit.save(view)


async def merge(unit: Unit, survivor_id: uuid.UUID, merged_id: uuid.UUID,
                env: Envelope) -> None:
    """``merged_id`` became an alias of ``survivor_id``: re-point its follow-ups,
    discounts, enrolments, actions and referrals, and combine what we know
    (do-not-contact from either; per consent the most recent decision)."""
    if survivor_id == merged_id:
        raise PoisonMessage("invalid_payload", "merged_customer_id equals customer_id")
    survivor = await unit.view(survivor_id, follow_alias=False)
    merged = await unit.view(merged_id, follow_alias=False)
    if merged.merged_into == survivor_id:
        return
    await unit.flush()
    await store.move_records(unit.conn, survivor_id, merged_id)
    await store.point_aliases(unit.conn, survivor_id, merged_id)
    data: Any = env.data
    survivor.stage, survivor.purchase_count = data.stage, data.purchase_count
    survivor.do_not_contact = survivor.do_not_contact or merged.do_not_contact
    survivor.at_risk = survivor.at_risk or merged.at_risk
    if _later(merged.newsletter_consent_at, survivor.newsletter_consent_at):
        survivor.newsletter_consent = merged.newsletter_consent
        survivor.newsletter_consent_at = merged.newsletter_consent_at
    if _later(merged.promotional_consent_at, survivor.promotional_consent_at):
        survivor.promotional_consent = merged.promotional_consent
        survivor.promotional_consent_at = merged.promotional_consent_at
    survivor.last_purchase_at = max(filter(None, [survivor.last_purchase_at,
                                                  merged.last_purchase_at]), default=None)
    survivor.referred_by = survivor.referred_by or merged.referred_by
    if survivor.referred_by == survivor_id:
        survivor.referred_by = None
    survivor.time_zone = survivor.time_zone or merged.time_zone
    survivor.preferred_channel = survivor.preferred_channel or merged.preferred_channel
    merged.merged_into = survivor_id
    unit.save(merged)  # its referral code stays its own
    unit.save(survivor)
    # Cached views aliased to the merged id now resolve to the survivor.
    for cached in unit.cached_views():
        if cached.merged_into == merged_id:
            cached.merged_into = survivor_id
    if survivor.do_not_contact:
        await _cancel_follow_ups(unit, await store.open_follow_ups(unit.conn, survivor_id),
                                 "do_not_contact")
    unit.forget_moot_hints()


def _later(a: datetime | None, b: datetime | None) -> bool:
    return a is not None and (b is None or a > b)


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
    evaluation: domain.Evaluation
    decisions: list[Decision]
    facts: dict[str, Any]


async def dry_run(conn: Conn, ctx: Context, rule: domain.Rule, customer_id: uuid.UUID,
                  trigger_facts: dict[str, Any]) -> DryRun:
    """What ``rule`` would do for the customer if its trigger arrived now with
    ``trigger_facts``; writes nothing."""
    known = domain.TRIGGERS[rule.trigger]
    for name, value in trigger_facts.items():
        if name not in known:
            raise InvalidArgument(f"trigger_facts_json.{name}",
                                  f"not a fact of {rule.trigger}; known: {sorted(known)}")
        if not domain.fact_value_ok(known[name], value):
            raise InvalidArgument(f"trigger_facts_json.{name}",
                                  f"expected a {known[name]} value, got {value!r}")
    view = await store.get_view(conn, customer_id)
    unit = Unit(conn, ctx)
    facts = {**facts_of(view, None, unit.now), **trigger_facts}
    evaluation = domain.evaluate(rule.model_copy(update={"enabled": True}), facts)
    decisions = []
    if evaluation.matched:
        decisions = [await decide(unit, view, action, dry_run=True) for action in rule.actions]
    return DryRun(domain.evaluate(rule, facts), decisions, facts)
