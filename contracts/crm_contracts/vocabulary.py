"""The words both sides of an event use: where a payload field holds one of
a fixed set of values, the set is here, once."""

from __future__ import annotations

from enum import StrEnum

#: Channels a contact with the company happens on (``interaction.recorded``,
#: ``contact.received``, cases, surveys).
CONTACT_CHANNELS = ("in_person", "phone", "email", "web", "chat")
#: Channels loyalty's actions reach a customer on (follow-ups, newsletters).
ACTION_CHANNELS = ("email", "phone", "sms", "in_person", "web", "chat", "post")
#: Who started a contact.
DIRECTIONS = ("reactive", "proactive")
#: Kinds of contact.
KINDS = ("inquiry", "suggestion", "doubt", "complaint", "purchase", "support",
         "callback_request", "survey_response", "follow_up")
#: How a contact went for the customer (a negative one is a bad moment of truth).
OUTCOMES = ("positive", "neutral", "negative")
#: Kinds of contact that open a case when recorded.
CASE_KINDS = ("complaint", "support", "callback_request", "inquiry", "doubt")
#: Kinds that open a case on their own when recorded as an interaction.
AUTO_CASE_KINDS = ("complaint", "support", "callback_request")
#: Why a customer is dissatisfied (a negative contact's or a case's cause).
DISSATISFACTION_CAUSES = ("price_felt_high", "slow_delivery", "no_answer_after_paying",
                          "bad_treatment", "product_failure", "return")
#: Direct attention (the customer asks and decides) or indirect (someone asks
#: or decides for them).
ATTENTION_MODES = ("direct", "indirect")
#: Scales of a survey question: CSAT 1-5, NPS 0-10, yes/no (1 = yes, 0 = no).
SURVEY_SCALES = ("csat", "nps", "yes_no")
#: How important the purchase is to the customer (a segmentation attribute).
PURCHASE_IMPORTANCE = ("low", "medium", "high")


class Stage(StrEnum):
    """Relationship stage (tipo de relación)."""

    POTENTIAL = "potential"  # known to us, has not bought yet
    ONE_TIME = "one_time"  # exactly one purchase
    REPEAT = "repeat"  # two or more purchases
    FORMER = "former"  # stopped buying, or closed the relationship


#: The stages, in their order.
STAGES = tuple(s.value for s in Stage)


class ConsentPurpose(StrEnum):
    """What a customer may consent to be contacted for
    (``customer.consent_changed``'s ``purpose``, beside ``do_not_contact``)."""

    NEWSLETTER = "newsletter"
    PROMOTIONAL_OFFERS = "promotional_offers"
    SURVEYS = "surveys"


#: The consent purposes, in their order.
CONSENT_PURPOSES = tuple(p.value for p in ConsentPurpose)
#: ``customer.consent_changed``'s purpose for the do-not-contact flag.
DO_NOT_CONTACT = "do_not_contact"
#: What a proactive contact is for, as the contact gate knows it: service
#: (about the customer's own relationship: needs no consent beyond the
#: absence of do-not-contact) or one of the consent purposes.
SERVICE_PURPOSE = "service"
CONTACT_PURPOSES = (SERVICE_PURPOSE, *CONSENT_PURPOSES)


class ContactRefusal(StrEnum):
    """Why the contact gate (``Customers/ReserveContacts``) refused a
    proactive contact; the reasons ``contact.suppressed`` and
    ``loyalty.action_suppressed`` carry for it."""

    UNKNOWN_CUSTOMER = "unknown_customer"
    ERASED = "erased"
    DO_NOT_CONTACT = "do_not_contact"
    NO_SURVEYS_CONSENT = "no_surveys_consent"
    NO_PROMOTIONAL_OFFERS_CONSENT = "no_promotional_offers_consent"
    NO_NEWSLETTER_CONSENT = "no_newsletter_consent"
    #: Over the customer's contact cap; ``not_before``: when the oldest
    #: counted contact leaves the window.
    FREQUENCY_CAP = "frequency_cap"
    #: In the customer's quiet hours; ``not_before``: when they end.
    QUIET_HOURS = "quiet_hours"
