"""The client of the contact gate, ``Customers/ReserveContacts``.

Every service that contacts customers on its own initiative (interactions'
survey requests and agents' proactive contacts, loyalty's follow-ups, offers
and newsletters) asks the customers service first, which owns consent and
do-not-contact and keeps one ledger of contacts per customer: one frequency
cap and quiet hours hold across every service (docs/decisions/0044). The
client is shared here because services never import each other.

:meth:`ContactGate.reserve` asks for many contacts in as few calls as the
contract allows (:data:`MAX_PER_CALL` each) and answers one
:class:`ContactDecision` per request, in order. Asking again with a
contact's id answers the first decision for an allowed one, so a retried
transaction never counts a contact twice. The customers service unreachable
(or not answering, or refusing the token) raises ``ConnectionError``: the
caller retries later rather than contact anyone unchecked.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc

from crm.customers.v1 import customers_pb2, customers_pb2_grpc
from crm_contracts.vocabulary import ContactRefusal
from crm_runtime import limits, logs
from crm_runtime.convert import timestamp
from crm_runtime.grpc_client import failure, open_channel
from crm_runtime.settings import Settings

#: Most contacts in one ``ReserveContacts`` call: the contract's limit.
MAX_PER_CALL = limits.limits_of(
    customers_pb2.ReserveContactsRequest.DESCRIPTOR.fields_by_name["contacts"]).max_items
#: Deadline of one call.
TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ContactRequest:
    """One proactive contact to decide (``ContactRequest`` of the contract)."""

    contact_id: str
    customer_id: uuid.UUID
    purpose: str
    at: datetime
    channel: str = ""
    #: Made already (an agent logging a call): quiet hours no longer refuse it.
    already_made: bool = False


@dataclass(frozen=True)
class ContactDecision:
    """What the gate decided for one contact."""

    contact_id: str
    allowed: bool
    reason: str = ""
    not_before: datetime | None = None

    @property
    def deferred(self) -> bool:
        """Refused for now only: the customer's quiet hours, until ``not_before``."""
        return (not self.allowed and self.reason == ContactRefusal.QUIET_HOURS
                and self.not_before is not None)

    @property
    def in_quiet_hours(self) -> bool:
        """Allowed, made already, in the customer's quiet hours."""
        return self.allowed and self.reason == ContactRefusal.QUIET_HOURS


class ContactGate:
    """Asks the customers service's contact gate, as ``service``."""

    def __init__(self, stub: Callable[[], customers_pb2_grpc.CustomersStub],
                 metadata: Sequence[tuple[str, str]], target: str, service: str) -> None:
        """``stub``: the customers service's stub, on a channel the caller
        keeps (interactions' customer directory shares its own);
        ``metadata``: the bearer token's (it needs ``contacts:reserve``)."""
        self._stub = stub
        self._metadata = list(metadata)
        self._target = target
        self._service = service

    async def reserve(self, requests: Sequence[ContactRequest]) -> list[ContactDecision]:
        """One decision per request, in order (one call per
        :data:`MAX_PER_CALL` requests). ConnectionError while the gate
        cannot be asked; RuntimeError when it refuses the request as bad
        (retrying cannot help)."""
        decisions: list[ContactDecision] = []
        for start in range(0, len(requests), MAX_PER_CALL):
            decisions += await self._call(requests[start:start + MAX_PER_CALL])
        return decisions

    async def _call(self, requests: Sequence[ContactRequest]) -> list[ContactDecision]:
        request = customers_pb2.ReserveContactsRequest(contacts=[
            customers_pb2.ContactRequest(
                contact_id=r.contact_id, customer_id=str(r.customer_id), purpose=r.purpose,
                channel=r.channel, at=timestamp(r.at), service=self._service,
                already_made=r.already_made) for r in requests])
        metadata = [*self._metadata, ("traceparent", logs.current_traceparent())]
        try:
            reply = await self._stub().ReserveContacts(request, metadata=metadata,
                                                       timeout=TIMEOUT_S)
        except grpc.aio.AioRpcError as err:
            raise failure(f"contact gate at {self._target}", err) from None
        if len(reply.decisions) != len(requests):
            raise ConnectionError(f"contact gate at {self._target} answered "
                                  f"{len(reply.decisions)} decisions for {len(requests)} "
                                  "contacts")
        return [_decision(d) for d in reply.decisions]


class OwnChannel:
    """A channel to the customers service opened at its first use, for a
    service with no other client of it (loyalty). Like every channel a
    service keeps to another, it lives as long as the process."""

    def __init__(self, target: str, settings: Settings | None) -> None:
        self._target = target
        self._settings = settings
        self._channel: grpc.aio.Channel | None = None

    def stub(self) -> customers_pb2_grpc.CustomersStub:
        if self._channel is None:
            self._channel = open_channel(self._target, self._settings)
        return customers_pb2_grpc.CustomersStub(self._channel)


def connect(settings: Settings, service: str) -> ContactGate:
    """The gate of the customers service ``settings`` name
    (``CRM_CUSTOMERS_GRPC_TARGET``), on a channel of its own, asked with the
    service token (``CRM_SERVICE_TOKEN``, else the dev token)."""
    target = settings.customers_target()
    token = settings.service_token or settings.dev_token
    metadata = [("authorization", f"Bearer {token}")] if token else []
    return ContactGate(OwnChannel(target, settings).stub, metadata, target, service)


def _decision(d: customers_pb2.ContactDecision) -> ContactDecision:
    not_before = d.not_before.ToDatetime(tzinfo=UTC) if d.HasField("not_before") else None
    return ContactDecision(d.contact_id, d.allowed, d.reason, not_before)
