"""Times the product accepts from outside: RFC 3339 with an offset, inside a
documented window.

Two windows, both documented in docs/integration.md ("Limits"):

* **Any timestamp** in a request (report ranges, ``occurred_at`` alike) lies in
  ``[EARLIEST, LATEST)``: 1970-01-01T00:00:00Z to 2100-01-01T00:00:00Z. Beyond
  that a deadline or a window computed from it can overflow the calendar.
* **An event time** (when a contact or a purchase happened) lies in
  ``[EVENT_EARLIEST, now + FUTURE_TOLERANCE]`` on the service's clock:
  from 2000-01-01T00:00:00Z (older is a default value, not a sale) to at most
  15 minutes ahead (clock skew between a till and the CRM).

On the wire (the ingest topic), only a string in RFC 3339 with an offset
(``Z`` or ``+hh:mm``) is a time: a number (``0``, ``"12345"``, milliseconds),
a time without an offset, or a bare date is refused with a reason naming the
field, never guessed at.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

from pydantic import BeforeValidator

from crm_contracts.errors import InvalidArgument, quote

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
EVENT_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
FUTURE_TOLERANCE = timedelta(minutes=15)

_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")
_EXAMPLE = "e.g. 2026-03-01T10:15:00Z or 2026-03-01T11:15:00+01:00"


def parse_rfc3339(value: object) -> datetime:
    """An aware datetime from an RFC 3339 string with an offset (or an aware
    datetime, as Python producers pass); ``ValueError`` saying why otherwise."""
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"has no UTC offset; give one, {_EXAMPLE}")
        return _in_range(value)
    if not isinstance(value, str):
        raise ValueError(f"must be an RFC 3339 string with an offset ({_EXAMPLE}), "
                         f"not a {type(value).__name__}")
    match = _RFC3339.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"{quote(value)} is not RFC 3339 with an offset ({_EXAMPLE}); "
                         "numbers, bare dates and times without an offset are refused")
    day, clock, fraction, offset = match.groups()
    micro = (fraction or "")[:7]  # a dot and at most 6 digits: Python keeps microseconds
    zone = "+00:00" if offset in ("Z", "z") else offset
    try:
        parsed = datetime.fromisoformat(f"{day}T{clock}{micro}{zone}")
    except ValueError as exc:
        raise ValueError(f"{quote(value)} is not a valid time ({exc})") from None
    return _in_range(parsed)


def _in_range(value: datetime) -> datetime:
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not EARLIEST <= utc < LATEST:
        raise ValueError(f"{value.isoformat()} is outside {EARLIEST:%Y-%m-%d} .. "
                         f"{LATEST:%Y-%m-%d} (UTC)")
    return utc


def check_event_time(value: datetime, now: datetime, field: str = "occurred_at") -> datetime:
    """``value`` if it can be when something happened; ``InvalidArgument``
    naming ``field`` otherwise (before 2000, or more than the tolerance ahead
    of ``now``)."""
    if value.tzinfo is None:
        raise InvalidArgument(field, f"has no UTC offset; give one, {_EXAMPLE}")
    if value < EVENT_EARLIEST:
        raise InvalidArgument(field, f"{value.isoformat()} is before "
                                     f"{EVENT_EARLIEST:%Y-%m-%d}, the earliest event time")
    latest = now + FUTURE_TOLERANCE
    if value > latest:
        raise InvalidArgument(field, f"{value.isoformat()} is in the future (more than "
                                     f"{int(FUTURE_TOLERANCE.total_seconds() // 60)} minutes "
                                     f"after the service's time {now.isoformat()})")
    return value


#: A pydantic field type for times other systems write.
Rfc3339 = Annotated[datetime, BeforeValidator(parse_rfc3339)]
