"""Loyalty's view of a customer: erasure and merging are pure changes to it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from services.loyalty.domain import View

T0 = datetime(2031, 3, 1, 12, tzinfo=UTC)


def test_erasure_keeps_the_id_and_forgets_the_rest() -> None:
    view = View(customer_id=uuid.uuid4(), stage="repeat", segments=["vip"],
                time_zone="Europe/Rome",
                preferred_channel="email", referral_code="REF-ABCDEFGHJK",
                referred_by=uuid.uuid4(), newsletter_consent=True, newsletter_consent_at=T0,
                promotional_consent=True, promotional_consent_at=T0, last_purchase_at=T0)
    view.erase(T0)
    assert view == View(customer_id=view.customer_id, stage="repeat", erased_at=T0,
                        do_not_contact=True)
    assert view.contact_state().erased


def test_a_merge_keeps_the_latest_consent_and_either_refusal() -> None:
    survivor = View(customer_id=uuid.uuid4(), newsletter_consent=True,
                    newsletter_consent_at=T0, promotional_consent=False,
                    promotional_consent_at=T0, last_purchase_at=T0, preferred_channel="sms")
    merged = View(customer_id=uuid.uuid4(), newsletter_consent=False,
                  newsletter_consent_at=T0 - timedelta(days=1), promotional_consent=True,
                  promotional_consent_at=T0 + timedelta(days=1), do_not_contact=True,
                  at_risk=True, last_purchase_at=T0 + timedelta(days=2),
                  referred_by=survivor.customer_id, time_zone="Europe/Rome",
                  preferred_channel="email", referral_code="REF-ABCDEFGHJK")
    survivor.absorb(merged, stage="repeat", purchase_count=4)
    assert (survivor.stage, survivor.purchase_count) == ("repeat", 4)
    assert survivor.newsletter_consent and survivor.promotional_consent
    assert survivor.promotional_consent_at == T0 + timedelta(days=1)
    assert survivor.do_not_contact and survivor.at_risk
    assert survivor.last_purchase_at == T0 + timedelta(days=2)
    assert survivor.referred_by is None  # never its own referrer
    assert (survivor.time_zone, survivor.preferred_channel) == ("Europe/Rome", "sms")
    assert survivor.referral_code is None  # the merged record's code stays its own
    assert merged.merged_into == survivor.customer_id
