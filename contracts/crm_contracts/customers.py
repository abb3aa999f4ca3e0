"""Events the customers service publishes on ``crm.customers.v1``.

The subject and message key of every event is the customer id."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from crm_contracts.base import EventPayload, event
from crm_contracts.topics import CUSTOMERS
from crm_contracts.vocabulary import PURCHASE_IMPORTANCE


@event("customer.registered", topic=CUSTOMERS)
class CustomerRegistered(EventPayload):
    """A new customer is known to us (stage ``potential``)."""

    customer_id: str = Field(description="Customer id (UUID).")
    stage: str = Field(examples=["potential"])
    preferred_channel: str = ""
    time_zone: str = Field(default="", description="IANA zone, when known (quiet hours).")
    purchase_importance: str = Field(default="", examples=list(PURCHASE_IMPORTANCE),
                                     description="How important the purchase is to the "
                                                 "customer ('' = unknown): a segmentation "
                                                 "attribute.")
    has_email: bool = False
    has_phone: bool = False
    source: str = Field(default="", description="Registering system.")
    referred_by: str = Field(default="", description="Referrer's customer id, when referred.")
    referral_code: str = Field(
        default="", examples=["REF-AB23CD45EF"],
        description="The referral code the customer signed up with "
                    "(RegisterCustomer.referral_code, normalised), when given; the loyalty "
                    "service resolves it to the referrer. Empty when referred_by is given.")


@event("customer.updated", topic=CUSTOMERS)
class CustomerUpdated(EventPayload):
    customer_id: str
    version: int
    changed: list[str] = Field(description="Names of the fields that changed.")


@event("customer.purchase_recorded", topic=CUSTOMERS)
class PurchaseRecorded(EventPayload):
    """A purchase counted for the customer (once per purchase id)."""

    customer_id: str
    purchase_id: str
    amount_minor: int
    currency: str
    occurred_at: datetime
    purchase_count: int = Field(description="Purchases counted so far, this one included.")
    causing_event_id: str = ""


@event("customer.stage_changed", topic=CUSTOMERS)
class StageChanged(EventPayload):
    customer_id: str
    from_stage: str = Field(examples=["one_time"])
    to_stage: str = Field(examples=["repeat"])
    cause: str = Field(examples=["purchase", "churn_window", "closed"])
    causing_event_id: str = Field(description="The event (or request) that caused it.")
    purchase_count: int
    segment_keys: list[str] = Field(default_factory=list)


@event("customer.won_back", topic=CUSTOMERS)
class CustomerWonBack(EventPayload):
    """A former customer bought again."""

    customer_id: str
    causing_event_id: str


@event("customer.consent_changed", topic=CUSTOMERS)
class ConsentChanged(EventPayload):
    """The customer's decision on one purpose changed (the customers service
    is its one source of truth; an unsubscribe made through loyalty arrives
    here as ``loyalty.consent_withdrawn`` first). Consumers keep the decision
    with the latest ``changed_at`` per purpose: an older one never overrides a
    newer one, so a withdrawal is undone only by a newer grant."""

    customer_id: str
    purpose: str = Field(examples=["newsletter", "promotional_offers", "surveys",
                                   "do_not_contact"],
                         description="A consent purpose, or do_not_contact (granted: the "
                                     "customer must not be contacted at all).")
    granted: bool = Field(description="The state: granted (true) or withdrawn (false).")
    source: str = Field(default="", examples=["web_form", "loyalty:unsubscribe"],
                        description="Where the decision was made.")
    changed_at: datetime | None = Field(
        default=None, description="When the customer decided; absent in events published "
                                  "before it existed (the event's time then).")


@event("customer.erased", topic=CUSTOMERS)
class CustomerErased(EventPayload):
    """Personal data was removed; other services must scrub theirs."""

    customer_id: str


@event("customer.linked", topic=CUSTOMERS)
class CustomersLinked(EventPayload):
    """A requester acts for a decision-maker (indirect attention)."""

    customer_id: str = Field(description="The requester.")
    decision_maker_id: str
    role: str = Field(examples=["employee_of", "buys_for", "candidate_of"])


@event("customer.merged", topic=CUSTOMERS)
class CustomersMerged(EventPayload):
    """``merged_customer_id`` is now an alias of ``customer_id`` (the survivor):
    re-point records held under the merged id."""

    customer_id: str = Field(description="The survivor.")
    merged_customer_id: str
    stage: str
    purchase_count: int


@event("customer.at_risk", topic=CUSTOMERS)
class CustomerAtRisk(EventPayload):
    """Satisfaction signals say this customer may leave silently."""

    customer_id: str
    reasons: list[str] = Field(examples=[["low_csat", "breached_promise"]])
    causing_event_id: str


@event("customer.risk_cleared", topic=CUSTOMERS)
class CustomerRiskCleared(EventPayload):
    customer_id: str
    causing_event_id: str


#: Why a segment's membership was evaluated when it changed.
SEGMENT_CAUSES = ["purchase", "profile", "consent", "stage", "risk", "survey", "registered",
                  "merge", "segment_defined", "segment_deleted", "schedule"]


@event("customer.segment_entered", topic=CUSTOMERS)
class SegmentEntered(EventPayload):
    """The customer now matches the segment's filter. Consumers keep, per
    (customer, segment), the change (entered or left) with the latest
    ``changed_at``: a late or replayed older one changes nothing."""

    customer_id: str
    segment: str
    changed_at: datetime = Field(description="When the evaluation that found the change ran.")
    cause: str = Field(examples=SEGMENT_CAUSES, description="What made the evaluation run.")


@event("customer.segment_left", topic=CUSTOMERS)
class SegmentLeft(EventPayload):
    """The customer no longer matches the segment's filter, the segment was
    deleted (cause ``segment_deleted``) or the customer was merged into
    another (cause ``merge``; the survivor enters the segments it matches).
    The latest ``changed_at`` per (customer, segment) wins, as for
    ``customer.segment_entered``."""

    customer_id: str
    segment: str
    changed_at: datetime = Field(description="When the evaluation that found the change ran.")
    cause: str = Field(examples=SEGMENT_CAUSES, description="What made the evaluation run.")
