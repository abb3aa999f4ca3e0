"""The runtime floor of a consuming, publishing service: ``python -m
bench.floor <in_topic> <out_topic>`` runs a service built on the shared
runtime (:class:`~crm_runtime.service.ServiceRunner`: idempotent consumer
with its inbox, one transaction per batch, outbox, relay, gRPC health)
whose handler does the least any such service must: one COPY row per
``customer.stage_changed`` and one ``loyalty.discount_issued`` per input,
queued in the outbox in the batch's transaction, published on
``out_topic`` by the relay. No rule, no lookup, no domain state.

:mod:`bench.workloads.loyalty_actions` runs it beside the loyalty service on
the same trigger records, so what the mandated reliability patterns cost on
their own is a figure of the same run; what loyalty adds above it is its
domain work. Schema ``floor`` (runtime migrations plus
:data:`bench.workloads.consume.MIGRATION`) is migrated by the workload before
it starts; the gRPC port comes from :data:`bench.service.GRPC_PORT_ENV`.
"""

from __future__ import annotations

import os
import secrets
import sys
import uuid
from datetime import UTC, datetime, timedelta

from bench.service import GRPC_PORT_ENV
from bench.workloads.consume import COLUMNS, TABLE
from crm_contracts.customers import StageChanged
from crm_contracts.loyalty import DiscountIssued
from crm_runtime import outbox
from crm_runtime.db import Conn
from crm_runtime.events import Envelope
from crm_runtime.service import (
    ServiceContext,
    ServiceParts,
    ServiceRunner,
    ServiceSpec,
    Subscription,
    run_forever,
)
from crm_runtime.settings import load_settings

NAME = "floor"


def build(in_topic: str, out_topic: str) -> ServiceSpec:
    def parts(ctx: ServiceContext) -> ServiceParts:
        async def issue(conn: Conn, events: list[Envelope]) -> None:
            rows = []
            issued = []
            expires = datetime.now(UTC) + timedelta(days=30)
            for env in events:
                data = env.data
                assert isinstance(data, StageChanged)
                rows.append((env.id, data.customer_id, data.purchase_count))
                issued.append(Envelope(data=DiscountIssued(
                    discount_id=str(uuid.uuid4()), customer_id=data.customer_id,
                    code=secrets.token_hex(8).upper(), kind="percent", percent=10,
                    currency="EUR", expires_at=expires, rule_id="floor", purpose="promotional",
                    reason="Thank you for buying again"),
                    subject=data.customer_id, source="/crm/loyalty", topic_override=out_topic))
            await conn.copy_records_to_table(TABLE, records=rows, columns=COLUMNS,
                                             schema_name=NAME)
            await outbox.add(conn, issued, lanes=ctx.lanes)

        return ServiceParts(subscriptions=[Subscription(
            topics=[in_topic], handlers={StageChanged.event_type: issue})])

    return ServiceSpec(name=NAME, migrations=None, build=parts)


def main(argv: list[str]) -> None:
    in_topic, out_topic = argv
    run_forever(ServiceRunner(build(in_topic, out_topic), load_settings(),
                              grpc_port=int(os.environ[GRPC_PORT_ENV]), serve_metrics=False))


if __name__ == "__main__":
    main(sys.argv[1:])
