"""Every Kafka topic of the product. Topics are versioned by name; the event
types on each are in the payload modules beside this one."""

from __future__ import annotations

CUSTOMERS = "crm.customers.v1"
INTERACTIONS = "crm.interactions.v1"
INTERACTIONS_INGEST = "crm.interactions.ingest.v1"
LOYALTY = "crm.loyalty.v1"

#: Topics the product reads or writes; each also has a ``<topic>.dlq``.
ALL = (CUSTOMERS, INTERACTIONS, INTERACTIONS_INGEST, LOYALTY)
