"""Our Kafka binary-mode events read by, and read from, the official CloudEvents SDK."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from cloudevents.core.bindings.kafka import (
    KafkaMessage,
    from_binary_event,
    to_binary_event,
    to_structured_event,
)
from cloudevents.core.v1.event import CloudEvent

from crm_runtime.events import Envelope, decode
from tests.unit.sample_events import SomethingHappened


def to_kafka_message(env: Envelope) -> KafkaMessage:
    return KafkaMessage(headers=dict(env.headers()), key=env.subject.encode(), value=env.body())


def test_sdk_reads_our_event() -> None:
    env = Envelope(data=SomethingHappened(customer_id="c-42", points=7, note="Grüße"),
                   subject="c-42", source="/crm/customers",
                   time=datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC))

    ce = from_binary_event(to_kafka_message(env))

    assert ce.get_specversion() == "1.0"
    assert ce.get_id() == env.id
    assert ce.get_type() == "unit.something_happened"
    assert ce.get_source() == "/crm/customers"
    assert ce.get_subject() == "c-42"
    assert ce.get_time() == env.time
    assert ce.get_datacontenttype() == "application/json"
    assert ce.get_data() == {"customer_id": "c-42", "points": 7, "note": "Grüße"}
    assert ce.get_extension("partitionkey") == "c-42"


def test_sdk_reads_our_time_in_utc_whatever_zone_we_wrote() -> None:
    tokyo = timezone(timedelta(hours=9))
    env = Envelope(data=SomethingHappened(customer_id="c-1", points=1), subject="c-1",
                   source="/s", time=datetime(2024, 1, 1, 9, 0, tzinfo=tokyo))

    ce = from_binary_event(to_kafka_message(env))

    when = ce.get_time()
    assert when == datetime(2024, 1, 1, 0, 0, tzinfo=UTC)
    assert when is not None and when.utcoffset() == timedelta(0)


def test_we_read_an_sdk_event() -> None:
    sent = CloudEvent(
        attributes={
            "id": "sdk-1",
            "type": "unit.something_happened",
            "source": "/external/pos",
            "subject": "c-9",
            "time": datetime(2024, 6, 1, 8, 15, 0, 250000, tzinfo=UTC),
            "datacontenttype": "application/json",
        },
        data={"customer_id": "c-9", "points": 3},
    )
    message = to_binary_event(sent)

    env = decode(list(message.headers.items()), message.value)

    assert env.id == "sdk-1"
    assert env.type == "unit.something_happened"
    assert env.source == "/external/pos"
    assert env.subject == "c-9"
    assert env.time == datetime(2024, 6, 1, 8, 15, 0, 250000, tzinfo=UTC)
    assert env.data == SomethingHappened(customer_id="c-9", points=3)


def test_we_read_an_sdk_event_in_structured_mode() -> None:
    # The binding says every implementation SHOULD read both modes; a channel
    # whose SDK writes structured mode is not dead-lettered.
    parent = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    sent = CloudEvent(
        attributes={"id": "sdk-2", "type": "unit.something_happened", "source": "/external/chat",
                    "subject": "c-7", "time": datetime(2024, 6, 1, 8, 15, tzinfo=UTC),
                    "datacontenttype": "application/json", "traceparent": parent},
        data={"customer_id": "c-7", "points": 2, "note": "¡hola!"},
    )
    message = to_structured_event(sent)
    assert message.headers["content-type"].startswith(b"application/cloudevents+json")

    env = decode(list(message.headers.items()), message.value)

    assert (env.id, env.type, env.source, env.subject) == (
        "sdk-2", "unit.something_happened", "/external/chat", "c-7")
    assert env.time == datetime(2024, 6, 1, 8, 15, tzinfo=UTC)
    assert env.traceparent == parent
    assert env.data == SomethingHappened(customer_id="c-7", points=2, note="¡hola!")
