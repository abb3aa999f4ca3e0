"""Quiet hours in the customer's zone (crm_runtime.quiet_hours), the pure
helpers the contact gate and loyalty's scheduling share."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from crm_runtime.quiet_hours import (
    in_quiet_hours,
    is_time_zone,
    outside_quiet_hours,
    parse_clock_time,
    time_zone,
)

NIGHT = (time(21, 0), time(8, 0))
MADRID = ZoneInfo("Europe/Madrid")


def test_quiet_hours_move_a_contact_to_the_morning_in_the_customers_zone() -> None:
    # 22:30 in Madrid (21:30 UTC in winter) -> 08:00 Madrid next day.
    due = datetime(2031, 1, 10, 21, 30, tzinfo=UTC)
    moved = outside_quiet_hours(due, MADRID, *NIGHT)
    assert moved.astimezone(MADRID) == datetime(2031, 1, 11, 8, 0, tzinfo=MADRID)
    # 06:00 Madrid -> 08:00 the same day.
    early = datetime(2031, 1, 10, 5, 0, tzinfo=UTC)
    assert outside_quiet_hours(early, MADRID, *NIGHT).astimezone(MADRID).hour == 8
    # Noon is fine as it is.
    noon = datetime(2031, 1, 10, 11, 0, tzinfo=UTC)
    assert outside_quiet_hours(noon, MADRID, *NIGHT) == noon


def test_daytime_quiet_window_and_no_quiet_hours() -> None:
    lunch = (time(13, 0), time(15, 0))
    due = datetime(2031, 1, 10, 14, 0, tzinfo=UTC)
    assert outside_quiet_hours(due, UTC, *lunch) == datetime(2031, 1, 10, 15, 0, tzinfo=UTC)
    assert outside_quiet_hours(due, UTC, time(9), time(9)) == due


ZONES = st.sampled_from(["UTC", "Europe/Madrid", "America/New_York", "Asia/Kolkata",
                         "Australia/Lord_Howe", "Pacific/Chatham"])
CLOCK = st.times().map(lambda t: t.replace(second=0, microsecond=0))


@given(st.datetimes(min_value=datetime(2030, 1, 1), max_value=datetime(2035, 1, 1),
                    timezones=st.just(UTC)), ZONES, CLOCK, CLOCK)
def test_quiet_hours_property(due: datetime, zone_name: str, start: time, end: time) -> None:
    """The result is never earlier, never inside quiet hours (local time),
    unchanged when the due time is fine, and less than a day (+DST) later."""
    zone = ZoneInfo(zone_name)
    moved = outside_quiet_hours(due, zone, start, end)
    assert moved >= due
    assert moved - due <= timedelta(hours=25)
    local = moved.astimezone(zone).time()
    if moved != due:
        assert not in_quiet_hours(local, start, end)
    if not in_quiet_hours(due.astimezone(zone).time(), start, end):
        assert moved == due



def test_a_zone_is_an_iana_name_else_the_default() -> None:
    assert str(time_zone("Europe/Madrid")) == "Europe/Madrid"
    assert str(time_zone("Mars/Olympus", "Asia/Tokyo")) == "Asia/Tokyo"
    assert str(time_zone("", "")) == "UTC"
    assert is_time_zone("America/New_York") and not is_time_zone("Mars/Olympus")
    assert not is_time_zone("")


def test_clock_times_are_hh_mm() -> None:
    assert parse_clock_time("21:00") == time(21, 0)
    try:
        parse_clock_time("25:00")
    except ValueError as exc:
        assert "'25:00' is not a time of day" in str(exc)
    else:
        raise AssertionError("25:00 accepted")
