"""Page tokens of lists ordered by time and id: what a service returned
reads back; anything else (garbage, a naive time, a time PostgreSQL cannot
hold, a NUL in a cycle name) is INVALID_ARGUMENT on page_token, never a
database error."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime

import pytest

from crm_runtime.convert import read_time_page_token, time_page_token
from crm_runtime.errors import InvalidArgument
from services.interactions import cycle_api


def _token(*parts: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(parts)).encode()).decode()


def test_a_token_reads_back() -> None:
    at, ident = datetime(2026, 12, 7, 15, 0, 0, 123456, tzinfo=UTC), uuid.uuid4()
    assert read_time_page_token(time_page_token(at, ident)) == (at, ident)


@pytest.mark.parametrize("token", [
    "not base64!", _token("yesterday", str(uuid.uuid4())), _token("2026-12-07T10:00:00", "x"),
    _token("2026-12-07T10:00:00", str(uuid.uuid4())),  # naive
    _token("0001-01-01T00:00:00+14:00", str(uuid.uuid4())),  # before year 1 in UTC
    _token("9999-12-31T23:59:59-10:00", str(uuid.uuid4())),  # after 9999 in UTC
    _token("2026-12-07T10:00:00Z"), _token(1, 2), base64.urlsafe_b64encode(b"{}").decode(),
    _token("2024-01-01T00:00:00+00:00", 5), _token("2024-01-01T00:00:00+00:00", [1]),
])
def test_anything_else_is_invalid_argument(token: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        read_time_page_token(token)
    assert err.value.field == "page_token"


@pytest.mark.parametrize("name", ["a\x00b", "x" * 201])
def test_a_cycle_token_no_name_can_have_is_refused(name: str) -> None:
    token = base64.urlsafe_b64encode(f"cycle:{name}".encode()).decode()
    with pytest.raises(InvalidArgument):
        cycle_api._decode_token(token)
    assert cycle_api._decode_token(cycle_api._encode_token("in-store")) == "in-store"
