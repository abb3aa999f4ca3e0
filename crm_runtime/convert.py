"""Small conversions every gRPC servicer needs between Python and protobuf."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
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
