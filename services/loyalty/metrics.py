"""Prometheus metrics of the loyalty service (beside the runtime's).

Counters are incremented after the transaction commits (``crm_runtime.uow``
hooks), so a retried batch does not count twice; state gauges are queries
over the service's own tables, refreshed by the runner."""

from __future__ import annotations

from prometheus_client import Counter

from crm_runtime.metrics import DbGauge
from services.loyalty import store

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
