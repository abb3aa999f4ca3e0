"""Who is this contact? Unknown contacts (an email or a phone, no customer id)
are registered through the customers service, which returns the existing
customer when it already knows the email or phone (registration is
idempotent there), or a new potential customer.

The ingest consumer asks once per batch, before the batch's transaction
opens (:meth:`CustomerDirectory.prepare`, the subscription's prepare step):
one ``RegisterCustomers`` call for up to :data:`MAX_PER_CALL` contact points,
so no transaction waits on the network and a batch of unknown contacts costs
one round trip, not one each. See docs/decisions/0008.
"""

from __future__ import annotations

import logging
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from crm.customers.v1 import customers_pb2, customers_pb2_grpc
from crm_contracts.interactions import ContactReceived
from crm_runtime import logs
from crm_runtime.consumer import Seen
from crm_runtime.errors import InvalidArgument
from crm_runtime.events import Envelope

log = logging.getLogger(__name__)

#: Most registrations in one ``RegisterCustomers`` call (the customers
#: service refuses more: customers.proto).
MAX_PER_CALL = 1000
#: Deadline of one call; a thousand registrations take about a second.
TIMEOUT_S = 30.0

#: An email and a phone, either of them possibly empty.
ContactPoint = tuple[str, str]


@dataclass(frozen=True)
class Refused:
    """The customers service refused a contact point: the contact's field
    (``contact_email`` or ``contact_phone``) and what is wrong with it."""

    field: str
    problem: str


#: What registering one contact point gave: its customer, or the refusal.
Resolution = uuid.UUID | Refused


class CustomerDirectory:
    def __init__(self, target: str, token: str | None) -> None:
        self._target = target
        self._metadata = [("authorization", f"Bearer {token}")] if token else []
        self._channel: grpc.aio.Channel | None = None
        #: By event id, what :meth:`prepare` resolved; an entry goes when its
        #: envelope does (the consumer holds a batch's envelopes until the
        #: batch is applied, retries included).
        self._resolved: dict[str, Resolution] = {}

    def _stub(self) -> customers_pb2_grpc.CustomersStub:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self._target)
        return customers_pb2_grpc.CustomersStub(self._channel)

    async def prepare(self, envelopes: list[Envelope], seen: Seen) -> None:
        """Register the unknown contacts of a consumed batch (each distinct
        email and phone once) before its transaction opens, and remember each
        event's customer, or the refusal of its email or phone, for
        :meth:`customer_of`. Events resolved by an earlier attempt at the same
        batch are not asked for again, nor redeliveries of events applied
        before (``seen``: the inbox drops them, and registering their contact
        again could bring back a customer erased since). Raises
        ConnectionError while the customers service cannot be reached or does
        not answer (the batch waits and is retried)."""
        unknown = [(env, (data.contact_email, data.contact_phone)) for env in envelopes
                   if isinstance(data := env.data, ContactReceived) and not data.customer_id
                   and (data.contact_email or data.contact_phone)
                   and env.id not in self._resolved]
        applied = await seen([env for env, _ in unknown]) if unknown else set()
        pending: dict[ContactPoint, list[Envelope]] = {}
        for env, point in unknown:
            if env.id not in applied:
                pending.setdefault(point, []).append(env)
        points = list(pending)
        for start in range(0, len(points), MAX_PER_CALL):
            chunk = points[start:start + MAX_PER_CALL]
            for point, resolution in zip(chunk, await self._register(chunk), strict=True):
                for env in pending[point]:
                    self._remember(env, resolution)
        if points:
            log.debug("registered %d unknown contact points of %d events", len(points),
                      sum(len(e) for e in pending.values()))

    def _remember(self, env: Envelope, resolution: Resolution) -> None:
        if env.id in self._resolved:  # the same event twice in the batch
            return
        self._resolved[env.id] = resolution
        weakref.finalize(env, self._resolved.pop, env.id, None)

    async def customer_of(self, env: Envelope[ContactReceived]) -> uuid.UUID:
        """The customer of a contact without a customer id: the one
        :meth:`prepare` resolved, else (an event it did not see) registered
        now, alone. InvalidArgument names the contact's refused field."""
        data = env.data
        _require_a_point(data.contact_email, data.contact_phone)
        resolution = self._resolved.get(env.id)
        if resolution is None:
            [resolution] = await self._register([(data.contact_email, data.contact_phone)])
        return _customer(resolution)

    async def identify(self, email: str, phone: str) -> uuid.UUID:
        """The customer of an email or phone, registered if new (one call)."""
        _require_a_point(email, phone)
        [resolution] = await self._register([(email, phone)])
        return _customer(resolution)

    async def _register(self, points: Sequence[ContactPoint]) -> list[Resolution]:
        """One ``RegisterCustomers`` call; a resolution per point, in order."""
        request = customers_pb2.RegisterCustomersRequest(customers=[
            customers_pb2.RegisterCustomerRequest(
                emails=[email] if email else [], phones=[phone] if phone else [],
                source="interactions")
            for email, phone in points])
        try:
            # The call continues the trace of the work at hand (a gRPC call's,
            # a fallback's event); a batch's call, of many traces, starts one.
            metadata = [*self._metadata, ("traceparent", logs.current_traceparent())]
            reply = await self._stub().RegisterCustomers(request, metadata=metadata,
                                                         timeout=TIMEOUT_S)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                # A customers release from before RegisterCustomers (a rolling
                # upgrade): one RegisterCustomer call a point, still before
                # any transaction.
                return [await self._register_one(point, metadata) for point in points]
            if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                # The request as a whole (not one contact): retrying cannot
                # help. The consumer applies the batch anyway, event by event.
                raise RuntimeError(f"customers service at {self._target} refused "
                                   f"{len(points)} registrations: {err.details()}") from None
            # Unavailable, deadline, auth, a customers release without this
            # call: retry later rather than lose the contacts.
            raise ConnectionError(f"customers service at {self._target}: {err.code().name} "
                                  f"{err.details()}") from None
        if len(reply.results) != len(points):
            raise ConnectionError(f"customers service at {self._target} answered "
                                  f"{len(reply.results)} results for {len(points)} contacts")
        return [_resolution(r) for r in reply.results]

    async def _register_one(self, point: ContactPoint,
                            metadata: list[tuple[str, str]]) -> Resolution:
        """One ``RegisterCustomer`` call (customers releases without
        ``RegisterCustomers``)."""
        email, phone = point
        request = customers_pb2.RegisterCustomerRequest(
            emails=[email] if email else [], phones=[phone] if phone else [],
            source="interactions")
        try:
            reply = await self._stub().RegisterCustomer(request, metadata=metadata,
                                                        timeout=TIMEOUT_S)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                details = err.details() or ""
                return Refused("contact_phone" if details.startswith("phones")
                               else "contact_email", details.split(": ", 1)[-1])
            raise ConnectionError(f"customers service at {self._target}: {err.code().name} "
                                  f"{err.details()}") from None
        return uuid.UUID(reply.customer.customer_id)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


def _require_a_point(email: str, phone: str) -> None:
    if not email and not phone:
        raise InvalidArgument("customer_id",
                              "required, or contact_email / contact_phone to identify them")


def _resolution(result: customers_pb2.RegisterCustomersResult) -> Resolution:
    if result.WhichOneof("result") == "error":
        # "customers[3].phones[0]": the contact's phone; anything else its email.
        field = result.error.field.split("].", 1)[-1]
        return Refused("contact_phone" if field.startswith("phones") else "contact_email",
                       result.error.description)
    return uuid.UUID(result.customer.customer_id)


def _customer(resolution: Resolution) -> uuid.UUID:
    if isinstance(resolution, Refused):
        raise InvalidArgument(resolution.field, resolution.problem)
    return resolution
