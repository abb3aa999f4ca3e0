"""Helpers for tests of acknowledged erasure: the customers service's
GetErasureStatus, and the acknowledgements read back from the topics."""

from __future__ import annotations

import json
from typing import Any

from crm.customers.v1 import customers_pb2 as cpb
from crm.customers.v1 import customers_pb2_grpc
from tests.support.kafka import read_topic, wait_for
from tests.support.services import Running

COMPLETE = cpb.ERASURE_STATE_COMPLETE
PENDING = cpb.ERASURE_STATE_PENDING


async def erasure_status(svc: Running, customer_id: str) -> cpb.GetErasureStatusResponse:
    reply: cpb.GetErasureStatusResponse = await customers_pb2_grpc.CustomersStub(
        svc.channel).GetErasureStatus(cpb.GetErasureStatusRequest(customer_id=customer_id),
                                      metadata=svc.metadata)
    return reply


async def status_when(svc: Running, customer_id: str, check: Any,
                      what: str) -> cpb.GetErasureStatusResponse:
    """The erasure status once ``check(status)`` holds."""
    latest: list[cpb.GetErasureStatusResponse] = []

    async def holds() -> bool:
        latest[:] = [await erasure_status(svc, customer_id)]
        return bool(check(latest[0]))

    await wait_for(holds, timeout=30, what=what)
    return latest[0]


def states(status: cpb.GetErasureStatusResponse) -> list[tuple[str, int]]:
    return [(s.name, s.state) for s in status.services]


async def acknowledgements(svc: Running, topic: str, customer_id: str,
                           settle: float = 1.5) -> list[tuple[str, dict[str, Any]]]:
    """(type, data) of the customer's ``*.erasure_completed`` records on ``topic``."""
    bootstrap = svc.runner.settings.kafka_bootstrap_servers
    assert bootstrap
    records = await read_topic(bootstrap, topic, expect=0, timeout=5, settle=settle)
    return [(dict(r.headers)["ce_type"].decode(), json.loads(r.value)) for r in records
            if r.key == customer_id.encode()
            and dict(r.headers)["ce_type"].endswith(b".erasure_completed")]
