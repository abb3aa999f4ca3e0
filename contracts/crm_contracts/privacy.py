"""Acknowledgements of an erasure: each service that keeps customer data
says, on its own topic, that it has scrubbed an erased customer's data.

The customers service publishes ``customer.erased``; every other service
holding customer data scrubs its part when it consumes it and, in the same
transaction, publishes its acknowledgement, one registered type per
service and topic with one shape (:class:`ErasureCompleted`). It does so
whether or not it held anything of the customer (an erasure of a customer it
never saw is complete too), once per erasure (its inbox drops a redelivered
``customer.erased``). The customers service records them and answers
``Customers/GetErasureStatus``.

The subject and message key of every event is the erased customer's id.
This module is imported by the package, so every process that reads the
product's topics knows these types."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from crm_contracts.base import EventPayload, event
from crm_contracts.topics import INTERACTIONS, LOYALTY


class ErasureCompleted(EventPayload):
    """A service scrubbed the erased customer's data.

    The shape of every acknowledgement: who was erased, by which service,
    and when that service scrubbed its data."""

    customer_id: str = Field(description="The erased customer's id (UUID), as "
                                         "customer.erased named it.",
                             examples=["1b4e28ba-2fa1-11d2-883f-0016d3cca427"])
    service: str = Field(description="The service that scrubbed its data.",
                         examples=["interactions", "loyalty"])
    erased_at: datetime = Field(description="When the service scrubbed the customer's data "
                                            "(by its clock).")


@event("interactions.erasure_completed", topic=INTERACTIONS)
class InteractionsErasureCompleted(ErasureCompleted):
    """The interactions service scrubbed the erased customer's data.

    Notes of contacts, texts and callback numbers of cases, comments of
    survey answers (or nothing, when it held none); the id is kept as never
    to be contacted."""


@event("loyalty.erasure_completed", topic=LOYALTY)
class LoyaltyErasureCompleted(ErasureCompleted):
    """The loyalty service scrubbed the erased customer's data.

    Follow-ups cancelled, discount codes withdrawn, newsletter lists left,
    notes and order ids removed (or nothing, when it held none)."""
