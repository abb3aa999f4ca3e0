"""How often a workload counts the product's progress.

Counting rows (``SELECT count(*)``) costs the database more as the table
grows, and a count every 10 ms took about a tenth of the database's time in
``interactions.ingest``: work the raw baselines, which count their own
records, never pay. :class:`Pace` spaces the counts by the rate seen so far
and comes back to the short interval near the end, so the end is still seen
within it.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Pace:
    """Pauses between counts of a number growing towards ``target``: half the
    time the rest should take at the rate seen so far, between ``least`` and
    ``most`` seconds (``least`` until a rate is known and once the target is
    reached)."""

    def __init__(self, target: int, *, least: float = 0.01, most: float = 0.25,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._target = target
        self._clock = clock
        self._least = least
        self._most = most
        self._first: tuple[float, int] | None = None

    def next(self, count: int) -> float:
        now = self._clock()
        if self._first is None:
            if count > 0:
                self._first = (now, count)
            return self._least
        started, at_start = self._first
        rate = (count - at_start) / (now - started) if now > started else 0.0
        if count >= self._target or rate <= 0:
            return self._least
        return min(self._most, max(self._least, (self._target - count) / rate / 2))
