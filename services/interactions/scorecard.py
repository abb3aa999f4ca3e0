"""The service-cycle scorecard, as pure rules: what customers and mystery
shoppers scored each requirement of a cycle, the contacts behind each
moment of truth, and which requirement to improve first.

* :class:`Tallies` are what a window of data adds up to, and they merge:
  the tallies of two parts of a window, :func:`merge`\\ d, are the tallies
  of the whole window (sums are exact fractions, so the order of the parts
  changes nothing).

  - per requirement id: the customers' answers (survey answers to the
    requirement's question, of any version of the cycle: a requirement's id
    is stable across versions) and the evaluators' scores (criteria of
    mystery-shopping evaluations), each as a sum of 0-1 scores
    (:func:`matrix.normalise`) and a count;
  - per touchpoint: contacts, negative contacts (outcome ``negative``) and
    complaints (contacts of kind ``complaint``, and complaint cases opened
    at the touchpoint without a contact).

* :func:`build` turns tallies into a :class:`Scorecard` of one cycle
  version: scores 0-100, the gap (customers' score minus evaluators'), the
  priority, the action plans and how many are overdue, and the touchpoints
  contacts named that no active cycle knows.

Priority (:data:`PRIORITY_FORMULA`)::

    priority = moment.weight x requirement.weight x shortfall x (1 + log10(1 + reach))

where ``shortfall`` = 1 - the mean of the customers' and the evaluators'
0-1 scores that exist (0 when neither exists: nothing measured, nothing to
rank) and ``reach`` = the customers' answers to the requirement + the
negative contacts + the complaints at its moment. A moment's priority is
its highest requirement's (0 without requirements). Rounded to 2 decimals.
A worse score, more weight or more reach each give a higher priority.

A moment's customers' (evaluators') score is the mean of its requirements'
scores weighted by their weights, over the requirements that have one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from fractions import Fraction
from typing import TypeVar

from services.interactions import matrix
from services.interactions.matrix import Cycle, Moment, Requirement

PRIORITY_FORMULA = (
    "priority = moment.weight x requirement.weight x shortfall x (1 + log10(1 + reach)); "
    "shortfall = 1 - mean of the customers' and the evaluators' scores (0-1) that exist "
    "(0 when neither does); reach = customers' answers to the requirement + negative "
    "contacts + complaints at the moment; a moment's priority is its highest requirement's; "
    "rounded to 2 decimals")
#: States of a plan still to carry out (it can be overdue).
OPEN_STATES = ("planned", "in_progress")
PLAN_STATES = ("planned", "in_progress", "done", "dropped")
#: The most unmapped touchpoints a scorecard lists.
MAX_UNMAPPED = 50


@dataclass(frozen=True)
class Mean:
    """A sum of 0-1 scores and how many there are."""

    total: Fraction = Fraction(0)
    count: int = 0

    def __add__(self, other: Mean) -> Mean:
        return Mean(self.total + other.total, self.count + other.count)

    def value(self) -> Fraction | None:
        return self.total / self.count if self.count else None


@dataclass(frozen=True)
class Contacts:
    """What happened at a touchpoint: contacts, negative ones, complaints."""

    contacts: int = 0
    negative: int = 0
    complaints: int = 0

    def __add__(self, other: Contacts) -> Contacts:
        return Contacts(self.contacts + other.contacts, self.negative + other.negative,
                        self.complaints + other.complaints)


@dataclass(frozen=True)
class Tallies:
    customers: Mapping[str, Mean] = field(default_factory=dict)   # by requirement id
    evaluators: Mapping[str, Mean] = field(default_factory=dict)  # by requirement id
    contacts: Mapping[str, Contacts] = field(default_factory=dict)  # by touchpoint


def means(rows: Iterable[tuple[str, str, int, int]]) -> dict[str, Mean]:
    """Scores by requirement id from rows of (requirement id, scale, sum of
    the scores on that scale, how many): a row of one score has count 1."""
    out: dict[str, Mean] = {}
    for requirement_id, scale, total, count in rows:
        low, high = matrix.RANGES[scale]
        add = Mean(Fraction(total - low * count, high - low), count)
        out[requirement_id] = out.get(requirement_id, Mean()) + add
    return out


def contact_counts(rows: Iterable[tuple[str, int, int, int]]) -> dict[str, Contacts]:
    """Counts by touchpoint from rows of (touchpoint, contacts, negative,
    complaints)."""
    out: dict[str, Contacts] = {}
    for touchpoint, contacts, negative, complaints in rows:
        out[touchpoint] = out.get(touchpoint, Contacts()) + Contacts(contacts, negative,
                                                                      complaints)
    return out


_V = TypeVar("_V", Mean, Contacts)


def _add(parts: Iterable[Mapping[str, _V]], zero: _V) -> dict[str, _V]:
    out: dict[str, _V] = {}
    for part in parts:
        for key, value in part.items():
            out[key] = out.get(key, zero) + value
    return out


def merge(tallies: Iterable[Tallies]) -> Tallies:
    """The tallies of the union of the windows (disjoint) the parts tally."""
    parts = list(tallies)
    return Tallies(customers=_add((t.customers for t in parts), Mean()),
                   evaluators=_add((t.evaluators for t in parts), Mean()),
                   contacts=_add((t.contacts for t in parts), Contacts()))


# --- action plans -------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """An action plan as stored."""

    action_plan_id: str
    cycle: str
    touchpoint: str
    requirement_id: str  # '' : the moment as a whole
    description: str
    owner: str
    due_on: date | None
    state: str
    source: str
    evaluation_id: str
    created_at: datetime
    updated_at: datetime

    def overdue(self, today: date) -> bool:
        """Due before ``today`` and neither done nor dropped."""
        return self.state in OPEN_STATES and self.due_on is not None and self.due_on < today


# --- the scorecard ----------------------------------------------------------------

@dataclass(frozen=True)
class RequirementScore:
    requirement: Requirement
    customer_score: float | None
    customer_answers: int
    evaluator_score: float | None
    evaluator_scores: int
    gap: float | None
    priority: float
    plans: tuple[Plan, ...]
    overdue_plans: int


@dataclass(frozen=True)
class MomentScore:
    moment: Moment
    customer_score: float | None
    customer_answers: int
    evaluator_score: float | None
    evaluator_scores: int
    gap: float | None
    contacts: Contacts
    priority: float
    requirements: tuple[RequirementScore, ...]
    plans: tuple[Plan, ...]  # of the moment as a whole
    overdue_plans: int  # of the moment and its requirements


@dataclass(frozen=True)
class Scorecard:
    cycle: str
    version: int
    moments: tuple[MomentScore, ...]
    unmapped: tuple[tuple[str, int], ...]  # (touchpoint, contacts), most first


def _percent(value: Fraction | None) -> float | None:
    return None if value is None else float(round(value * 100, 2))


def _gap(customers: Fraction | None, evaluators: Fraction | None) -> float | None:
    if customers is None or evaluators is None:
        return None
    return float(round((customers - evaluators) * 100, 2))


def priority(moment_weight: int, requirement_weight: int, customers: Fraction | None,
             evaluators: Fraction | None, reach: int) -> float:
    """The requirement's priority (:data:`PRIORITY_FORMULA`) from its 0-1
    scores (None: not measured) and its reach."""
    scores = [s for s in (customers, evaluators) if s is not None]
    shortfall = 1 - sum(scores) / len(scores) if scores else Fraction(0)
    value = moment_weight * requirement_weight * float(shortfall) * (1 + math.log10(1 + reach))
    return round(value, 2)


def _weighted(values: Sequence[tuple[int, Fraction | None]]) -> Fraction | None:
    present = [(w, v) for w, v in values if v is not None]
    if not present:
        return None
    return sum((w * v for w, v in present), Fraction(0)) / sum(w for w, _ in present)


def build(cycle: Cycle, tallies: Tallies, plans: Iterable[Plan], today: date,
          active_touchpoints: frozenset[str]) -> Scorecard:
    """The scorecard of ``cycle`` (one version) from the tallies of a window.
    A plan of a requirement this version does not have counts with its
    moment's plans; a plan of a moment it does not have is left out.
    ``active_touchpoints``: the moments of every cycle's latest version."""
    by_touchpoint: dict[str, list[Plan]] = {}
    for p in plans:
        by_touchpoint.setdefault(p.touchpoint, []).append(p)
    moments = []
    for m in cycle.moments:
        mine = by_touchpoint.get(m.touchpoint, [])
        ids = {r.requirement_id for r in m.requirements}
        seen = tallies.contacts.get(m.touchpoint, Contacts())
        requirements = []
        customer_means, evaluator_means = [], []
        for r in m.requirements:
            c = tallies.customers.get(r.requirement_id, Mean())
            e = tallies.evaluators.get(r.requirement_id, Mean())
            cv, ev = c.value(), e.value()
            customer_means.append((r.weight, cv))
            evaluator_means.append((r.weight, ev))
            rplans = tuple(p for p in mine if p.requirement_id == r.requirement_id)
            requirements.append(RequirementScore(
                requirement=r, customer_score=_percent(cv), customer_answers=c.count,
                evaluator_score=_percent(ev), evaluator_scores=e.count, gap=_gap(cv, ev),
                priority=priority(m.weight, r.weight, cv, ev,
                                  c.count + seen.negative + seen.complaints),
                plans=rplans, overdue_plans=sum(p.overdue(today) for p in rplans)))
        cm, em = _weighted(customer_means), _weighted(evaluator_means)
        own = tuple(p for p in mine if p.requirement_id not in ids)
        moments.append(MomentScore(
            moment=m, customer_score=_percent(cm),
            customer_answers=sum(r.customer_answers for r in requirements),
            evaluator_score=_percent(em),
            evaluator_scores=sum(r.evaluator_scores for r in requirements),
            gap=_gap(cm, em), contacts=seen,
            priority=max((r.priority for r in requirements), default=0.0),
            requirements=tuple(requirements), plans=own,
            overdue_plans=sum(p.overdue(today) for p in mine)))
    unmapped = sorted(((t, c.contacts) for t, c in tallies.contacts.items()
                       if t and c.contacts and t not in active_touchpoints),
                      key=lambda tc: (-tc[1], tc[0]))
    return Scorecard(cycle=cycle.name, version=cycle.version, moments=tuple(moments),
                     unmapped=tuple(unmapped[:MAX_UNMAPPED]))
