"""Events the interactions service publishes on ``crm.interactions.v1``.

The contract comes first: the customers and loyalty services consume these
payloads, so they live here, owned by the service that publishes them."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from crm_runtime.events import EventPayload, event
from crm_runtime.topics import INTERACTIONS


@event("interaction.recorded", topic=INTERACTIONS)
class InteractionRecorded(EventPayload):
    """A contact between a customer and the company (a moment of truth)."""

    interaction_id: str
    customer_id: str
    channel: str = Field(examples=["in_person", "phone", "email", "web", "chat"])
    direction: str = Field(examples=["reactive", "proactive"])
    kind: str = Field(examples=["inquiry", "complaint", "purchase", "support"])
    occurred_at: datetime
    outcome: str = Field(default="neutral", examples=["positive", "neutral", "negative"])
    touchpoint: str = ""
    unit: str = ""
    amount_minor: int = Field(default=0, ge=0, description="Purchases: amount in minor units.")
    currency: str = Field(default="", description="Purchases: ISO 4217 code.")
