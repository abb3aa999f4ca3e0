"""Unit tests for crm_runtime.retry.Backoff."""

from __future__ import annotations

from itertools import pairwise
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crm_runtime.retry import Backoff


def ceiling(initial: float, maximum: float, attempt: int) -> float:
    return min(maximum, initial * 2.0**attempt)


def take(backoff: Backoff, n: int) -> list[float]:
    return [backoff.next() for _ in range(n)]


def test_upper_bound_doubles_until_the_cap() -> None:
    with mock.patch("crm_runtime.retry.random.uniform", side_effect=lambda _a, b: b):
        assert take(Backoff(0.5, 5.0), 7) == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_lower_bound_is_half_the_ceiling() -> None:
    with mock.patch("crm_runtime.retry.random.uniform", side_effect=lambda a, _b: a):
        assert take(Backoff(0.5, 5.0), 6) == [0.25, 0.5, 1.0, 2.0, 2.5, 2.5]


def test_jitter_draws_from_the_upper_half() -> None:
    with mock.patch("crm_runtime.retry.random.uniform", return_value=0.0) as uniform:
        Backoff(1.0, 8.0).next()
    uniform.assert_called_once_with(0, 0.5)


def test_attempts_count_and_reset_starts_over() -> None:
    backoff = Backoff(1.0, 100.0)
    assert backoff.attempts == 0
    take(backoff, 5)
    assert backoff.attempts == 5
    backoff.reset()
    assert backoff.attempts == 0
    assert 0.5 <= backoff.next() <= 1.0


@pytest.mark.parametrize(("initial", "maximum"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_invalid_bounds_are_refused(initial: float, maximum: float) -> None:
    with pytest.raises(ValueError, match="0 < initial <= maximum"):
        Backoff(initial, maximum)


def test_initial_equal_to_maximum_is_allowed() -> None:
    assert all(0.5 <= d <= 1.0 for d in take(Backoff(1.0, 1.0), 10))


_initial = st.floats(min_value=1e-3, max_value=10.0)


@given(initial=_initial, factor=st.floats(min_value=1.0, max_value=1000.0),
       attempts=st.integers(min_value=1, max_value=60))
def test_every_delay_is_within_its_window(initial: float, factor: float, attempts: int) -> None:
    maximum = initial * factor
    for attempt, delay in enumerate(take(Backoff(initial, maximum), attempts)):
        top = ceiling(initial, maximum, attempt)
        assert top / 2 <= delay <= top <= maximum


@given(initial=_initial, factor=st.floats(min_value=1.0, max_value=1000.0),
       attempts=st.integers(min_value=1, max_value=60))
def test_windows_double_until_capped(initial: float, factor: float, attempts: int) -> None:
    maximum = initial * factor
    for bound in ("low", "high"):
        pick = (lambda a, _b: a) if bound == "low" else (lambda _a, b: b)
        with mock.patch("crm_runtime.retry.random.uniform", side_effect=pick):
            delays = take(Backoff(initial, maximum), attempts)
        scale = 0.5 if bound == "low" else 1.0
        assert delays[0] == initial * scale
        for before, after in pairwise(delays):
            assert after == min(maximum * scale, before * 2)
        if initial * 2.0 ** (attempts - 1) >= maximum:
            assert delays[-1] == maximum * scale


@given(initial=_initial, factor=st.floats(min_value=1.0, max_value=1000.0),
       before=st.integers(min_value=0, max_value=40))
def test_reset_restores_the_first_window(initial: float, factor: float, before: int) -> None:
    backoff = Backoff(initial, initial * factor)
    take(backoff, before)
    backoff.reset()
    assert initial / 2 <= backoff.next() <= initial
    assert backoff.attempts == 1


def test_a_long_outage_keeps_returning_capped_delays() -> None:
    backoff = Backoff(0.2, 10.0)  # the runtime defaults: 1024 retries take under 3 hours
    take(backoff, 6)  # 0.2 * 2**6 > 10: capped from here on
    for _ in range(2000):
        assert 5.0 <= backoff.next() <= 10.0
