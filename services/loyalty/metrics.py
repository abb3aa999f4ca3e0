"""Prometheus metrics of the loyalty service (beside the runtime's).

Counters are incremented after the transaction commits (``crm_runtime.uow``
hooks), so a retried batch does not count twice; state gauges are queries
over the service's own tables, refreshed by the runner."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from crm_runtime.metrics import DbGauge
from services.loyalty import campaign_store, store, webhook_store

ACTIONS = Counter("crm_loyalty_actions", "Actions rules asked for, by outcome "
                  "(performed, suppressed with the reason, skipped)",
                  ["service", "rule", "action_type", "outcome", "reason"])
REDEMPTIONS = Counter("crm_loyalty_redemptions", "RedeemDiscount calls by result",
                      ["service", "result"])

GAUGES = [
    DbGauge("crm_loyalty_follow_ups", "Follow-ups by status (scheduled, due)", ("status",),
            store.LOYALTY_FOLLOW_UPS_SQL),
    DbGauge("crm_loyalty_active_discounts", "Discount codes issued, not redeemed, withdrawn "
            "or expired", (), store.LOYALTY_ACTIVE_DISCOUNTS_SQL),
    DbGauge("crm_loyalty_discounts", "Discount codes ever issued, by state (active, redeemed, "
            "expired, withdrawn)", ("state",),
            store.LOYALTY_DISCOUNTS_SQL),
    DbGauge("crm_loyalty_follow_ups_overdue", "Follow-ups due for more than a day and not "
            "completed or cancelled", (),
            store.LOYALTY_FOLLOW_UPS_OVERDUE_SQL),
]

# --- webhooks

WEBHOOK_DELIVERIES = Counter(
    "crm_webhook_deliveries", "Webhook delivery attempts by outcome (delivered, retry, failed: "
    "parked) and status_code (the HTTP status, or timeout, connection_error, redirect)",
    ["service", "webhook", "outcome", "status_code"])
WEBHOOK_LATENCY = Histogram(
    "crm_webhook_delivery_latency_seconds", "From an event's time to its delivery to a webhook",
    ["service", "webhook"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0))

GAUGES += [
    DbGauge("crm_webhook_backlog", "Webhook deliveries pending (waiting or being retried)",
            ("webhook",), webhook_store.BACKLOG_SQL),
    DbGauge("crm_webhook_oldest_pending_seconds", "Age of a webhook's oldest pending delivery",
            ("webhook",), webhook_store.OLDEST_PENDING_SQL),
    DbGauge("crm_webhook_failed", "Webhook deliveries parked as failed (until replayed)",
            ("webhook",), webhook_store.FAILED_SQL),
]

# --- campaigns

CAMPAIGN_MEMBERS = Counter(
    "crm_campaign_members", "Members a campaign's runs reached, by outcome (sent, suppressed, "
    "skipped) and reason", ["service", "campaign", "outcome", "reason"])

GAUGES += [
    DbGauge("crm_campaigns", "Campaigns by state (scheduled, running, paused, done, cancelled)",
            ("state",), campaign_store.CAMPAIGNS_SQL),
    DbGauge("crm_campaign_pending", "Members of a running or paused run not reached yet",
            ("campaign",), campaign_store.CAMPAIGN_PENDING_SQL),
    DbGauge("crm_campaign_stalled_seconds", "A running campaign with members pending: seconds "
            "since its last page was sent (or its run started)", ("campaign",),
            campaign_store.CAMPAIGN_STALLED_SQL),
]
