"""The data-subject export across the product (``Customers/ExportCustomer``):
everything every service holds about a customer, in one JSON document.

This service decides who is a customer: an unknown id is ``NOT_FOUND`` before
any other service is asked, and a merged id exports its survivor. Its own part
is :func:`privacy.export` (an erased customer's is the erased stub); the parts
of interactions and loyalty come from their ``ExportCustomerData``, asked at
the same time over gRPC with the service token, for the survivor and the ids
merged into it. The document::

    {"customer_id": "<survivor>", "exported_at": "<ISO 8601, the service clock>",
     "services": {"customers": {...}, "interactions": {...}, "loyalty": {...}}}

A service that fails, or does not answer within ``CRM_EXPORT_TIMEOUT_S``, fails
the whole call (:class:`PartMissing`: ``DEADLINE_EXCEEDED`` or ``UNAVAILABLE``,
the message and a ``google.rpc.ErrorInfo`` naming each missing service), so a
partial document is never returned as if it were complete.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from crm.interactions.v1 import interactions_pb2, interactions_pb2_grpc
from crm.loyalty.v1 import loyalty_pb2, loyalty_pb2_grpc
from crm_runtime import limits, logs, uow
from crm_runtime.grpc_client import open_channel
from crm_runtime.settings import Settings
from services.customers import commands, privacy

log = logging.getLogger(__name__)

#: ``google.rpc.ErrorInfo`` of a missing part: its reason and domain.
REASON = "EXPORT_PART_MISSING"
DOMAIN = "crm.customers.v1.Customers"
#: Most merged ids sent along (the limit the other services' contracts state).
MAX_MERGED = limits.limits_of(interactions_pb2.ExportCustomerDataRequest.DESCRIPTOR
                              .fields_by_name["merged_customer_ids"]).max_items
#: The longest error text of another service quoted in a message.
MAX_DETAILS = 300


@dataclass(frozen=True)
class _Peer:
    """How to ask one service for its part."""

    stub: Callable[[grpc.aio.Channel], Any]
    request: Callable[..., Message]


#: The services asked for their part, in the document's order.
PEERS: dict[str, _Peer] = {
    "interactions": _Peer(interactions_pb2_grpc.InteractionsStub,
                          interactions_pb2.ExportCustomerDataRequest),
    "loyalty": _Peer(loyalty_pb2_grpc.LoyaltyStub, loyalty_pb2.ExportCustomerDataRequest),
}


@dataclass(frozen=True)
class Missing:
    """A service whose part is missing: the code it failed with
    (``DEADLINE_EXCEEDED`` when it did not answer in time) and what to say."""

    service: str
    code: grpc.StatusCode
    message: str


class PartMissing(Exception):
    """The export is incomplete: one or more services gave no part."""

    def __init__(self, missing: list[Missing]) -> None:
        self.missing = missing
        super().__init__("; ".join(m.message for m in missing)
                         + "; no partial export is returned")

    @property
    def code(self) -> grpc.StatusCode:
        """``DEADLINE_EXCEEDED`` when every missing part timed out, else ``UNAVAILABLE``."""
        if all(m.code == grpc.StatusCode.DEADLINE_EXCEEDED for m in self.missing):
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.UNAVAILABLE

    def status(self) -> status_pb2.Status:
        """The call's status, with an ``ErrorInfo`` naming each missing service."""
        code = (code_pb2.DEADLINE_EXCEEDED if self.code == grpc.StatusCode.DEADLINE_EXCEEDED
                else code_pb2.UNAVAILABLE)
        status = status_pb2.Status(code=code, message=str(self))
        for m in self.missing:
            status.details.add().Pack(error_details_pb2.ErrorInfo(
                reason=REASON, domain=DOMAIN, metadata={"service": m.service,
                                                        "code": m.code.name}))
        return status


class Peers:
    """The other services' parts, asked with the service token
    (``CRM_SERVICE_TOKEN``, else the dev token; it needs ``privacy:export``)
    on channels opened for the export (exports are rare; a channel kept
    between them would carry a stale connection's back-off)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        token = settings.service_token or settings.dev_token
        self._auth = [("authorization", f"Bearer {token}")] if token else []
        self.timeout_s = settings.export_timeout_s

    async def parts(self, customer_id: str, merged: list[str]) -> dict[str, dict[str, Any]]:
        """Every other service's part for ``customer_id`` (and the ids merged
        into it), asked at the same time; :class:`PartMissing` unless all came."""
        metadata = [*self._auth, ("traceparent", logs.current_traceparent())]
        answers = await asyncio.gather(*(self._part(name, customer_id, merged, metadata)
                                         for name in PEERS))
        missing = [a for a in answers if isinstance(a, Missing)]
        if missing:
            raise PartMissing(missing)
        return {name: part for name, part in zip(PEERS, answers, strict=True)
                if not isinstance(part, Missing)}

    async def _part(self, service: str, customer_id: str, merged: list[str],
                    metadata: list[tuple[str, str]]) -> dict[str, Any] | Missing:
        peer, target = PEERS[service], self._settings.service_target(service)
        request = peer.request(customer_id=customer_id, merged_customer_ids=merged[:MAX_MERGED])
        try:
            async with open_channel(target, self._settings) as channel:
                reply = await peer.stub(channel).ExportCustomerData(
                    request, metadata=metadata, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as err:
            log.warning("export of %s: %s at %s failed: %s %s", customer_id, service, target,
                        err.code().name, err.details())
            if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return Missing(service, err.code(), f"{service} did not answer the export "
                                                    f"within {self.timeout_s:g} s")
            details = (err.details() or "")[:MAX_DETAILS]
            return Missing(service, err.code(),
                           f"{service} failed the export: {err.code().name} {details}".strip())
        return _read_part(service, reply)


def _read_part(service: str, reply: Any) -> dict[str, Any] | Missing:
    """The part a service answered, if it is one: its own name and a JSON object."""
    try:
        part = json.loads(reply.json)
    except ValueError as exc:
        part, problem = None, f"not JSON ({exc})"
    else:
        problem = "not a JSON object"
    if reply.service != service:
        problem = f"the part of {reply.service!r}"
    elif isinstance(part, dict):
        return part
    return Missing(service, grpc.StatusCode.INTERNAL,
                   f"{service} answered the export with no valid part: {problem}")


async def export(pool: asyncpg.Pool, ctx: commands.Context, peers: Peers,
                 customer_id: uuid.UUID) -> str:
    """The whole export of ``customer_id`` as JSON (see the module's docstring)."""
    ours = await uow.run(pool, lambda c: privacy.export(c, ctx, customer_id))
    survivor: str = ours["customer_id"]
    theirs = await peers.parts(survivor, list(ours["merged_aliases"]))
    document = {"customer_id": survivor, "exported_at": ctx.clock.now().isoformat(),
                "services": {"customers": ours, **theirs}}
    return json.dumps(document, indent=2, sort_keys=True)
