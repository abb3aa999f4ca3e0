"""Integrators' Kafka clients are librdkafka-based, not aiokafka: a channel
feeds a contact with confluent-kafka's Producer (librdkafka's own
partitioner, headers written by hand as docs/integration.md describes, or the
whole event in structured mode by the CloudEvents SDK), and a
marketing-style confluent-kafka Consumer in a group of its own reads the
resulting ``interaction.recorded`` and decodes it with the CloudEvents SDK,
exactly as the docs' example does."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary_event, to_structured_event
from cloudevents.core.v1.event import CloudEvent
from confluent_kafka import Consumer, Producer

from crm_contracts.topics import INTERACTIONS, INTERACTIONS_INGEST
from tests.integration.interactions.conftest import Pair
from tests.integration.interactions.test_interactions_service import new_customer


def _contact(customer_id: str, key: str) -> dict[str, Any]:
    return {"idempotency_key": key, "customer_id": customer_id, "channel": "web",
            "kind": "purchase", "touchpoint": "checkout",
            "occurred_at": datetime.now(UTC).isoformat(), "amount_minor": 4990,
            "currency": "EUR"}


def _produce_contact(bootstrap: str, customer_id: str, key: str, *,
                     structured: bool = False) -> None:
    if structured:  # the CloudEvents SDK writes the whole event as the value
        message = to_structured_event(CloudEvent(
            attributes={"id": str(uuid.uuid4()), "type": "contact.received",
                        "source": "/shop/structured", "subject": customer_id,
                        "time": datetime.now(UTC), "datacontenttype": "application/json"},
            data=_contact(customer_id, key)))
        value = message.value
        headers: list[tuple[str, str | bytes | None]] = list(message.headers.items())
    else:
        value = json.dumps(_contact(customer_id, key)).encode()
        headers = [("ce_specversion", b"1.0"), ("ce_id", str(uuid.uuid4()).encode()),
                   ("ce_type", b"contact.received"), ("ce_source", b"/shop/librdkafka"),
                   ("ce_time", datetime.now(UTC).isoformat().encode()),
                   ("ce_subject", customer_id.encode()),
                   ("content-type", b"application/json")]
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    delivered: list[Any] = []
    producer.produce(INTERACTIONS_INGEST, key=customer_id.encode(), value=value,
                     headers=headers, on_delivery=lambda err, msg: delivered.append(err or msg))
    assert producer.flush(30) == 0
    assert len(delivered) == 1 and delivered[0].error() is None, delivered


def _consume_recorded(bootstrap: str, customer_id: str, timeout: float) -> Any:
    consumer = Consumer({"bootstrap.servers": bootstrap,
                         "group.id": f"marketing-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         # Tansu (the embedded broker) completes a group join
                         # only after the rebalance timeout, which librdkafka
                         # sets to max.poll.interval.ms (5 minutes by default).
                         "session.timeout.ms": 6000, "max.poll.interval.ms": 6000,
                         "heartbeat.interval.ms": 500})
    consumer.subscribe([INTERACTIONS])
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert not msg.error(), msg.error()
            raw = msg.headers() or []
            pairs = list(raw.items()) if isinstance(raw, dict) else raw
            headers = {k: v for k, v in pairs if isinstance(v, bytes)}
            event = from_binary_event(KafkaMessage(
                headers=headers, key=msg.key(), value=msg.value() or b""))
            consumer.commit(message=msg, asynchronous=False)
            if (event.get_type() == "interaction.recorded"
                    and event.get_subject() == customer_id):
                return event
        raise AssertionError(f"no interaction.recorded of {customer_id} in {timeout}s")
    finally:
        consumer.close()


@pytest.mark.parametrize("structured", [False, True], ids=["binary", "structured"])
async def test_a_librdkafka_channel_and_a_librdkafka_consumer(pair: Pair,
                                                              structured: bool) -> None:
    bootstrap = pair.interactions.runner.settings.kafka_bootstrap_servers or ""
    cid = await new_customer(pair)
    key = f"librdkafka-{uuid.uuid4()}"
    await asyncio.to_thread(_produce_contact, bootstrap, cid, key, structured=structured)
    event = await asyncio.to_thread(_consume_recorded, bootstrap, cid, 60.0)
    data = event.get_data()
    assert isinstance(data, dict)
    assert data["customer_id"] == cid and data["kind"] == "purchase"
    assert data["amount_minor"] == 4990 and data["currency"] == "EUR"
    assert event.get_source() == "/crm/interactions"
    assert event.get_time() is not None and event.get_time().tzinfo is not None
    assert event.get_datacontenttype() == "application/json"
