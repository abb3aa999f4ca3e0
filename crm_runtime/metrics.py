"""Prometheus metrics shared by every service (one process serves one service;
the ``service`` label tells them apart when scraped together)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from crm_runtime.db import Conn

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
RECORD_AGE = Histogram("crm_consumer_record_age_seconds",
                       "Time from a record's creation (its Kafka timestamp) to the start of "
                       "the batch that processes it: how far behind the consumer is in time",
                       ["service", "group"],
                       buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                                30.0, 60.0, 300.0))
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


@dataclass(frozen=True)
class DbGauge:
    """A gauge whose value is a query over the service's own tables, for
    state such as customers by stage or open cases. ``sql`` returns rows of
    ``(*labels, value)``; the runner refreshes it every few seconds. A query
    that mentions ``$1`` gets the service clock's now there (not the
    database's), so time-based state follows the clock the service runs on."""

    name: str
    help: str
    labels: tuple[str, ...]
    sql: str


class _DbGauges:
    """One process-wide collector for every service's :class:`DbGauge`."""

    def __init__(self) -> None:
        self._specs: dict[str, DbGauge] = {}
        self._values: dict[tuple[str, str], list[tuple[tuple[str, ...], float]]] = {}

    def add(self, gauges: list[DbGauge]) -> None:
        for g in gauges:
            self._specs[g.name] = g

    async def refresh(self, service: str, conn: Conn, gauges: list[DbGauge],
                      now: datetime | None = None) -> None:
        for g in gauges:
            rows = await conn.fetch(g.sql, now) if "$1" in g.sql else await conn.fetch(g.sql)
            self._values[(service, g.name)] = [
                (tuple(str(v) for v in tuple(r)[:-1]), float(tuple(r)[-1] or 0)) for r in rows]

    def describe(self) -> list[Metric]:
        return []  # names are not known at registration; avoids false collisions

    def collect(self) -> Iterator[Metric]:
        for name, spec in self._specs.items():
            family = GaugeMetricFamily(name, spec.help, labels=["service", *spec.labels])
            for (service, metric), rows in self._values.items():
                if metric == name:
                    for labels, value in rows:
                        family.add_metric([service, *labels], value)
            yield family


DB_GAUGES = _DbGauges()
REGISTRY.register(DB_GAUGES)
