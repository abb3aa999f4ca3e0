"""Events the loyalty service publishes on ``crm.loyalty.v1``, the topic
marketing consumes. The subject and message key of every event is the
customer the action is for (for a referral reward, the referrer), except a
campaign's progress (``campaign:<campaign_id>``).

An action comes from a rule (``rule_id``) or from a campaign
(``campaign_id`` and ``campaign_run``, with ``rule_id`` empty)."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from pydantic import Field

from crm_contracts.base import EventPayload, event
from crm_contracts.topics import LOYALTY

_CUSTOMER = Field(description="Customer id (UUID) the action is for.",
                  examples=["1b4e28ba-2fa1-11d2-883f-0016d3cca427"])
_RULE = Field(description="Id of the rule that caused the action (empty for a campaign's).",
              examples=["repeat-buyer-discount"])
_CAMPAIGN = Field(default="", description="Id of the campaign that caused the action "
                  "(empty for a rule's).", examples=["spring-newsletter"])
_RUN = Field(default=0, description="The campaign's run (1, 2, ... ; 0 for a rule's action).",
             examples=[1])


@event("loyalty.followup_scheduled", topic=LOYALTY)
class FollowUpScheduled(EventPayload):
    """A follow-up contact is planned for ``due_at`` (already moved out of
    the customer's quiet hours)."""

    follow_up_id: str = Field(description="Follow-up id (UUID), stable across redeliveries.")
    customer_id: str = _CUSTOMER
    rule_id: str = _RULE
    rule_version: int = Field(description="Version of the rule when it fired.", examples=[1])
    channel: str = Field(examples=["email", "phone"])
    template: str = Field(description="Message template marketing renders.",
                          examples=["thank_you_first_purchase"])
    reason: str = Field(examples=["Thank the customer for their first purchase"])
    purpose: str = Field(description="service, promotional or newsletter.",
                         examples=["service"])
    due_at: datetime
    trigger_event_id: str = Field(description="The event that caused it.")
    campaign_id: str = _CAMPAIGN
    campaign_run: int = _RUN


@event("loyalty.followup_due", topic=LOYALTY)
class FollowUpDue(EventPayload):
    """A scheduled follow-up is due now: make the contact."""

    follow_up_id: str
    customer_id: str = _CUSTOMER
    channel: str = Field(examples=["email"])
    template: str = Field(examples=["welcome"])
    reason: str
    purpose: str = Field(examples=["service"])
    due_at: datetime


@event("loyalty.followup_completed", topic=LOYALTY)
class FollowUpCompleted(EventPayload):
    follow_up_id: str
    customer_id: str = _CUSTOMER
    outcome: str = Field(description="What happened, as told by the caller.",
                         examples=["contacted", "no_answer", "left_message"])
    completed_at: datetime


@event("loyalty.followup_cancelled", topic=LOYALTY)
class FollowUpCancelled(EventPayload):
    follow_up_id: str
    customer_id: str = _CUSTOMER
    reason: str = Field(examples=["erased", "do_not_contact", "unsubscribed",
                                  "moot:customer.won_back", "cancelled_by_user"])


@event("loyalty.newsletter_enrolled", topic=LOYALTY)
class NewsletterEnrolled(EventPayload):
    customer_id: str = _CUSTOMER
    list: str = Field(description="Newsletter list.", examples=["monthly"])
    rule_id: str = _RULE


@event("loyalty.newsletter_unsubscribed", topic=LOYALTY)
class NewsletterUnsubscribed(EventPayload):
    """Takes effect at once: send nothing more on this list."""

    customer_id: str = _CUSTOMER
    list: str = Field(examples=["monthly"])
    reason: str = Field(examples=["customer_request", "consent_withdrawn", "do_not_contact",
                                  "erased"])


@event("loyalty.consent_withdrawn", topic=LOYALTY)
class ConsentWithdrawn(EventPayload):
    """The customer withdrew a consent through loyalty (an unsubscribe from
    every newsletter list). Loyalty honoured it at once; the customers
    service, which owns consent, records it and publishes
    ``customer.consent_changed`` unless the customer granted it again later."""

    customer_id: str = _CUSTOMER
    purpose: str = Field(examples=["newsletter"])
    source: str = Field(examples=["loyalty:unsubscribe"])
    withdrawn_at: datetime = Field(description="When the customer asked.")


@event("loyalty.discount_issued", topic=LOYALTY)
class DiscountIssued(EventPayload):
    """A single-use discount code for the customer."""

    discount_id: str = Field(description="Discount id (UUID), stable across redeliveries.")
    customer_id: str = _CUSTOMER
    code: str = Field(description="The single-use code to give the customer.",
                      examples=["K7QM-2XHD-9PWA-TR4E"])
    kind: str = Field(examples=["percent", "fixed"])
    percent: int | None = Field(default=None, examples=[10])
    amount_minor: int | None = Field(default=None, description="Fixed discounts, minor units.",
                                     examples=[1000])
    currency: str = Field(examples=["EUR"])
    min_purchase_minor: int = Field(default=0, examples=[5000])
    expires_at: datetime
    rule_id: str = _RULE
    purpose: str = Field(examples=["promotional", "service"])
    reason: str = Field(default="", examples=["Thank you for buying again"])
    campaign_id: str = _CAMPAIGN
    campaign_run: int = _RUN


@event("loyalty.discount_redeemed", topic=LOYALTY)
class DiscountRedeemed(EventPayload):
    discount_id: str
    customer_id: str = _CUSTOMER
    order_id: str = Field(description="The checkout system's order id.", examples=["web-10045"])
    discount_minor: int = Field(description="Amount taken off the order.", examples=[1250])
    currency: str = Field(examples=["EUR"])
    redeemed_at: datetime


@event("loyalty.discount_expiring", topic=LOYALTY)
class DiscountExpiring(EventPayload):
    """An unredeemed discount expires soon (a reminder for marketing)."""

    discount_id: str
    customer_id: str = _CUSTOMER
    code: str
    expires_at: datetime


@event("loyalty.action_suppressed", topic=LOYALTY)
class ActionSuppressed(EventPayload):
    """A rule asked for an action that a trust rule stopped; recorded, not
    silently dropped."""

    action_id: str
    customer_id: str = _CUSTOMER
    rule_id: str = _RULE
    action_type: str = Field(examples=["discount", "follow_up", "newsletter",
                                       "referral_reward"])
    purpose: str = Field(examples=["promotional"])
    reason: str = Field(examples=["frequency_cap", "do_not_contact", "no_promotional_consent",
                                  "no_newsletter_consent", "erased"])
    trigger_event_id: str
    campaign_id: str = _CAMPAIGN
    campaign_run: int = _RUN


@event("loyalty.referral_rewarded", topic=LOYALTY)
class ReferralRewarded(EventPayload):
    """The referred customer made a first purchase; the referrer (the
    subject) is rewarded, once per referred customer."""

    customer_id: str = Field(description="The referrer.")
    referred_customer_id: str
    discount_id: str
    rule_id: str = _RULE


@event("loyalty.newsletter_issue_due", topic=LOYALTY)
class NewsletterIssueDue(EventPayload):
    """A campaign asks marketing to send this issue of a newsletter to the
    customer now: the customer consents to newsletters, has not left the
    list, and the contact gate counted the contact."""

    action_id: str = Field(description="Stable per (campaign, run, customer): dedupe on it.")
    customer_id: str = _CUSTOMER
    campaign_id: str = Field(examples=["spring-newsletter"])
    campaign_run: int = Field(examples=[1])
    list: str = Field(examples=["monthly"])
    issue: str = Field(description="The issue's template.", examples=["spring-2027"])
    channel: str = Field(examples=["email"])
    purpose: str = Field(default="newsletter", examples=["newsletter"])


@event("loyalty.campaign_progress", topic=LOYALTY)
class CampaignProgress(EventPayload):
    """Where a campaign's run stands: on every change of state (started,
    paused, resumed, done, cancelled) and, while it sends, at most every
    30 seconds. It concerns no customer: its key (and subject) is
    ``campaign:<campaign_id>``."""

    kafka_key: ClassVar[str] = ("campaign:<campaign_id>: one campaign's progress stays in "
                                "order on one partition.")

    campaign_id: str = Field(examples=["spring-newsletter"])
    run: int = Field(examples=[1])
    state: str = Field(examples=["running", "paused", "done", "cancelled"])
    targeted: int = Field(description="Members of the run.", examples=[12000])
    sent: int = Field(examples=[9500])
    suppressed: int = Field(examples=[300])
    skipped: int = Field(examples=[20])
    pending: int = Field(examples=[2180])
    suppressed_by_reason: dict[str, int] = Field(default_factory=dict,
                                                 examples=[{"frequency_cap": 250}])
    skipped_by_reason: dict[str, int] = Field(default_factory=dict,
                                              examples=[{"left_segment": 20}])
    at: datetime
