"""Unit tests for crm_runtime.events: the CloudEvents Kafka binary-mode codec."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crm_contracts import base
from crm_runtime import logs
from crm_runtime.events import (
    SPECVERSION,
    Envelope,
    EventPayload,
    PoisonMessage,
    decode,
    event,
    format_time,
    payload_class,
    registered_types,
)
from tests.unit.sample_events import UNIT_TOPIC, SomethingHappened, SomethingReported


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests that register more types do so in a copy of the registry."""
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))


def make_envelope(*, time: datetime = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC),
                  topic_override: str | None = None) -> Envelope:
    return Envelope(data=SomethingHappened(customer_id="c-1", points=5, note="welcome"),
                    subject="c-1", source="/crm/unit", id="4b1c4f6e-0000-4000-8000-000000000001",
                    time=time, topic_override=topic_override)


def headers_with(env: Envelope, changes: Mapping[str, bytes | None]) -> list[tuple[str, bytes]]:
    """The envelope's headers with some replaced or added (``None`` removes one)."""
    wanted = dict(changes)
    out = []
    for key, value in env.headers():
        if key in wanted:
            new = wanted.pop(key)
            if new is not None:
                out.append((key, new))
        else:
            out.append((key, value))
    out.extend((k, v) for k, v in wanted.items() if v is not None)
    return out


def poison(headers: list[tuple[str, bytes]] | None, body: bytes | None) -> PoisonMessage:
    with pytest.raises(PoisonMessage) as info:
        decode(headers, body)
    return info.value


# --- registration -----------------------------------------------------------------------------


def test_event_decorator_registers_type_and_topic() -> None:
    assert SomethingHappened.event_type == "unit.something_happened"
    assert SomethingHappened.topic == UNIT_TOPIC
    assert payload_class("unit.something_happened") is SomethingHappened
    assert registered_types()["unit.something_happened"] is SomethingHappened
    assert payload_class("unit.never_registered") is None


def test_registered_types_is_a_copy() -> None:
    types = registered_types()
    types.pop("unit.something_happened")
    assert payload_class("unit.something_happened") is SomethingHappened


def test_registering_the_same_class_again_is_allowed(isolated_registry: None) -> None:
    again = event("unit.something_happened", topic=UNIT_TOPIC)(SomethingHappened)
    assert again is SomethingHappened
    assert payload_class("unit.something_happened") is SomethingHappened


def test_registering_a_type_twice_with_a_different_class_raises(isolated_registry: None) -> None:
    class SomethingElseHappened(EventPayload):
        other: int

    with pytest.raises(ValueError, match=r"'unit\.something_happened' registered twice"):
        event("unit.something_happened", topic=UNIT_TOPIC)(SomethingElseHappened)
    assert payload_class("unit.something_happened") is SomethingHappened


def test_registering_a_different_class_with_the_same_name_raises(
    isolated_registry: None,
) -> None:
    def define() -> type[EventPayload]:
        class Registered(EventPayload):
            customer_id: str

        return Registered

    first = event("unit.same_name_registered", topic=UNIT_TOPIC)(define())
    second = define()
    # Same name, but defined elsewhere (a copy-paste into another service).
    second.__module__ = "services.other.events"
    assert first is not second and first.__qualname__ == second.__qualname__
    with pytest.raises(ValueError, match="registered twice"):
        event("unit.same_name_registered", topic=UNIT_TOPIC)(second)


def test_payload_is_frozen_and_a_tolerant_reader() -> None:
    payload = SomethingHappened(customer_id="c-1", points=1)
    with pytest.raises(ValueError, match="frozen"):
        payload.points = 2  # type: ignore[misc]
    # A newer producer's extra field is ignored, not a dead letter.
    newer = SomethingHappened(customer_id="c-1", points=1, added_later=3)
    assert newer == payload


def test_strict_payload_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match="Extra inputs"):
        SomethingReported(customer_id="c-1", points=1, typo=3)  # type: ignore[call-arg]


def test_decode_of_an_event_with_a_field_added_later_keeps_what_it_knows() -> None:
    body = {"customer_id": "c-1", "points": 5, "added_later": {"any": "thing"}}
    env = decode(make_envelope().headers(), json.dumps(body).encode())
    assert env.data == SomethingHappened(customer_id="c-1", points=5)


def test_decode_of_a_strict_payload_names_the_unknown_field() -> None:
    env = Envelope(data=SomethingReported(customer_id="c-1", points=5), subject="c-1",
                   source="/unit")
    err = poison(env.headers(), json.dumps({"customer_id": "c-1", "points": 1,
                                            "colour": "red"}).encode())
    assert err.kind == "invalid_payload"
    assert err.reason.startswith("colour: ")


# --- encoding ---------------------------------------------------------------------------------


def test_headers_carry_cloudevents_attributes() -> None:
    env = make_envelope()
    assert env.headers() == [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"4b1c4f6e-0000-4000-8000-000000000001"),
        ("ce_type", b"unit.something_happened"),
        ("ce_source", b"/crm/unit"),
        ("ce_time", b"2024-05-01T12:30:15.123456Z"),
        ("ce_subject", b"c-1"),
        ("ce_traceparent", env.traceparent.encode()),
        ("content-type", b"application/json"),
    ]
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", env.traceparent)
    assert json.loads(env.body()) == {"customer_id": "c-1", "points": 5, "note": "welcome"}


def test_envelope_type_and_topic() -> None:
    env = make_envelope()
    assert env.type == "unit.something_happened"
    assert env.topic == UNIT_TOPIC
    assert make_envelope(topic_override="replay.v1").topic == "replay.v1"


def test_envelope_defaults_give_unique_ids_and_aware_utc_time() -> None:
    data = SomethingHappened(customer_id="c-1", points=1)
    a = Envelope(data=data, subject="c-1", source="/s")
    b = Envelope(data=data, subject="c-1", source="/s")
    assert a.id != b.id
    assert a.time.tzinfo is not None
    assert abs(datetime.now(UTC) - a.time) < timedelta(minutes=1)


def test_body_is_the_payloads_pydantic_json() -> None:
    """The body is serialised without model_dump_json's str round trip; the
    bytes are the same, datetimes, defaults and None included."""
    from crm_contracts.interactions import InteractionRecorded

    payloads = [SomethingHappened(customer_id="c-1", points=1),
                SomethingHappened(customer_id="c-ü", points=-3, note="née \u2603"),
                InteractionRecorded(interaction_id="i", customer_id="c", channel="web",
                                    direction="reactive", kind="purchase",
                                    occurred_at=datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
                                    amount_minor=1250, currency="EUR")]
    for data in payloads:
        body = Envelope(data=data, subject="c", source="/s").body()
        assert body == data.model_dump_json().encode()
        assert json.loads(body) == json.loads(data.model_dump_json())


def test_format_time_is_rfc3339_utc_with_z() -> None:
    assert format_time(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2024-01-02T03:04:05Z"
    assert (format_time(datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC))
            == "2024-01-02T03:04:05.000006Z")
    plus_two = timezone(timedelta(hours=2))
    assert format_time(datetime(2024, 1, 1, 1, 0, tzinfo=plus_two)) == "2023-12-31T23:00:00Z"


# --- round trip -------------------------------------------------------------------------------


def test_decode_round_trips_headers_and_body() -> None:
    env = make_envelope()
    decoded = decode(env.headers(), env.body())
    assert decoded == env
    assert isinstance(decoded.data, SomethingHappened)
    assert decoded.time.tzinfo is not None


def test_decode_round_trips_non_utc_time_as_the_same_instant() -> None:
    plus_five = timezone(timedelta(hours=5, minutes=30))
    env = make_envelope(time=datetime(2024, 5, 1, 18, 0, tzinfo=plus_five))
    decoded = decode(env.headers(), env.body())
    assert decoded.time == env.time
    assert decoded.time.utcoffset() == timedelta(0)


def test_decode_accepts_json_content_type_with_parameters() -> None:
    env = make_envelope()
    headers = headers_with(env, {"content-type": b"application/json; charset=utf-8"})
    assert decode(headers, env.body()) == env


def test_decode_without_optional_headers() -> None:
    env = make_envelope()
    headers = headers_with(env, {"ce_time": None, "ce_subject": None, "content-type": None})
    before = datetime.now(UTC)
    decoded = decode(headers, env.body())
    assert decoded.subject == ""
    assert decoded.data == env.data
    assert before <= decoded.time <= datetime.now(UTC)


def test_decode_ignores_unrelated_headers_even_if_not_utf8() -> None:
    env = make_envelope()
    headers = [*env.headers(), ("traceparent-bin", b"\xff\xfe")]
    assert decode(headers, env.body()) == env


_json_text = st.text(max_size=40)


@given(
    customer_id=_json_text,
    points=st.integers(min_value=-(2**53), max_value=2**53),
    note=st.none() | _json_text,
    subject=_json_text,
    source=st.text(min_size=1, max_size=40),
    when=st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1),
                      timezones=st.just(UTC)),
)
def test_decode_round_trip_property(customer_id: str, points: int, note: str | None,
                                    subject: str, source: str, when: datetime) -> None:
    env = Envelope(data=SomethingHappened(customer_id=customer_id, points=points, note=note),
                   subject=subject, source=source, time=when)
    assert decode(env.headers(), env.body()) == env


# --- poison messages --------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["ce_specversion", "ce_id", "ce_type", "ce_source"])
def test_missing_required_header_is_not_a_cloudevent(missing: str) -> None:
    env = make_envelope()
    err = poison(headers_with(env, {missing: None}), env.body())
    assert err.kind == "not_cloudevent"
    assert missing in err.reason


def test_empty_required_header_counts_as_missing() -> None:
    env = make_envelope()
    err = poison(headers_with(env, {"ce_id": b""}), env.body())
    assert err.kind == "not_cloudevent"
    assert "ce_id" in err.reason


def test_no_headers_at_all_names_every_required_header() -> None:
    err = poison(None, b"{}")
    assert err.kind == "not_cloudevent"
    for name in ("ce_specversion", "ce_id", "ce_type", "ce_source"):
        assert name in err.reason
    assert str(err) == f"not_cloudevent: {err.reason}"


@pytest.mark.parametrize("version", [b"0.3", b"1", b"2.0"])
def test_wrong_specversion(version: bytes) -> None:
    env = make_envelope()
    err = poison(headers_with(env, {"ce_specversion": version}), env.body())
    assert err.kind == "bad_specversion"
    assert version.decode() in err.reason
    assert SPECVERSION in err.reason


@pytest.mark.parametrize("content_type", [b"text/plain", b"application/avro",
                                          b"application/cloudevents+avro",
                                          b"Application/CloudEvents+Protobuf; x=1"])
def test_non_json_content_type(content_type: bytes) -> None:
    env = make_envelope()
    err = poison(headers_with(env, {"content-type": content_type}), env.body())
    assert err.kind == "bad_content_type"
    assert content_type.decode() in err.reason


def test_content_type_that_merely_starts_with_application_json_is_rejected() -> None:
    env = make_envelope()
    err = poison(headers_with(env, {"content-type": b"application/jsonl"}), env.body())
    assert err.kind == "bad_content_type"


def test_content_type_is_case_insensitive() -> None:
    env = make_envelope()
    assert decode(headers_with(env, {"content-type": b"Application/JSON"}), env.body()) == env


def test_unknown_type() -> None:
    env = make_envelope()
    err = poison(headers_with(env, {"ce_type": b"unit.nobody_registered_this"}), env.body())
    assert err.kind == "unknown_type"
    assert "unit.nobody_registered_this" in err.reason


@pytest.mark.parametrize("body", [None, b"", b"not json", b"{\"customer_id\": ", b"\xff\xfe\x00"])
def test_body_not_json(body: bytes | None) -> None:
    err = poison(make_envelope().headers(), body)
    assert err.kind == "not_json"
    assert err.reason.startswith("body is not JSON")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"customer_id": "c-1"}, "points"),
        ({"customer_id": "c-1", "points": "lots"}, "points"),
        ({"customer_id": 7, "points": 1}, "customer_id"),
    ],
)
def test_body_failing_validation_names_the_field(body: dict[str, object], field: str) -> None:
    err = poison(make_envelope().headers(), json.dumps(body).encode())
    assert err.kind == "invalid_payload"
    assert err.reason.startswith(f"{field}: ")


@pytest.mark.parametrize("body", [b"null", b"[1, 2]", b"42"])
def test_body_that_is_not_an_object_is_invalid_payload(body: bytes) -> None:
    err = poison(make_envelope().headers(), body)
    assert err.kind == "invalid_payload"
    assert err.reason.startswith("body: ")


def test_invalid_payload_reason_lists_every_field() -> None:
    err = poison(make_envelope().headers(), b"{}")
    assert err.kind == "invalid_payload"
    assert "customer_id: Field required" in err.reason
    assert "points: Field required" in err.reason


def test_an_extension_we_do_not_read_may_be_anything() -> None:
    env = make_envelope()
    got = decode([*env.headers(), ("ce_partitionkey", b"\xff\xfe"), ("trace", b"\x00")],
                 env.body())
    assert got.id == env.id and got.data == env.data


@pytest.mark.parametrize("header", ["ce_id", "ce_type", "ce_subject", "content-type"])
def test_non_utf8_header(header: str) -> None:
    env = make_envelope()
    headers = [(k, b"\xff\xfe" if k == header else v) for k, v in env.headers()]
    err = poison(headers, env.body())
    assert err.kind == "bad_header"
    assert header in err.reason
    assert "UTF-8" in err.reason


@pytest.mark.parametrize("when", [b"yesterday", b"2024-13-01T00:00:00Z", b"01/05/2024 12:00"])
def test_bad_ce_time(when: bytes) -> None:
    env = make_envelope()
    err = poison(headers_with(env, {"ce_time": when}), env.body())
    assert err.kind == "bad_header"
    assert "ce_time" in err.reason
    assert when.decode() in err.reason


@pytest.mark.parametrize("when", [b"2024-05-01t12:30:15.5z", b"2024-05-01T13:30:15.5+01:00",
                                  b"2024-05-01T12:30:15.500000123Z"])
def test_ce_time_in_every_rfc_3339_form_is_read(when: bytes) -> None:
    # Lower-case t and z (RFC 3339 section 5.6), an offset, nanoseconds (Go's and
    # Java's SDKs write nine digits; the microseconds are kept).
    env = make_envelope()
    got = decode(headers_with(env, {"ce_time": when}), env.body())
    assert got.time == datetime(2024, 5, 1, 12, 30, 15, 500000, tzinfo=UTC)


@pytest.mark.parametrize("when", [b"2024-05-01T12:00:00", b"2024-05-01"])
def test_ce_time_without_offset_is_rejected(when: bytes) -> None:
    env = make_envelope()
    err = poison(headers_with(env, {"ce_time": when}), env.body())
    assert err.kind == "bad_header"


def test_decode_checks_headers_before_body() -> None:
    env = make_envelope()
    err = poison(headers_with(env, {"ce_type": b"unit.unknown"}), b"not json")
    assert err.kind == "unknown_type"


# --- structured content mode ------------------------------------------------------------------

STRUCTURED = b"application/cloudevents+json; charset=UTF-8"


def structured(**attributes: object) -> bytes:
    """A structured-mode body: the event's attributes and its data, one JSON object."""
    event: dict[str, object] = {
        "specversion": "1.0", "id": "4b1c4f6e-0000-4000-8000-000000000001",
        "type": "unit.something_happened", "source": "/crm/unit", "subject": "c-1",
        "time": "2024-05-01T12:30:15.123456Z", "datacontenttype": "application/json",
        "data": {"customer_id": "c-1", "points": 5, "note": "welcome"}}
    event.update(attributes)
    return json.dumps({k: v for k, v in event.items() if v is not None}).encode()


def test_a_structured_event_reads_as_its_binary_twin() -> None:
    binary = make_envelope()
    parent = logs.new_traceparent()
    got = decode([("content-type", STRUCTURED)], structured(traceparent=parent))
    assert (got.id, got.type, got.source, got.subject, got.time, got.data) == (
        binary.id, binary.type, binary.source, binary.subject, binary.time, binary.data)
    assert got.traceparent == parent


@pytest.mark.parametrize("content_type", [b"application/cloudevents+json",
                                          b"APPLICATION/CLOUDEVENTS+JSON;charset=utf-8"])
def test_structured_mode_is_told_by_the_content_type_in_any_case(content_type: bytes) -> None:
    got = decode([("content-type", content_type)],
                 structured(datacontenttype=None, subject=None, time=None, traceparent=None))
    assert got.data == make_envelope().data and got.subject == ""


def test_structured_data_may_come_as_base64() -> None:
    data = base64.b64encode(make_envelope().body()).decode()
    got = decode([("content-type", STRUCTURED)], structured(data=None, data_base64=data))
    assert got.data == make_envelope().data


@pytest.mark.parametrize(("attributes", "kind", "named"), [
    ({"id": None, "source": None}, "not_cloudevent", "missing attribute(s) id, source"),
    ({"specversion": "0.3"}, "bad_specversion", "specversion is '0.3'"),
    ({"type": "unit.nothing"}, "unknown_type", "type 'unit.nothing'"),
    ({"datacontenttype": "text/xml"}, "bad_content_type", "datacontenttype 'text/xml'"),
    ({"time": "yesterday"}, "bad_attribute", "time 'yesterday' is not RFC 3339"),
    ({"time": "2024-05-01T12:00:00"}, "bad_attribute", "offset are required"),
    ({"id": 42}, "bad_attribute", "attribute id is a JSON int"),
    ({"data": None}, "invalid_payload", "carries no data"),
    ({"data": None, "data_base64": "*not base64*"}, "bad_attribute", "data_base64"),
    ({"data": {"customer_id": "c-1", "points": "many"}}, "invalid_payload", "points"),
])
def test_a_bad_structured_event_names_the_attribute(attributes: dict[str, object], kind: str,
                                                    named: str) -> None:
    err = poison([("content-type", STRUCTURED)], structured(**attributes))
    assert err.kind == kind
    assert named in err.reason


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe", b"[1, 2]"])
def test_a_structured_body_that_is_no_json_object_is_poison(body: bytes) -> None:
    err = poison([("content-type", STRUCTURED)], body)
    assert err.kind in {"not_json", "not_cloudevent"}
    assert ("not JSON" in err.reason) == (err.kind == "not_json")
