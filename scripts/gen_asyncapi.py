"""Generate docs/asyncapi.yaml (AsyncAPI 3.0) from the event registry.

Every registered event type becomes a message on the channel of its topic,
with its pydantic payload schema (field descriptions and examples included),
the CloudEvents headers and the Kafka key (the customer id). Each topic's
dead-letter topic is described too. Run with ``make asyncapi``;
``tests/contracts/test_asyncapi.py`` checks the committed file is fresh and
valid according to the AsyncAPI CLI.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from crm_contracts import topics  # noqa: E402
from crm_runtime.consumer import dlq_topic  # noqa: E402
from crm_runtime.events import EventPayload, registered_types  # noqa: E402
from crm_runtime.version import VERSION  # noqa: E402

EVENT_MODULES = ("crm_contracts.customers", "crm_contracts.interactions",
                 "crm_contracts.loyalty", "crm_contracts.privacy")
OUTPUT = ROOT / "docs" / "asyncapi.yaml"

#: Which service writes each topic (channels name it in their description).
PRODUCERS = {topics.CUSTOMERS: "customers", topics.INTERACTIONS: "interactions",
             topics.LOYALTY: "loyalty",
             topics.INTERACTIONS_INGEST: "channels (shop, POS, call centre, chat)"}


def _camel(text: str) -> str:
    parts = re.split(r"[^A-Za-z0-9]+", text)
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


def _headers(event_type: str | None) -> dict[str, Any]:
    ce_type: dict[str, Any] = {"type": "string", "description": "CloudEvents type."}
    if event_type:
        ce_type["const"] = event_type
    return {
        "type": "object",
        "required": ["ce_id", "ce_type", "ce_source", "ce_specversion", "content-type"],
        "properties": {
            "ce_specversion": {"type": "string", "const": "1.0"},
            "ce_id": {"type": "string", "description": "Unique event id; consumers "
                                                       "deduplicate on it."},
            "ce_type": ce_type,
            "ce_source": {"type": "string", "examples": ["/crm/customers"]},
            "ce_time": {"type": "string", "format": "date-time"},
            "ce_subject": {"type": "string", "description": "The customer id (also the key)."},
            "ce_traceparent": {"type": "string", "description": "W3C trace context "
                                                                "(distributed-tracing extension)."},
            "content-type": {"type": "string", "const": "application/json"},
        },
    }


def _key(cls: type[EventPayload], default: dict[str, str]) -> dict[str, str]:
    """The Kafka key of an event type: the customer id, unless the type says
    otherwise (``kafka_key``: an event of no customer)."""
    said = getattr(cls, "kafka_key", None)
    return {"type": "string", "description": said} if said else default


def build() -> dict[str, Any]:
    for module in EVENT_MODULES:
        importlib.import_module(module)
    by_topic: dict[str, list[type[EventPayload]]] = {}
    for _type, cls in sorted(registered_types().items()):
        if cls.topic in topics.ALL:
            by_topic.setdefault(cls.topic, []).append(cls)
    schemas: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    key = {"type": "string", "description": "The customer id: one customer's events stay in "
                                            "order on one partition."}
    for topic in topics.ALL:
        channel_id = _camel(topic.replace(".", "_"))
        refs = {}
        for cls in by_topic.get(topic, []):
            message_id = _camel(cls.event_type.replace(".", "_"))
            schema = cls.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[cls.__name__] = schema
            messages[message_id] = {
                "name": cls.event_type, "title": cls.event_type,
                "summary": (cls.__doc__ or cls.event_type).strip().splitlines()[0],
                "contentType": "application/json",
                "headers": _headers(cls.event_type),
                "payload": {"$ref": f"#/components/schemas/{cls.__name__}"},
                "bindings": {"kafka": {"key": _key(cls, key), "bindingVersion": "0.5.0"}},
            }
            refs[message_id] = {"$ref": f"#/components/messages/{message_id}"}
        channels[channel_id] = {
            "address": topic, "messages": refs,
            "description": f"Written by {PRODUCERS[topic]}. CloudEvents 1.0 in Kafka binary "
                           "content mode; the key is the customer id.",
        }
        operations[f"{channel_id}Events"] = {
            "action": "receive", "channel": {"$ref": f"#/channels/{channel_id}"},
            "summary": f"Consume {topic}.",
            "messages": [{"$ref": f"#/channels/{channel_id}/messages/{m}"} for m in refs],
        }
        dlq_id = f"{channel_id}Dlq"
        channels[dlq_id] = {
            "address": dlq_topic(topic),
            "description": f"Records of {topic} a consumer could not process, unchanged, "
                           "with dlq_* headers naming the error and where they came from.",
            "messages": {"deadLetter": {"$ref": "#/components/messages/deadLetter"}},
        }
        operations[f"{dlq_id}Records"] = {
            "action": "receive", "channel": {"$ref": f"#/channels/{dlq_id}"},
            "messages": [{"$ref": f"#/channels/{dlq_id}/messages/deadLetter"}],
        }
    messages["deadLetter"] = {
        "name": "dead_letter", "title": "Dead letter",
        "summary": "The original record with the reason it could not be processed.",
        "headers": {"type": "object", "properties": {
            name: {"type": "string", "description": text} for name, text in (
                ("dlq_error_kind", "not_json, not_cloudevent, unknown_type, invalid_payload, "
                                   "handler_error, ..."),
                ("dlq_error_reason", "What was wrong, naming the field."),
                ("dlq_original_topic", "Topic the record was read from."),
                ("dlq_original_partition", "Its partition."),
                ("dlq_original_offset", "Its offset."),
                ("dlq_consumer_group", "The consumer group that gave up on it."))}},
        "payload": {"description": "The original bytes, unchanged."},
    }
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "open-crm events", "version": VERSION,
                 "description": "Every topic and event type of the CRM. Generated from the "
                                "code by scripts/gen_asyncapi.py; do not edit."},
        "defaultContentType": "application/json",
        "servers": {"local": {"host": "localhost:9092", "protocol": "kafka",
                              "description": "The broker `make run` starts (see its output "
                                             "for the actual port)."}},
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def render() -> str:
    return yaml.safe_dump(build(), sort_keys=False, allow_unicode=True, width=100)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT
    target.write_text(render())
    print(f"wrote {target}")
