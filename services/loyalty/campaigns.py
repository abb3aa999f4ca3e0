"""Campaigns as pure values and functions, no I/O: what a campaign is, how a
request becomes one, the states it moves through, how fast it sends and
when it runs again.

A **campaign** sends one action (a newsletter issue, a discount code, a
follow-up) to every member of a customers-service segment, once per member
and run. :func:`spec_of` validates a ``CreateCampaignRequest`` into a
:class:`CampaignSpec`, naming the field of every problem (the action's
fields by the rules' own models, :class:`rules.DiscountTerms` and
:class:`rules.FollowUpAction`). The **states** (:func:`transition`):
``scheduled`` (waiting for its next run) -> ``running`` -> ``done`` or back
to ``scheduled`` when it recurs; ``paused`` from scheduled or running
(resume returns to what it was); ``cancelled`` from any state not final.
**Throttle** (:func:`page_size`, :func:`next_page_at`): a run sends pages
of at most :data:`MAX_PAGE` members; with ``members_per_minute`` a page
holds about a second's worth and the next is due when the rate allows.
**Recurrence** (:func:`next_run_at`): a new run ``repeat_every`` after the
previous run's scheduled start, until ``repeat_until``. :func:`verdict`
is what loyalty's own checks make of one member (the contact gate decides
the rest when the run sends; a dry run stops there).

The use cases are :mod:`campaign_runs`, the SQL :mod:`campaign_store`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from crm.loyalty.v1 import loyalty_pb2 as pb
from crm_contracts.vocabulary import ACTION_CHANNELS
from crm_runtime.convert import request_time
from crm_runtime.errors import FailedPrecondition, InvalidArgument
from services.loyalty.domain import Purpose, View, may_enrol_again, trust_decision
from services.loyalty.rules import DiscountTerms, FollowUpAction, parse_duration

SLUG = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
#: Most members in one page (one contact-gate call: its contract's limit).
MAX_PAGE = 500
MAX_RATE = 1_000_000
#: The shortest time between two runs.
MIN_REPEAT = timedelta(hours=1)
#: How far ahead a first run may be (as a follow-up's longest delay).
MAX_AHEAD = timedelta(days=730)
#: How far in the past a start may be stated (a clock a little behind).
PAST_TOLERANCE = timedelta(minutes=1)
#: Progress events while a run sends: at most one this often.
PROGRESS_EVERY = timedelta(seconds=30)
DIGEST_VERSION = 1


class State(StrEnum):
    SCHEDULED = "scheduled"
    RUNNING = "running"
    PAUSED = "paused"
    DONE = "done"
    CANCELLED = "cancelled"


FINAL = (State.DONE, State.CANCELLED)


class Outcome(StrEnum):
    SENT = "sent"
    SUPPRESSED = "suppressed"
    SKIPPED = "skipped"


# --- the action ---------------------------------------------------------------------


class NewsletterIssue(BaseModel):
    """One issue of a newsletter, for marketing to send
    (``loyalty.newsletter_issue_due``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    list: str = Field(pattern=SLUG.pattern)
    issue: str = Field(pattern=SLUG.pattern)
    channel: str = "email"

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str) -> str:
        if value not in ACTION_CHANNELS:
            raise ValueError(f"{value!r} is not one of {list(ACTION_CHANNELS)}")
        return value


Terms = DiscountTerms | FollowUpAction | NewsletterIssue
#: The kind of each action (the proto's oneof field, the stored ``kind``).
KINDS: dict[type[BaseModel], str] = {DiscountTerms: "discount", FollowUpAction: "follow_up",
                                     NewsletterIssue: "newsletter_issue"}


@dataclass(frozen=True)
class Action:
    """What a campaign sends each member."""

    terms: Terms

    @property
    def kind(self) -> str:
        return KINDS[type(self.terms)]

    @property
    def purpose(self) -> Purpose:
        if isinstance(self.terms, DiscountTerms):
            return Purpose(self.terms.purpose)
        if isinstance(self.terms, FollowUpAction):
            return self.terms.purpose
        return Purpose.NEWSLETTER

    @property
    def gated_now(self) -> bool:
        """Whether the contact gate is asked when the member's turn comes (a
        follow-up is put to it when it is due, as a rule's)."""
        return not isinstance(self.terms, FollowUpAction)

    def to_json(self) -> dict[str, Any]:
        fields = self.terms.model_dump(mode="json", exclude={"type"})
        return {"kind": self.kind, **fields}

    @staticmethod
    def from_json(data: dict[str, Any]) -> Action:
        fields = {k: v for k, v in data.items() if k != "kind"}
        kind = data["kind"]
        if kind == "discount":
            return Action(DiscountTerms.model_validate(fields))
        if kind == "follow_up":
            return Action(FollowUpAction.model_validate({**fields, "type": "follow_up"}))
        return Action(NewsletterIssue.model_validate(fields))

    def to_pb(self) -> pb.CampaignAction:
        t = self.terms
        if isinstance(t, DiscountTerms):
            return pb.CampaignAction(discount=pb.CampaignDiscount(
                percent=t.percent, amount_minor=t.amount_minor, currency=t.currency,
                min_purchase_minor=t.min_purchase_minor, valid_days=t.valid_days,
                purpose=t.purpose, reason=t.reason))
        if isinstance(t, FollowUpAction):
            return pb.CampaignAction(follow_up=pb.CampaignFollowUp(
                channel=t.channel, template=t.template, reason=t.reason,
                purpose=t.purpose.value, delay=t.delay))
        return pb.CampaignAction(newsletter_issue=pb.NewsletterIssueAction(
            list=t.list, issue=t.issue, channel=t.channel))


def _validated(model: type[BaseModel], data: dict[str, Any], where: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        # The one model-level check (a discount's kind) is about its percent.
        field = f"{where}.{loc}" if loc else f"{where}.percent"
        raise InvalidArgument(field, err["msg"].removeprefix("Value error, ")) from None


def action_of(message: pb.CampaignAction, where: str = "action") -> Action:
    """The action a request states; INVALID_ARGUMENT naming the field
    (``action.discount.percent``) otherwise."""
    kind = message.WhichOneof("kind")
    if kind == "discount":
        d = message.discount
        return Action(_validated(DiscountTerms, {
            "percent": d.percent if d.HasField("percent") else None,
            "amount_minor": d.amount_minor if d.HasField("amount_minor") else None,
            "currency": d.currency or "EUR", "min_purchase_minor": d.min_purchase_minor,
            "valid_days": d.valid_days or 30, "purpose": d.purpose or "promotional",
            "reason": d.reason}, f"{where}.discount"))
    if kind == "follow_up":
        f = message.follow_up
        return Action(_validated(FollowUpAction, {
            "type": "follow_up", "delay": f.delay or "0m", "channel": f.channel,
            "template": f.template, "reason": f.reason, "purpose": f.purpose or "service"},
            f"{where}.follow_up"))
    if kind == "newsletter_issue":
        n = message.newsletter_issue
        return Action(_validated(NewsletterIssue, {
            "list": n.list, "issue": n.issue, "channel": n.channel or "email"},
            f"{where}.newsletter_issue"))
    raise InvalidArgument(where, "set exactly one of newsletter_issue, discount, follow_up")


# --- the campaign ---------------------------------------------------------------------


@dataclass(frozen=True)
class CampaignSpec:
    """A validated campaign, as created (or a draft for a dry run)."""

    campaign_id: str
    name: str
    description: str
    segment: str
    action: Action
    start_at: datetime
    members_per_minute: int | None
    repeat_every: str
    repeat_until: datetime | None
    include_late_joiners: bool
    created_by: str
    #: The request's values as stated (an unset start is None, not now):
    #: what an idempotent create compares.
    stated: dict[str, Any]

    @property
    def every(self) -> timedelta | None:
        return parse_duration(self.repeat_every) if self.repeat_every else None

    @property
    def digest(self) -> bytes:
        text = json.dumps([DIGEST_VERSION, self.stated], sort_keys=True, separators=(",", ":"))
        return hashlib.blake2b(text.encode(), digest_size=16).digest()


def differing(stored: dict[str, Any], stated: dict[str, Any]) -> list[str]:
    """The fields a create request states otherwise than the stored one's."""
    return [k for k in stated if stored.get(k) != stated[k]] or ["request"]


def _required(value: str, field: str) -> str:
    value = value.strip()
    if not value:
        raise InvalidArgument(field, "required")
    return value


def spec_of(request: pb.CreateCampaignRequest, now: datetime, *,
            where: str = "", draft: bool = False, new: bool = True) -> CampaignSpec:
    """Validate a create request (``where``: the prefix of its fields in the
    caller's message, ``draft.``). A draft (a dry run's) may have no id.
    The segment's existence is the caller's to check (the customers service
    defines segments). ``new=False`` leaves out the checks against ``now``
    (a start in the past, too far ahead): a retry of a create that was
    stored is compared with it, whenever it comes."""
    campaign_id = request.campaign_id.strip()
    if (campaign_id or not draft) and not SLUG.match(campaign_id):
        raise InvalidArgument(f"{where}campaign_id", f"{campaign_id[:70]!r} is not an id like "
                              "'spring-sale' ([a-z][a-z0-9_-]{0,62})")
    name = _required(request.name, f"{where}name")
    segment = _required(request.segment, f"{where}segment")
    if not request.HasField("action"):
        raise InvalidArgument(f"{where}action",
                              "required: one of newsletter_issue, discount, follow_up")
    action = action_of(request.action, f"{where}action")
    start_at = now
    if request.HasField("start_at"):
        start_at = request_time(request.start_at, f"{where}start_at")
        if new and start_at < now - PAST_TOLERANCE:
            raise InvalidArgument(f"{where}start_at", f"{start_at.isoformat()} is in the past "
                                  f"(the service's time is {now.isoformat()})")
        if new and start_at > now + MAX_AHEAD:
            raise InvalidArgument(f"{where}start_at", f"more than {MAX_AHEAD.days} days ahead")
    rate = None
    if request.HasField("members_per_minute"):
        rate = request.members_per_minute
        if not 1 <= rate <= MAX_RATE:
            raise InvalidArgument(f"{where}members_per_minute",
                                  f"{rate} is not 1 to {MAX_RATE:,} (unset: no limit)")
    repeat_every = request.repeat_every.strip()
    if repeat_every:
        try:
            every = parse_duration(repeat_every)
        except ValueError as exc:
            raise InvalidArgument(f"{where}repeat_every", str(exc)) from None
        if every < MIN_REPEAT:
            raise InvalidArgument(f"{where}repeat_every", f"{repeat_every!r} is shorter than "
                                                          "the shortest, 1h")
    until = None
    if request.HasField("repeat_until"):
        until = request_time(request.repeat_until, f"{where}repeat_until")
        if not repeat_every:
            raise InvalidArgument(f"{where}repeat_until", "only with repeat_every")
        if until <= start_at:
            raise InvalidArgument(f"{where}repeat_until", f"{until.isoformat()} is not after "
                                  f"the start ({start_at.isoformat()})")
    description = request.description.strip()
    stated = {"campaign_id": campaign_id, "name": name, "description": description,
              "segment": segment,
              "action": action.to_json(),
              "start_at": start_at.isoformat() if request.HasField("start_at") else None,
              "members_per_minute": rate, "repeat_every": repeat_every,
              "repeat_until": until.isoformat() if until is not None else None,
              "include_late_joiners": request.include_late_joiners}
    return CampaignSpec(campaign_id, name, description, segment, action, start_at,
                        rate, repeat_every, until, request.include_late_joiners,
                        request.created_by.strip() or "api", stated)


# --- states ---------------------------------------------------------------------------

Command = Literal["pause", "resume", "cancel"]


@dataclass(frozen=True)
class Transition:
    """What a command does to a campaign: its new state and what a paused
    one returns to; ``changed`` False: nothing to do (a retry)."""

    state: State
    paused_from: State | None
    changed: bool = True


def transition(state: State, paused_from: State | None, command: Command,
               campaign_id: str) -> Transition:
    """Pause (scheduled or running), resume (paused: back to what it was),
    cancel (anything not final). Done and cancelled are final: every command
    on them is FAILED_PRECONDITION, but cancelling a cancelled campaign,
    pausing a paused one or resuming one that is not paused returns it
    unchanged, so a retried call is safe."""
    same = Transition(state, paused_from, changed=False)
    if command == "cancel" and state is State.CANCELLED:
        return same
    if state in FINAL:
        raise FailedPrecondition(f"campaign {campaign_id!r} is {state.value}: it cannot be "
                                 f"{_PAST[command]} any more")
    if command == "cancel":
        return Transition(State.CANCELLED, None)
    if command == "pause":
        return same if state is State.PAUSED else Transition(State.PAUSED, state)
    if state is not State.PAUSED:
        return same
    return Transition(paused_from or State.SCHEDULED, None)


_PAST = {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}


# --- throttle and recurrence -------------------------------------------------------------


def page_size(members_per_minute: int | None) -> int:
    """Members one page sends: a second's worth (at least one) at most
    :data:`MAX_PAGE`."""
    if members_per_minute is None:
        return MAX_PAGE
    return min(MAX_PAGE, max(1, members_per_minute // 60))


def next_page_at(page_start: datetime, page: int, members_per_minute: int | None) -> datetime:
    """When the page after one of ``page`` members started at ``page_start``
    is due: at once without a limit, else when the rate allows."""
    if members_per_minute is None:
        return page_start
    return page_start + timedelta(seconds=page * 60 / members_per_minute)


def next_run_at(scheduled_for: datetime, every: timedelta | None, until: datetime | None,
                now: datetime) -> datetime | None:
    """The next run's start after a run scheduled for ``scheduled_for``:
    the first ``scheduled_for + k * every`` (k >= 1) after ``now`` (a run
    that took longer than ``every`` skips the starts it missed), None when
    the campaign does not recur or that is after ``until``."""
    if every is None:
        return None
    k = max(1, (now - scheduled_for) // every + 1)
    try:
        slot = scheduled_for + k * every
    except OverflowError:
        return None
    if slot <= now:
        slot += every
    return None if until is not None and slot > until else slot


# --- one member -------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str = ""


#: A member the contact gate decides on (loyalty's checks let it through).
ASK_GATE = Verdict(Outcome.SENT, "")


def verdict(action: Action, view: View, member: bool,
            enrolment: tuple[str, datetime | None] | None = None) -> Verdict:
    """What loyalty's checks make of one member: skipped when erased, merged
    into another customer or no longer in the segment; suppressed by the
    trust rules (do-not-contact, the action's consent) or, for a newsletter
    issue, when they left its list (``enrolment``: its status and when they
    unsubscribed); else :data:`ASK_GATE` (sent, when the gate allows)."""
    if view.erased_at is not None:
        return Verdict(Outcome.SKIPPED, "erased")
    if view.merged_into is not None:
        return Verdict(Outcome.SKIPPED, "merged")
    if not member:
        return Verdict(Outcome.SKIPPED, "left_segment")
    refusal = trust_decision(action.purpose, view.contact_state())
    if refusal is not None:
        return Verdict(Outcome.SUPPRESSED, refusal.value)
    if (isinstance(action.terms, NewsletterIssue) and enrolment is not None
            and enrolment[0] == "unsubscribed"
            and not may_enrol_again(enrolment[1], view.newsletter_consent_at)):
        return Verdict(Outcome.SUPPRESSED, "unsubscribed")
    return ASK_GATE


@dataclass
class Tally:
    """Counts by outcome and reason (a page's, a run's, a dry run's)."""

    sent: int = 0
    suppressed: int = 0
    skipped: int = 0
    suppressed_by_reason: dict[str, int] = field(default_factory=dict)
    skipped_by_reason: dict[str, int] = field(default_factory=dict)

    def add(self, v: Verdict, n: int = 1) -> None:
        if v.outcome is Outcome.SENT:
            self.sent += n
            return
        if v.outcome is Outcome.SUPPRESSED:
            self.suppressed += n
            by = self.suppressed_by_reason
        else:
            self.skipped += n
            by = self.skipped_by_reason
        by[v.reason] = by.get(v.reason, 0) + n

    def plus(self, suppressed: dict[str, int], skipped: dict[str, int]
             ) -> tuple[dict[str, int], dict[str, int]]:
        """Stored counts by reason (suppressed, skipped) plus this tally's."""
        return _sum(suppressed, self.suppressed_by_reason), _sum(skipped, self.skipped_by_reason)


def _sum(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in sorted({*a, *b})}
