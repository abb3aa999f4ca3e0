"""The consent view and the contacts it forbids, as pure rules: the latest
decision per purpose wins whatever order the decisions arrive in, and a
survey or a proactive contact is refused with its reason."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crm_contracts.vocabulary import DO_NOT_CONTACT
from services.interactions.domain import (
    ERASED,
    NO_SURVEYS_CONSENT,
    SURVEYS,
    ConsentView,
    Decision,
    apply_consent,
    merge_views,
    prevails,
    proactive_refusal,
    survey_refusal,
)

T0 = datetime(2031, 5, 1, 9, tzinfo=UTC)
PURPOSES = (DO_NOT_CONTACT, SURVEYS, "newsletter", "promotional_offers")

#: A consent_changed: its purpose and decision. Few distinct times, so that
#: sequences often hold decisions made at the same instant.
events = st.tuples(st.sampled_from(PURPOSES),
                   st.builds(Decision, st.booleans(),
                             st.integers(0, 5).map(lambda m: T0 + timedelta(minutes=m))))


def fold(view: ConsentView, sequence: list[tuple[str, Decision]]) -> ConsentView:
    for purpose, decision in sequence:
        view = apply_consent(view, purpose, decision)
    return view


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


@given(st.lists(events, max_size=12), st.randoms(use_true_random=False))
def test_the_view_does_not_depend_on_the_order_decisions_arrive_in(
        sequence: list[tuple[str, Decision]], rnd: random.Random) -> None:
    in_time_order = sorted(sequence, key=lambda e: e[1].at or T0)
    shuffled = list(sequence)
    rnd.shuffle(shuffled)
    assert fold(ConsentView(), shuffled) == fold(ConsentView(), in_time_order)


@given(st.lists(events, max_size=12))
def test_the_view_holds_the_latest_decision_of_each_purpose(
        sequence: list[tuple[str, Decision]]) -> None:
    view = fold(ConsentView(), sequence)
    for purpose, held in ((DO_NOT_CONTACT, view.do_not_contact), (SURVEYS, view.surveys)):
        decided = [d for p, d in sequence if p == purpose]
        if not decided:
            assert held == Decision()  # never announced: nothing granted
            continue
        latest = max(d.at for d in decided if d.at is not None)
        assert held.at == latest
        at_latest = {d.granted for d in decided if d.at == latest}
        # Two decisions at the same instant: the cautious one.
        cautious = True in at_latest if purpose == DO_NOT_CONTACT else False not in at_latest
        assert held.granted == cautious


def test_a_withdrawal_is_undone_only_by_a_newer_grant() -> None:
    withdrawn = fold(ConsentView(), [(SURVEYS, Decision(True, at(0))),
                                     (SURVEYS, Decision(False, at(5)))])
    # An older grant arriving late (a replayed dead letter) changes nothing.
    assert apply_consent(withdrawn, SURVEYS, Decision(True, at(3))) == withdrawn
    assert not withdrawn.surveys.granted
    assert apply_consent(withdrawn, SURVEYS, Decision(True, at(6))).surveys == Decision(
        True, at(6))


def test_a_decision_at_the_same_instant_replaces_the_held_one_only_toward_caution() -> None:
    held = Decision(True, at(1))
    assert prevails(SURVEYS, Decision(True, at(1)), held)  # the same decision again
    assert prevails(SURVEYS, Decision(False, at(1)), held)
    assert not prevails(SURVEYS, held, Decision(False, at(1)))
    assert prevails(DO_NOT_CONTACT, Decision(True, at(1)), Decision(False, at(1)))
    assert not prevails(DO_NOT_CONTACT, Decision(False, at(1)), Decision(True, at(1)))
    assert prevails(SURVEYS, Decision(False, at(0)), Decision())  # nothing held


def test_other_purposes_and_erased_customers_change_nothing() -> None:
    view = ConsentView()
    assert apply_consent(view, "newsletter", Decision(True, at(1))) == view
    erased = ConsentView(do_not_contact=Decision(True, at(0)), erased=True)
    assert apply_consent(erased, SURVEYS, Decision(True, at(9))) == erased
    assert apply_consent(erased, DO_NOT_CONTACT, Decision(False, at(9))) == erased


@pytest.mark.parametrize(("view", "reason"), [
    (None, NO_SURVEYS_CONSENT),  # never announced: no consent
    (ConsentView(), NO_SURVEYS_CONSENT),
    (ConsentView(surveys=Decision(False, at(0))), NO_SURVEYS_CONSENT),
    (ConsentView(surveys=Decision(True, at(0))), None),
    (ConsentView(surveys=Decision(True, at(0)), do_not_contact=Decision(True, at(0))),
     DO_NOT_CONTACT),
    (ConsentView(surveys=Decision(True, at(0)), do_not_contact=Decision(True, at(0)),
                 erased=True), ERASED),
])
def test_a_survey_needs_consent_and_no_do_not_contact(view: ConsentView | None,
                                                     reason: str | None) -> None:
    assert survey_refusal(view) == reason


@pytest.mark.parametrize(("view", "reason"), [
    (None, None),
    (ConsentView(), None),  # no consent needed for service
    (ConsentView(do_not_contact=Decision(False, at(2))), None),
    (ConsentView(do_not_contact=Decision(True, at(0))), DO_NOT_CONTACT),
    (ConsentView(erased=True), ERASED),
])
def test_a_proactive_contact_is_refused_under_do_not_contact_or_erasure(
        view: ConsentView | None, reason: str | None) -> None:
    assert proactive_refusal(view) == reason


def test_a_merge_keeps_do_not_contact_from_either_and_the_newer_surveys_decision() -> None:
    survivor = ConsentView(do_not_contact=Decision(False, at(5)),
                           surveys=Decision(True, at(1)))
    merged = ConsentView(do_not_contact=Decision(True, at(2)),
                         surveys=Decision(False, at(3)))
    assert merge_views(survivor, merged) == ConsentView(
        do_not_contact=Decision(True, at(5)), surveys=Decision(False, at(3)))
    assert merge_views(merged, survivor) == ConsentView(
        do_not_contact=Decision(True, at(5)), surveys=Decision(False, at(3)))
    # A merged customer never announced leaves the survivor's view as it is.
    assert merge_views(survivor, ConsentView()) == survivor
    assert merge_views(ConsentView(), survivor) == survivor


@given(st.lists(events, max_size=8), st.lists(events, max_size=8))
def test_a_merge_is_the_same_whichever_customer_survives(
        first: list[tuple[str, Decision]], second: list[tuple[str, Decision]]) -> None:
    a, b = fold(ConsentView(), first), fold(ConsentView(), second)
    assert merge_views(a, b) == merge_views(b, a)
