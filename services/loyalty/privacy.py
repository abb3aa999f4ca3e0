"""The loyalty service's part of a customer's data-subject export
(``Loyalty/ExportCustomerData``, asked by the customers service, which
assembles every service's part into ``Customers/ExportCustomer``).

The part holds every row of the schema about the customer: loyalty's view of
them (stage, consents, do-not-contact, referral code and referrer, ...) and
the views of the ids merged into them (each keeps its own referral code);
the actions rules took for them (performed, suppressed with the reason, or
skipped); follow-ups; newsletter enrolments; discount codes, each with its
redemption (the order) or withdrawal; and the referral rewards where they are
the referrer or the referred; the segments loyalty knows them in
(``segment_memberships``, with when each last changed; erasure forgets
them) and what each campaign's run did for them (``campaigns``: sent,
suppressed or skipped, with the reason and the action's id). A merged id
exports its survivor's records, with those still held under any id merged
into the survivor (loyalty's aliases, and those the caller names).

:data:`EXPORT_COLUMNS` maps each column to its place in the part and
:data:`NOT_EXPORTED` says why the others are left out;
``tests/integration/test_export_coverage.py`` fails when a migration adds a
column that neither lists. An id loyalty holds nothing for is an empty part:
whether it is a customer is for the customers service to say.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from crm_runtime.convert import json_default
from crm_runtime.db import Conn
from services.loyalty import campaign_store, store

SERVICE = "loyalty"

#: The columns of a discount that say how it was used.
_REDEMPTION = ("redeemed_at", "order_id", "order_minor", "discount_minor")


def _fields(path: str, *columns: str) -> dict[str, str]:
    """Columns exported as the same-named fields of ``path`` (``key`` or ``key[]``)."""
    return {c: f"{path}.{c}" for c in columns}


#: Where each column of the schema's customer tables appears in the part (a
#: path: ``key``, ``key[]`` an entry of a list, ``key[].field`` a field of its
#: entries).
EXPORT_COLUMNS: dict[str, dict[str, str]] = {
    "customer_view": _fields(
        "view", "customer_id", "stage", "purchase_count", "last_purchase_at", "segments",
        "preferred_channel", "time_zone", "referred_by", "referral_code", "newsletter_consent",
        "newsletter_consent_at", "promotional_consent", "promotional_consent_at",
        "do_not_contact", "do_not_contact_at", "at_risk", "erased_at", "merged_into",
        "updated_at"),
    "actions": _fields(
        "actions[]", "action_id", "customer_id", "rule_id", "rule_version", "action_index",
        "action_type", "purpose", "trigger_event_id", "trigger_type", "outcome", "reason", "at"),
    "follow_ups": _fields(
        "follow_ups[]", "follow_up_id", "customer_id", "rule_id", "channel", "template",
        "reason", "purpose", "list", "cancel_on", "status", "requested_at", "due_at",
        "created_at", "fired_at", "closed_at", "outcome", "note"),
    "enrolments": _fields("enrolments[]", "customer_id", "list", "status", "rule_id",
                          "enrolled_at", "unsubscribed_at"),
    "discounts": {
        **_fields("discounts[]", "discount_id", "code", "customer_id", "rule_id", "kind",
                  "percent", "amount_minor", "currency", "min_purchase_minor", "purpose",
                  "reason", "issued_at", "expires_at", "voided_at", "void_reason"),
        **_fields("discounts[].redemption", *_REDEMPTION)},
    "referral_rewards": _fields("referral_rewards[]", "referred_customer_id", "referrer_id",
                                "discount_id", "rule_id", "at"),
    "segment_members": _fields("segment_memberships[]", "customer_id", "segment", "member",
                               "changed_at"),
    "campaign_members": _fields("campaigns[]", "campaign_id", "run", "customer_id", "outcome",
                                "reason", "action_id", "decided_at"),
}

#: Tables (``table``) and columns (``table.column``) deliberately left out, and why.
NOT_EXPORTED: dict[str, str] = {
    "rules": "the loyalty rules (conditions and actions as data): no customer data; the "
             "actions a rule took for the customer are exported",
    "rule_changes": "the history of rule versions and the operators who changed them: no "
                    "customer data",
    "rules_revision": "one counter that makes every process reload the rules: no customer "
                      "data",
    "campaigns": "campaign definitions (a segment, an action, a schedule): no customer data; "
                 "what each campaign did for the customer is exported (campaigns[])",
    "campaign_runs": "a campaign's runs and their counters: no customer data",
    # --- webhooks
    "webhooks": "subscriptions of other systems (URL, event filters, signing secret): "
                "configuration; one limited to a customer names only their id",
    "webhook_events": "copies of events on their way to webhooks: their facts are exported "
                      "by the services that own them; deleted with their last delivery, and "
                      "at once when the customer is erased",
    "webhook_deliveries": "which webhook received which event and its answer: an operational "
                          "log kept CRM_LOYALTY_WEBHOOK_RETENTION_DAYS after it finished; "
                          "erasure deletes the customer's",
}


async def export(conn: Conn, customer_id: uuid.UUID,
                 merged: Sequence[uuid.UUID] = ()) -> str:
    """The part of ``customer_id`` as JSON (run it in one snapshot: a
    repeatable-read transaction). ``merged``: ids the customers service
    merged into the customer, whose records count as the customer's even
    before loyalty has seen the merge."""
    survivor = await store.resolve(conn, customer_id)
    views = await store.export_views(conn, survivor, sorted({survivor, customer_id, *merged}))
    ids = sorted({survivor, customer_id, *merged, *(v["customer_id"] for v in views)})
    own = [dict(v) for v in views if v["customer_id"] == survivor]
    part = {
        "customer_id": survivor,
        "view": own[0] if own else None,
        "merged_views": [dict(v) for v in views if v["customer_id"] != survivor],
        "actions": [dict(r) for r in await store.export_actions(conn, ids)],
        "follow_ups": [dict(r) for r in await store.export_follow_ups(conn, ids)],
        "enrolments": [dict(r) for r in await store.export_enrolments(conn, ids)],
        "discounts": [_discount(r) for r in await store.export_discounts(conn, ids)],
        "referral_rewards": [_referral(r, set(ids))
                             for r in await store.export_referrals(conn, ids)],
        "segment_memberships": [dict(r) for r in
                                await campaign_store.export_memberships(conn, ids)],
        "campaigns": [dict(r) for r in await campaign_store.export_campaign_members(conn, ids)],
    }
    return json.dumps(part, default=json_default, indent=2, sort_keys=True)


def _discount(row: Any) -> dict[str, Any]:
    """A discount code, its redemption (None while unused) nested."""
    fields = {k: v for k, v in dict(row).items() if k not in _REDEMPTION}
    redemption = ({k: row[k] for k in _REDEMPTION} if row["redeemed_at"] is not None
                  else None)
    return {**fields, "redemption": redemption}


def _referral(row: Any, ids: set[uuid.UUID]) -> dict[str, Any]:
    return {**dict(row), "as": "referrer" if row["referrer_id"] in ids else "referred"}
