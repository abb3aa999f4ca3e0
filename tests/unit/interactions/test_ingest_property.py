"""Whatever a channel writes on the ingest topic, the payload and the contact
checks either refuse it with a named field (a dead letter `invalid_payload` or
`invalid_contact`) or give a contact that PostgreSQL and the services
downstream can take: no NUL character, texts within their limits, an amount
within the one maximum, a time inside the event window. Never another
exception, which would be a `handler_error`."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from crm_contracts import times, vocabulary
from crm_contracts.interactions import ContactReceived
from crm_contracts.money import MAX_AMOUNT_MINOR
from crm_runtime.errors import InvalidArgument
from services.interactions.contacts import check_contact

NOW = datetime(2031, 3, 1, 12, tzinfo=UTC)

_TEXTS = st.one_of(
    st.text(max_size=20), st.just(""), st.just("a\x00b"), st.just("x" * 201),
    st.just("y" * 10_001), st.sampled_from(sorted({*vocabulary.CONTACT_CHANNELS,
                                                   *vocabulary.KINDS, *vocabulary.OUTCOMES,
                                                   *vocabulary.DIRECTIONS, "EUR", "indirect"})))
_TIMES = st.one_of(
    st.integers(-(2**63), 2**63), st.floats(allow_nan=False), st.just(None),
    st.sampled_from(["0", "12345", "1700000000000", "2026-03-01", "2026-03-01T10:00:00",
                     "9999-12-31T00:00:00Z", "0001-01-01T00:00:00Z", "2031-03-01T12:00:00Z",
                     "2031-03-01T13:14:00+01:00", "2031-03-01T12:16:00Z", "1999-12-31T23:59:59Z",
                     "2031-02-30T00:00:00Z", "2031-03-01T12:00:00.123456789-00:30"]),
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()))
_AMOUNTS = st.one_of(st.integers(-(2**70), 2**70), st.sampled_from(
    [0, -1, MAX_AMOUNT_MINOR, MAX_AMOUNT_MINOR + 1, 2**63 - 1]), st.just("12"), st.floats())
_IDS = st.one_of(st.just(""), st.uuids().map(str), _TEXTS)

PAYLOADS = st.fixed_dictionaries({
    "idempotency_key": _TEXTS, "channel": _TEXTS, "kind": _TEXTS, "occurred_at": _TIMES,
}, optional={
    "customer_id": _IDS, "contact_email": _TEXTS, "contact_phone": _TEXTS,
    "direction": _TEXTS, "touchpoint": _TEXTS, "agent": _TEXTS, "unit": _TEXTS,
    "outcome": _TEXTS, "notes": _TEXTS, "amount_minor": _AMOUNTS, "currency": _TEXTS,
    "attention": _TEXTS, "requester_customer_id": _IDS, "decision_maker_customer_id": _IDS,
})


@settings(max_examples=400, deadline=None)
@given(PAYLOADS)
def test_an_ingested_contact_is_refused_by_name_or_safe_to_store(raw: dict[str, Any]) -> None:
    try:
        data = ContactReceived.model_validate_json(json.dumps(raw))
        contact = check_contact(
            idempotency_key=data.idempotency_key, customer_id=uuid.uuid4(),
            channel=data.channel, direction=data.direction, kind=data.kind,
            occurred_at=data.occurred_at, now=NOW, attention=data.attention,
            requester_id=data.requester_customer_id,
            decision_maker_id=data.decision_maker_customer_id, touchpoint=data.touchpoint,
            agent=data.agent, unit=data.unit, outcome=data.outcome, notes=data.notes,
            amount_minor=data.amount_minor, currency=data.currency)
    except ValidationError as exc:
        assert all(e["loc"] for e in exc.errors())  # each error names its field
        return
    except InvalidArgument as exc:
        assert exc.field
        return
    texts = [contact.idempotency_key, contact.channel, contact.direction, contact.kind,
             contact.touchpoint, contact.agent, contact.unit, contact.outcome, contact.currency]
    assert all("\x00" not in t and len(t) <= 200 for t in texts)
    assert "\x00" not in contact.notes and len(contact.notes) <= 10_000
    assert 0 <= contact.amount_minor <= MAX_AMOUNT_MINOR
    assert times.EVENT_EARLIEST <= contact.occurred_at <= NOW + times.FUTURE_TOLERANCE
    assert contact.occurred_at.tzinfo is not None
