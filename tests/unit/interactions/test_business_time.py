"""Business hours and business-time arithmetic (services.interactions.business_time):
the examples a service desk would check by hand, every validation error by
its field, DST in both directions, and properties over generated calendars."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crm_runtime.errors import InvalidArgument
from services.interactions.business_time import (
    ALWAYS,
    HORIZON,
    REACH,
    WEEKDAYS,
    Calendar,
    ClosedDate,
    Shift,
    Unreachable,
    add,
    calendar,
    elapsed,
    is_open,
    next_opening,
    reachable,
    to_closed_dates,
    to_hours,
)

H = timedelta(hours=1)
TICK = timedelta(microseconds=1)
MADRID = ZoneInfo("Europe/Madrid")
NEW_YORK = ZoneInfo("America/New_York")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")
WORKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday"]
EVERY_DAY = list(WEEKDAYS)


def hours(days: Sequence[str], opens: str, closes: str) -> dict[str, Any]:
    return {"days": list(days), "opens": opens, "closes": closes}


def office(*closed: str, zone: str = "Europe/Madrid") -> Calendar:
    """Monday to Friday, 09:00-18:00."""
    return calendar("office", zone, [hours(WORKDAYS, "09:00", "18:00")],
                    [{"date": day} for day in closed])


def local(at: datetime, zone: ZoneInfo = MADRID) -> datetime:
    return at.astimezone(zone).replace(tzinfo=None)


# -- Examples ------------------------------------------------------------------------


def test_friday_evening_plus_eight_hours_is_monday_afternoon() -> None:
    friday = datetime(2026, 3, 6, 17, 30, tzinfo=MADRID)
    due = add(office(), friday, 8 * H)
    assert due.tzinfo is UTC
    assert local(due) == datetime(2026, 3, 9, 16, 30)
    assert elapsed(office(), friday, due) == 8 * H


def test_a_closed_monday_moves_the_promise_to_tuesday() -> None:
    friday = datetime(2026, 3, 6, 17, 30, tzinfo=MADRID)
    assert local(add(office("2026-03-09"), friday, 8 * H)) == datetime(2026, 3, 10, 16, 30)


def test_split_shifts_skip_the_lunch_break() -> None:
    split = calendar("split", "Europe/Madrid", [hours(WORKDAYS, "09:00", "13:00"),
                                                hours(WORKDAYS, "14:00", "18:00")], [])
    monday_noon = datetime(2026, 3, 9, 12, tzinfo=MADRID)
    assert local(add(split, monday_noon, 4 * H)) == datetime(2026, 3, 9, 17)
    assert not is_open(split, datetime(2026, 3, 9, 13, 30, tzinfo=MADRID))
    assert local(next_opening(split, datetime(2026, 3, 9, 13, 30, tzinfo=MADRID))) == \
        datetime(2026, 3, 9, 14)


def test_a_case_opened_on_saturday_counts_from_monday_morning() -> None:
    saturday = datetime(2026, 3, 7, 11, 15, 30, 123, tzinfo=MADRID)
    assert not is_open(office(), saturday)
    assert local(next_opening(office(), saturday)) == datetime(2026, 3, 9, 9)
    assert local(add(office(), saturday, 2 * H)) == datetime(2026, 3, 9, 11)
    assert elapsed(office(), saturday, datetime(2026, 3, 9, 9, tzinfo=MADRID)) == timedelta(0)


def test_ending_exactly_at_closing_gives_the_closing_instant() -> None:
    monday = datetime(2026, 3, 9, 9, tzinfo=MADRID)
    assert local(add(office(), monday, 9 * H)) == datetime(2026, 3, 9, 18)
    assert local(add(office(), monday, 9 * H + TICK)) == datetime(2026, 3, 10, 9, 0, 0, 1)
    # Open at the opening instant, closed at the closing one.
    assert is_open(office(), monday)
    assert not is_open(office(), datetime(2026, 3, 9, 18, tzinfo=MADRID))
    assert next_opening(office(), monday) == monday.astimezone(UTC)


def test_zero_time_is_the_start_itself_even_when_closed() -> None:
    saturday = datetime(2026, 3, 7, 11, tzinfo=MADRID)
    assert add(office(), saturday, timedelta(0)) == saturday
    assert add(office(), saturday, timedelta(0)).tzinfo is UTC


def test_one_hour_a_week_and_48_hours_is_48_weeks() -> None:
    weekly = calendar("weekly", "Europe/Madrid", [hours(["wednesday"], "10:00", "11:00")], [])
    tuesday = datetime(2026, 1, 6, 15, tzinfo=MADRID)
    # The 48th Wednesday, in local wall time, across both DST changes of 2026.
    assert local(add(weekly, tuesday, 48 * H)) == datetime(2026, 12, 2, 11)
    assert weekly.open_per_week() == H
    assert reachable(weekly, tuesday, 48 * H)
    assert not reachable(weekly, tuesday, 300 * H)  # about 5.8 years: within the horizon
    assert add(weekly, tuesday, 300 * H) - tuesday > REACH
    assert reachable(weekly, tuesday, 300 * H, within=timedelta(days=7 * 300))


def test_the_always_calendar_is_clock_arithmetic() -> None:
    start = datetime(2026, 3, 28, 12, tzinfo=MADRID)  # the day before spring-forward
    assert ALWAYS.always and ALWAYS.name == "always" and ALWAYS.version == 1
    assert ALWAYS.open_per_week() == 7 * 24 * H
    # Real time: adding to a Madrid datetime directly would add wall-clock time.
    assert add(ALWAYS, start, 24 * H) == start.astimezone(UTC) + 24 * H
    assert local(add(ALWAYS, start, 24 * H)) == datetime(2026, 3, 29, 13)
    end = datetime(2026, 3, 30, 12, tzinfo=MADRID)
    assert elapsed(ALWAYS, start, end) == 47 * H  # real time, not wall-clock difference
    assert elapsed(ALWAYS, end, start) == timedelta(0)
    assert is_open(ALWAYS, start) and next_opening(ALWAYS, start) == start
    # 24x7 in any zone, written as touching halves, is "always" too.
    halves = calendar("halves", "Asia/Kathmandu", [hours(EVERY_DAY, "00:00", "12:00"),
                                                  hours(EVERY_DAY, "12:00", "24:00")], [])
    assert halves.always
    assert not calendar("halves", "Asia/Kathmandu", to_hours(halves),
                        [{"date": "2026-12-25"}]).always
    assert not office().always


# -- DST -----------------------------------------------------------------------------


@pytest.mark.parametrize(("zone", "day", "opens", "closes", "length"), [
    # Spring forward: a shift over the skipped hour is an hour shorter.
    ("Europe/Madrid", date(2026, 3, 29), "01:00", "04:00", 2 * H),
    ("America/New_York", date(2026, 3, 8), "01:00", "04:00", 2 * H),
    # Fall back: 00:00-03:00 lasts four real hours.
    ("Europe/Madrid", date(2026, 10, 25), "00:00", "03:00", 4 * H),
    ("America/New_York", date(2026, 11, 1), "00:00", "03:00", 4 * H),
    # Lord Howe moves its clocks by 30 minutes.
    ("Australia/Lord_Howe", date(2026, 10, 4), "01:00", "03:00", 90 * timedelta(minutes=1)),
    ("Australia/Lord_Howe", date(2026, 4, 5), "01:00", "03:00", 150 * timedelta(minutes=1)),
    # An ordinary Sunday, for contrast.
    ("Europe/Madrid", date(2026, 3, 22), "01:00", "04:00", 3 * H),
])
def test_a_shift_on_a_dst_day_lasts_the_real_time_between_its_ends(
        zone: str, day: date, opens: str, closes: str, length: timedelta) -> None:
    cal = calendar("sundays", zone, [hours(["sunday"], opens, closes)], [])
    tz = ZoneInfo(zone)
    midnight = datetime(day.year, day.month, day.day, tzinfo=tz)
    assert elapsed(cal, midnight, midnight + timedelta(days=2)) == length
    opening = next_opening(cal, midnight)
    assert local(opening, tz).strftime("%H:%M") == opens
    due = add(cal, opening, length)
    assert local(due, tz).strftime("%Y-%m-%d %H:%M") == f"{day} {closes}"
    assert due - opening == length


@pytest.mark.parametrize(("zone", "saturday", "length"), [
    ("Europe/Madrid", date(2026, 3, 28), 47 * H),
    ("Europe/Madrid", date(2026, 10, 24), 49 * H),
    ("America/New_York", date(2026, 3, 7), 47 * H),
    ("America/New_York", date(2026, 10, 31), 49 * H),
    ("Australia/Lord_Howe", date(2026, 10, 3), 47 * H + 30 * timedelta(minutes=1)),
])
def test_elapsed_over_a_dst_weekend_with_24_hour_shifts(zone: str, saturday: date,
                                                        length: timedelta) -> None:
    # A closed date long ago keeps it off the 24x7 shortcut: days are walked.
    walked = calendar("all-day", zone, [hours(EVERY_DAY, "00:00", "24:00")],
                      [{"date": "2000-01-01"}])
    assert not walked.always
    tz = ZoneInfo(zone)
    start = datetime(saturday.year, saturday.month, saturday.day, tzinfo=tz)
    monday = datetime.combine(saturday + timedelta(days=2), start.timetz())
    assert elapsed(walked, start, monday) == length
    assert local(add(walked, start, length), tz) == local(monday, tz)
    assert elapsed(ALWAYS, start, monday) == length


def test_local_times_in_the_skipped_hour_resolve_as_zoneinfo_does() -> None:
    """On Madrid's spring-forward day 02:30 does not exist; with fold=0 it is
    read with the winter offset, i.e. 03:30 summer time. Touching shifts over
    the gap still count each real minute once."""
    cal = calendar("gap", "Europe/Madrid", [hours(["sunday"], "00:00", "02:30"),
                                            hours(["sunday"], "03:00", "05:00")], [])
    sunday = datetime(2026, 3, 29, tzinfo=MADRID)
    first = datetime(2026, 3, 28, 23, tzinfo=UTC)  # 00:00 winter time
    assert next_opening(cal, sunday) == first
    # 00:00-02:30 ends at 01:30 UTC (03:30 summer time); 03:00-05:00 starts
    # at 01:00 UTC, so it is clipped to start where the first one ended.
    assert elapsed(cal, sunday, sunday + timedelta(days=1)) == 4 * H  # not the nominal 4h30
    assert add(cal, sunday, 150 * timedelta(minutes=1)) == datetime(2026, 3, 29, 1, 30,
                                                                    tzinfo=UTC)
    assert add(cal, sunday, 4 * H) == datetime(2026, 3, 29, 3, tzinfo=UTC)  # 05:00 summer
    assert is_open(cal, datetime(2026, 3, 29, 1, 15, tzinfo=UTC))


# -- Limits --------------------------------------------------------------------------


def test_beyond_the_horizon_is_unreachable() -> None:
    minute = calendar("minute", "UTC", [hours(["monday"], "09:00", "09:01")], [])
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(Unreachable):
        add(minute, start, 2000 * H)  # 120,000 weeks
    assert not reachable(minute, start, 2000 * H)
    with pytest.raises(Unreachable):
        add(ALWAYS, start, HORIZON + TICK)
    assert add(ALWAYS, start, HORIZON) == start + HORIZON
    # The most closed dates there can be, on the only open weekday, close
    # it for 19 years: still within the horizon, but not within REACH.
    mondays = [{"date": (date(2026, 1, 5) + timedelta(weeks=w)).isoformat()}
               for w in range(1000)]
    closed = calendar("minute", "UTC", [hours(["monday"], "09:00", "09:01")], mondays)
    assert not is_open(closed, datetime(2026, 1, 5, 9, tzinfo=UTC))
    reopens = datetime(2045, 3, 6, 9, tzinfo=UTC)
    assert reopens == datetime(2026, 1, 5, 9, tzinfo=UTC) + timedelta(weeks=1000)
    assert next_opening(closed, start) == reopens
    assert add(closed, start, timedelta(minutes=2)) == reopens + timedelta(weeks=1, minutes=1)
    assert not reachable(closed, start, timedelta(minutes=1))
    assert reachable(closed, start, timedelta(minutes=1), within=HORIZON)


def test_the_end_of_time_is_unreachable_not_an_overflow() -> None:
    weekly = calendar("weekly", "America/New_York", [hours(["monday"], "09:00", "10:00")], [])
    tuesday = datetime(9999, 12, 28, tzinfo=UTC)  # no Monday left
    with pytest.raises(Unreachable):
        add(weekly, tuesday, H)
    with pytest.raises(Unreachable):
        next_opening(weekly, tuesday)
    with pytest.raises(Unreachable):
        add(ALWAYS, datetime(9999, 12, 31, 23, tzinfo=UTC), 2 * H)
    with pytest.raises(Unreachable):  # later than any UTC datetime
        add(weekly, datetime(9999, 12, 31, 23, tzinfo=NEW_YORK), H)
    assert not reachable(ALWAYS, datetime(9999, 12, 31, 23, tzinfo=UTC), 2 * H)
    # The two last Mondays; and the first one, 0001-01-01.
    assert elapsed(weekly, datetime(9999, 12, 20, tzinfo=UTC),
                   datetime.max.replace(tzinfo=UTC)) == 2 * H
    first_monday = datetime.min.replace(tzinfo=UTC)
    assert elapsed(weekly, first_monday, datetime(1, 1, 5, tzinfo=UTC)) == H
    assert local(add(weekly, first_monday, H), NEW_YORK) == datetime(1, 1, 1, 10)


def test_naive_datetimes_and_negative_amounts_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        add(office(), datetime(2026, 3, 9, 9), H)
    with pytest.raises(ValueError, match="timezone-aware"):
        elapsed(office(), datetime(2026, 3, 9, 9, tzinfo=UTC), datetime(2026, 3, 9, 10))
    with pytest.raises(ValueError, match="timezone-aware"):
        is_open(office(), datetime(2026, 3, 9, 9))
    with pytest.raises(ValueError, match="negative"):
        add(office(), datetime(2026, 3, 9, 9, tzinfo=UTC), -TICK)


# -- Building a calendar -------------------------------------------------------------


def test_calendar_normalises_and_round_trips() -> None:
    given_hours = [hours(["Monday", " TUESDAY ", "friday"], "09:00", "13:00"),
                   hours(["friday", "monday"], "13:00", "17:30"),
                   hours(["saturday"], "10:00", "14:00"),
                   hours(["wednesday"], "9:00", "24:00")]
    closed = [{"date": "2026-12-25", "name": "Christmas"}, {"date": "2026-01-01"}]
    cal = calendar("shop-1", "Europe/Madrid", given_hours, closed, version=3)
    assert cal.shifts[:3] == (Shift(0, 540, 780), Shift(0, 780, 1050), Shift(1, 540, 780))
    assert cal.closed == (ClosedDate(date(2026, 1, 1)), ClosedDate(date(2026, 12, 25),
                                                                   "Christmas"))
    assert to_hours(cal) == [hours(["monday", "tuesday", "friday"], "09:00", "13:00"),
                             hours(["monday", "friday"], "13:00", "17:30"),
                             hours(["wednesday"], "09:00", "24:00"),
                             hours(["saturday"], "10:00", "14:00")]
    assert to_closed_dates(cal) == [{"date": "2026-01-01", "name": ""},
                                    {"date": "2026-12-25", "name": "Christmas"}]
    again = calendar(cal.name, cal.time_zone, to_hours(cal), to_closed_dates(cal), cal.version)
    assert again == cal
    assert cal.open_per_week() == timedelta(hours=3 * 4 + 2 * 4.5 + 15 + 4)


def _build(**change: Any) -> Calendar:
    fields: dict[str, Any] = {"name": "office", "time_zone": "Europe/Madrid",
                              "hours": [hours(WORKDAYS, "09:00", "13:00"),
                                        hours(WORKDAYS, "14:00", "18:00")],
                              "closed_dates": [{"date": "2026-12-25", "name": "Christmas"}]}
    fields.update(change)
    return calendar(fields["name"], fields["time_zone"], fields["hours"],
                    fields["closed_dates"])


def _dates(*days: str) -> list[Mapping[str, Any]]:
    return [{"date": day} for day in days]


@pytest.mark.parametrize(("change", "field", "fragment"), [
    ({"name": ""}, "name", "1 to 64"),
    ({"name": "Office"}, "name", "a-z"),
    ({"name": "x" * 65}, "name", "1 to 64"),
    ({"name": "always"}, "name", "reserved"),
    ({"time_zone": "Mars/Base"}, "time_zone", "'Mars/Base' is not an IANA time zone"),
    ({"time_zone": "../etc"}, "time_zone", "not an IANA time zone"),
    ({"time_zone": "/etc/passwd"}, "time_zone", "not an IANA time zone"),
    ({"time_zone": "Europe"}, "time_zone", "not an IANA time zone"),
    ({"time_zone": "x" * 300}, "time_zone", "not an IANA time zone"),
    ({"time_zone": "localtime"}, "time_zone", "not an IANA time zone"),
    ({"time_zone": ""}, "time_zone", "required"),
    ({"hours": [hours(["funday"], "09:00", "18:00")]}, "hours[0].days", "'funday'"),
    ({"hours": [hours([], "09:00", "18:00")]}, "hours[0].days", "at least one"),
    ({"hours": [hours(["monday", "Monday "], "09:00", "18:00")]}, "hours[0].days", "twice"),
    ({"hours": [{"days": "monday", "opens": "09:00", "closes": "18:00"}]}, "hours[0].days",
     "at least one"),
    ({"hours": [hours(["monday"], "24:00", "24:00")]}, "hours[0].opens", "end of a day"),
    ({"hours": [hours(["monday"], "9am", "18:00")]}, "hours[0].opens", "'9am'"),
    ({"hours": [hours(["monday"], "09:60", "18:00")]}, "hours[0].opens", "00:00 to 23:59"),
    ({"hours": [hours(["monday"], "09:00", "24:01")]}, "hours[0].closes", "00:00 to 24:00"),
    ({"hours": [hours(["monday"], "18:00", "09:00")]}, "hours[0].closes",
     "must be after opens (18:00); a shift cannot cross midnight"),
    ({"hours": [hours(["monday"], "22:00", "00:00")]}, "hours[0].closes", "24:00"),
    ({"hours": [hours(["monday"], "09:00", "09:00")]}, "hours[0].closes",
     "must be after opens (09:00)"),
    ({"hours": [hours(WORKDAYS, "09:00", "13:00"), hours(["sunday", "friday"], "12:59", "15:00")]},
     "hours[1]", "overlaps hours[0] on friday (09:00-13:00)"),
    ({"hours": [hours(["monday"], "09:00", "18:00"), hours(["monday"], "10:00", "11:00")]},
     "hours[1]", "overlaps hours[0] on monday (09:00-18:00)"),
    ({"hours": [hours(["monday"], "09:00", "18:00") | {"close": "19:00"}]}, "hours[0]",
     "'close'"),
    ({"hours": ["monday 09:00-18:00"]}, "hours[0]", "object"),
    ({"hours": []}, "hours", "no open hours makes every promise unreachable"),
    ({"closed_dates": _dates("2026-13-01")}, "closed_dates[0].date", "'2026-13-01'"),
    ({"closed_dates": _dates("20261225")}, "closed_dates[0].date", "like '2026-12-25'"),
    ({"closed_dates": [{"name": "Christmas"}]}, "closed_dates[0].date", "None"),
    ({"closed_dates": _dates("2026-12-25", "2026-01-01", "2026-12-25")}, "closed_dates[2].date",
     "repeats closed_dates[0]"),
    ({"closed_dates": [{"date": "2026-12-25", "name": "x" * 201}]}, "closed_dates[0].name",
     "200"),
    ({"closed_dates": [{"date": (date(2026, 1, 1) + timedelta(days=d)).isoformat()}
                       for d in range(1001)]}, "closed_dates", "at most 1000"),
])
def test_every_validation_error_names_its_field(change: dict[str, Any], field: str,
                                                 fragment: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        _build(**change)
    assert err.value.field == field
    assert fragment in err.value.problem


def test_touching_ranges_and_the_limits_are_accepted() -> None:
    cal = _build(hours=[hours(["monday"], "00:00", "13:00"), hours(["monday"], "13:00", "24:00")],
                 closed_dates=[{"date": (date(2026, 1, 1) + timedelta(days=d)).isoformat()}
                               for d in range(1000)])
    assert len(cal.shifts) == 2 and len(cal.closed) == 1000
    assert is_open(cal, datetime(2025, 12, 29, 13, tzinfo=MADRID))


# -- Properties ----------------------------------------------------------------------

ZONES = ["UTC", "Europe/Madrid", "America/New_York", "America/Sao_Paulo",
         "Australia/Lord_Howe", "Asia/Kathmandu", "Pacific/Chatham"]
AMOUNTS = st.timedeltas(min_value=timedelta(0), max_value=300 * H)


@cache
def transitions(zone_name: str) -> tuple[datetime, ...]:
    """The instants the zone's UTC offset changed in 2014-2030, found by
    stepping a day at a time and halving to the microsecond."""
    zone = ZoneInfo(zone_name)

    def offset(at: datetime) -> timedelta | None:
        return at.astimezone(zone).utcoffset()

    found = []
    at, end = datetime(2014, 1, 1, tzinfo=UTC), datetime(2031, 1, 1, tzinfo=UTC)
    before = offset(at)
    while at < end:
        after = offset(at + timedelta(days=1))
        if after != before:
            low, high = at, at + timedelta(days=1)
            while high - low > TICK:
                middle = low + (high - low) // 2
                low, high = (middle, high) if offset(middle) == before else (low, middle)
            found.append(high)
        at, before = at + timedelta(days=1), after
    return tuple(found)


@st.composite
def instants(draw: st.DrawFn, zone_name: str) -> datetime:
    """An instant, often within a day and a half of a DST change, with
    microseconds; in UTC or in the zone itself."""
    changes = transitions(zone_name)
    near_a_change = draw(st.booleans())
    if changes and near_a_change:
        at = draw(st.sampled_from(changes)) + draw(st.timedeltas(-36 * H, 36 * H))
    else:
        at = draw(st.datetimes(datetime(2014, 1, 1), datetime(2031, 1, 1),
                               timezones=st.just(UTC)))
    return at.astimezone(ZoneInfo(zone_name)) if draw(st.booleans()) else at


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def wall_clock_change(zone_name: str, near: datetime) -> tuple[int, list[int]] | None:
    """For a DST change within 36 hours of ``near``: the local weekday after
    it, and the local times of day (in minutes) that matter that day: where
    the clock jumps from and to, and between."""
    zone = ZoneInfo(zone_name)
    change = next((c for c in transitions(zone_name) if abs(c - near) <= 36 * H), None)
    if change is None:
        return None
    before, after = (change - TICK).astimezone(zone), change.astimezone(zone)
    jumps_from = 0 if before.date() < after.date() else before.hour * 60 + before.minute + 1
    jumps_to = after.hour * 60 + after.minute
    low, high = sorted((jumps_from, jumps_to))
    times = {low, high, (low + high) // 2, max(low - 30, 0), min(high + 30, DAY)}
    return after.weekday(), sorted(times)


DAY = 24 * 60


@st.composite
def cases(draw: st.DrawFn) -> tuple[Calendar, datetime]:
    """A generated calendar (1-6 shifts, 0-10 closed dates near the start)
    and a start instant. Near a DST change, shifts often open or close where
    the clock jumps, on that day: the cases where a shift loses or gains
    time, or maps before the end of the one before it."""
    zone_name = draw(st.sampled_from(ZONES))
    start = draw(instants(zone_name))
    change = wall_clock_change(zone_name, start.astimezone(UTC))
    shifts: list[tuple[int, int, int]] = []
    for _ in range(draw(st.integers(1, 6))):
        on_the_change = draw(st.booleans())
        if change is not None and on_the_change:
            day, times = change
            opens = draw(st.sampled_from([m for m in [0, *times] if m < DAY]))
            closes = draw(st.sampled_from([m for m in [*times, DAY] if m > opens]))
        else:
            day, opens = draw(st.integers(0, 6)), draw(st.integers(0, DAY - 1))
            closes = draw(st.integers(opens + 1, DAY))
        if all(d != day or closes <= o or c <= opens for d, o, c in shifts):
            shifts.append((day, opens, closes))
    near = start.astimezone(ZoneInfo(zone_name)).date()
    closed = draw(st.lists(st.integers(-3, 40), max_size=10, unique=True))
    cal = calendar("generated", zone_name,
                   [hours([WEEKDAYS[d]], _clock(o), _clock(c)) for d, o, c in shifts],
                   [{"date": (near + timedelta(days=k)).isoformat()} for k in closed])
    return cal, start


def add_or_none(cal: Calendar, start: datetime, amount: timedelta) -> datetime | None:
    try:
        return add(cal, start, amount)
    except Unreachable:
        return None


@settings(max_examples=200, deadline=None)
@given(cases(), AMOUNTS)
def test_elapsed_undoes_add(case: tuple[Calendar, datetime], amount: timedelta) -> None:
    cal, start = case
    due = add_or_none(cal, start, amount)
    horizon = start.astimezone(UTC) + HORIZON
    if due is None:  # exactly when the horizon holds less than the amount
        assert elapsed(cal, start, horizon) < amount
        return
    assert due.tzinfo is UTC and start <= due <= horizon
    assert elapsed(cal, start, due) == amount


@settings(max_examples=200, deadline=None)
@given(cases(), AMOUNTS, AMOUNTS, st.timedeltas(timedelta(0), 72 * H))
def test_add_is_monotonic_in_the_amount_and_the_start(
        case: tuple[Calendar, datetime], first: timedelta, second: timedelta,
        later: timedelta) -> None:
    cal, start = case
    small, large = sorted((first, second))
    at_small, at_large = add_or_none(cal, start, small), add_or_none(cal, start, large)
    if at_large is not None:
        assert at_small is not None and at_small <= at_large
    from_later = add_or_none(cal, start.astimezone(UTC) + later, small)
    if at_small is not None and from_later is not None:
        assert at_small <= from_later


@settings(max_examples=200, deadline=None)
@given(cases(), AMOUNTS, AMOUNTS)
def test_adding_in_two_steps_is_adding_the_sum(case: tuple[Calendar, datetime],
                                               first: timedelta, second: timedelta) -> None:
    cal, start = case
    at_once = add_or_none(cal, start, first + second)
    halfway = add_or_none(cal, start, first)
    if halfway is None:
        assert at_once is None
        return
    in_two_steps = add_or_none(cal, halfway, second)
    if at_once is not None:  # the second step's horizon starts later: it may reach further
        assert in_two_steps == at_once


@settings(max_examples=200, deadline=None)
@given(cases(), st.timedeltas(timedelta(0), timedelta(days=10)),
       st.timedeltas(timedelta(0), timedelta(days=10)))
def test_elapsed_is_additive_and_bounded(case: tuple[Calendar, datetime], first: timedelta,
                                         second: timedelta) -> None:
    cal, a = case
    b = a.astimezone(UTC) + first  # in UTC: a local datetime's + is wall-clock time
    c = b + second
    assert elapsed(cal, a, c) == elapsed(cal, a, b) + elapsed(cal, b, c)
    assert timedelta(0) <= elapsed(cal, a, b) <= b - a
    assert elapsed(cal, c, a) == timedelta(0)


@settings(max_examples=200, deadline=None)
@given(cases(), st.timedeltas(TICK, 300 * H))
def test_add_lands_in_open_time_and_next_opening_is_the_first_open_instant(
        case: tuple[Calendar, datetime], amount: timedelta) -> None:
    cal, start = case
    due = add_or_none(cal, start, amount)
    if due is not None:
        assert is_open(cal, due - TICK)
    opening = next_opening(cal, start)
    assert opening.tzinfo is UTC and opening >= start
    assert is_open(cal, opening)
    assert elapsed(cal, start, opening) == timedelta(0)
    if is_open(cal, start):
        # In UTC: == between zones is False for a local time in a repeated hour (PEP 495).
        assert opening == start.astimezone(UTC)
    else:
        assert opening > start and not is_open(cal, opening - TICK)


@settings(max_examples=200, deadline=None)
@given(cases())
def test_away_from_dst_changes_is_open_reads_the_local_wall_clock(
        case: tuple[Calendar, datetime]) -> None:
    cal, at = case
    zone = ZoneInfo(cal.time_zone)
    if (at - 2 * timedelta(days=1)).astimezone(zone).utcoffset() != \
            (at + 2 * timedelta(days=1)).astimezone(zone).utcoffset():
        return
    wall = at.astimezone(zone)
    minute = wall.hour * 60 + wall.minute
    expected = wall.date() not in {c.day for c in cal.closed} and any(
        s.weekday == wall.weekday() and s.opens <= minute < s.closes for s in cal.shifts)
    assert is_open(cal, at) == expected


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(ZONES).flatmap(lambda zone: st.tuples(st.just(zone), instants(zone))),
       AMOUNTS)
def test_24x7_walked_day_by_day_is_clock_time_across_dst(
        zone_start: tuple[str, datetime], amount: timedelta) -> None:
    zone_name, start = zone_start
    walked = calendar("all-day", zone_name, [hours(EVERY_DAY, "00:00", "24:00")],
                      [{"date": "2000-01-01"}])
    # In UTC: + on a datetime in its own zone adds wall-clock time.
    assert add(walked, start, amount) == start.astimezone(UTC) + amount
    assert add(ALWAYS, start, amount) == start.astimezone(UTC) + amount
    assert elapsed(walked, start, start.astimezone(UTC) + amount) == amount
