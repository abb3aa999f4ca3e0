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


@event("survey.response_recorded", topic=INTERACTIONS)
class SurveyResponseRecorded(EventPayload):
    """A customer answered a satisfaction survey for a touchpoint."""

    survey_response_id: str
    customer_id: str
    touchpoint: str = ""
    channel: str = ""
    csat: int | None = Field(default=None, ge=1, le=5, description="CSAT, 1-5.")
    nps: int | None = Field(default=None, ge=0, le=10, description="NPS answer, 0-10.")
    occurred_at: datetime
    interaction_id: str = ""
    case_id: str = ""


@event("customer.dissatisfaction_signal", topic=INTERACTIONS)
class DissatisfactionSignal(EventPayload):
    """A sign that a customer is unhappy even if they did not complain."""

    customer_id: str
    reason: str = Field(examples=["low_csat", "low_nps", "repeated_complaint",
                                  "breached_promise"])
    occurred_at: datetime
    score: int | None = None
    interaction_id: str = ""
    case_id: str = ""
