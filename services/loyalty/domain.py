"""Loyalty's model as pure values and functions, no I/O: its view of a
customer, the trust rules that decide whether it may contact them, and what
a discount is worth.

:class:`View` is what loyalty knows of one customer (kept current from the
customers' and interactions' events). The **trust rules** apply to every
action, whichever rule asks for it: :func:`trust_decision` (erasure,
do-not-contact, consent), a cheap check on loyalty's own view before the
contact gate of the customers service (which also applies the one frequency
cap and quiet hours every service shares) is asked; scheduled contacts move
out of quiet hours in the customer's time zone
(:mod:`crm_runtime.quiet_hours`). :class:`Decision` is what they made of one
action.

Discount codes (:func:`new_codes`, :func:`normalise_code`) and their
arithmetic (:func:`discount_amount`, :func:`redeem_refusal`) live here too.
The rule language (triggers, facts, conditions, actions) is
:mod:`services.loyalty.rules`.
"""

from __future__ import annotations

import base64
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from enum import StrEnum

from crm_contracts.vocabulary import ACTION_CHANNELS
from crm_runtime.errors import InvalidArgument

CHANNELS = ACTION_CHANNELS


class Purpose(StrEnum):
    """Why we contact the customer; it decides which consent is needed."""

    SERVICE = "service"  # about their own relationship (welcome, thanks, apology)
    PROMOTIONAL = "promotional"  # offers: needs promotional_offers consent
    NEWSLETTER = "newsletter"  # needs newsletter consent

    @property
    def gate_purpose(self) -> str:
        """The purpose the contact gate knows it by."""
        return "promotional_offers" if self is Purpose.PROMOTIONAL else self.value


class Outcome(StrEnum):
    PERFORMED = "performed"
    SUPPRESSED = "suppressed"  # a trust rule stopped it (recorded and published)
    SKIPPED = "skipped"  # nothing to do (already enrolled, already rewarded, not referred)


class Suppression(StrEnum):
    """Why an action was stopped: a trust rule, or a referral that cannot be
    attributed."""

    ERASED = "erased"
    DO_NOT_CONTACT = "do_not_contact"
    NO_PROMOTIONAL_CONSENT = "no_promotional_consent"
    NO_NEWSLETTER_CONSENT = "no_newsletter_consent"
    UNSUBSCRIBED = "unsubscribed"
    #: The customer signed up with a referral code loyalty never issued (or
    #: whose owner was erased): no referrer can be rewarded.
    UNKNOWN_REFERRAL_CODE = "unknown_referral_code"


class FollowUpStatus(StrEnum):
    SCHEDULED = "scheduled"
    DUE = "due"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


OPEN_FOLLOW_UP = (FollowUpStatus.SCHEDULED.value, FollowUpStatus.DUE.value)


# --- the customer view --------------------------------------------------------


@dataclass
class View:
    """Loyalty's view of one customer (stored in ``customer_view``)."""

    customer_id: uuid.UUID
    stage: str = "potential"
    purchase_count: int = 0
    last_purchase_at: datetime | None = None
    segments: list[str] = field(default_factory=list)
    preferred_channel: str = ""
    time_zone: str = ""
    referred_by: uuid.UUID | None = None
    referral_code: str | None = None
    newsletter_consent: bool = False
    newsletter_consent_at: datetime | None = None
    promotional_consent: bool = False
    promotional_consent_at: datetime | None = None
    do_not_contact: bool = False
    do_not_contact_at: datetime | None = None
    at_risk: bool = False
    erased_at: datetime | None = None
    merged_into: uuid.UUID | None = None

    def contact_state(self) -> ContactState:
        return ContactState(erased=self.erased_at is not None, do_not_contact=self.do_not_contact,
                            newsletter_consent=self.newsletter_consent,
                            promotional_consent=self.promotional_consent)

    def erase(self, now: datetime) -> None:
        """Forget the personal data; the id stays, so later events find the
        customer erased."""
        self.erased_at = now
        self.do_not_contact = True
        self.newsletter_consent = self.promotional_consent = False
        self.newsletter_consent_at = self.promotional_consent_at = None
        self.referral_code = None
        self.referred_by = None
        self.time_zone = self.preferred_channel = ""
        self.segments = []
        self.last_purchase_at = None

    def absorb(self, merged: View, *, stage: str, purchase_count: int) -> None:
        """Combine what is known of ``merged``, now an alias of this customer:
        the stage and count customers computed for the survivor,
        do-not-contact and risk from either, per consent the most recent
        decision, the latest purchase, the first referrer and zone and channel
        known. ``merged`` keeps its own referral code."""
        self.stage, self.purchase_count = stage, purchase_count
        self.do_not_contact = self.do_not_contact or merged.do_not_contact
        self.do_not_contact_at = max(filter(None, [self.do_not_contact_at,
                                                   merged.do_not_contact_at]), default=None)
        self.at_risk = self.at_risk or merged.at_risk
        if _later(merged.newsletter_consent_at, self.newsletter_consent_at):
            self.newsletter_consent = merged.newsletter_consent
            self.newsletter_consent_at = merged.newsletter_consent_at
        if _later(merged.promotional_consent_at, self.promotional_consent_at):
            self.promotional_consent = merged.promotional_consent
            self.promotional_consent_at = merged.promotional_consent_at
        self.last_purchase_at = max(filter(None, [self.last_purchase_at,
                                                  merged.last_purchase_at]), default=None)
        self.referred_by = self.referred_by or merged.referred_by
        if self.referred_by == self.customer_id:
            self.referred_by = None
        self.time_zone = self.time_zone or merged.time_zone
        self.preferred_channel = self.preferred_channel or merged.preferred_channel
        merged.merged_into = self.customer_id


def decided_before(held_at: datetime | None, at: datetime) -> bool:
    """Whether a consent decision made at ``at`` may replace the one held
    (made at ``held_at``): not when the held one is newer."""
    return held_at is None or held_at <= at


def may_enrol_again(unsubscribed_at: datetime | None, consent_at: datetime | None) -> bool:
    """Whether a list the customer left may enrol them again: only after a
    newsletter consent they granted later than they left it; no rule,
    campaign or replay does it otherwise."""
    return unsubscribed_at is None or (consent_at is not None and consent_at > unsubscribed_at)


def _later(a: datetime | None, b: datetime | None) -> bool:
    return a is not None and (b is None or a > b)


@dataclass(frozen=True)
class Decision:
    """What an action would do for whom: performed, suppressed or skipped."""

    action_type: str
    purpose: Purpose
    target: View | None
    outcome: Outcome
    reason: str = ""


# --- trust --------------------------------------------------------------------


@dataclass(frozen=True)
class ContactState:
    """What loyalty knows about whether it may contact a customer."""

    erased: bool = False
    do_not_contact: bool = False
    newsletter_consent: bool = False
    promotional_consent: bool = False


@dataclass(frozen=True)
class TrustPolicy:
    """When loyalty schedules a contact: out of the customer's quiet hours,
    in their zone (the default when unknown). The same settings the contact
    gate applies (``CRM_QUIET_HOURS_*``, ``CRM_DEFAULT_TIME_ZONE``)."""

    quiet_start: time = time(21, 0)
    quiet_end: time = time(8, 0)
    default_time_zone: str = "UTC"


def trust_decision(purpose: Purpose, state: ContactState) -> Suppression | None:
    """None when loyalty's view lets the action go ahead (the contact gate
    decides next), else why it is suppressed."""
    if state.erased:
        return Suppression.ERASED
    if state.do_not_contact:
        return Suppression.DO_NOT_CONTACT
    if purpose is Purpose.NEWSLETTER and not state.newsletter_consent:
        return Suppression.NO_NEWSLETTER_CONSENT
    if purpose is Purpose.PROMOTIONAL and not state.promotional_consent:
        return Suppression.NO_PROMOTIONAL_CONSENT
    return None


# --- discounts ----------------------------------------------------------------

CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud at a till
_CODE = re.compile(rf"^[{CODE_ALPHABET}]{{4}}(?:-[{CODE_ALPHABET}]{{4}}){{3}}$")


_FROM_BASE32 = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", CODE_ALPHABET)


def new_code() -> str:
    """A single-use code: 80 random bits from ``secrets``, written as 16
    characters of a 32-letter alphabet (5 bits each, so uniform)."""
    return new_codes(1)[0]


def _code_chars(raw: bytes) -> str:
    """``raw`` in the code alphabet: base32, 5 bits to a character."""
    return base64.b32encode(raw).decode().translate(_FROM_BASE32)


def new_codes(n: int) -> list[str]:
    """``n`` codes from one read of the system's random source."""
    # 10 bytes are 16 characters exactly, so one encoding of all n * 10 bytes
    # gives each code the characters its own 10 bytes would.
    chars = _code_chars(secrets.token_bytes(10 * n))
    return [f"{chars[i:i + 4]}-{chars[i + 4:i + 8]}-{chars[i + 8:i + 12]}-{chars[i + 12:i + 16]}"
            for i in range(0, 16 * n, 16)]


def new_referral_code() -> str:
    """``REF-`` and 10 characters of the code alphabet (50 random bits), from
    one read of the system's random source."""
    return "REF-" + _code_chars(secrets.token_bytes(10))[:10]


def normalise_code(text: str, field: str = "code") -> str:
    code = text.strip().upper().replace(" ", "")
    if len(code) == 16 and "-" not in code:
        code = "-".join(code[i:i + 4] for i in range(0, 16, 4))
    if not _CODE.match(code):
        raise InvalidArgument(field, "is not a discount code (XXXX-XXXX-XXXX-XXXX)")
    return code


@dataclass(frozen=True)
class DiscountState:
    kind: str
    percent: int | None
    amount_minor: int | None
    currency: str
    min_purchase_minor: int
    expires_at: datetime
    redeemed_at: datetime | None = None
    voided_at: datetime | None = None


def discount_amount(d: DiscountState, order_minor: int) -> int:
    """How much comes off an order: a percent rounds down; a fixed amount
    never exceeds the order."""
    if d.kind == "percent":
        assert d.percent is not None
        return order_minor * d.percent // 100
    assert d.amount_minor is not None
    return min(d.amount_minor, order_minor)


def redeem_refusal(d: DiscountState, now: datetime, order_minor: int,
                   order_currency: str) -> str | None:
    """None when the code can be used for this order, else a clear reason."""
    if d.voided_at is not None:
        return "the code was withdrawn"
    if d.redeemed_at is not None:
        return f"the code was already redeemed at {d.redeemed_at.isoformat()}"
    if now >= d.expires_at:
        return f"the code expired at {d.expires_at.isoformat()}"
    if order_currency != d.currency:
        return f"the code is for orders in {d.currency}, not {order_currency}"
    if order_minor < d.min_purchase_minor:
        return (f"the order ({order_minor} {order_currency} minor units) is below the minimum "
                f"purchase of {d.min_purchase_minor}")
    return None


def expiring_notice_at(issued_at: datetime, expires_at: datetime,
                       notice: timedelta) -> datetime | None:
    """When to announce that a discount expires soon; None when its whole
    validity is shorter than the notice."""
    at = expires_at - notice
    return at if at > issued_at else None
