"""Quiet hours in the customer's own time zone, as pure functions.

The contact gate (customers) refuses a contact that would reach a customer
in their quiet hours and says when they end; loyalty moves a follow-up's
due time out of them when it schedules it. Both use these functions, so
"quiet" means the same thing everywhere: a local time of day from ``start``
(included) to ``end`` (excluded), over midnight when ``start`` is after
``end``; equal times mean no quiet hours.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def time_zone(name: str, default: str = "UTC") -> tzinfo:
    """The customer's zone when it is a valid IANA name, else the default
    (else UTC)."""
    for candidate in (name, default):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def is_time_zone(name: str) -> bool:
    """Whether ``name`` is an IANA zone this machine knows."""
    return bool(name) and str(time_zone(name, "")) == name


def parse_clock_time(text: str) -> time:
    """A local time of day written ``HH:MM``; ValueError saying what was expected."""
    try:
        return time.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a time of day like '21:00'") from None


def in_quiet_hours(local: time, start: time, end: time) -> bool:
    """Whether the local time of day ``local`` falls in quiet hours."""
    if start == end:
        return False
    if start < end:
        return start <= local < end
    return local >= start or local < end


def outside_quiet_hours(due: datetime, zone: tzinfo, start: time, end: time) -> datetime:
    """``due`` if it is outside quiet hours in ``zone``, else the end of those
    quiet hours (the next moment a contact is acceptable)."""
    local = due.astimezone(zone)
    if not in_quiet_hours(local.timetz().replace(tzinfo=None), start, end):
        return due
    day: date = local.date()
    if start > end and local.time() >= start:
        day += timedelta(days=1)  # the evening part: quiet until tomorrow morning
    moved = datetime.combine(day, end, tzinfo=zone)
    # A non-existent local time (a DST gap) normalises forward; never go back.
    return max(moved.astimezone(due.tzinfo), due)
