"""No event the product publishes carries personal data (contact details,
names, free text people wrote): a topic read from its start must never
rebuild an erased customer's email, phone or name. Only the ingest topic,
which other systems write, carries contact details, and the product only
reads it."""

from __future__ import annotations

import crm_contracts.customers
import crm_contracts.interactions
import crm_contracts.loyalty
from crm_contracts.base import EventPayload, payload_class, registered_types
from crm_contracts.topics import INTERACTIONS_INGEST

#: Field names that hold personal data or people's free text.
PERSONAL = {"email", "emails", "phone", "phones", "name", "display_name", "first_name",
            "last_name", "address", "birth_date", "notes", "note", "summary", "resolution",
            "comment", "comments", "callback_phone", "contact_email", "contact_phone",
            "contact_name", "message", "text"}


def _payload(event_type: str) -> type[EventPayload]:
    cls = payload_class(event_type)
    assert cls is not None
    return cls


def _published() -> list[str]:
    assert crm_contracts.customers and crm_contracts.interactions and crm_contracts.loyalty
    # The contracts' own types (tests register payloads of their own too).
    return sorted(t for t in registered_types()
                  if _payload(t).__module__.startswith("crm_contracts.")
                  and _payload(t).topic != INTERACTIONS_INGEST)


def test_published_events_have_no_personal_fields() -> None:
    offending = {}
    for event_type in _published():
        fields = _payload(event_type).model_fields
        bad = [n for n, f in fields.items()
               if n in PERSONAL or (f.annotation is str and ("email" in n or "phone" in n))]
        if bad:
            offending[event_type] = bad
    assert offending == {}


def test_the_check_sees_every_topic_the_product_publishes() -> None:
    topics = {_payload(t).topic for t in _published()}
    assert topics == {"crm.customers.v1", "crm.interactions.v1", "crm.loyalty.v1"}
