"""A gRPC client in another language, with no proto files: Node.js
(@grpc/grpc-js) discovers the customers API through server reflection
(grpc-js-reflection-client, from the npm registry) and calls it with a
bearer token, as docs/integration.md tells integrators to."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.node import ensure_packages
from tests.support.services import DEV_TOKEN, Running

SCRIPT = Path(__file__).resolve().parents[2] / "support" / "node" / "reflection_client.cjs"
PACKAGES = ("@grpc/grpc-js@1.14.7", "grpc-js-reflection-client@1.4.2")


@pytest.mark.slow
async def test_a_node_client_through_reflection(svc: Running) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is needed for the foreign-client test (Debian package nodejs)")
    modules = await asyncio.to_thread(ensure_packages, *PACKAGES)
    target = f"127.0.0.1:{svc.runner.bound_grpc_port}"
    result = await asyncio.to_thread(
        subprocess.run, [node, str(SCRIPT), target, DEV_TOKEN], capture_output=True, text=True,
        timeout=120, stdin=subprocess.DEVNULL, env={**os.environ, "NODE_PATH": str(modules)})
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"crm.customers.v1.Customers", "grpc.health.v1.Health",
            "crm.ops.v1.Operations"} <= set(out["services"])
    registered = out["registered"]
    assert registered["code"] == "OK", registered
    customer = registered["reply"]["customer"]
    assert customer["display_name"] == "Ada from Node"
    assert customer["emails"] == [out["email"]]
    assert customer["stage"] == "STAGE_POTENTIAL"
    fetched = out["fetched"]
    assert fetched["code"] == "OK" and fetched["reply"]["customer_id"] == customer["customer_id"]
    invalid = out["invalid"]
    assert invalid["code"] == "INVALID_ARGUMENT", invalid
    assert invalid["details"].startswith("emails[0]"), invalid
    assert invalid["has_status_details"], "google.rpc.Status with the field violation"
    assert out["missing"]["code"] == "NOT_FOUND", out["missing"]
    assert out["anonymous"]["code"] == "UNAUTHENTICATED", out["anonymous"]
