"""Who is this contact? Unknown contacts (an email or a phone, no customer id)
are registered through the customers service, which returns the existing
customer when it already knows the email or phone (registration is
idempotent there), or a new potential customer."""

from __future__ import annotations

import uuid

import grpc

from crm.customers.v1 import customers_pb2, customers_pb2_grpc
from crm_runtime import logs
from crm_runtime.errors import InvalidArgument


class CustomerDirectory:
    def __init__(self, target: str, token: str | None) -> None:
        self._target = target
        self._metadata = [("authorization", f"Bearer {token}")] if token else []
        self._channel: grpc.aio.Channel | None = None

    def _stub(self) -> customers_pb2_grpc.CustomersStub:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self._target)
        return customers_pb2_grpc.CustomersStub(self._channel)

    async def identify(self, email: str, phone: str) -> uuid.UUID:
        if not email and not phone:
            raise InvalidArgument("customer_id",
                                  "required, or contact_email / contact_phone to identify them")
        request = customers_pb2.RegisterCustomerRequest(
            emails=[email] if email else [], phones=[phone] if phone else [],
            source="interactions")
        try:
            # The call continues the trace of the contact being recorded.
            metadata = [*self._metadata, ("traceparent", logs.current_traceparent())]
            reply = await self._stub().RegisterCustomer(request, metadata=metadata, timeout=10)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                details = err.details() or ""
                field = "contact_phone" if details.startswith("phones") else "contact_email"
                raise InvalidArgument(field, details.split(": ", 1)[-1]) from None
            # Unavailable, deadline, auth: retry later rather than lose the contact.
            raise ConnectionError(f"customers service at {self._target}: {err.code().name} "
                                  f"{err.details()}") from None
        return uuid.UUID(reply.customer.customer_id)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
