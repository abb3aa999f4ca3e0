"""An erasure a service has not acknowledged: with loyalty stopped, the
status stays pending for loyalty, and once the acknowledgement timeout has
passed on the service clock the gauge ``crm_erasures_overdue`` counts it;
loyalty started again catches up from the topic, acknowledges once, and the
erasure is complete. A database and a broker of this test's own: no other
loyalty may consume the erasure meanwhile, and no other customers service
may report the gauge."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

from prometheus_client import REGISTRY

from crm.customers.v1 import customers_pb2 as cpb
from crm.customers.v1 import customers_pb2_grpc
from crm_contracts.topics import LOYALTY
from crm_runtime.clock import ManualClock
from crm_runtime.stack import TansuBroker
from services.customers.app import SPEC as CUSTOMERS
from services.interactions.app import SPEC as INTERACTIONS
from services.loyalty.app import SPEC as LOYALTY_SPEC
from tests.integration.loyalty.conftest import START, loyalty_settings
from tests.support.erasures import (
    COMPLETE,
    PENDING,
    acknowledgements,
    erasure_status,
    states,
    status_when,
)
from tests.support.kafka import wait_for
from tests.support.services import running

TIMEOUT_S = 600


def overdue(awaiting: str) -> float | None:
    """``crm_erasures_overdue`` of the customers service for ``awaiting``."""
    return REGISTRY.get_sample_value("crm_erasures_overdue",
                                     {"service": "customers", "awaiting": awaiting})


async def gauge_is(awaiting: str, value: float) -> None:
    async def holds() -> bool:
        return overdue(awaiting) == value

    await wait_for(holds, timeout=10, what=f"crm_erasures_overdue{{awaiting={awaiting}}} "
                                           f"== {value} (is {overdue(awaiting)})")


async def test_an_unacknowledged_erasure_is_overdue_until_the_service_catches_up(
        own_database: str, own_broker: TansuBroker) -> None:
    settings = loyalty_settings(own_database, own_broker).model_copy(
        update={"erasure_ack_timeout_s": TIMEOUT_S, "metrics_refresh_s": 0.1})
    clock = ManualClock(START)
    async with running(CUSTOMERS, settings, clock=clock) as customers:
        target = f"127.0.0.1:{customers.runner.bound_grpc_port}"
        with_target = settings.model_copy(update={"customers_grpc_target": target})
        async with running(INTERACTIONS, with_target, clock=clock):
            stub = customers_pb2_grpc.CustomersStub(customers.channel)
            reply = await stub.RegisterCustomer(cpb.RegisterCustomerRequest(
                emails=[f"marta-{uuid.uuid4().hex[:8]}@example.com"]),
                metadata=customers.metadata)
            cid = reply.customer.customer_id
            await stub.EraseCustomer(cpb.EraseCustomerRequest(customer_id=cid),
                                     metadata=customers.metadata)
            waiting = await status_when(
                customers, cid, lambda s: states(s)[1] == ("interactions", COMPLETE),
                "interactions' acknowledgement")
            assert states(waiting) == [("customers", COMPLETE), ("interactions", COMPLETE),
                                       ("loyalty", PENDING)]
            assert not waiting.complete and not waiting.services[2].HasField("completed_at")
            await gauge_is("loyalty", 0)  # pending, not overdue yet
            clock.advance(timedelta(seconds=TIMEOUT_S - 1))
            await asyncio.sleep(5 * settings.metrics_refresh_s)  # refreshed: still not due
            assert overdue("loyalty") == 0
            clock.advance(timedelta(seconds=1))
            await gauge_is("loyalty", 1)
            assert overdue("interactions") == 0
            assert states(await erasure_status(customers, cid))[2] == ("loyalty", PENDING)

        async with running(LOYALTY_SPEC, with_target, clock=clock) as loyalty:
            done = await status_when(customers, cid, lambda s: s.complete,
                                     "loyalty's acknowledgement after it caught up")
            assert states(done) == [("customers", COMPLETE), ("interactions", COMPLETE),
                                    ("loyalty", COMPLETE)]
            assert done.services[2].completed_at.ToDatetime() > done.requested_at.ToDatetime()
            await gauge_is("loyalty", 0)
            acks = await acknowledgements(loyalty, LOYALTY, cid)
            assert [t for t, _ in acks] == ["loyalty.erasure_completed"]
