"""When a contact happened, as other systems write it: on the ingest topic
only RFC 3339 with an offset, inside the product's window, is a time; a
time the service's clock cannot have seen yet, or a NUL character in a
text, is refused too. Each refusal is a dead letter naming the field, and
nothing of it reaches the customers service."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta, timezone
from typing import Any

import grpc
import pytest

from crm.customers.v1 import customers_pb2 as cpb
from crm.interactions.v1 import interactions_pb2 as pb
from crm_contracts.interactions import ContactReceived
from crm_contracts.topics import INTERACTIONS_INGEST
from crm_runtime.events import Envelope
from tests.integration.interactions.conftest import Pair
from tests.integration.interactions.test_customer_scoped_keys import (
    consumed,
    dead_letter,
)
from tests.integration.interactions.test_interactions_service import (
    _ts,
    api,
    customers,
    new_customer,
    record,
)
from tests.support.kafka import dlq_error, produce, wait_for

#: occurred_at as channels have got it wrong, and the dead letter's kind.
BAD_TIMES: list[tuple[Any, str]] = [
    (0, "invalid_payload"),
    ("12345", "invalid_payload"),
    (1700000000000, "invalid_payload"),  # milliseconds since the epoch
    ("2026-03-01", "invalid_payload"),  # a bare date
    ("2026-03-01T10:00:00", "invalid_payload"),  # no offset
    ("9999-12-31T00:00:00Z", "invalid_payload"),  # past the product's window
    ("0001-01-01T00:00:00Z", "invalid_payload"),
    ("1999-12-31T23:59:59Z", "invalid_contact"),  # before the earliest event time
    ("+1 day", "invalid_contact"),  # the service's clock has not seen it yet
]


async def test_bad_times_and_nul_characters_are_dead_letters_naming_the_field(
        pair: Pair) -> None:
    cid = await new_customer(pair)
    now = pair.clock.now()
    run = uuid.uuid4().hex[:8]

    def purchase(key: str, **fields: Any) -> tuple[Envelope[ContactReceived], bytes]:
        """A purchase of the customer (its envelope, for the headers) and its
        body with ``fields`` written over, as a channel's own JSON."""
        env = Envelope(data=ContactReceived(
            idempotency_key=f"{run}-{key}", customer_id=cid, channel="in_person",
            kind="purchase", occurred_at=now, amount_minor=990, currency="EUR"),
            subject=cid, source="/pos")
        body = {**json.loads(env.body()), **fields}
        return env, json.dumps(body).encode()

    bad = []
    for i, (value, _) in enumerate(BAD_TIMES):
        if value == "+1 day":
            value = (now + timedelta(days=1)).isoformat()
        bad.append(purchase(f"time-{i}", occurred_at=value))
    bad.append(purchase("nul", notes="paid in cash\x00"))
    kinds = [kind for _, kind in BAD_TIMES] + ["invalid_payload"]
    fields = ["occurred_at"] * len(BAD_TIMES) + ["notes"]
    # The same moment at +02:00 is a time; it comes last, so the consumer has
    # passed every bad record once it is stored.
    plus_two = now.astimezone(timezone(timedelta(hours=2))).isoformat()
    good = purchase("good", occurred_at=plus_two)
    assert plus_two.endswith("+02:00")
    await produce(pair.bootstrap, [(INTERACTIONS_INGEST, cid.encode(), body, env.headers())
                                     for env, body in [*bad, good]])

    await consumed(pair, good[0].id)
    stored = await pair.pool.fetchrow(
        "SELECT occurred_at FROM interactions WHERE idempotency_key = $1", f"{run}-good")
    assert stored is not None and stored["occurred_at"] == now
    for (env, _), kind, field in zip(bad, kinds, fields, strict=True):
        got_kind, reason = dlq_error(await dead_letter(pair, env.id))
        assert (got_kind, reason.split(":", 1)[0]) == (kind, field), reason
    assert await pair.pool.fetchval(
        "SELECT count(*) FROM interactions WHERE idempotency_key LIKE $1", f"{run}-%") == 1

    # Only the good purchase reached the customers service.
    async def counted() -> bool:
        c = await customers(pair).GetCustomer(cpb.GetCustomerRequest(customer_id=cid),
                                              metadata=pair.customers.metadata)
        return bool(c.purchase_count >= 1)

    await wait_for(counted, what="the good purchase counted")
    c = await customers(pair).GetCustomer(cpb.GetCustomerRequest(customer_id=cid),
                                          metadata=pair.customers.metadata)
    assert (c.purchase_count, c.stage) == (1, cpb.STAGE_ONE_TIME)


@pytest.mark.parametrize(("when", "problem"), [
    (timedelta(days=1), "is in the future"),
    (timedelta(minutes=16), "is in the future"),
    (None, "is before 2000-01-01"),
])
async def test_grpc_refuses_times_outside_the_event_window(
        pair: Pair, when: timedelta | None, problem: str) -> None:
    from datetime import UTC, datetime

    cid = await new_customer(pair)
    at = pair.clock.now() + when if when is not None else datetime(1999, 6, 1, tzinfo=UTC)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await record(pair, customer_id=cid, occurred_at=_ts(at))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("occurred_at: ")
    assert problem in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api(pair).RecordSurveyResponse(pb.RecordSurveyResponseRequest(
            customer_id=cid, idempotency_key=str(uuid.uuid4()), occurred_at=_ts(at),
            answers=[pb.SurveyAnswer(question="speed", csat=3, nps=-1)]),
            metadata=pair.interactions.metadata)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("occurred_at: ")


async def test_grpc_accepts_a_time_within_the_tolerance_and_refuses_nul(pair: Pair) -> None:
    cid = await new_customer(pair)
    soon = pair.clock.now() + timedelta(minutes=14)
    reply = await record(pair, customer_id=cid, occurred_at=_ts(soon))
    assert reply.occurred_at.ToDatetime().replace(tzinfo=soon.tzinfo) == soon
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await record(pair, customer_id=cid, notes="a\x00b")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("notes: ")
