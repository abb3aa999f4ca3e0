"""A contact's validation and the digest of its request (what a repeat of its
idempotency key is compared on), and the ingest payload's times and texts."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from crm_contracts.interactions import ContactReceived
from crm_runtime.errors import InvalidArgument
from services.interactions.contacts import Contact, check_contact

NOW = datetime(2031, 3, 1, 12, tzinfo=UTC)
CUSTOMER = uuid.uuid4()


def contact(**fields: Any) -> Contact:
    fields.setdefault("idempotency_key", "pos-1")
    fields.setdefault("customer_id", CUSTOMER)
    fields.setdefault("channel", "web")
    fields.setdefault("direction", "reactive")
    fields.setdefault("kind", "inquiry")
    fields.setdefault("occurred_at", NOW)
    fields.setdefault("now", NOW)
    return check_contact(**fields)


def test_the_same_request_has_the_same_digest() -> None:
    first = contact(notes="two boxes", touchpoint="till ")
    again = contact(notes="two boxes", touchpoint="till", channel="WEB ")  # normalised alike
    assert first.request_digest is not None and len(first.request_digest) == 16
    assert again.request_digest == first.request_digest
    # The same instant at another offset is the same time.
    shifted = NOW.astimezone(timezone(timedelta(hours=2)))
    assert contact(notes="two boxes", touchpoint="till", occurred_at=shifted).request_digest == (
        first.request_digest)


def test_a_time_not_given_is_not_part_of_the_request() -> None:
    first = contact(occurred_at=None)
    later = contact(occurred_at=None, now=NOW + timedelta(minutes=5))
    assert first.occurred_at == NOW and later.occurred_at == NOW + timedelta(minutes=5)
    assert first.request_digest == later.request_digest
    assert contact(occurred_at=NOW).request_digest != first.request_digest


@pytest.mark.parametrize("change", [
    {"channel": "phone"}, {"direction": "proactive"}, {"kind": "doubt"}, {"outcome": "positive"},
    {"notes": "three boxes"}, {"touchpoint": "web"}, {"agent": "ana"}, {"unit": "store-2"},
    {"occurred_at": NOW - timedelta(seconds=1)},
    {"kind": "purchase", "amount_minor": 100, "currency": "EUR"},
    {"attention": "indirect", "requester_id": str(uuid.uuid4()),
     "decision_maker_id": str(CUSTOMER)},
])
def test_any_stated_field_changes_the_digest(change: dict[str, Any]) -> None:
    assert contact(**change).request_digest != contact().request_digest


def test_the_customer_and_the_key_are_the_scope_not_the_request() -> None:
    base = contact()
    assert contact(customer_id=uuid.uuid4()).request_digest == base.request_digest
    assert contact(idempotency_key="pos-2").request_digest == base.request_digest


@pytest.mark.parametrize(("when", "problem"), [
    (NOW + timedelta(minutes=16), "in the future"),
    (datetime(1999, 12, 31, tzinfo=UTC), "before 2000-01-01"),
])
def test_an_event_time_outside_the_window_is_refused(when: datetime, problem: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        contact(occurred_at=when)
    assert err.value.field == "occurred_at" and problem in err.value.problem
    assert contact(occurred_at=NOW + timedelta(minutes=15)).occurred_at == (
        NOW + timedelta(minutes=15))


# --- the ingest payload -----------------------------------------------------------

def payload(**fields: Any) -> dict[str, Any]:
    return {"idempotency_key": "pos-1", "customer_id": str(CUSTOMER), "channel": "web",
            "kind": "inquiry", "occurred_at": "2031-03-01T12:00:00Z", **fields}


@pytest.mark.parametrize("value", [0, 12345, "12345", 1700000000000, "2026-03-01",
                                   "2026-03-01T10:00:00", "9999-12-31T00:00:00Z",
                                   "0001-01-01T00:00:00Z", "", None])
def test_occurred_at_is_rfc3339_with_an_offset_only(value: Any) -> None:
    with pytest.raises(ValidationError) as err:
        ContactReceived.model_validate(payload(occurred_at=value))
    assert [e["loc"] for e in err.value.errors()] == [("occurred_at",)]


def test_occurred_at_with_an_offset_is_read_as_its_instant() -> None:
    got = ContactReceived.model_validate(payload(occurred_at="2031-03-01T14:00:00+02:00"))
    assert got.occurred_at == datetime(2031, 3, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize("field", ["idempotency_key", "customer_id", "contact_email",
                                   "contact_phone", "channel", "direction", "kind", "touchpoint",
                                   "agent", "unit", "outcome", "notes", "currency", "attention",
                                   "requester_customer_id", "decision_maker_customer_id"])
def test_a_nul_character_in_any_text_is_refused_naming_the_field(field: str) -> None:
    with pytest.raises(ValidationError) as err:
        ContactReceived.model_validate(payload(**{field: "x\x00y"}))
    [error] = err.value.errors()
    assert (error["loc"], error["type"]) == ((field,), "nul_character")


# --- the dissatisfaction cause ---------------------------------------------------

@pytest.mark.parametrize("fields", [{"outcome": "negative"}, {"kind": "complaint"},
                                    {"kind": "complaint", "outcome": "positive"}])
def test_a_negative_contact_or_a_complaint_states_a_cause(fields: dict[str, Any]) -> None:
    assert contact(cause=" Slow_Delivery ", **fields).cause == "slow_delivery"


def test_a_cause_is_one_of_the_vocabulary_and_only_of_a_bad_moment() -> None:
    with pytest.raises(InvalidArgument) as err:
        contact(outcome="negative", cause="rude")
    assert err.value.field == "cause" and "'rude' is not one of" in err.value.problem
    with pytest.raises(InvalidArgument) as err:
        contact(outcome="neutral", cause="return")
    assert err.value.field == "cause"
    assert err.value.problem == ("only a negative contact or a complaint has a "
                                 "dissatisfaction cause")


def test_a_digest_without_a_cause_is_the_digest_from_before_causes() -> None:
    """Contacts stored before causes existed have digests of the fields of
    then: the same request without a cause keeps that digest, one with a
    cause has another."""
    before = hashlib.blake2b("\x00".join(
        ["1", "web", "reactive", "complaint", "direct", "", "", "", "", "", "negative", "", "0",
         "", repr(NOW.timestamp())]).encode(), digest_size=16).digest()
    assert contact(kind="complaint", outcome="negative").request_digest == before
    assert contact(kind="complaint", outcome="negative", cause="return").request_digest != (
        before)
