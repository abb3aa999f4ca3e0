"""The scorecard's pure rules: the priority formula on examples, its order
(a worse score, more weight or more reach rank higher), scores and gaps,
plans and overdue counts, unmapped touchpoints, and that tallies merge: the
scorecard of a window is the one of its parts' merged tallies."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.interactions import matrix, scorecard
from services.interactions.scorecard import Contacts, Mean, Plan, Tallies

CYCLE = matrix.define("store", 1, [
    {"touchpoint": "greeting", "weight": 3, "requirements": [
        {"requirement_id": "smile", "text": "Smiles", "scale": "yes_no", "weight": 2},
        {"requirement_id": "fast", "text": "Greets fast", "weight": 1}]},
    {"touchpoint": "checkout", "weight": 1, "requirements": [
        {"requirement_id": "recommend", "text": "Would recommend", "scale": "nps"}]},
    {"touchpoint": "farewell"},
])
TODAY = date(2031, 3, 10)
T0 = datetime(2031, 3, 1, tzinfo=UTC)


def plan(touchpoint: str, requirement_id: str = "", state: str = "planned",
         due_on: date | None = TODAY, pid: str = "p") -> Plan:
    return Plan(action_plan_id=pid, cycle="store", touchpoint=touchpoint,
                requirement_id=requirement_id, description="d", owner="o", due_on=due_on,
                state=state, source="manual", evaluation_id="", created_at=T0, updated_at=T0)


def test_priority_examples() -> None:
    # Nothing measured: nothing to rank.
    assert scorecard.priority(5, 5, None, None, 1000) == 0
    # Customers 0.5 alone, no reach: 3 x 2 x 0.5 x 1.
    assert scorecard.priority(3, 2, Fraction(1, 2), None, 0) == 3.0
    # Customers 0.25, evaluators 0.75: shortfall 0.5; reach 9: 1 + log10(10) = 2.
    assert scorecard.priority(1, 1, Fraction(1, 4), Fraction(3, 4), 9) == 1.0
    # Perfect scores: no shortfall whatever the reach.
    assert scorecard.priority(5, 5, Fraction(1), Fraction(1), 50) == 0
    # 2 x 1 x 0.8 x (1 + log10(100)) = 4.8
    assert scorecard.priority(2, 1, Fraction(1, 5), None, 99) == 4.8
    expected = round(4 * 3 * (1 - 0.6) * (1 + math.log10(1 + 7)), 2)
    assert scorecard.priority(4, 3, Fraction(3, 5), None, 7) == expected


@pytest.mark.parametrize(("worse", "better"), [
    ((1, 1, Fraction(1, 5), None, 10), (1, 1, Fraction(4, 5), None, 10)),  # worse score
    ((3, 1, Fraction(1, 2), None, 10), (2, 1, Fraction(1, 2), None, 10)),  # moment weight
    ((1, 4, Fraction(1, 2), None, 10), (1, 3, Fraction(1, 2), None, 10)),  # requirement weight
    ((1, 1, Fraction(1, 2), None, 100), (1, 1, Fraction(1, 2), None, 10)),  # more reach
    ((1, 1, None, Fraction(0), 0), (1, 1, None, Fraction(1, 2), 0)),  # evaluators alone
])
def test_priority_order(worse: tuple[int, int, Fraction | None, Fraction | None, int],
                        better: tuple[int, int, Fraction | None, Fraction | None, int]) -> None:
    assert scorecard.priority(*worse) > scorecard.priority(*better)


def test_scores_gap_priority_and_plans() -> None:
    tallies = Tallies(
        # smile: yes, yes, no (2/3); fast: csat 2 and 4 (0.25 + 0.75) / 2 = 0.5.
        customers=scorecard.means([("smile", "yes_no", 2, 3), ("fast", "csat", 6, 2)]),
        # smile scored yes once; fast 1-5 scored 5.
        evaluators=scorecard.means([("smile", "yes_no", 1, 1), ("fast", "one_to_five", 5, 1)]),
        contacts=scorecard.contact_counts([("greeting", 10, 3, 1), ("greeting", 0, 0, 2),
                                           ("lost", 4, 0, 0), ("", 7, 0, 0),
                                           ("pickup", 6, 1, 0), ("pickup", 0, 0, 3)]))
    plans = [plan("greeting", "smile", due_on=TODAY - timedelta(days=1), pid="late"),
             plan("greeting", "smile", state="done", due_on=date(2031, 1, 1), pid="done"),
             plan("greeting", pid="moment"), plan("greeting", "gone", pid="old-requirement"),
             plan("elsewhere", pid="unknown-moment")]
    card = scorecard.build(CYCLE, tallies, plans, TODAY, frozenset({"greeting", "checkout"}))
    greeting, checkout, farewell = card.moments
    smile, fast = greeting.requirements
    assert (smile.customer_score, smile.customer_answers) == (66.67, 3)
    assert (smile.evaluator_score, smile.evaluator_scores) == (100.0, 1)
    assert smile.gap == -33.33
    # reach = 3 answers + 3 negative contacts + 3 complaints; shortfall 1 - (2/3 + 1)/2.
    assert smile.priority == round(3 * 2 * (1 / 6) * (1 + math.log10(10)), 2) == 2.0
    assert (fast.customer_score, fast.evaluator_score, fast.gap) == (50.0, 100.0, -50.0)
    assert fast.priority == round(3 * 1 * 0.25 * (1 + math.log10(9)), 2)
    # The moment's scores weight its requirements: (2 x 2/3 + 1 x 1/2) / 3.
    assert greeting.customer_score == round(100 * (2 * 2 / 3 + 0.5) / 3, 2)
    assert greeting.evaluator_score == 100.0
    assert (greeting.customer_answers, greeting.evaluator_scores) == (5, 2)
    assert greeting.contacts == Contacts(10, 3, 3)
    assert greeting.priority == max(smile.priority, fast.priority)
    assert [p.action_plan_id for p in smile.plans] == ["late", "done"]
    assert smile.overdue_plans == 1 and fast.overdue_plans == 0
    assert [p.action_plan_id for p in greeting.plans] == ["moment", "old-requirement"]
    assert greeting.overdue_plans == 1
    # Nothing measured at checkout: no scores, no gap, no priority.
    (recommend,) = checkout.requirements
    assert recommend.customer_score is None and recommend.gap is None
    assert checkout.priority == 0 and checkout.customer_score is None
    assert farewell.requirements == () and farewell.priority == 0
    # Touchpoints contacts named that no active cycle knows, most first
    # (complaint cases without a contact count nothing here).
    assert card.unmapped == (("pickup", 6), ("lost", 4))


def test_unmapped_touchpoints_are_at_most_fifty() -> None:
    tallies = Tallies(contacts={f"t{i:03}": Contacts(i + 1) for i in range(80)})
    card = scorecard.build(CYCLE, tallies, [], TODAY, frozenset())
    assert len(card.unmapped) == scorecard.MAX_UNMAPPED
    assert card.unmapped[0] == ("t079", 80)


def test_overdue_is_before_today_and_open() -> None:
    yesterday = TODAY - timedelta(days=1)
    assert plan("g", due_on=yesterday).overdue(TODAY)
    assert plan("g", state="in_progress", due_on=yesterday).overdue(TODAY)
    assert not plan("g", due_on=TODAY).overdue(TODAY)
    assert not plan("g", state="done", due_on=yesterday).overdue(TODAY)
    assert not plan("g", state="dropped", due_on=yesterday).overdue(TODAY)
    assert not plan("g", due_on=None).overdue(TODAY)


# --- tallies merge ---------------------------------------------------------------------

_REQUIREMENTS = st.sampled_from([("smile", "yes_no"), ("fast", "csat"),
                                 ("recommend", "nps"), ("retired", "csat")])
_TOUCHPOINTS = st.sampled_from(["greeting", "checkout", "farewell", "lost", "pickup", ""])
_MINUTES = st.integers(0, 30 * 24 * 60 - 1)


@st.composite
def _answers(draw: st.DrawFn) -> tuple[int, str, str, int]:
    rid, scale = draw(_REQUIREMENTS)
    low, high = matrix.RANGES[scale]
    return draw(_MINUTES), rid, scale, draw(st.integers(low, high))


@st.composite
def _scores(draw: st.DrawFn) -> tuple[int, str, str, int]:
    rid, scale = draw(_REQUIREMENTS)
    scale = matrix.criterion_scale(scale)
    low, high = matrix.RANGES[scale]
    return draw(_MINUTES), rid, scale, draw(st.integers(low, high))


_CONTACTS = st.tuples(_MINUTES, _TOUCHPOINTS, st.integers(0, 1), st.integers(0, 1),
                      st.integers(0, 1))


def _tally(answers: list[tuple[int, str, str, int]], scores: list[tuple[int, str, str, int]],
           contacts: list[tuple[int, str, int, int, int]], start: int, end: int) -> Tallies:
    """The tallies of the rows timed in [start, end): each row one answer,
    score or contact (contacts 0: a complaint case without a contact)."""
    def inside(minute: int) -> bool:
        return start <= minute < end

    return Tallies(
        customers=scorecard.means((r, s, v, 1) for t, r, s, v in answers if inside(t)),
        evaluators=scorecard.means((r, s, v, 1) for t, r, s, v in scores if inside(t)),
        contacts=scorecard.contact_counts((tp, c, n * c, k) for t, tp, c, n, k in contacts
                                          if inside(t)))


@settings(max_examples=200, deadline=None)
@given(answers=st.lists(_answers(), max_size=40), scores=st.lists(_scores(), max_size=40),
       contacts=st.lists(_CONTACTS, max_size=40),
       cuts=st.lists(_MINUTES, max_size=6),
       plans=st.lists(st.tuples(st.sampled_from(["greeting", "checkout"]),
                                st.sampled_from(["", "smile", "fast", "recommend"]),
                                st.sampled_from(scorecard.PLAN_STATES),
                                st.integers(-5, 5)), max_size=5))
def test_the_scorecard_of_merged_parts_is_the_scorecard_of_the_whole(
        answers: list[tuple[int, str, str, int]], scores: list[tuple[int, str, str, int]],
        contacts: list[tuple[int, str, int, int, int]], cuts: list[int],
        plans: list[tuple[str, str, str, int]]) -> None:
    end = 30 * 24 * 60
    bounds = [0, *sorted(set(cuts)), end]
    parts = [_tally(answers, scores, contacts, a, b) for a, b in pairwise(bounds)]
    stored = [plan(tp, rid, state, TODAY + timedelta(days=d), pid=str(i))
              for i, (tp, rid, state, d) in enumerate(plans)]
    active = frozenset({"greeting", "checkout", "farewell"})
    whole = scorecard.build(CYCLE, _tally(answers, scores, contacts, 0, end), stored, TODAY,
                            active)
    merged = scorecard.build(CYCLE, scorecard.merge(reversed(parts)), stored, TODAY, active)
    assert merged == whole
    assert sum(m.customer_answers for m in whole.moments) == sum(
        1 for _, rid, _, _ in answers if rid != "retired")


def test_merge_adds_means_and_counts() -> None:
    a = Tallies(customers={"x": Mean(Fraction(1, 2), 1)}, contacts={"g": Contacts(1, 1, 0)})
    b = Tallies(customers={"x": Mean(Fraction(1), 1), "y": Mean(Fraction(0), 2)},
                evaluators={"x": Mean(Fraction(1, 4), 1)}, contacts={"g": Contacts(2, 0, 1)})
    m = scorecard.merge([a, b])
    assert m.customers == {"x": Mean(Fraction(3, 2), 2), "y": Mean(Fraction(0), 2)}
    assert m.evaluators == {"x": Mean(Fraction(1, 4), 1)}
    assert m.contacts == {"g": Contacts(3, 1, 1)}
    assert scorecard.merge([]) == Tallies()
