"""Campaigns' use cases: create one, start a run, send a page of it, pause,
resume and cancel, and the dry run. Each runs in the caller's transaction
(a gRPC call, or a scheduled item: :data:`START`, :data:`SEND`); the rules
are :mod:`campaigns`, the SQL :mod:`campaign_store`.

**A run** starts when its scheduled item comes due: one statement copies
the segment's members as loyalty knows them (``segment_members``) into the
run's members, then the first page is due at once.

**A page** is one transaction: the campaign's row locked (a pause or a
cancel waits for the page, and the page sees them), the next pending
members (by id) locked, their views locked; loyalty's checks
(:func:`campaigns.verdict`); the contact gate in one call for the rest;
then per member the action (a discount code, a follow-up, a newsletter
issue) or ``loyalty.action_suppressed``, the member's outcome, and the
run's counters. The contact id the gate counts is the action's id, derived
from (campaign, run, customer) (:func:`action_id`): a page that runs again
after a crash (everything it wrote rolled back) gets the same decisions and
the gate counts nothing twice, so each member's action happens once per run.
The next page is due when the throttle allows; the last one finishes the
run and schedules the next run of a recurring campaign.

Campaign actions are not recorded in ``actions`` (a rule's actions, keyed
by trigger event): a run's members (``campaign_members``) are their record.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from crm_contracts.loyalty import (
    ActionSuppressed,
    CampaignProgress,
    DiscountIssued,
    FollowUpScheduled,
    NewsletterIssueDue,
)
from crm_runtime import faults, ids, scheduler, uow
from crm_runtime.db import Conn
from crm_runtime.errors import AlreadyExists, Conflict, NotFound
from crm_runtime.quiet_hours import outside_quiet_hours, time_zone
from crm_runtime.scheduler import DueWork, WorkHandler
from services.loyalty import campaign_store, contacting, domain, metrics, store
from services.loyalty.campaigns import (
    ASK_GATE,
    PROGRESS_EVERY,
    Action,
    CampaignSpec,
    Command,
    NewsletterIssue,
    Outcome,
    State,
    Tally,
    Verdict,
    differing,
    next_page_at,
    next_run_at,
    page_size,
    transition,
    verdict,
)
from services.loyalty.domain import View
from services.loyalty.rules import DiscountTerms, FollowUpAction, parse_duration
from services.loyalty.unit import Batch, Context

#: Scheduled work: a campaign's next run starts (key: the campaign's id).
START = "campaigns.start"
#: Scheduled work: a run's next page (key: ``<campaign>/<run>``).
SEND = "campaigns.send"
#: Members a dry run reads at a time.
DRY_RUN_PAGE = 1000

_ACTIONS = uuid.UUID("3b0f6a9e-8c1d-4f5a-a2e7-5d9c0b4e7f21")


def action_id(campaign_id: str, run: int, customer_id: uuid.UUID) -> uuid.UUID:
    """The id of a member's action in a run (the contact id the gate
    counts, the discount's or follow-up's id)."""
    return ids.uuid5(_ACTIONS, f"{campaign_id}\x1f{run}\x1f{customer_id}")


def send_key(campaign_id: str, run: int) -> str:
    return f"{campaign_id}/{run}"


def parse_send_key(key: str) -> tuple[str, int]:
    campaign_id, _, run = key.rpartition("/")
    return campaign_id, int(run)


def _rule_id(campaign_id: str) -> str:
    """What the discounts and follow-ups tables hold as the cause of a
    campaign's (their ``rule_id``; the events give ``campaign_id``)."""
    return f"campaign:{campaign_id}"


# --- create, read ------------------------------------------------------------------------


async def stored(conn: Conn, spec: CampaignSpec) -> Any:
    """The campaign a create request names, if it exists and the request is
    the one that created it (None when it does not exist); ALREADY_EXISTS
    naming the fields that differ otherwise."""
    row = await campaign_store.get_campaign(conn, spec.campaign_id)
    if row is not None and bytes(row["request_digest"]) != spec.digest:
        raise AlreadyExists(f"campaign {spec.campaign_id!r} exists with another definition ("
                            + ", ".join(differing(dict(row["request"]), spec.stated))
                            + " differ)")
    return row


async def create(conn: Conn, ctx: Context, spec: CampaignSpec) -> Any:
    """Store a campaign, its first run due at its start (the segment
    checked by the caller); the same request again returns it."""
    row = await campaign_store.insert_campaign(conn, spec, ctx.clock.now())
    if row is None:  # a concurrent twin committed first
        return await stored(conn, spec)
    await scheduler.schedule(conn, START, spec.campaign_id, spec.start_at)
    return row


async def get(conn: Conn, campaign_id: str, run: int = 0) -> tuple[Any, Any]:
    """A campaign and one of its runs (the latest when ``run`` is 0; None
    before the first); NOT_FOUND for an unknown campaign or run."""
    row = await campaign_store.get_campaign(conn, campaign_id)
    if row is None:
        raise NotFound("campaign", campaign_id)
    which = run or row["runs"]
    found = await campaign_store.get_run(conn, campaign_id, which) if which else None
    if run and found is None:
        raise NotFound("run", f"{campaign_id}/{run}")
    return row, found


# --- runs ---------------------------------------------------------------------------------


def on_start(ctx: Context) -> WorkHandler:
    """The handler of :data:`START` items."""
    async def run(conn: Conn, work: DueWork) -> None:
        await start_due(conn, ctx, work.key)

    return run


def on_send(ctx: Context, failpoints: frozenset[str] = frozenset()) -> WorkHandler:
    """The handler of :data:`SEND` items (``failpoints``: with
    ``campaigns.page_before_commit`` the process SIGKILLs itself once a page
    did everything, the contact gate asked, before it commits: tests)."""
    async def run(conn: Conn, work: DueWork) -> None:
        await send_page(conn, ctx, *parse_send_key(work.key))
        faults.hit(failpoints, "campaigns.page_before_commit")

    return run


async def start_due(conn: Conn, ctx: Context, campaign_id: str) -> None:
    """A campaign's next run starts (:data:`START`): its members are the
    segment's now; its first page is due at once. A campaign no longer
    scheduled (paused, cancelled) starts nothing."""
    c = await campaign_store.get_campaign(conn, campaign_id, lock=True)
    if c is None or c["state"] != State.SCHEDULED:
        return
    now, run = ctx.clock.now(), c["runs"] + 1
    r = await campaign_store.start_run(conn, campaign_id, run, c["segment"],
                                       c["next_run_at"] or now, now)
    await campaign_store.set_campaign(conn, campaign_id, state=State.RUNNING, paused_from=None,
                                      next_run_at=None, now=now, runs=run)
    await scheduler.schedule(conn, SEND, send_key(campaign_id, run), now)
    await _progress(conn, ctx, r, State.RUNNING)


@dataclass
class _Page:
    """One page's members as decided: (customer, verdict, view, action id)."""

    decided: dict[uuid.UUID, tuple[Verdict, View, uuid.UUID]] = field(default_factory=dict)
    tally: Tally = field(default_factory=Tally)


async def send_page(conn: Conn, ctx: Context, campaign_id: str, run: int) -> None:
    """Send the next page of a run (:data:`SEND`; see the module doc)."""
    c = await campaign_store.get_campaign(conn, campaign_id, lock=True)
    if c is None or c["state"] != State.RUNNING or c["runs"] != run:
        return  # paused or cancelled meanwhile: resume schedules it again
    action, rate = Action.from_json(dict(c["action"])), c["members_per_minute"]
    batch = Batch(conn, ctx)
    now = batch.now
    members = await campaign_store.pending_members(conn, campaign_id, run, page_size(rate))
    page = await _decide(batch, c, action, run, members) if members else _Page()
    for cid in members:
        v, view, aid = page.decided[cid]
        _perform(batch, action, c["campaign_id"], run, view, aid, v)
    if members:
        await campaign_store.decide_members(conn, campaign_id, run, [
            (cid, v.outcome.value, v.reason, None if v.outcome is Outcome.SKIPPED else aid)
            for cid, (v, _, aid) in page.decided.items()], now)
        await batch.flush()
    # The run's row last (after the views): a late joiner committed before
    # this lock is pending below; one after it finds the run done.
    r = await campaign_store.get_run(conn, campaign_id, run, lock=True)
    more = await campaign_store.any_pending(conn, campaign_id, run)
    last = r["last_progress_at"]
    report = not more or last is None or now - last >= PROGRESS_EVERY
    suppressed, skipped = page.tally.plus(dict(r["suppressed_by_reason"]),
                                          dict(r["skipped_by_reason"]))
    r = await campaign_store.count_page(
        conn, campaign_id, run, sent=page.tally.sent, suppressed=page.tally.suppressed,
        skipped=page.tally.skipped, suppressed_by_reason=suppressed, skipped_by_reason=skipped,
        page_at=now, progress_at=now if report else None)
    _count(campaign_id, page.tally)
    if more:
        await scheduler.schedule(conn, SEND, send_key(campaign_id, run),
                                 next_page_at(now, len(members), rate))
        if report:
            await _progress(conn, ctx, r, State.RUNNING)
        return
    r = await campaign_store.set_run_state(conn, campaign_id, run, State.DONE, now)
    await _progress(conn, ctx, r, State.DONE)
    every = parse_duration(c["repeat_every"]) if c["repeat_every"] else None
    following = next_run_at(r["scheduled_for"], every, c["repeat_until"], now)
    if following is None:
        await campaign_store.set_campaign(conn, campaign_id, state=State.DONE, paused_from=None,
                                          next_run_at=None, now=now)
        return
    await campaign_store.set_campaign(conn, campaign_id, state=State.SCHEDULED,
                                      paused_from=None, next_run_at=following, now=now)
    await scheduler.schedule(conn, START, campaign_id, following)


async def _decide(batch: Batch, c: Any, action: Action, run: int,
                  members: list[uuid.UUID]) -> _Page:
    """Loyalty's checks on each member of a page, then the contact gate, in
    one call, for those they let through (a follow-up passes it when due)."""
    conn, page = batch.conn, _Page()
    await batch.prefetch(members, [])  # every view locked, in one statement
    still = await campaign_store.still_members(conn, c["segment"], members)
    enrolled = (await campaign_store.enrolments_in(conn, action.terms.list, members)
                if isinstance(action.terms, NewsletterIssue) else {})
    asks: list[tuple[uuid.UUID, View, uuid.UUID]] = []
    for cid in members:
        view = await batch.view(cid, follow_alias=False)
        aid = action_id(c["campaign_id"], run, cid)
        v = verdict(action, view, cid in still, enrolled.get(cid))
        if v is ASK_GATE and action.gated_now:
            asks.append((cid, view, aid))
        page.decided[cid] = (v, view, aid)
    refusals = await contacting.reserve_all(batch, [(view, aid, action.purpose)
                                                    for _, view, aid in asks])
    for (cid, view, aid), refusal in zip(asks, refusals, strict=True):
        if refusal is not None:
            page.decided[cid] = (Verdict(Outcome.SUPPRESSED, refusal), view, aid)
    for v, _, _ in page.decided.values():
        page.tally.add(v)
    return page


def _perform(batch: Batch, action: Action, campaign_id: str, run: int, view: View,
             aid: uuid.UUID, v: Verdict) -> None:
    """What a member's verdict does: the action, or its suppression published."""
    cid, t, trigger = view.customer_id, action.terms, f"campaign:{campaign_id}/{run}"
    if v.outcome is Outcome.SUPPRESSED:
        batch.emit(cid, ActionSuppressed(
            action_id=str(aid), customer_id=str(cid), rule_id="", action_type=action.kind,
            purpose=action.purpose.value, reason=v.reason, trigger_event_id=trigger,
            campaign_id=campaign_id, campaign_run=run))
    elif v.outcome is not Outcome.SENT:
        return
    elif isinstance(t, DiscountTerms):
        _issue_discount(batch, view, aid, t, campaign_id, run)
    elif isinstance(t, FollowUpAction):
        _schedule_follow_up(batch, view, aid, t, campaign_id, run)
    else:
        batch.emit(cid, NewsletterIssueDue(
            action_id=str(aid), customer_id=str(cid), campaign_id=campaign_id,
            campaign_run=run, list=t.list, issue=t.issue, channel=t.channel))


def _issue_discount(batch: Batch, view: View, aid: uuid.UUID, terms: DiscountTerms,
                    campaign_id: str, run: int) -> None:
    """A rule's discount (``actions._issue_discount``), caused by a campaign."""
    now = batch.now
    expires_at = now + timedelta(days=terms.valid_days)
    code = batch.next_code()
    batch.add_discount((aid, code, view.customer_id, _rule_id(campaign_id), terms.kind,
                        terms.percent, terms.amount_minor, terms.currency,
                        terms.min_purchase_minor, terms.purpose, terms.reason, now, expires_at),
                       domain.expiring_notice_at(now, expires_at, batch.ctx.expiry_notice))
    batch.emit(view.customer_id, DiscountIssued(
        discount_id=str(aid), customer_id=str(view.customer_id), code=code, kind=terms.kind,
        percent=terms.percent, amount_minor=terms.amount_minor, currency=terms.currency,
        min_purchase_minor=terms.min_purchase_minor, expires_at=expires_at, rule_id="",
        purpose=terms.purpose, reason=terms.reason, campaign_id=campaign_id,
        campaign_run=run))


def _schedule_follow_up(batch: Batch, view: View, aid: uuid.UUID, terms: FollowUpAction,
                        campaign_id: str, run: int) -> None:
    """A rule's follow-up (``actions._schedule_follow_up``), caused by a
    campaign: out of the customer's quiet hours, put to the gate when due."""
    policy = batch.ctx.policy
    requested = batch.now + terms.delay_td
    zone = time_zone(view.time_zone, policy.default_time_zone)
    due = outside_quiet_hours(requested, zone, policy.quiet_start, policy.quiet_end)
    batch.add_follow_up((aid, view.customer_id, _rule_id(campaign_id), terms.channel,
                         terms.template, terms.reason, terms.purpose.value, terms.list,
                         list(terms.cancel_on), requested, due, batch.now))
    batch.emit(view.customer_id, FollowUpScheduled(
        follow_up_id=str(aid), customer_id=str(view.customer_id), rule_id="", rule_version=0,
        channel=terms.channel, template=terms.template, reason=terms.reason,
        purpose=terms.purpose.value, due_at=due,
        trigger_event_id=f"campaign:{campaign_id}/{run}", campaign_id=campaign_id,
        campaign_run=run))


def _count(campaign_id: str, tally: Tally) -> None:
    """``crm_campaign_members_total``, once the page commits."""
    counts = [(Outcome.SENT.value, "", tally.sent)]
    counts += [(Outcome.SUPPRESSED.value, r, n) for r, n in tally.suppressed_by_reason.items()]
    counts += [(Outcome.SKIPPED.value, r, n) for r, n in tally.skipped_by_reason.items()]
    for outcome, reason, n in counts:
        if n:
            counter = metrics.CAMPAIGN_MEMBERS.labels(store.SCHEMA, campaign_id, outcome, reason)
            uow.on_commit(functools.partial(counter.inc, n))


async def _progress(conn: Conn, ctx: Context, r: Any, state: str) -> None:
    """``loyalty.campaign_progress`` of a run (``r``: its row)."""
    await ctx.events.emit(conn, f"campaign:{r['campaign_id']}", [CampaignProgress(
        campaign_id=r["campaign_id"], run=r["run"], state=state, targeted=r["targeted"],
        sent=r["sent"], suppressed=r["suppressed"], skipped=r["skipped"],
        pending=pending(r), suppressed_by_reason=dict(r["suppressed_by_reason"]),
        skipped_by_reason=dict(r["skipped_by_reason"]), at=ctx.clock.now())],
        time=ctx.clock.now())


def pending(r: Any) -> int:
    """Members of a run not reached (a cancelled run's: those it left)."""
    return int(r["targeted"] - r["sent"] - r["suppressed"] - r["skipped"])


# --- pause, resume, cancel ------------------------------------------------------------------


async def change_state(conn: Conn, ctx: Context, campaign_id: str,
                       command: Command) -> tuple[Any, Any]:
    """Pause, resume or cancel (:func:`campaigns.transition`); returns the
    campaign and its latest run. Each change publishes
    ``loyalty.campaign_progress``: of the run it paused, resumed or
    cancelled, or, for a campaign waiting for its next run, of that run
    (its number, nothing sent yet) with the campaign's new state.

    The campaign's scheduled work is changed before its row is locked (the
    scheduler's lock order: its work row, then the state its handler
    locks), as the row read unlocked says: a pause or a cancel removes the
    start and the page (a page in flight finishes first, and a page left
    due finds the campaign paused and stops); a resume of a paused campaign
    makes its page due now (or its start due again). Should the locked row
    say otherwise (a concurrent call changed it), the work left is
    harmless (each item checks the state it runs in), but work missing is
    not: a resume that finds a campaign paused meanwhile, after it read it
    otherwise and scheduled nothing, is refused as ``ABORTED`` (call again)
    rather than leave a running campaign nothing scheduled."""
    seen = await campaign_store.get_campaign(conn, campaign_id)
    if seen is None:
        raise NotFound("campaign", campaign_id)
    now, runs = ctx.clock.now(), seen["runs"]
    if command != "resume":
        await scheduler.cancel(conn, START, campaign_id)
        if runs:
            await scheduler.cancel(conn, SEND, send_key(campaign_id, runs))
    elif seen["state"] == State.PAUSED and seen["paused_from"] == State.RUNNING:
        await scheduler.schedule(conn, SEND, send_key(campaign_id, runs), now)
    elif seen["state"] == State.PAUSED:
        await scheduler.schedule(conn, START, campaign_id, seen["next_run_at"] or now)
    c = await campaign_store.get_campaign(conn, campaign_id, lock=True)
    t = transition(State(c["state"]), State(c["paused_from"]) if c["paused_from"] else None,
                   command, campaign_id)
    if command == "resume" and t.changed and (
            seen["state"] != c["state"] or seen["paused_from"] != c["paused_from"]
            or seen["runs"] != c["runs"]):
        raise Conflict(f"campaign {campaign_id!r} was paused while it was being resumed; "
                       "resume it again")
    runs = c["runs"]
    r = await campaign_store.get_run(conn, campaign_id, runs) if runs else None
    if not t.changed:
        return c, r
    active = r is not None and r["state"] in (State.RUNNING, State.PAUSED)
    if active:
        r = await campaign_store.set_run_state(conn, campaign_id, runs, t.state, now)
    c = await campaign_store.set_campaign(
        conn, campaign_id, state=t.state, paused_from=t.paused_from.value if t.paused_from
        else None, next_run_at=None if t.state is State.CANCELLED else c["next_run_at"],
        now=now)
    if active:
        await _progress(conn, ctx, r, t.state)
    else:
        await _progress(conn, ctx, _waiting(campaign_id, runs + 1), t.state)
    return c, r


def _waiting(campaign_id: str, run: int) -> dict[str, Any]:
    """A run not started yet, as :func:`_progress` reads a run's row."""
    return {"campaign_id": campaign_id, "run": run, "targeted": 0, "sent": 0, "suppressed": 0,
            "skipped": 0, "suppressed_by_reason": {}, "skipped_by_reason": {}}


# --- dry run ----------------------------------------------------------------------------------


@dataclass
class DryRun:
    targeted: int = 0
    tally: Tally = field(default_factory=Tally)
    sample: list[tuple[uuid.UUID, Verdict]] = field(default_factory=list)


async def dry_run(conn: Conn, segment: str, action: Action, sample_size: int) -> DryRun:
    """What a run of ``action`` to ``segment`` would do now, by loyalty's
    checks (the contact gate is not asked): the segment's members a page
    of :data:`DRY_RUN_PAGE` at a time. Reads only."""
    out, after = DryRun(), None
    while True:
        members = await campaign_store.segment_page(conn, segment, after, DRY_RUN_PAGE)
        if not members:
            return out
        views = await campaign_store.views_of(conn, members)
        enrolled = (await campaign_store.enrolments_in(conn, action.terms.list, members)
                    if isinstance(action.terms, NewsletterIssue) else {})
        for cid in members:
            v = verdict(action, views.get(cid) or View(customer_id=cid), True, enrolled.get(cid))
            out.tally.add(v)
            if len(out.sample) < sample_size:
                out.sample.append((cid, v))
        out.targeted += len(members)
        after = members[-1]
