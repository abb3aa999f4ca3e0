"""Prometheus metrics of the customers service (beside the runtime's)."""

from __future__ import annotations

from prometheus_client import Counter

from crm_runtime.metrics import DbGauge

STAGE_CHANGES = Counter("crm_stage_changes", "Relationship stage changes",
                        ["service", "from_stage", "to_stage"])

GAUGES = [
    DbGauge("crm_customers_by_stage", "Customers by relationship stage (erased and merged "
            "customers excluded)", ("stage",),
            """SELECT stage, count(*) FROM customers
                WHERE erased_at IS NULL AND merged_into IS NULL GROUP BY stage"""),
    DbGauge("crm_customers_at_risk", "Customers marked at risk by satisfaction signals", (),
            "SELECT count(*) FROM customers WHERE at_risk"),
]
