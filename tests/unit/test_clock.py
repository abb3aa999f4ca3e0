"""Unit tests for crm_runtime.clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from crm_runtime.clock import Clock, ManualClock, SystemClock

START = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)


def test_manual_clock_stands_still_until_told() -> None:
    clock = ManualClock(START)
    assert clock.now() == START
    assert clock.now() == START


def test_manual_clock_advances() -> None:
    clock = ManualClock(START)
    clock.advance(timedelta(days=30))
    clock.advance(timedelta(seconds=1))
    assert clock.now() == datetime(2024, 3, 31, 9, 0, 1, tzinfo=UTC)


def test_manual_clock_can_be_set_even_backwards() -> None:
    clock = ManualClock(START)
    clock.set(datetime(2030, 1, 1, tzinfo=UTC))
    assert clock.now() == datetime(2030, 1, 1, tzinfo=UTC)
    clock.set(START - timedelta(days=1))
    assert clock.now() == datetime(2024, 2, 29, 9, 0, tzinfo=UTC)


def test_manual_clock_defaults_to_now_in_utc() -> None:
    before = datetime.now(UTC)
    clock = ManualClock()
    after = datetime.now(UTC)
    assert before <= clock.now() <= after
    assert clock.now().utcoffset() == timedelta(0)


def test_system_clock_is_aware_utc_now() -> None:
    clock: Clock = SystemClock()
    before = datetime.now(UTC)
    now = clock.now()
    assert before <= now <= datetime.now(UTC)
    assert now.utcoffset() == timedelta(0)


def test_both_clocks_satisfy_the_protocol() -> None:
    clocks: list[Clock] = [SystemClock(), ManualClock(START)]
    assert all(isinstance(c.now(), datetime) for c in clocks)


def test_a_manual_clock_set_in_a_zone_tells_utc() -> None:
    madrid = datetime(2026, 10, 24, 23, 30, tzinfo=ZoneInfo("Europe/Madrid"))
    clock = ManualClock(madrid)
    assert clock.now() == madrid and clock.now().tzinfo is UTC
    clock.advance(timedelta(hours=5))  # across the autumn change: real time
    assert clock.now().astimezone(ZoneInfo("Europe/Madrid")).hour == 3
    clock.set(madrid)
    assert clock.now().tzinfo is UTC
