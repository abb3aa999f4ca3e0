"""Prometheus metrics of the customers service (beside the runtime's)."""

from __future__ import annotations

from prometheus_client import Counter

from crm_runtime.metrics import DbGauge
from services.customers import erasures, store

STAGE_CHANGES = Counter("crm_stage_changes", "Relationship stage changes",
                        ["service", "from_stage", "to_stage"])
CONTACT_DECISIONS = Counter(
    "crm_contact_decisions", "Contacts the contact gate (ReserveContacts) decided, by the "
    "service that asked, the contact's purpose and the decision (allowed, or the reason it "
    "was refused)", ["service", "caller", "purpose", "decision"])

GAUGES = [
    DbGauge("crm_customers_by_stage", "Customers by relationship stage (erased and merged "
            "customers excluded)", ("stage",),
            store.CUSTOMERS_BY_STAGE_SQL),
    DbGauge("crm_customers_at_risk", "Customers marked at risk by satisfaction signals", (),
            store.CUSTOMERS_AT_RISK_SQL),
    DbGauge("crm_erasures_overdue", "Erasures a service has not acknowledged within "
            "CRM_ERASURE_ACK_TIMEOUT_S of the request, by the service awaited", ("awaiting",),
            erasures.OVERDUE_SQL),
]
