"""Prometheus metrics of the loyalty service (beside the runtime's).

Counters are incremented after the transaction commits (``crm_runtime.uow``
hooks), so a retried batch does not count twice; state gauges are queries
over the service's own tables, refreshed by the runner."""

from __future__ import annotations

from prometheus_client import Counter

from crm_runtime.metrics import DbGauge

ACTIONS = Counter("crm_loyalty_actions", "Actions rules asked for, by outcome "
                  "(performed, suppressed with the reason, skipped)",
                  ["service", "rule", "action_type", "outcome", "reason"])
REDEMPTIONS = Counter("crm_loyalty_redemptions", "RedeemDiscount calls by result",
                      ["service", "result"])

GAUGES = [
    DbGauge("crm_loyalty_follow_ups", "Follow-ups by status (scheduled, due)", ("status",),
            "SELECT status, count(*) FROM follow_ups WHERE status IN ('scheduled', 'due')"
            " GROUP BY status"),
    DbGauge("crm_loyalty_active_discounts", "Discount codes issued, not redeemed, withdrawn "
            "or expired", (), "SELECT count(*) FROM discounts WHERE redeemed_at IS NULL"
            " AND voided_at IS NULL AND expires_at > $1::timestamptz"),
    DbGauge("crm_loyalty_discounts", "Discount codes ever issued, by state (active, redeemed, "
            "expired, withdrawn)", ("state",),
            """SELECT CASE WHEN redeemed_at IS NOT NULL THEN 'redeemed'
                           WHEN voided_at IS NOT NULL THEN 'withdrawn'
                           WHEN expires_at <= $1::timestamptz THEN 'expired'
                           ELSE 'active' END,
                      count(*) FROM discounts GROUP BY 1"""),
    DbGauge("crm_loyalty_follow_ups_overdue", "Follow-ups due for more than a day and not "
            "completed or cancelled", (),
            "SELECT count(*) FROM follow_ups WHERE status = 'due'"
            " AND due_at < $1::timestamptz - interval '1 day'"),
]
