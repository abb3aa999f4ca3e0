"""The event the benchmarks move around, and its Kafka encoding.

``bench.entry_recorded`` is registered like any product event, so the
product's decoder accepts it. :func:`encode` produces exactly what the outbox
relay puts on the wire (key = subject, ``Envelope.headers()``,
``Envelope.body()``), which the raw baselines send or read directly.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field

from crm_runtime.events import Envelope, EventPayload, event

#: Distinct message keys: enough to spread over every partition and lane.
CUSTOMERS = 1000


@event("bench.entry_recorded", topic="bench.entries")
class EntryRecorded(EventPayload):
    customer_id: str = Field(min_length=1)
    amount: int = Field(ge=0)


@dataclass(frozen=True)
class KafkaRecord:
    """One pre-encoded record, as the relay would publish it."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def make_envelopes(count: int, topic: str) -> list[Envelope]:
    """``count`` events for ``topic``, keyed over :data:`CUSTOMERS` customers."""
    envelopes: list[Envelope] = []
    for i in range(count):
        customer = f"c{i % CUSTOMERS:04d}"
        envelopes.append(Envelope(data=EntryRecorded(customer_id=customer, amount=i),
                                  subject=customer, source="/crm/bench", topic_override=topic))
    return envelopes


def encode(envelope: Envelope) -> KafkaRecord:
    return KafkaRecord(key=envelope.subject.encode(), value=envelope.body(),
                       headers=envelope.headers())
