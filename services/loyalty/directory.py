"""Does a segment exist? The customers service defines segments; loyalty
asks it when a campaign is created (or dry-run as a draft), so a campaign
never names a segment nobody defined. Its members loyalty learns from
events (:mod:`memberships`), never from here.

The question is ``Customers/ListSegmentMembers`` for one member at most
(the contract has no cheaper call that answers NOT_FOUND for an unknown
segment), on a channel of loyalty's own opened at the first use, with the
service token (which needs ``customers:read``). The customers service
unreachable (or refusing the token) is ``ConnectionError``: the call that
asked fails as UNAVAILABLE, to be retried.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc

from crm.customers.v1 import customers_pb2, customers_pb2_grpc
from crm_runtime.contact_gate import OwnChannel
from crm_runtime.grpc_client import failure
from crm_runtime.settings import Settings

#: Deadline of one call.
TIMEOUT_S = 10.0


class Segments:
    """Asks the customers service about segments."""

    def __init__(self, stub: Callable[[], customers_pb2_grpc.CustomersStub],
                 metadata: Sequence[tuple[str, str]], target: str) -> None:
        self._stub = stub
        self._metadata = list(metadata)
        self._target = target

    async def exists(self, name: str) -> bool:
        """Whether the customers service defines ``name``; ConnectionError
        when it cannot be asked."""
        try:
            await self._stub().ListSegmentMembers(
                customers_pb2.ListSegmentMembersRequest(name=name, page_size=1),
                metadata=self._metadata, timeout=TIMEOUT_S)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise ConnectionError(str(failure(f"customers service at {self._target}", err))
                                  ) from None
        return True


def connect(settings: Settings) -> Segments:
    """The segments of the customers service ``settings`` name
    (``CRM_CUSTOMERS_GRPC_TARGET``), asked with the service token
    (``CRM_SERVICE_TOKEN``, else the dev token)."""
    target = settings.customers_target()
    token = settings.service_token or settings.dev_token
    metadata = [("authorization", f"Bearer {token}")] if token else []
    return Segments(OwnChannel(target, settings).stub, metadata, target)
