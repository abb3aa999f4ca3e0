"""The benchmark's Node.js gRPC load generator (bench/node/grpc_load.cjs),
against the real customers service: what customers.get reports comes from it,
so it must find what it asked for, time every call and stop on a real error."""

from __future__ import annotations

import math
import uuid
from typing import Any

import pytest

from bench import grpc_floor, node
from tests.support.customers import register
from tests.support.node import GRPC_PACKAGES, ensure_packages, node_binary
from tests.support.services import DEV_TOKEN, Running

pytestmark = pytest.mark.slow


def _config(svc: Running, phases: list[dict[str, Any]], token: str = DEV_TOKEN
            ) -> dict[str, Any]:
    return {"target": f"127.0.0.1:{svc.runner.bound_grpc_port}",
            "service": "crm.customers.v1.Customers", "method": "GetCustomer",
            "id_field": "customer_id", "reply_field": "customer_id", "token": token,
            "channels": 2, "timeout_ms": 10_000, "warm_up": [], "phases": phases}


async def test_closed_and_paced_phases_find_every_customer(svc: Running) -> None:
    node_binary()
    ensure_packages(*GRPC_PACKAGES)
    ids = [(await register(svc)).customer.customer_id for _ in range(3)]
    calls = ids * 10
    result = await node.grpc_load(_config(svc, [
        {"name": "max", "concurrency": 4, "ids": calls},
        {"name": "paced", "rate": 100, "ids": calls}]))
    for phase in ("max", "paced"):
        assert result[phase]["found"] == calls
        latencies = result[phase]["latencies_ms"]
        assert len(latencies) == len(calls) and all(0 < ms < 10_000 for ms in latencies)
    # 30 calls started 10 ms apart: the paced phase lasts at least 290 ms.
    assert result["paced"]["seconds"] >= 0.29
    assert math.isfinite(result["max"]["seconds"])


@pytest.mark.parametrize(("customer_id", "token", "code"), [
    (str(uuid.uuid4()), DEV_TOKEN, "NOT_FOUND"),
    ("not-a-uuid", DEV_TOKEN, "INVALID_ARGUMENT"),
    (None, "wrong-token", "UNAUTHENTICATED"),
])
async def test_an_error_that_is_not_overload_stops_the_run(
        svc: Running, customer_id: str | None, token: str, code: str) -> None:
    node_binary()
    ensure_packages(*GRPC_PACKAGES)
    known = (await register(svc)).customer.customer_id
    with pytest.raises(RuntimeError, match=code):
        await node.grpc_load(_config(svc, [
            {"name": "max", "concurrency": 2, "ids": [known, customer_id or known]}],
            token=token))


async def test_the_floor_server_echoes_every_id() -> None:
    """bench.grpc_floor (the bare grpc.aio server of customers.get's floor
    figure) answers the generator's calls with the id it was asked for."""
    node_binary()
    ensure_packages(*GRPC_PACKAGES)
    ids = [str(uuid.uuid4()) for _ in range(20)]
    async with grpc_floor.running() as target:
        result = await node.grpc_load({
            "target": target, "service": "crm.customers.v1.Customers",
            "method": "GetCustomer", "id_field": "customer_id", "reply_field": "customer_id",
            "token": "", "channels": 1, "timeout_ms": 10_000, "warm_up": [],
            "phases": [{"name": "max", "concurrency": 4, "ids": ids}]})
    assert result["max"]["found"] == ids
