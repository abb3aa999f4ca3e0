"""Vocabulary and satisfaction arithmetic as pure functions (promises: test_promises.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crm_runtime.errors import InvalidArgument
from services.interactions.domain import (
    check_choice,
    csat_mean,
    is_repeated_complaint,
    nps,
    survey_signals,
)

T0 = datetime(2031, 5, 1, 9, tzinfo=UTC)
H = timedelta(hours=1)


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


def test_vocabulary() -> None:
    assert check_choice("channel", " Web ", ("web",)) == "web"
    with pytest.raises(InvalidArgument) as err:
        check_choice("channel", "fax", ("web",))
    assert err.value.field == "channel"
