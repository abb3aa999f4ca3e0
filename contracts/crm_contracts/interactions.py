"""Events the interactions service publishes on ``crm.interactions.v1``.

The customers and loyalty services consume these payloads; the ingest
topic's ``contact.received`` is written by other systems (channels).

No event the product publishes carries personal data: no contact detail
(email, phone, callback number), no name and no free text an agent or a
customer wrote (notes, resolutions, reasons); a consumer reads those over
gRPC, where erasure and scopes apply. A topic read from its start can
therefore never rebuild an erased customer's details."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from crm_contracts.base import EventPayload, StrictEventPayload, Text, event
from crm_contracts.money import MAX_AMOUNT_MINOR
from crm_contracts.times import Rfc3339
from crm_contracts.topics import INTERACTIONS, INTERACTIONS_INGEST
from crm_contracts.vocabulary import DISSATISFACTION_CAUSES, SURVEY_SCALES


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
    attention: str = Field(default="direct", examples=["direct", "indirect"],
                           description="Indirect: someone asked or decides for the customer.")
    requester_customer_id: str = Field(default="", description="Indirect attention: who asked.")
    decision_maker_customer_id: str = Field(default="",
                                            description="Indirect attention: who decides.")
    cause: str = Field(default="", examples=list(DISSATISFACTION_CAUSES),
                       description="A negative contact's or complaint's dissatisfaction cause.")


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
                                  "breached_promise", "negative_contact"])
    occurred_at: datetime
    score: int | None = None
    interaction_id: str = ""
    case_id: str = ""
    cause: str = Field(default="", examples=list(DISSATISFACTION_CAUSES),
                       description="The dissatisfaction cause the contact or case stated.")
    touchpoint: str = Field(default="", description="The moment of truth it happened at.")


class _CaseEvent(EventPayload):
    case_id: str
    customer_id: str
    kind: str = Field(examples=["complaint", "support", "callback_request", "inquiry"])
    channel: str = Field(examples=["phone", "in_person", "web"])
    unit: str = Field(default="", description="The unit that owns the case now.")


@event("case.opened", topic=INTERACTIONS)
class CaseOpened(_CaseEvent):
    """A request opened a case; the customer was told the promised times."""

    interaction_id: str = ""
    opened_at: datetime
    promised_earliest_at: datetime = Field(description="Minimum time the request takes.")
    promised_by: datetime = Field(description="Deadline: the maximum time promised (the "
                                              "resolution milestone's due time).")
    first_response_by: datetime | None = Field(
        default=None, description="The first-response milestone's due time; absent when the "
                                  "case's policy promises none.")
    calendar: str = Field(default="always",
                          description="The business-hours calendar the promise counts on.")
    entitlement: str = Field(default="", description="The customer segment whose policy the "
                                                     "case got ('' for the general policy).")
    cause: str = Field(default="", examples=list(DISSATISFACTION_CAUSES),
                       description="The dissatisfaction cause, if stated.")
    touchpoint: str = Field(default="", description="The moment of truth it arose at.")


@event("case.acknowledged", topic=INTERACTIONS)
class CaseAcknowledged(_CaseEvent):
    acknowledged_at: datetime
    agent: str = ""


@event("case.transferred", topic=INTERACTIONS)
class CaseTransferred(_CaseEvent):
    """Routed to another unit; the promise and its clock are kept (the
    reason given is read with ``GetCase``)."""

    from_unit: str
    promised_by: datetime = Field(description="The resolution's due time after the transfer: "
                                              "the business time elapsed is kept, the rest "
                                              "counts on the receiving unit's calendar.")
    first_response_by: datetime | None = None


@event("case.resolved", topic=INTERACTIONS)
class CaseResolved(_CaseEvent):
    """The case is resolved (what was done is read with ``GetCase``)."""

    resolved_at: datetime
    promised_by: datetime
    late: bool = Field(description="Resolved after the promised deadline.")


@event("case.reopened", topic=INTERACTIONS)
class CaseReopened(_CaseEvent):
    reopened_at: datetime
    promised_by: datetime


@event("case.breach_warning", topic=INTERACTIONS)
class CaseBreachWarning(_CaseEvent):
    """A milestone's due time is near and the milestone is not met (once per
    milestone)."""

    promised_by: datetime = Field(description="The resolution's due time.")
    milestone: str = Field(default="resolution", examples=["first_response", "resolution"])
    due_at: datetime | None = Field(default=None, description="The milestone's due time.")


@event("case.breached", topic=INTERACTIONS)
class CaseBreached(_CaseEvent):
    """The promised deadline passed with the case unresolved.

    Published once per case and milestone: by the scheduler at the
    milestone's due time, or, when the milestone is met late before the
    scheduler got to it, just before the event that met it. Only a missed
    resolution raises ``customer.dissatisfaction_signal`` and marks the case
    breached."""

    promised_by: datetime = Field(description="The resolution's due time.")
    milestone: str = Field(default="resolution", examples=["first_response", "resolution"])
    due_at: datetime | None = Field(default=None, description="The milestone's due time.")


@event("case.paused", topic=INTERACTIONS)
class CasePaused(_CaseEvent):
    """The case waits on the customer: its promise's clock is stopped (the
    reason given is read with ``ListCases``)."""

    paused_at: datetime


@event("case.resumed", topic=INTERACTIONS)
class CaseResumed(_CaseEvent):
    """The clock runs again; the due times moved by the time paused."""

    resumed_at: datetime
    cause: str = Field(examples=["agent", "customer_contact", "resolved"])
    promised_by: datetime
    first_response_by: datetime | None = None


@event("case.promise_moved", topic=INTERACTIONS)
class CasePromiseMoved(_CaseEvent):
    """An operator moved open cases to a new version of their calendar: the
    business time elapsed is kept, the rest counts on the new version."""

    cause: str = Field(examples=["calendar_changed"])
    calendar: str
    calendar_version: int
    promised_by: datetime
    first_response_by: datetime | None = None


class SurveyQuestion(BaseModel):
    """A question of a survey, taken from a service cycle's matrix: the
    answer names ``question_id`` and gives a score on ``scale``."""

    model_config = ConfigDict(frozen=True)

    question_id: str
    cycle: str
    cycle_version: int
    touchpoint: str = Field(description="The moment of truth.")
    requirement_id: str
    text: str
    scale: str = Field(examples=list(SURVEY_SCALES),
                       description="csat 1-5, nps 0-10, yes_no 1 = yes, 0 = no.")


@event("survey.requested", topic=INTERACTIONS)
class SurveyRequested(EventPayload):
    """Ask the customer how a case went (``reason`` case_resolved; never sent
    while one of their complaints is still open), or a cycle's periodic
    survey of a segment (``reason`` periodic). ``questions`` are the active
    cycles' requirements for the touchpoint(s) involved on the channel
    (none when no cycle knows them: ask a general CSAT question)."""

    customer_id: str
    case_id: str = ""
    interaction_id: str = ""
    touchpoint: str = ""
    channel: str = ""
    unit: str = ""
    reason: str = Field(default="case_resolved", examples=["case_resolved", "periodic"])
    cycle: str = Field(default="", description="Periodic: the cycle that asks.")
    questions: list[SurveyQuestion] = Field(default_factory=list)


class CriterionResult(BaseModel):
    """One criterion of a mystery-shopping evaluation and its score."""

    model_config = ConfigDict(frozen=True)

    touchpoint: str
    requirement_id: str
    scale: str = Field(examples=["yes_no", "one_to_five"])
    weight: int
    score: int


@event("service.evaluation_recorded", topic=INTERACTIONS)
class EvaluationRecorded(EventPayload):
    """A mystery shopper's evaluation of a unit on a channel against a
    service cycle version (the evaluator's name and notes are read with
    ``ListEvaluations``). It concerns no customer: its key (and subject) is
    ``unit:<unit>``."""

    kafka_key: ClassVar[str] = ("unit:<unit>: one unit's evaluations stay in order on one "
                                "partition.")

    evaluation_id: str
    cycle: str
    cycle_version: int
    unit: str
    channel: str
    visited_at: datetime
    score: float = Field(ge=0, le=100, description="Weighted score, 0-100.")
    criteria: list[CriterionResult] = Field(default_factory=list)


@event("contact.outside_quiet_hours", topic=INTERACTIONS)
class ContactOutsideQuietHours(EventPayload):
    """A proactive contact was made in the customer's quiet hours (an agent
    logged a call they made at 22:00): it is recorded and counted in the
    customer's contact cap like any other (it happened), and published for
    supervisors to follow up. Contacts asked for beforehand (survey
    requests, loyalty's actions) are deferred instead."""

    interaction_id: str
    customer_id: str
    channel: str = Field(examples=["phone"])
    occurred_at: datetime


INGEST_TOPIC = INTERACTIONS_INGEST


@event("contact.received", topic=INGEST_TOPIC)
class ContactReceived(StrictEventPayload):
    """A raw contact published by a channel (shop, POS, call centre, chat) on
    the ingest topic. Give ``customer_id``, or ``contact_email`` /
    ``contact_phone`` for someone not known yet."""

    idempotency_key: str = Field(min_length=1, max_length=200,
                                 description="The channel's id of this contact.")
    customer_id: Text = ""
    contact_email: Text = ""
    contact_phone: Text = ""
    channel: Text = Field(examples=["web"])
    direction: Text = "reactive"
    kind: Text = Field(examples=["purchase", "complaint", "inquiry"])
    touchpoint: Text = ""
    agent: Text = ""
    unit: Text = ""
    occurred_at: Rfc3339 = Field(
        description="When the contact happened: RFC 3339 with an offset (Z or +hh:mm), "
                    "from 2000-01-01 to at most 15 minutes after the CRM's time.")
    outcome: Text = "neutral"
    notes: str = Field("", max_length=10_000)
    amount_minor: int = Field(0, ge=0, le=MAX_AMOUNT_MINOR)
    currency: Text = ""
    attention: Text = "direct"
    requester_customer_id: Text = ""
    decision_maker_customer_id: Text = ""
    case_id: Text = Field("", description="The open case this contact is about: a proactive "
                                          "contact meets its first response, one from the "
                                          "customer resumes it when it waits on them.")
    cause: Text = Field("", description="A negative contact's or complaint's dissatisfaction "
                                        "cause: " + ", ".join(DISSATISFACTION_CAUSES) + ".")


@event("contact.suppressed", topic=INTERACTIONS)
class ContactSuppressed(EventPayload):
    """A proactive contact the trust rules stopped (erased, do-not-contact, no
    consent for its purpose, the contact cap, quiet hours): recorded and
    published, never silently dropped (loyalty's own actions have
    ``loyalty.action_suppressed``)."""

    contact_id: str = Field(description="Stable id of the contact that was stopped.")
    customer_id: str
    contact_type: str = Field(examples=["survey_request", "proactive_contact"])
    purpose: str = Field(examples=["surveys", "service"],
                         description="The consent purpose it needed (service: none beyond "
                                     "do-not-contact).")
    reason: str = Field(examples=["do_not_contact", "no_surveys_consent", "erased",
                                  "frequency_cap", "quiet_hours"])
    case_id: str = ""
    interaction_id: str = ""
