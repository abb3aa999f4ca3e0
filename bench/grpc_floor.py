"""A bare ``grpc.aio`` server for the gRPC workloads' floor figure:
``python -m bench.grpc_floor`` serves ``crm.customers.v1.Customers`` with a
``GetCustomer`` that echoes the id (no authentication, interceptor, database
or logging) plus server reflection, prints its port and serves until its
standard input closes. :func:`running` starts it so (the bench's
``customers.get`` floor and its test use it). ``python -m bench.grpc_floor
uvloop`` runs it on uvloop's event loop, as the services run
(:func:`crm_runtime.service.run_forever`): grpc.aio costs less CPU a call
there (about 230 µs against 290 µs on asyncio's own loop, measured on the
reference machine), so that floor is the higher bar for a service.

It is what Python grpcio alone costs per call on this machine: whatever the
product's handler does, its latency at a given rate cannot beat this
server's under the same load generator."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import uvloop
from grpc_reflection.v1alpha import reflection

from crm.customers.v1 import customers_pb2 as pb
from crm.customers.v1 import customers_pb2_grpc

#: The repository root (``python -m bench.grpc_floor`` runs from there).
ROOT = Path(__file__).resolve().parents[1]
SERVICE = pb.DESCRIPTOR.services_by_name["Customers"].full_name


class EchoCustomers(customers_pb2_grpc.CustomersServicer):
    async def GetCustomer(self, request: pb.GetCustomerRequest,
                          context: grpc.aio.ServicerContext) -> pb.Customer:
        return pb.Customer(customer_id=request.customer_id)


#: The event loops the floor can run on (the first is the default).
LOOPS = ("asyncio", "uvloop")


async def serve() -> None:
    server = grpc.aio.server()
    # Only GetCustomer is served (the others answer UNIMPLEMENTED, as in the base class).
    customers_pb2_grpc.add_CustomersServicer_to_server(
        EchoCustomers(), server)  # type: ignore[abstract]
    reflection.enable_server_reflection([SERVICE, reflection.SERVICE_NAME], server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes it
    await server.stop(0)


@contextlib.asynccontextmanager
async def running(loop: str = LOOPS[0]) -> AsyncIterator[str]:
    """The server in a process of its own, on event loop ``loop`` (one of
    :data:`LOOPS`), until the block ends; yields its ``host:port``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.grpc_floor", loop, cwd=str(ROOT),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        port = int(await asyncio.wait_for(proc.stdout.readline(), timeout=30))
        yield f"127.0.0.1:{port}"
    finally:
        proc.stdin.close()
        returncode = await asyncio.wait_for(proc.wait(), timeout=30)
    if returncode != 0:
        raise RuntimeError(f"bench.grpc_floor exited with {returncode}")


if __name__ == "__main__":
    if (sys.argv[1:] or [LOOPS[0]])[0] == "uvloop":
        uvloop.run(serve())
    else:
        asyncio.run(serve())
