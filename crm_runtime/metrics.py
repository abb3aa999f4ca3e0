"""Prometheus metrics shared by every service (one process serves one service;
the ``service`` label tells them apart when scraped together)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

CONSUMED = Counter("crm_messages_consumed_total", "Kafka records consumed and processed",
                   ["service", "topic", "type"])
DUPLICATES = Counter("crm_messages_duplicate_total",
                     "Records skipped because their event id was already in the inbox",
                     ["service", "topic"])
PUBLISHED = Counter("crm_messages_published_total", "Outbox records acknowledged by the broker",
                    ["service", "topic", "type"])
DEAD_LETTERED = Counter("crm_messages_dead_lettered_total",
                        "Records sent to the dead-letter topic", ["service", "topic", "reason"])
HANDLER_SECONDS = Histogram("crm_handler_duration_seconds",
                            "Handler time for a run of consecutive records of one type",
                            ["service", "topic", "type"])
BATCH_SECONDS = Histogram("crm_consumer_batch_duration_seconds",
                          "Time to process one consumed batch in one transaction",
                          ["service", "group"])
CONSUMER_LAG = Gauge("crm_consumer_lag", "Records behind the partition's high watermark",
                     ["service", "group", "topic", "partition"])
OUTBOX_BACKLOG = Gauge("crm_outbox_backlog", "Outbox rows not yet acknowledged by the broker",
                       ["service"])
OUTBOX_OLDEST_AGE = Gauge("crm_outbox_oldest_age_seconds",
                          "Age of the oldest unpublished outbox row", ["service"])
SCHEDULED_FIRED = Counter("crm_scheduled_work_fired_total", "Scheduled work items run",
                          ["service", "kind"])
GRPC_REQUESTS = Counter("crm_grpc_requests_total", "gRPC requests by method and status code",
                        ["service", "method", "code"])
GRPC_SECONDS = Histogram("crm_grpc_request_duration_seconds", "gRPC request latency",
                         ["service", "method"])


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Serve ``/metrics`` from a background thread."""
    start_http_server(port, addr=host)
