"""Small conversions every gRPC servicer needs between Python and protobuf."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from google.protobuf.timestamp_pb2 import Timestamp

from crm_runtime import ids
from crm_runtime.errors import InvalidArgument, quote

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def timestamp(value: datetime | None) -> Timestamp | None:
    """A protobuf Timestamp, or None (the field stays unset) for no time."""
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def request_time(value: Timestamp, field: str) -> datetime:
    """A request's Timestamp as an aware datetime (UTC); ``InvalidArgument``
    naming ``field`` when the calendar cannot hold it (seconds beyond year
    9999)."""
    try:
        return value.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise InvalidArgument(field, f"{value.seconds} seconds is not a time ({exc})") from None


def page_size(requested: int, field: str = "page_size") -> int:
    """The page size to use: 0 means the default, more than the maximum is the
    maximum (as Google's API guidelines ask); a negative size is refused."""
    if requested < 0:
        raise InvalidArgument(field, f"must not be negative, got {requested}")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def json_default(value: object) -> object:
    """``json.dumps(..., default=json_default)`` of database values: ids as
    text, times in ISO 8601, intervals in seconds, numerics as numbers (a
    data-subject export of rows as read)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def parse_uuid(value: str, field: str = "customer_id") -> uuid.UUID:
    """An id from a request or an event; INVALID_ARGUMENT naming the field otherwise."""
    try:
        return ids.read_uuid(value)
    except (ValueError, AttributeError, TypeError):
        raise InvalidArgument(field, f"{quote(value)} is not a UUID") from None


#: The times a page token may hold (what PostgreSQL's timestamptz keeps).
_TOKEN_TIMES = (datetime(1, 1, 2, tzinfo=UTC), datetime(9999, 12, 30, tzinfo=UTC))


def time_page_token(at: datetime, ident: uuid.UUID) -> str:
    """The opaque token of the page after the row of (``at``, ``ident``) in a
    list ordered by time and id."""
    return base64.urlsafe_b64encode(json.dumps([at.isoformat(), str(ident)]).encode()).decode()


def read_time_page_token(token: str, field: str = "page_token") -> tuple[datetime, uuid.UUID]:
    """The (time, id) of :func:`time_page_token`; INVALID_ARGUMENT naming
    ``field`` for anything else (a naive or out-of-range time included)."""
    try:
        at, ident = json.loads(base64.urlsafe_b64decode(token))
        when = datetime.fromisoformat(at)
        if when.tzinfo is None or not _TOKEN_TIMES[0] <= when <= _TOKEN_TIMES[1]:
            raise ValueError(at)
        return when, uuid.UUID(ident)
    except (ValueError, TypeError, OverflowError, AttributeError):
        raise InvalidArgument(field, "is not a token this service returned") from None
