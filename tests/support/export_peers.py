"""Stand-ins for the interactions and loyalty services' part of a
data-subject export (``ExportCustomerData``), for tests that run the
customers service alone: each answers an empty part, as a service that holds
nothing about the customer does."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc

from crm.interactions.v1 import interactions_pb2
from crm.loyalty.v1 import loyalty_pb2
from crm_runtime.settings import Settings


def _empty_part(service: str, module: Any) -> grpc.GenericRpcHandler:
    """``ExportCustomerData`` of ``service``, answering an empty part."""

    async def export(request: Any, context: grpc.aio.ServicerContext) -> Any:
        return module.ExportCustomerDataResponse(
            service=service, json=json.dumps({"customer_id": request.customer_id}))

    name = module.DESCRIPTOR.services_by_name[service.capitalize()].full_name
    return grpc.method_handlers_generic_handler(name, {
        "ExportCustomerData": grpc.unary_unary_rpc_method_handler(
            export, request_deserializer=module.ExportCustomerDataRequest.FromString,
            response_serializer=module.ExportCustomerDataResponse.SerializeToString)})


@asynccontextmanager
async def empty_export_peers(settings: Settings) -> AsyncIterator[Settings]:
    """``settings`` with interactions and loyalty answered by one local
    server that holds nothing, until the block ends."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([_empty_part("interactions", interactions_pb2),
                                     _empty_part("loyalty", loyalty_pb2)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    target = f"127.0.0.1:{port}"
    try:
        yield settings.model_copy(update={"interactions_grpc_target": target,
                                          "loyalty_grpc_target": target})
    finally:
        await server.stop(0)
