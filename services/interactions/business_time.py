"""Business hours, and time counted only while they are open: the clock of a
case's promise (a service desk's SLA clock).

A :class:`Calendar` names an IANA time zone, a weekly pattern of shifts (a
weekday and a local opening and closing time) and some closed dates. On each
local date that is not closed, each shift of its weekday is one *open
interval*, from the local opening to the local closing time, turned into UTC
with :mod:`zoneinfo`. Business time is the real time, in seconds, spent
inside open intervals: on the day the clocks go back a 00:00-03:00 shift
lasts four hours, and a shift over the hour the clocks skip lasts one hour
less. All the arithmetic is done on UTC datetimes and timedeltas, so it is
exact to the microsecond: ``elapsed(c, t, add(c, t, n)) == n``.

:func:`calendar` checks and builds a calendar from the shape the API uses;
:func:`add` and :func:`elapsed` walk the open intervals day by day, lazily.
The built-in :data:`ALWAYS` calendar (open 24x7) is plain clock arithmetic.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cached_property, lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from crm_runtime.errors import InvalidArgument, quote

__all__ = ["ALWAYS", "HORIZON", "REACH", "WEEKDAYS", "Calendar", "ClosedDate", "Shift",
           "Unreachable", "add", "calendar", "elapsed", "is_open", "next_opening",
           "reachable", "to_closed_dates", "to_hours"]


class Unreachable(ValueError):
    """The amount of business time does not fit before the horizon."""


#: add() never looks further than this past its start.
HORIZON = timedelta(days=20 * 366)
#: How far a calendar must reach when it is defined (see reachable()).
REACH = timedelta(days=5 * 365)
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

DAY_MINUTES = 24 * 60
MAX_HOURS = 100  # entries in a calendar's hours
MAX_CLOSED_DATES = 1000
MAX_DATE_NAME = 200
_ONE_DAY = timedelta(days=1)
_NAME = re.compile(r"[a-z0-9_-]{1,64}")
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
#: Names ZoneInfo may accept that follow the machine's setting, not a place.
_NOT_ZONES = frozenset({"localtime", "posixrules"})
_MAX_UTC = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Shift:
    """Open every ``weekday`` (0 Monday .. 6 Sunday, local) from ``opens``
    to ``closes``, in minutes after local midnight (1440: the next midnight)."""

    weekday: int
    opens: int
    closes: int


@dataclass(frozen=True)
class ClosedDate:
    """A local date the calendar is closed all day (a public holiday)."""

    day: date
    name: str = ""


@dataclass(frozen=True)
class Calendar:
    """Business hours in one time zone. Build it with :func:`calendar`, which
    checks what this trusts: shifts sorted by (weekday, opens) and not
    overlapping, closed dates sorted and unique."""

    name: str
    time_zone: str
    shifts: tuple[Shift, ...]
    closed: tuple[ClosedDate, ...] = ()
    version: int = 1

    @property
    def always(self) -> bool:
        """Open 24x7 with no closed dates: business time is clock time, in
        any zone (consecutive local days meet at the same instant)."""
        return not self.closed and self._open_all_week

    def open_per_week(self) -> timedelta:
        """The nominal open time of a week (ignoring DST and closed dates)."""
        return timedelta(minutes=sum(s.closes - s.opens for s in self.shifts))

    @cached_property
    def _open_all_week(self) -> bool:
        reached = dict.fromkeys(range(7), 0)
        for shift in self.shifts:  # sorted, so a gap shows as opens > reached
            if shift.opens > reached[shift.weekday]:
                return False
            reached[shift.weekday] = max(reached[shift.weekday], shift.closes)
        return all(minutes >= DAY_MINUTES for minutes in reached.values())

    @cached_property
    def _plan(self) -> _Plan:
        by_day: list[list[tuple[time, time, bool]]] = [[] for _ in range(7)]
        for s in self.shifts:
            by_day[s.weekday].append((_local_time(s.opens)[0], *_local_time(s.closes)))
        return _Plan(_zone(self.time_zone), tuple(tuple(d) for d in by_day),
                     frozenset(c.day for c in self.closed))


@dataclass(frozen=True)
class _Plan:
    """A calendar ready for the walk: its zone, each weekday's shifts as
    (opens, closes, whether closes is on the next day), the closed days."""

    zone: ZoneInfo
    by_weekday: tuple[tuple[tuple[time, time, bool], ...], ...]
    closed: frozenset[date]


ALWAYS = Calendar("always", "UTC", tuple(Shift(day, 0, DAY_MINUTES) for day in range(7)))


# -- Building and showing ------------------------------------------------------------


def calendar(name: str, time_zone: str, hours: Sequence[Mapping[str, Any]],
             closed_dates: Sequence[Mapping[str, Any]], version: int = 1) -> Calendar:
    """Validate and build. hours: [{"days": ["monday", ...], "opens": "09:00",
    "closes": "13:00"}, ...]; closed_dates: [{"date": "2026-12-25", "name":
    "Christmas"}, ...]. Raises InvalidArgument naming the first bad field."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidArgument("name", f"{quote(name)} must be 1 to 64 characters of a-z, 0-9, "
                                      "'_' and '-'")
    if name == ALWAYS.name:
        raise InvalidArgument("name", "'always' is reserved for the built-in 24x7 calendar")
    _check_zone(time_zone)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidArgument("version", f"{quote(version)} must be a positive integer")
    return Calendar(name, time_zone, _shifts(hours), _closed(closed_dates), version)


def to_hours(cal: Calendar) -> list[dict[str, Any]]:
    """The calendar's shifts in the shape :func:`calendar` takes: one entry
    per (opens, closes) pair with all its days in weekday order, entries in
    the order of their first shift in the week."""
    days: dict[tuple[int, int], list[str]] = {}
    for s in cal.shifts:
        days.setdefault((s.opens, s.closes), []).append(WEEKDAYS[s.weekday])
    return [{"days": names, "opens": _clock(opens), "closes": _clock(closes)}
            for (opens, closes), names in days.items()]


def to_closed_dates(cal: Calendar) -> list[dict[str, str]]:
    """The closed dates in the shape :func:`calendar` takes."""
    return [{"date": c.day.isoformat(), "name": c.name} for c in cal.closed]


def _check_zone(time_zone: str) -> None:
    problem = f"{quote(time_zone)} is not an IANA time zone"
    if not isinstance(time_zone, str) or not time_zone:
        raise InvalidArgument("time_zone", "required, an IANA time zone like 'Europe/Madrid'")
    if time_zone in _NOT_ZONES:
        raise InvalidArgument("time_zone", problem)
    try:
        _zone(time_zone)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder, a long name
        raise InvalidArgument("time_zone", problem) from None


def _shifts(hours: Sequence[Mapping[str, Any]]) -> tuple[Shift, ...]:
    if isinstance(hours, str | bytes | Mapping) or not isinstance(hours, Sequence):
        raise InvalidArgument("hours", "must be a list of {days, opens, closes}")
    if not hours:
        raise InvalidArgument("hours", "a calendar with no open hours makes every promise "
                                       "unreachable")
    if len(hours) > MAX_HOURS:
        raise InvalidArgument("hours", f"at most {MAX_HOURS} entries, got {len(hours)}")
    entries: list[tuple[list[int], int, int]] = []
    for i, entry in enumerate(hours):
        field = f"hours[{i}]"
        if not isinstance(entry, Mapping):
            raise InvalidArgument(field, "must be an object with days, opens and closes")
        unknown = sorted(set(entry) - {"days", "opens", "closes"}, key=str)
        if unknown:
            raise InvalidArgument(field, f"unknown key {quote(unknown[0])}; expected days, "
                                         "opens and closes")
        days = _days(f"{field}.days", entry.get("days"))
        opens = _minutes(f"{field}.opens", entry.get("opens"), closing=False)
        closes = _minutes(f"{field}.closes", entry.get("closes"), closing=True)
        if closes <= opens:
            problem = f"must be after opens ({_clock(opens)})"
            if closes == 0:
                problem += "; write 24:00 for the end of the day"
            elif closes < opens:
                problem += (f"; a shift cannot cross midnight, split it into two entries "
                            f"({_clock(opens)}-24:00 and 00:00-{_clock(closes)})")
            raise InvalidArgument(f"{field}.closes", problem)
        for j, (other_days, other_opens, other_closes) in enumerate(entries):
            shared = sorted(set(days) & set(other_days))
            if shared and opens < other_closes and other_opens < closes:
                raise InvalidArgument(field, f"overlaps hours[{j}] on {WEEKDAYS[shared[0]]} "
                                             f"({_clock(other_opens)}-{_clock(other_closes)})")
        entries.append((days, opens, closes))
    shifts = (Shift(day, opens, closes) for days, opens, closes in entries for day in days)
    return tuple(sorted(shifts, key=lambda s: (s.weekday, s.opens)))


def _days(field: str, value: object) -> list[int]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or not value:
        raise InvalidArgument(field, "at least one day of the week, like ['monday']")
    days: list[int] = []
    for item in value:
        day = item.strip().lower() if isinstance(item, str) else item
        if day not in WEEKDAYS:
            raise InvalidArgument(field, f"{quote(item)} is not a day of the week "
                                         "(monday .. sunday)")
        if WEEKDAYS.index(day) in days:
            raise InvalidArgument(field, f"{day} is given twice")
        days.append(WEEKDAYS.index(day))
    return days


def _minutes(field: str, value: object, *, closing: bool) -> int:
    """Minutes after midnight of an "HH:MM" time: 00:00..23:59 for an
    opening, 00:00..24:00 for a closing (24:00 is the end of the day)."""
    match = _CLOCK.fullmatch(value.strip()) if isinstance(value, str) else None
    hour, minute = (int(match[1]), int(match[2])) if match else (99, 99)
    if closing and (hour, minute) == (24, 0):
        return DAY_MINUTES
    if hour > 23 or minute > 59:
        if not closing and (hour, minute) == (24, 0):
            raise InvalidArgument(field, "24:00 is the end of a day, it cannot open a shift; "
                                         "use 00:00")
        latest = "24:00" if closing else "23:59"
        raise InvalidArgument(field, f"{quote(value)} is not a time from 00:00 to {latest} "
                                     "like '09:00'")
    return hour * 60 + minute


def _closed(closed_dates: Sequence[Mapping[str, Any]]) -> tuple[ClosedDate, ...]:
    if isinstance(closed_dates, str | bytes | Mapping) or not isinstance(closed_dates, Sequence):
        raise InvalidArgument("closed_dates", "must be a list of {date, name}")
    if len(closed_dates) > MAX_CLOSED_DATES:
        raise InvalidArgument("closed_dates", f"at most {MAX_CLOSED_DATES} closed dates, "
                                              f"got {len(closed_dates)}")
    seen: dict[date, int] = {}
    closed: list[ClosedDate] = []
    for i, entry in enumerate(closed_dates):
        field = f"closed_dates[{i}]"
        if not isinstance(entry, Mapping):
            raise InvalidArgument(field, "must be an object with a date and a name")
        unknown = sorted(set(entry) - {"date", "name"}, key=str)
        if unknown:
            raise InvalidArgument(field, f"unknown key {quote(unknown[0])}; expected date "
                                         "and name")
        text = entry.get("date")
        try:
            if not isinstance(text, str) or not _ISO_DATE.fullmatch(text):
                raise ValueError
            day = date.fromisoformat(text)
        except ValueError:
            raise InvalidArgument(f"{field}.date", f"{quote(text)} is not a date like "
                                                   "'2026-12-25'") from None
        if day in seen:
            raise InvalidArgument(f"{field}.date", f"{text} repeats "
                                                   f"closed_dates[{seen[day]}]")
        seen[day] = i
        name = entry.get("name", "")
        if not isinstance(name, str) or len(name) > MAX_DATE_NAME:
            raise InvalidArgument(f"{field}.name", f"at most {MAX_DATE_NAME} characters of text")
        closed.append(ClosedDate(day, name))
    return tuple(sorted(closed, key=lambda c: c.day))


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _local_time(minutes: int) -> tuple[time, bool]:
    """A local time of day, and whether it is on the next day (24:00)."""
    if minutes >= DAY_MINUTES:
        return time(0), True
    return time(minutes // 60, minutes % 60), False


@lru_cache(maxsize=1024)  # every zone there is, once
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


# -- Arithmetic ----------------------------------------------------------------------


def is_open(cal: Calendar, at: datetime) -> bool:
    """Whether ``at`` lies in an open interval (opening included, closing not)."""
    at = _utc(at, "at")
    if cal.always:
        return True
    return any(start <= at for start, _ in _intervals(cal, at, at))


def next_opening(cal: Calendar, at: datetime) -> datetime:
    """``at`` (in UTC) if the calendar is open then, else the start of the
    next open interval; Unreachable when there is none within the horizon."""
    at = _utc(at, "at")
    if cal.always:
        return at
    first = next(_intervals(cal, at, _plus(at, HORIZON)), None)
    if first is not None:
        return max(first[0], at)
    raise Unreachable(f"calendar {cal.name!r} does not open within {HORIZON.days} days "
                      f"of {at.isoformat()}")


def add(cal: Calendar, start: datetime, amount: timedelta) -> datetime:
    """The instant (UTC) at which ``amount`` of business time has passed
    since ``start``: counting from ``start`` when open, else from the next
    opening. An amount that ends at a closing time gives that closing time.
    Unreachable when the result would be more than HORIZON after ``start``."""
    if amount < timedelta(0):
        raise ValueError(f"amount must not be negative, got {amount}")
    start = _utc(start, "start", Unreachable)
    if not amount:
        return start
    limit = _plus(start, HORIZON)
    if cal.always:
        if amount > HORIZON or start > _MAX_UTC - amount:
            raise _unreachable(cal, start, amount)
        return start + amount
    remaining = amount
    for opens, closes in _intervals(cal, start, limit):
        opens = max(opens, start)
        if remaining <= closes - opens:
            end = opens + remaining
            if end > limit:
                break
            return end
        remaining -= closes - opens
    raise _unreachable(cal, start, amount)


def elapsed(cal: Calendar, start: datetime, end: datetime) -> timedelta:
    """The business time within [start, end); zero when end <= start."""
    start, end = _utc(start, "start"), _utc(end, "end")
    if end <= start:
        return timedelta(0)
    if cal.always:
        return end - start
    total = timedelta(0)
    for opens, closes in _intervals(cal, start, end):
        if opens >= end:
            break
        total += min(closes, end) - max(opens, start)
    return total


def reachable(cal: Calendar, start: datetime, amount: timedelta,
              within: timedelta = REACH) -> bool:
    """Whether ``amount`` of business time from ``start`` ends no later than
    ``start + within``: a calendar (with its closed dates) must reach a
    promise's longest time, or every case under it would wait for ever."""
    try:
        end = add(cal, start, amount)
    except Unreachable:
        return False
    return end <= _plus(_utc(start, "start"), within)


def _intervals(cal: Calendar, since: datetime, until: datetime
               ) -> Iterator[tuple[datetime, datetime]]:
    """The open intervals (UTC, in order, not overlapping) that end after
    ``since``, up to the first that starts after ``until``.

    Near a DST change a local time can map before the end of an earlier
    shift (a time in the skipped hour resolves with fold=0, the way zoneinfo
    does, to after the next valid time). Each interval therefore starts no
    earlier than the latest end before it, and one left empty is dropped.
    The walk starts two local days before ``since`` so that this clipping
    is the same whichever instant a walk starts from."""
    plan = cal._plan
    day = _add_days(_local_date(since, plan.zone), -2)
    last = _add_days(_local_date(until, plan.zone), 2)
    reached: datetime | None = None
    while day <= last:
        if day not in plan.closed:
            for opens_at, closes_at, closes_next_day in plan.by_weekday[day.weekday()]:
                try:
                    opens = _instant(day, opens_at, False, plan.zone)
                    closes = _instant(day, closes_at, closes_next_day, plan.zone)
                except OverflowError:  # the first or last days datetime can hold
                    continue
                if reached is not None and opens < reached:
                    opens = reached
                if closes <= opens:
                    continue
                reached = closes
                if closes <= since:
                    continue
                if opens > until:
                    return
                yield opens, closes
        if day == date.max:
            return
        day += _ONE_DAY


def _instant(day: date, local: time, next_day: bool, zone: ZoneInfo) -> datetime:
    if next_day:
        day += _ONE_DAY
    return datetime.combine(day, local, tzinfo=zone).astimezone(UTC)


def _utc(at: datetime, name: str, overflow: type[ValueError] = ValueError) -> datetime:
    """``at`` in UTC; ValueError when it is naive, ``overflow`` when UTC
    cannot hold it (a local time in the last hours of year 9999)."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {at.isoformat()}")
    try:
        return at.astimezone(UTC)
    except OverflowError:
        raise overflow(f"{name} {at.isoformat()} is out of range") from None


def _local_date(at: datetime, zone: ZoneInfo) -> date:
    try:
        return at.astimezone(zone).date()
    except OverflowError:  # within a day of the ends of time: the UTC date is close enough
        return at.date()


def _add_days(day: date, days: int) -> date:
    try:
        return day + timedelta(days=days)
    except OverflowError:
        return date.min if days < 0 else date.max


def _plus(at: datetime, amount: timedelta) -> datetime:
    """``at + amount``, or the last instant datetime can hold."""
    try:
        return at + amount
    except OverflowError:
        return _MAX_UTC


def _unreachable(cal: Calendar, start: datetime, amount: timedelta) -> Unreachable:
    return Unreachable(f"{amount} of business time in calendar {cal.name!r} from "
                       f"{start.isoformat()} ends more than {HORIZON.days} days later")
