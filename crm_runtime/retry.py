"""Exponential backoff with jitter for retrying work after an outage."""

from __future__ import annotations

import random


class Backoff:
    """Delays that double from ``initial`` up to ``maximum``, with full jitter
    on the upper half so replicas do not retry in lockstep."""

    def __init__(self, initial: float = 0.2, maximum: float = 10.0) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError("backoff needs 0 < initial <= maximum")
        self._initial = initial
        self._maximum = maximum
        self._attempt = 0

    @property
    def attempts(self) -> int:
        return self._attempt

    def next(self) -> float:
        # The exponent is bounded so a days-long outage cannot overflow a float.
        ceiling = min(self._maximum, self._initial * 2 ** min(self._attempt, 60))
        self._attempt += 1
        return float(ceiling / 2 + random.uniform(0, ceiling / 2))

    def reset(self) -> None:
        self._attempt = 0
