"""Promise policies, deadlines and satisfaction arithmetic as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crm_runtime.errors import InvalidArgument
from services.interactions.domain import (
    DEFAULT_POLICIES,
    Policy,
    breaches_on_resolution,
    check_choice,
    choose_policy,
    csat_mean,
    is_late,
    is_repeated_complaint,
    nps,
    promise_for,
    survey_questions,
    survey_signals,
)

T0 = datetime(2031, 5, 1, 9, tzinfo=UTC)
H = timedelta(hours=1)


def test_the_most_specific_policy_wins() -> None:
    custom = [*DEFAULT_POLICIES, Policy("complaint", "email", 2 * H, 72 * H, 10 * H)]
    assert choose_policy(custom, "complaint", "email").max_time == 72 * H
    assert choose_policy(custom, "complaint", "in_person").max_time == 24 * H
    assert choose_policy(custom, "complaint", "chat").channel == "*"
    with pytest.raises(InvalidArgument) as err:
        choose_policy(custom, "suggestion", "web")
    assert err.value.field == "kind"


def test_complaint_by_phone_is_one_to_48_hours() -> None:
    promise = promise_for(choose_policy(DEFAULT_POLICIES, "complaint", "phone"), T0)
    assert promise.earliest_at == T0 + H and promise.deadline == T0 + 48 * H
    assert promise.warn_at == T0 + 40 * H


@given(st.integers(0, 100), st.integers(1, 500), st.integers(0, 499))
def test_promises_are_ordered(min_h: int, max_h: int, warn_h: int) -> None:
    if max_h < min_h or warn_h >= max_h:
        with pytest.raises(InvalidArgument):
            Policy("support", "*", min_h * H, max_h * H, warn_h * H)
        return
    p = promise_for(Policy("support", "*", min_h * H, max_h * H, warn_h * H), T0)
    assert T0 <= p.earliest_at <= p.deadline and T0 < p.warn_at <= p.deadline


def test_lateness_is_strictly_after_the_deadline() -> None:
    assert not is_late(T0, T0)
    assert is_late(T0, T0 + timedelta(seconds=1))


def test_a_late_resolution_breaches_the_case_unless_already_breached() -> None:
    late = T0 + timedelta(minutes=1)
    assert breaches_on_resolution(T0, late, breached=False)  # the scheduler did not get to it
    assert not breaches_on_resolution(T0, late, breached=True)  # the scheduler did: once only
    assert not breaches_on_resolution(T0, T0, breached=False)  # in time: no breach
    assert not breaches_on_resolution(T0, T0 - timedelta(hours=1), breached=False)


def test_nps_and_csat() -> None:
    assert nps([10, 9, 8, 7, 6, 0]) == pytest.approx(0.0)
    assert nps([10, 10, 3]) == pytest.approx(100 / 3)
    assert nps([]) is None
    assert csat_mean([5, 4, 3]) == 4 and csat_mean([]) is None


@given(st.lists(st.integers(0, 10), min_size=1))
def test_nps_is_between_minus_and_plus_100(scores: list[int]) -> None:
    value = nps(scores)
    assert value is not None and -100 <= value <= 100


def test_signals_from_surveys_and_complaints() -> None:
    assert survey_signals([5, 2], None) == ["low_csat"]
    assert survey_signals([4], 6) == ["low_nps"]
    assert survey_signals([3], 7) == []
    assert is_repeated_complaint([T0 - timedelta(days=29)], T0)
    assert not is_repeated_complaint([T0 - timedelta(days=31)], T0)


def test_vocabulary_and_questions() -> None:
    assert check_choice("channel", " Web ", ("web",)) == "web"
    with pytest.raises(InvalidArgument) as err:
        check_choice("channel", "fax", ("web",))
    assert err.value.field == "channel"
    assert survey_questions(["fast delivery", " "]) == [
        "How satisfied were you with: fast delivery?"]
