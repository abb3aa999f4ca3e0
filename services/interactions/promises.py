"""What a case promises, as pure rules.

* A :class:`Policy`, for a request kind and channel (and, as an entitlement,
  for the customers of one segment), states the earliest answer the customer
  is told and two milestones, first response and resolution, each with its
  maximum and its warning lead. It counts business time on the unit's
  calendar (:mod:`business_time`) or calendar time (24x7).
* :func:`choose_policy` picks a case's policy and says why.
* A :class:`Milestone` has its own due time and state: pending, warning (its
  warning was raised), hit, missed, paused. Pausing keeps the time it has
  left; resuming, or counting the rest on another calendar (a transfer, a new
  calendar version), makes it due after that time from now.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from crm_runtime.errors import InvalidArgument
from services.interactions import business_time
from services.interactions.business_time import ALWAYS, Calendar

BUSINESS, CALENDAR = "business", "calendar"
CLOCKS = (BUSINESS, CALENDAR)
FIRST_RESPONSE, RESOLUTION = "first_response", "resolution"
MILESTONES = (FIRST_RESPONSE, RESOLUTION)
PENDING, WARNING, HIT, MISSED, PAUSED = "pending", "warning", "hit", "missed", "paused"
#: States of a milestone whose clock runs (it may still be warned or missed).
RUNNING = (PENDING, WARNING)

_SEGMENT = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")


@dataclass(frozen=True)
class Policy:
    kind: str
    channel: str  # or "*"
    min_time: timedelta
    max_time: timedelta  # resolution
    warn_before: timedelta  # resolution
    first_response: timedelta = timedelta(0)  # 0: no first-response milestone
    first_response_warn_before: timedelta = timedelta(0)
    clock: str = BUSINESS
    segment: str = ""  # an entitlement: the customers of this segment

    def __post_init__(self) -> None:
        if self.min_time < timedelta(0):
            raise InvalidArgument("min_seconds", "must not be negative")
        if self.max_time <= timedelta(0) or self.max_time < self.min_time:
            raise InvalidArgument("max_seconds", "must be positive and at least min_seconds")
        if not timedelta(0) <= self.warn_before < self.max_time:
            raise InvalidArgument("warn_before_seconds",
                                  "must be at least 0 and less than max_seconds")
        if not timedelta(0) <= self.first_response <= self.max_time:
            raise InvalidArgument("first_response_seconds",
                                  "must be 0 (none) or positive, and at most max_seconds")
        if self.first_response_warn_before < timedelta(0) or (
                self.first_response and self.first_response_warn_before >= self.first_response):
            raise InvalidArgument("first_response_warn_before_seconds",
                                  "must be at least 0 and less than first_response_seconds")
        if not self.first_response and self.first_response_warn_before:
            raise InvalidArgument("first_response_warn_before_seconds",
                                  "needs a first_response_seconds")
        if self.clock not in CLOCKS:
            raise InvalidArgument("clock", f"{self.clock!r} is not one of {list(CLOCKS)}")
        if self.segment and not _SEGMENT.match(self.segment):
            raise InvalidArgument("segment", "a segment name: letters, digits, _ . : -")

    def milestones(self) -> list[tuple[str, timedelta, timedelta]]:
        """(name, maximum, warning lead) of each milestone it promises."""
        found = [(RESOLUTION, self.max_time, self.warn_before)]
        if self.first_response:
            found.insert(0, (FIRST_RESPONSE, self.first_response,
                             self.first_response_warn_before))
        return found

    def longest(self) -> timedelta:
        return self.max_time


H = timedelta(hours=1)
M = timedelta(minutes=1)

#: Shipped defaults; operators override them with SetPromisePolicy. They count
#: business time, which on a unit without a calendar is calendar time.
DEFAULT_POLICIES: tuple[Policy, ...] = (
    Policy("complaint", "*", 1 * H, 48 * H, 8 * H, 4 * H, 1 * H),
    Policy("complaint", "phone", 1 * H, 48 * H, 8 * H, 4 * H, 1 * H),
    Policy("complaint", "in_person", 1 * H, 24 * H, 4 * H, 2 * H, 30 * M),
    Policy("support", "*", 2 * H, 72 * H, 12 * H, 8 * H, 2 * H),
    Policy("callback_request", "*", 5 * M, 2 * H, 30 * M),
    Policy("inquiry", "*", 10 * M, 24 * H, 4 * H, 4 * H, 1 * H),
    Policy("doubt", "*", 10 * M, 24 * H, 4 * H, 4 * H, 1 * H),
)


@dataclass(frozen=True)
class Choice:
    """The policy a case gets, and why (kept on the case)."""

    policy: Policy
    reason: str


def choose_policy(policies: Iterable[Policy], kind: str, channel: str,
                  segments: Iterable[str] = ()) -> Choice:
    """The policy of a request: an entitlement of a segment the customer is
    in wins over the general policy; of several segments' policies, the one
    promising the shortest resolution (then first response); within a
    segment, and for the general policy, the exact channel wins over ``*``."""
    member = set(segments)
    best: dict[str, Policy] = {}  # per segment ('' general): the most specific
    for p in policies:
        if p.kind != kind or p.channel not in (channel, "*"):
            continue
        if p.segment and p.segment not in member:
            continue
        held = best.get(p.segment)
        if held is None or (held.channel == "*" and p.channel == channel):
            best[p.segment] = p
    entitled = [p for s, p in best.items() if s]
    if entitled:
        p = min(entitled, key=lambda e: (e.max_time, e.first_response or e.max_time, e.segment))
        return Choice(p, f"entitlement of segment {p.segment!r}: {kind}/{p.channel}")
    if "" not in best:
        raise InvalidArgument("kind", f"no promise policy for kind {kind!r}; set one first")
    p = best[""]
    return Choice(p, f"policy {kind}/{p.channel}")


def counting_calendar(clock: str, unit_calendar: Calendar) -> Calendar:
    """The calendar a promise counts on: the unit's for business time, 24x7
    for calendar time."""
    return unit_calendar if clock == BUSINESS else ALWAYS


def add(cal: Calendar, start: datetime, amount: timedelta) -> datetime:
    """``amount`` of the calendar's open time after ``start``; beyond the
    horizon (a calendar checked when defined never gets there) the horizon,
    so that no clock arithmetic ever fails the scheduler."""
    try:
        return business_time.add(cal, start, max(amount, timedelta(0)))
    except business_time.Unreachable:
        return start.astimezone(UTC) + business_time.HORIZON


def earliest(policy: Policy, cal: Calendar, opened_at: datetime) -> datetime:
    """What the customer is told as the earliest answer."""
    return add(cal, opened_at, policy.min_time)


# --- milestones -------------------------------------------------------------

@dataclass(frozen=True)
class Milestone:
    name: str
    limit: timedelta
    warn_before: timedelta
    state: str = PENDING
    due_at: datetime | None = None
    warn_at: datetime | None = None
    warned_at: datetime | None = None
    remaining: timedelta | None = None  # while paused
    met_at: datetime | None = None
    took: timedelta | None = None  # once met
    missed_at: datetime | None = None

    @property
    def running(self) -> bool:
        return self.state in RUNNING


def _due(m: Milestone, cal: Calendar, now: datetime, left: timedelta) -> Milestone:
    """``m`` running again from ``now`` with ``left`` to go: due then, warned
    ``warn_before`` ahead (at once when less is left, unless warned before)."""
    due = add(cal, now, left)
    if m.warned_at is not None:
        return replace(m, state=WARNING, due_at=due, warn_at=None, remaining=None)
    warn = add(cal, now, left - m.warn_before) if left > m.warn_before else now
    return replace(m, state=PENDING, due_at=due, warn_at=warn, remaining=None)


def start(name: str, limit: timedelta, warn_before: timedelta, cal: Calendar,
          at: datetime) -> Milestone:
    """A milestone promised at ``at`` (a case opened outside hours starts
    counting at the next opening)."""
    return _due(Milestone(name, limit, warn_before), cal, at, limit)


def open_milestones(policy: Policy, cal: Calendar, at: datetime) -> list[Milestone]:
    return [start(name, limit, warn, cal, at) for name, limit, warn in policy.milestones()]


def remaining(m: Milestone, cal: Calendar, now: datetime) -> timedelta:
    """The time ``m`` has left at ``now`` on ``cal`` (negative once past due)."""
    if m.remaining is not None:
        return m.remaining
    assert m.due_at is not None
    if now <= m.due_at:
        return business_time.elapsed(cal, now, m.due_at)
    return -business_time.elapsed(cal, m.due_at, now)


def pause(m: Milestone, cal: Calendar, now: datetime) -> Milestone:
    """A running milestone stops with the time it has left; a milestone
    already past due is not paused (the scheduler misses it)."""
    if not m.running:
        return m
    left = remaining(m, cal, now)
    if left <= timedelta(0):
        return m
    return replace(m, state=PAUSED, remaining=left, due_at=None, warn_at=None)


def resume(m: Milestone, cal: Calendar, now: datetime) -> Milestone:
    """A paused milestone runs again: due after the time it had left."""
    if m.state != PAUSED or m.remaining is None:
        return m
    return _due(m, cal, now, m.remaining)


def rebase(m: Milestone, old: Calendar, new: Calendar, now: datetime) -> Milestone:
    """The rest of a running milestone counted on ``new`` from ``now`` (the
    time elapsed on ``old`` is kept); a paused one keeps what it had left,
    and one past due stays due when it was."""
    if not m.running:
        return m
    left = remaining(m, old, now)
    if left <= timedelta(0):
        return m
    return _due(m, new, now, left)


def meet(m: Milestone, cal: Calendar, now: datetime) -> Milestone:
    """Met at ``now``: hit when in time; a missed one stays missed, with the
    time it took."""
    if m.met_at is not None:
        return m
    took = m.limit - remaining(m, cal, now)
    if m.state == MISSED:
        return replace(m, met_at=now, took=took)
    state = HIT if m.state == PAUSED or (m.due_at is not None and now <= m.due_at) else MISSED
    return replace(m, state=state, met_at=now, took=took, remaining=None,
                   missed_at=now if state == MISSED else None)


def miss(m: Milestone, now: datetime) -> Milestone:
    return replace(m, state=MISSED, missed_at=now)


def warn(m: Milestone, now: datetime) -> Milestone:
    return replace(m, state=WARNING, warned_at=now)


def due_to_warn(m: Milestone, now: datetime) -> bool:
    """Whether the scheduled warning of ``m`` is to be raised at ``now``
    (a stale one, moved or overtaken by events, is not)."""
    return m.state == PENDING and m.warn_at is not None and m.warn_at <= now


def due_to_miss(m: Milestone, now: datetime) -> bool:
    """Whether the scheduled breach of ``m`` is to be recorded at ``now``."""
    return m.running and m.due_at is not None and m.due_at <= now


def reopen(m: Milestone, cal: Calendar, now: datetime) -> Milestone:
    """A resolution met in time runs again towards the same due time when
    the case is reopened (reopening buys no time); missed stays missed. One
    met while paused runs again from ``now`` with the time it had left."""
    if m.state != HIT:
        return m
    if m.due_at is None:
        assert m.took is not None
        return _due(replace(m, met_at=None, took=None), cal, now, m.limit - m.took)
    return replace(m, state=WARNING if m.warned_at is not None else PENDING, met_at=None,
                   took=None)
