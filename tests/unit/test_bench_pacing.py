"""The harness counts progress at the pace of the progress."""

from __future__ import annotations

import pytest

from bench.pacing import Pace


def test_counts_are_spaced_by_the_rate_and_close_in_at_the_end() -> None:
    clock = iter([0.0, 1.0, 2.0, 2.5, 3.0])
    pace = Pace(10_000, least=0.01, most=0.25, clock=lambda: next(clock))
    assert pace.next(1_000) == 0.01       # no rate yet
    assert pace.next(2_000) == 0.25       # 8,000 to go at 1,000/s: capped
    assert pace.next(9_000) == pytest.approx(1_000 / 4_000 / 2)  # half the rest
    assert pace.next(9_990) == 0.01       # the end is near: the short interval
    assert pace.next(10_000) == 0.01      # done (the caller checks what else it waits for)


def test_nothing_counted_yet_keeps_the_short_interval() -> None:
    pace = Pace(100)
    assert [pace.next(0) for _ in range(3)] == [0.01, 0.01, 0.01]
