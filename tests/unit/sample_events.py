"""An event payload registered only by the unit tests."""

from __future__ import annotations

from crm_runtime.events import EventPayload, StrictEventPayload, event

UNIT_TOPIC = "unit.events.v1"


@event("unit.something_happened", topic=UNIT_TOPIC)
class SomethingHappened(EventPayload):
    customer_id: str
    points: int
    note: str | None = None


@event("unit.something_reported", topic=UNIT_TOPIC)
class SomethingReported(StrictEventPayload):
    """As another system would write it: unknown fields are refused."""

    customer_id: str
    points: int
