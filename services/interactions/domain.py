"""Moments of truth, promises and satisfaction, as pure rules.

* Vocabulary checks for channels, directions, kinds and outcomes.
* Promises (policies, milestones, business time) are in :mod:`promises`.
* Satisfaction: CSAT mean, NPS (% promoters - % detractors), and the
  dissatisfaction signals that mark an unhappy customer who did not complain.
* Trust: the customer's consent as this service knows it (the latest
  decision per purpose wins, whatever order the decisions arrive in), and
  which contacts it forbids (a survey request, a proactive contact).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from crm_contracts.vocabulary import (
    AUTO_CASE_KINDS,
    CASE_KINDS,
    CONTACT_CHANNELS,
    DIRECTIONS,
    DISSATISFACTION_CAUSES,
    DO_NOT_CONTACT,
    KINDS,
    OUTCOMES,
    ConsentPurpose,
)
from crm_runtime.errors import InvalidArgument

__all__ = ["AUTO_CASE_KINDS", "CASE_KINDS", "CAUSES", "CHANNELS", "DIRECTIONS", "DO_NOT_CONTACT",
           "KINDS", "OUTCOMES"]

CHANNELS = CONTACT_CHANNELS
CAUSES = DISSATISFACTION_CAUSES

REPEAT_COMPLAINT_WINDOW = timedelta(days=30)
LOW_CSAT = 2  # a CSAT of 2 or less is a dissatisfaction signal
LOW_NPS = 6  # an NPS answer of 6 or less (a detractor) is a dissatisfaction signal


def check_choice(field: str, value: str, allowed: tuple[str, ...], default: str = "") -> str:
    if value in allowed:  # already canonical: the common case, on every contact
        return value
    value = (value or default).strip().lower()
    if value not in allowed:
        raise InvalidArgument(field, f"{value!r} is not one of {list(allowed)}")
    return value


def check_cause(cause: str, kind: str = "complaint", outcome: str = "negative") -> str:
    """A dissatisfaction cause, canonical ('' for none); stated by a negative
    contact or a complaint only (``kind`` and ``outcome`` already checked)."""
    if not cause.strip():
        return ""
    cause = check_choice("cause", cause, CAUSES)
    if outcome != "negative" and kind != "complaint":
        raise InvalidArgument("cause", "only a negative contact or a complaint has a "
                                       "dissatisfaction cause")
    return cause


# --- satisfaction -----------------------------------------------------------

def csat_mean(scores: Iterable[int]) -> float | None:
    values = list(scores)
    return sum(values) / len(values) if values else None


def nps(scores: Iterable[int]) -> float | None:
    """Net promoter score in percent: promoters (9-10) minus detractors (0-6)."""
    values = list(scores)
    return nps_of_counts(sum(1 for s in values if s >= 9), sum(1 for s in values if s <= 6),
                         len(values))


def nps_of_counts(promoters: int, detractors: int, answers: int) -> float | None:
    """NPS from the counts the report query gives (``None`` without answers)."""
    return 100.0 * (promoters - detractors) / answers if answers else None


@dataclass(frozen=True)
class SurveyTally:
    """Survey responses of one report group (a touchpoint, channel or unit) in
    the window: how many, the sum and count of their CSAT means, and the NPS
    answers by category."""

    key: str
    responses: int
    csat_sum: float = 0.0
    csat_answers: int = 0
    nps_answers: int = 0
    promoters: int = 0
    detractors: int = 0


@dataclass(frozen=True)
class CaseTally:
    """Cases opened in the window in one report group, and how they went."""

    key: str
    opened: int
    resolved_in_time: int = 0
    breached: int = 0
    first_response_hit: int = 0
    first_response_missed: int = 0
    first_response_median: float | None = None  # seconds; the query's, per group
    resolution_hit: int = 0
    resolution_missed: int = 0
    resolution_median: float | None = None


@dataclass(frozen=True)
class ContactTally:
    """Contacts that occurred in the window in one report group: how many,
    and how many went badly (outcome negative)."""

    key: str
    contacts: int
    negative_contacts: int = 0


@dataclass(frozen=True)
class ReportRow:
    key: str
    responses: int = 0
    csat: float = 0.0  # mean of the responses' CSAT, 0 when none answered CSAT
    nps: float = 0.0  # -100 to 100, 0 when nobody answered NPS
    cases_opened: int = 0
    cases_resolved_in_time: int = 0
    cases_breached: int = 0
    first_response_hit: int = 0
    first_response_missed: int = 0
    first_response_hit_rate: float = 0.0  # hit / (hit + missed), 0 when none decided
    first_response_median_seconds: float = 0.0
    resolution_hit: int = 0
    resolution_missed: int = 0
    resolution_hit_rate: float = 0.0
    resolution_median_seconds: float = 0.0
    contacts: int = 0
    negative_contacts: int = 0


def hit_rate(hit: int, missed: int) -> float:
    """The share of decided milestones met in time (0 when none was decided)."""
    return hit / (hit + missed) if hit + missed else 0.0


def _median(tallies: list[CaseTally], name: str) -> float:
    """A group's median time to a milestone: medians do not add up, so it is
    the one tally's that has one (the report query makes one per group)."""
    return next((m for t in tallies if (m := getattr(t, f"{name}_median")) is not None), 0.0)


def satisfaction_report(surveys: Iterable[SurveyTally], cases: Iterable[CaseTally],
                        contacts: Iterable[ContactTally] = ()) -> list[ReportRow]:
    """One row per group, sorted by key: CSAT mean and NPS from the survey
    tallies, case and contact counts beside them. Tallies of the same key
    (several partial tallies) are added up first, so the report of a window
    is the sum of the reports of its parts."""
    by_key_surveys: dict[str, list[SurveyTally]] = defaultdict(list)
    for t in surveys:
        by_key_surveys[t.key].append(t)
    by_key_cases: dict[str, list[CaseTally]] = defaultdict(list)
    for c in cases:
        by_key_cases[c.key].append(c)
    by_key_contacts: dict[str, list[ContactTally]] = defaultdict(list)
    for k in contacts:
        by_key_contacts[k.key].append(k)
    rows = []
    for key in sorted(by_key_surveys.keys() | by_key_cases.keys() | by_key_contacts.keys()):
        ts, cs = by_key_surveys.get(key, []), by_key_cases.get(key, [])
        ks = by_key_contacts.get(key, [])
        csat_answers = sum(t.csat_answers for t in ts)
        nps_value = nps_of_counts(sum(t.promoters for t in ts), sum(t.detractors for t in ts),
                                  sum(t.nps_answers for t in ts))
        rows.append(ReportRow(
            key=key, responses=sum(t.responses for t in ts),
            csat=sum(t.csat_sum for t in ts) / csat_answers if csat_answers else 0.0,
            nps=nps_value or 0.0,
            cases_opened=sum(c.opened for c in cs),
            cases_resolved_in_time=sum(c.resolved_in_time for c in cs),
            cases_breached=sum(c.breached for c in cs),
            **_milestone_columns(cs, "first_response"), **_milestone_columns(cs, "resolution"),
            contacts=sum(k.contacts for k in ks),
            negative_contacts=sum(k.negative_contacts for k in ks)))
    return rows


def _milestone_columns(cases: list[CaseTally], name: str) -> dict[str, Any]:
    hit = sum(getattr(c, f"{name}_hit") for c in cases)
    missed = sum(getattr(c, f"{name}_missed") for c in cases)
    return {f"{name}_hit": hit, f"{name}_missed": missed,
            f"{name}_hit_rate": hit_rate(hit, missed),
            f"{name}_median_seconds": _median(cases, name)}


def survey_signals(csat_scores: list[int], nps_score: int | None) -> list[str]:
    """Dissatisfaction signals a survey answer raises."""
    signals = []
    if any(s <= LOW_CSAT for s in csat_scores):
        signals.append("low_csat")
    if nps_score is not None and nps_score <= LOW_NPS:
        signals.append("low_nps")
    return signals


def is_repeated_complaint(previous_complaints: Iterable[datetime], now: datetime) -> bool:
    """A second complaint within the window is a signal by itself."""
    return any(now - at <= REPEAT_COMPLAINT_WINDOW for at in previous_complaints)


# --- trust: consent and the contacts it forbids -------------------------------

#: The consent purpose of a survey request.
SURVEYS = ConsentPurpose.SURVEYS.value
#: The purposes of ``customer.consent_changed`` this service keeps (the others,
#: newsletter and promotional offers, are loyalty's business).
KEPT_PURPOSES = (DO_NOT_CONTACT, SURVEYS)

#: Why a contact was suppressed (``contact.suppressed``'s reason).
ERASED = "erased"
NO_SURVEYS_CONSENT = "no_surveys_consent"


@dataclass(frozen=True)
class Decision:
    """The customer's decision on one purpose: granted or not, made at
    ``at`` (None: no decision heard of, which grants nothing)."""

    granted: bool = False
    at: datetime | None = None


def _rank(purpose: str, decision: Decision) -> tuple[datetime, bool]:
    """The order of decisions on a purpose: by time, and at the same instant
    the one that contacts less (do-not-contact set, a consent withdrawn)."""
    assert decision.at is not None
    cautious = decision.granted if purpose == DO_NOT_CONTACT else not decision.granted
    return decision.at, cautious


def prevails(purpose: str, new: Decision, held: Decision) -> bool:
    """Whether ``new`` replaces ``held``: it was made at the same time or
    later. An older decision (relayed late, a replayed dead letter) never
    replaces a newer one, so a withdrawal is undone only by a newer grant;
    two different decisions at the same instant resolve to the cautious one
    whichever comes first, so the view never depends on arrival order."""
    if held.at is None:
        return True
    return new.at is not None and _rank(purpose, new) >= _rank(purpose, held)


@dataclass(frozen=True)
class ConsentView:
    """What this service knows of a customer's consent. A customer whose
    consent was never announced has neither do-not-contact nor surveys
    consent. An erased customer is never contacted, whatever comes later."""

    do_not_contact: Decision = field(default_factory=Decision)
    surveys: Decision = field(default_factory=Decision)
    erased: bool = False


def apply_consent(view: ConsentView, purpose: str, decision: Decision) -> ConsentView:
    """The view after one ``customer.consent_changed``: its decision when it
    prevails over the one held (:func:`prevails`); purposes not in
    :data:`KEPT_PURPOSES`, and any decision on an erased customer, change
    nothing."""
    if view.erased or purpose not in KEPT_PURPOSES:
        return view
    if purpose == DO_NOT_CONTACT:
        if prevails(purpose, decision, view.do_not_contact):
            return replace(view, do_not_contact=decision)
    elif prevails(purpose, decision, view.surveys):
        return replace(view, surveys=decision)
    return view


def merge_views(survivor: ConsentView, merged: ConsentView) -> ConsentView:
    """The survivor's view after a merge: do-not-contact if either had it
    (as of the later of their two decisions), and for surveys the decision
    that prevails of the two."""
    dnc = (survivor.do_not_contact, merged.do_not_contact)
    times = [d.at for d in dnc if d.at is not None]
    surveys = (merged.surveys if merged.surveys.at is not None
               and prevails(SURVEYS, merged.surveys, survivor.surveys) else survivor.surveys)
    return ConsentView(do_not_contact=Decision(any(d.granted for d in dnc),
                                               max(times) if times else None),
                       surveys=surveys, erased=survivor.erased or merged.erased)


def survey_refusal(view: ConsentView | None) -> str | None:
    """Why the customer may not be asked for a survey (None: they may be).
    ``view`` None: a customer this service holds no consent of (never
    announced, or forgotten), who has not consented."""
    if view is None:
        return NO_SURVEYS_CONSENT
    if view.erased:
        return ERASED
    if view.do_not_contact.granted:
        return DO_NOT_CONTACT
    return None if view.surveys.granted else NO_SURVEYS_CONSENT


def proactive_refusal(view: ConsentView | None) -> str | None:
    """Why the company may not contact the customer on its own initiative
    (None: it may; a contact the customer started is never refused). A
    proactive contact for service needs no consent beyond the absence of
    do-not-contact."""
    if view is None:
        return None
    if view.erased:
        return ERASED
    return DO_NOT_CONTACT if view.do_not_contact.granted else None
