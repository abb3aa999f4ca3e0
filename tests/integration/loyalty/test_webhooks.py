"""Webhook deliveries end to end: events on the broker, loyalty's webhooks
consumer and delivering worker, a real HTTP receiver (tests/support/
http_receiver.py) answering as each test scripts it.

The loyalty service runs here with fast retry timings (backoff base 50 ms,
attempts limited to 1 s), set through its CRM_LOYALTY_WEBHOOK_* variables
while it starts. It runs under a schema and consumer groups of its own
(``loyalty_hooks``) and only its webhook parts (the webhooks consumer group,
the worker and the gRPC API; not the rules' consumer or the scheduler), so it
never meets the package's loyalty service, which may be running beside it.
Nothing here asserts a time: each test waits for the requests or states it
expects, with a deadline."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from cloudevents.v1.http import from_http
from prometheus_client import REGISTRY

from crm.loyalty.v1 import loyalty_pb2 as pb
from crm.loyalty.v1 import loyalty_pb2_grpc
from crm_contracts.customers import CustomerErased, CustomerUpdated, StageChanged
from crm_contracts.loyalty import DiscountExpiring
from crm_runtime.events import Envelope, EventPayload
from crm_runtime.service import ServiceContext, ServiceParts
from crm_runtime.stack import TansuBroker
from examples.verify_webhook import verify_webhook
from services.loyalty import webhook_store, webhooks
from services.loyalty.app import SPEC, build
from services.loyalty.webhook_delivery import GROUP_SUFFIX
from tests.integration.loyalty.conftest import loyalty_settings
from tests.support.http_receiver import Answer, Received, Receiver
from tests.support.kafka import caught_up, produce_envelopes, wait_for
from tests.support.services import Running, running

NAME = "loyalty_hooks"
FAST = {"CRM_LOYALTY_WEBHOOK_BACKOFF_BASE_S": "0.05", "CRM_LOYALTY_WEBHOOK_BACKOFF_CAP_S": "0.4",
        "CRM_LOYALTY_WEBHOOK_TIMEOUT_S": "1", "CRM_LOYALTY_WEBHOOK_POLL_INTERVAL_S": "0.05",
        "CRM_LOYALTY_WEBHOOK_CONCURRENCY": "8"}


def _webhooks_only(svc: ServiceContext) -> ServiceParts:
    parts = build(svc)
    parts.subscriptions = [s for s in parts.subscriptions if s.group_suffix == GROUP_SUFFIX]
    parts.scheduled = {}
    return parts


HOOKS = dataclasses.replace(SPEC, name=NAME, build=_webhooks_only)


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
async def hooks(database_url: str, broker: TansuBroker) -> AsyncIterator[Running]:
    async with contextlib.AsyncExitStack() as stack:
        with _environment(FAST):  # read by the service's build, before it is ready
            service = await stack.enter_async_context(running(
                HOOKS, loyalty_settings(database_url, broker), datetime.now(UTC)))
        yield service


@pytest.fixture(autouse=True)
async def _delete_webhooks_after(hooks: Running) -> AsyncIterator[None]:
    """Each test's webhooks take only the events of that test."""
    yield
    api = _api(hooks)
    listed = await api.ListWebhooks(pb.ListWebhooksRequest(), metadata=hooks.metadata)
    for hook in listed.webhooks:
        await api.DeleteWebhook(pb.DeleteWebhookRequest(webhook_id=hook.webhook_id),
                                metadata=hooks.metadata)


# --- helpers ---------------------------------------------------------------------------


def _api(svc: Running) -> loyalty_pb2_grpc.LoyaltyStub:
    return loyalty_pb2_grpc.LoyaltyStub(svc.channel)


async def _create(svc: Running, url: str, **fields: Any) -> pb.Webhook:
    fields.setdefault("webhook_id", f"hook-{uuid.uuid4().hex[:12]}")
    fields.setdefault("event_types", ["customer.*"])
    reply: pb.Webhook = await _api(svc).CreateWebhook(
        pb.CreateWebhookRequest(url=url, **fields), metadata=svc.metadata)
    return reply


async def _deliveries(svc: Running, webhook_id: str, **filters: Any) -> list[pb.WebhookDelivery]:
    reply = await _api(svc).ListWebhookDeliveries(
        pb.ListWebhookDeliveriesRequest(webhook_id=webhook_id, page_size=500, **filters),
        metadata=svc.metadata)
    return list(reply.deliveries)


async def _delivery_when(svc: Running, webhook_id: str, event_id: str, state: str,
                         ) -> pb.WebhookDelivery:
    found: list[pb.WebhookDelivery] = []

    async def there() -> bool:
        found[:] = [d for d in await _deliveries(svc, webhook_id)
                    if d.event_id == event_id and d.state == state]
        return bool(found)

    await wait_for(there, what=f"delivery of {event_id} to {webhook_id} {state}")
    return found[0]


def _event(data: EventPayload, subject: str) -> Envelope:
    source = "/crm/loyalty" if data.event_type.startswith("loyalty.") else "/crm/customers"
    return Envelope(data=data, subject=subject, source=source, time=datetime.now(UTC))


def _updated(customer_id: str, version: int = 1) -> Envelope:
    return _event(CustomerUpdated(customer_id=customer_id, version=version, changed=["name"]),
                  customer_id)


async def _produce(svc: Running, *events: Envelope) -> None:
    bootstrap = svc.runner.settings.kafka_bootstrap_servers
    assert bootstrap
    await produce_envelopes(bootstrap, events)


async def _consumed(svc: Running, *events: Envelope) -> None:
    """Until the webhooks consumer group has consumed these events (it keeps
    no inbox rows: its committed offsets reach the end of their topics)."""
    bootstrap = svc.runner.settings.kafka_bootstrap_servers
    assert bootstrap
    topics = sorted({e.topic for e in events})
    await wait_for(lambda: caught_up(bootstrap, f"crm-{NAME}{GROUP_SUFFIX}", topics),
                   what="the webhooks consumer consumed the events")


def _ids(requests: list[Received]) -> list[str]:
    return [r.headers["webhook-id"] for r in requests]


def _new_id() -> str:
    return str(uuid.uuid4())


def _counted(webhook_id: str, outcome: str, status_code: str) -> float:
    return REGISTRY.get_sample_value("crm_webhook_deliveries_total", {
        "service": NAME, "webhook": webhook_id, "outcome": outcome,
        "status_code": status_code}) or 0.0


# --- content modes and the signature ------------------------------------------------------


async def test_binary_mode_by_default_signed_and_read_by_the_sdk(hooks: Running) -> None:
    cid = _new_id()
    with Receiver() as receiver:
        hook = await _create(hooks, receiver.url, customer_id=cid)
        assert hook.secret.startswith("whsec_") and hook.content_mode == pb.CONTENT_MODE_BINARY
        event = _updated(cid)
        await _produce(hooks, event)
        [request] = await receiver.wait_for(1)
        assert verify_webhook(hook.secret, request.headers, request.body) == event.id
        assert request.headers["content-type"] == "application/json"
        ce = from_http(request.headers, request.body)
        assert (ce["id"], ce["type"], ce["source"], ce["subject"]) == (
            event.id, "customer.updated", "/crm/customers", cid)
        assert ce.get_data() == {"customer_id": cid, "version": 1, "changed": ["name"]}
        assert request.headers["traceparent"] == event.traceparent
        delivery = await _delivery_when(hooks, hook.webhook_id, event.id, "delivered")
        assert (delivery.attempts, delivery.last_status_code, delivery.subject) == (1, 200, cid)
        assert delivery.event_type == "customer.updated" and delivery.HasField("delivered_at")


async def test_structured_mode_with_a_given_secret(hooks: Running) -> None:
    cid = _new_id()
    secret = "whsec_" + base64.b64encode(bytes(range(40))).decode()
    with Receiver() as receiver:
        hook = await _create(hooks, receiver.url, customer_id=cid, secret=secret,
                             content_mode=pb.CONTENT_MODE_STRUCTURED)
        assert hook.secret == secret
        event = _updated(cid)
        await _produce(hooks, event)
        [request] = await receiver.wait_for(1)
        assert verify_webhook(secret, request.headers, request.body) == event.id
        assert request.headers["content-type"] == "application/cloudevents+json"
        ce = from_http(request.headers, request.body)
        assert (ce["id"], ce["type"], ce["subject"]) == (event.id, "customer.updated", cid)
        data = ce.get_data()
        assert data is not None and data["customer_id"] == cid
        assert json.loads(request.body)["specversion"] == "1.0"


# --- retries, parking, redirects ---------------------------------------------------------


async def test_a_failing_receiver_is_retried_until_it_recovers(hooks: Running) -> None:
    cid = _new_id()
    with Receiver() as receiver:
        receiver.answer(Answer(500, b"down"), Answer(503, headers={"retry-after": "0"}))
        hook = await _create(hooks, receiver.url, customer_id=cid)
        event = _updated(cid)
        await _produce(hooks, event)
        requests = await receiver.wait_for(3)
        assert _ids(requests) == [event.id] * 3  # webhook-id: the same on every retry
        for r in requests:
            verify_webhook(hook.secret, r.headers, r.body)
        delivery = await _delivery_when(hooks, hook.webhook_id, event.id, "delivered")
        assert (delivery.attempts, delivery.last_status_code) == (3, 200)
        assert _counted(hook.webhook_id, "retry", "500") == 1
        assert _counted(hook.webhook_id, "retry", "503") == 1
        assert _counted(hook.webhook_id, "delivered", "200") == 1


async def test_a_receiver_that_times_out_is_retried(hooks: Running) -> None:
    cid = _new_id()
    with Receiver() as receiver:
        receiver.answer(Answer(200, delay=5))  # the attempt's limit is 1 s
        hook = await _create(hooks, receiver.url, customer_id=cid)
        event = _updated(cid)
        await _produce(hooks, event)
        delivery = await _delivery_when(hooks, hook.webhook_id, event.id, "delivered")
        assert delivery.attempts == 2
        assert _ids(receiver.requests()) == [event.id] * 2
        assert _counted(hook.webhook_id, "retry", "timeout") == 1


async def test_410_parks_at_once_and_later_events_still_go(hooks: Running) -> None:
    cid = _new_id()
    with Receiver() as receiver:
        refusal = b"gone for good; " * 100
        receiver.answer(Answer(410, refusal))
        hook = await _create(hooks, receiver.url, customer_id=cid)
        first, second = _updated(cid, 1), _updated(cid, 2)
        await _produce(hooks, first, second)
        parked = await _delivery_when(hooks, hook.webhook_id, first.id, "failed")
        assert (parked.attempts, parked.last_status_code) == (1, 410)
        assert parked.last_response == refusal[:1024].decode() and parked.last_error
        # The parked one does not hold back the next of the same customer.
        await _delivery_when(hooks, hook.webhook_id, second.id, "delivered")
        assert _ids(receiver.requests()) == [first.id, second.id]
        listed = await _api(hooks).ListWebhooks(pb.ListWebhooksRequest(), metadata=hooks.metadata)
        [mine] = [w for w in listed.webhooks if w.webhook_id == hook.webhook_id]
        assert (mine.pending, mine.delivered, mine.failed, mine.secret) == (0, 1, 1, "")


async def test_redirects_to_another_host_are_refused_same_host_307_followed(
        hooks: Running) -> None:
    cid = _new_id()
    with Receiver() as receiver:
        receiver.on("/elsewhere", Answer(307, headers={
            "location": receiver.url_for("/final", host="localhost")}))
        receiver.on("/moved", Answer(307, headers={"location": "/final"}))
        receiver.on("/see-other", Answer(303, headers={"location": "/final"}))
        away = await _create(hooks, receiver.url_for("/elsewhere"), customer_id=cid)
        moved = await _create(hooks, receiver.url_for("/moved"), customer_id=cid)
        other = await _create(hooks, receiver.url_for("/see-other"), customer_id=cid)
        event = _updated(cid)
        await _produce(hooks, event)
        refused = await _delivery_when(hooks, away.webhook_id, event.id, "failed")
        assert refused.last_status_code == 307 and "not followed" in refused.last_error
        assert (await _delivery_when(hooks, other.webhook_id, event.id, "failed")
                ).last_status_code == 303
        followed = await _delivery_when(hooks, moved.webhook_id, event.id, "delivered")
        assert followed.attempts == 1
        [final] = receiver.requests("/final")  # from the same-host 307 alone
        assert verify_webhook(moved.secret, final.headers, final.body) == event.id
        assert _counted(away.webhook_id, "failed", "redirect") == 1


async def test_out_of_attempts_parks_and_replay_sends_again(hooks: Running) -> None:
    cid = _new_id()
    with Receiver() as receiver:
        receiver.default = Answer(502)
        hook = await _create(hooks, receiver.url, customer_id=cid, max_attempts=3)
        assert hook.max_attempts == 3
        first, second = _updated(cid, 1), _updated(cid, 2)
        await _produce(hooks, first, second)
        one = await _delivery_when(hooks, hook.webhook_id, first.id, "failed")
        two = await _delivery_when(hooks, hook.webhook_id, second.id, "failed")
        assert (one.attempts, one.last_status_code) == (3, 502)
        assert "gave up after 3 attempts" in one.last_error
        assert _ids(receiver.requests()) == [first.id] * 3 + [second.id] * 3
        receiver.default = Answer(204)
        api = _api(hooks)
        replayed = await api.ReplayWebhookDeliveries(pb.ReplayWebhookDeliveriesRequest(
            webhook_id=hook.webhook_id, delivery_ids=[one.delivery_id]), metadata=hooks.metadata)
        assert replayed.replayed == 1
        again = await _delivery_when(hooks, hook.webhook_id, first.id, "delivered")
        assert (again.attempts, again.last_status_code) == (1, 204)
        assert [d.state for d in await _deliveries(hooks, hook.webhook_id, state="failed")] == [
            "failed"]
        # A delivered one is no failed delivery; replaying all sends the rest.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.ReplayWebhookDeliveries(pb.ReplayWebhookDeliveriesRequest(
                webhook_id=hook.webhook_id, delivery_ids=[two.delivery_id, one.delivery_id]),
                metadata=hooks.metadata)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith("delivery_ids[1]:")
        replayed = await api.ReplayWebhookDeliveries(pb.ReplayWebhookDeliveriesRequest(
            webhook_id=hook.webhook_id), metadata=hooks.metadata)
        assert replayed.replayed == 1
        await _delivery_when(hooks, hook.webhook_id, second.id, "delivered")
        assert _ids(receiver.requests())[-2:] == [first.id, second.id]


# --- order and isolation ------------------------------------------------------------------


async def test_one_customers_events_arrive_in_order_under_retries(hooks: Running) -> None:
    cid, other = _new_id(), _new_id()
    with Receiver() as receiver:
        receiver.answer(Answer(500), Answer(500), Answer(500))
        hook = await _create(hooks, receiver.url, event_types=["customer.updated"])
        events = [_updated(cid, n) for n in range(1, 7)]
        await _produce(hooks, *events)
        for e in events:
            await _delivery_when(hooks, hook.webhook_id, e.id, "delivered")
        theirs = [r for r in receiver.requests() if r.headers["ce-subject"] == cid]
        assert _ids(theirs) == [events[0].id] * 4 + [e.id for e in events[1:]]
        assert [json.loads(r.body)["version"] for r in theirs][3:] == [1, 2, 3, 4, 5, 6]
        # Another customer's events are not held behind them.
        late = _updated(other)
        await _produce(hooks, late)
        await _delivery_when(hooks, hook.webhook_id, late.id, "delivered")


async def test_a_hanging_webhook_does_not_delay_another(hooks: Running) -> None:
    customers = [_new_id() for _ in range(12)]
    with Receiver() as stuck, Receiver() as fine:
        stuck.default = Answer(hold=True)  # never answers before the attempt's limit
        hanging = await _create(hooks, stuck.url, event_types=["customer.stage_changed"])
        healthy = await _create(hooks, fine.url, event_types=["customer.stage_changed"])
        events = [_event(StageChanged(customer_id=c, from_stage="potential",
                                      to_stage="one_time", cause="purchase",
                                      causing_event_id=_new_id(), purchase_count=1), c)
                  for c in customers]
        await _produce(hooks, *events)
        await stuck.wait_for(1)
        got = await fine.wait_for(len(events))
        assert sorted(_ids(got)) == sorted(e.id for e in events)
        # Meanwhile the hanging endpoint has answered nothing.
        assert not [d for d in await _deliveries(hooks, hanging.webhook_id)
                    if d.state != "pending"]
        stuck.default = Answer(200)
        stuck.release()
        for e in events:
            await _delivery_when(hooks, hanging.webhook_id, e.id, "delivered")
            await _delivery_when(hooks, healthy.webhook_id, e.id, "delivered")


async def test_one_webhooks_backlog_never_hides_anothers_due_deliveries(
        hooks: Running) -> None:
    """The claim's candidates: a few queue heads of each webhook, however
    many another one has due (in a transaction rolled back: the worker never
    sees these rows)."""
    pool = hooks.runner.pool
    assert pool is not None
    busy, quiet = (webhooks.validate(
        webhook_id=f"claim-{name}-{uuid.uuid4().hex[:8]}", url="http://127.0.0.1:9/",
        event_types=["*"], customer_id="", content_mode="binary", max_attempts=0, secret="",
        description="", default_max_attempts=8, known=webhooks.known_types())
        for name in ("busy", "quiet"))

    def stored(subject: str) -> webhooks.StoredEvent:
        return webhooks.StoredEvent(event_id=_new_id(), event_type="customer.updated",
                                    source="/crm/customers", subject=subject,
                                    time=datetime.now(UTC), traceparent="", data=b"{}")

    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            for spec in (busy, quiet):
                assert await webhook_store.insert_webhook(conn, spec)
            backlog = [stored(_new_id()) for _ in range(40)]
            same_customer = stored(backlog[0].subject)  # behind the head of its queue
            last = stored(_new_id())
            await webhook_store.enqueue(conn, [*backlog, same_customer, last], [
                *[(busy.webhook_id, e) for e in [*backlog, same_customer]],
                (quiet.webhook_id, last)])
            found = await webhook_store.candidates(conn, 3)
            mine = [w for _, w in found if w in (busy.webhook_id, quiet.webhook_id)]
            assert sorted(mine) == sorted([busy.webhook_id] * 3 + [quiet.webhook_id])
        finally:
            await tx.rollback()


# --- filters and deletion ----------------------------------------------------------------


async def test_customer_and_type_prefix_filters(hooks: Running) -> None:
    mine, theirs = _new_id(), _new_id()
    with Receiver() as stage_hook, Receiver() as loyalty_hook:
        stages = await _create(hooks, stage_hook.url, customer_id=mine,
                               event_types=["customer.stage_changed"])
        rewards = await _create(hooks, loyalty_hook.url, event_types=["loyalty.discount_*"])

        def stage(c: str) -> Envelope:
            return _event(StageChanged(customer_id=c, from_stage="potential",
                                       to_stage="one_time", cause="purchase",
                                       causing_event_id=_new_id(), purchase_count=1), c)

        expiring = _event(DiscountExpiring(discount_id=_new_id(), customer_id=mine, code="X1",
                                           expires_at=datetime.now(UTC)), mine)
        events = [stage(mine), _updated(mine), stage(theirs), expiring]
        await _produce(hooks, *events)
        await _consumed(hooks, *events)
        await _delivery_when(hooks, stages.webhook_id, events[0].id, "delivered")
        await _delivery_when(hooks, rewards.webhook_id, expiring.id, "delivered")
        assert [d.event_id for d in await _deliveries(hooks, stages.webhook_id)] == [
            events[0].id]
        assert [d.event_id for d in await _deliveries(hooks, rewards.webhook_id)
                if d.subject in (mine, theirs)] == [expiring.id]
        [request] = [r for r in loyalty_hook.requests() if r.headers["ce-subject"] == mine]
        assert request.headers["ce-type"] == "loyalty.discount_expiring"
        assert request.headers["ce-source"] == "/crm/loyalty"
        assert len(stage_hook.requests()) == 1


async def test_events_no_webhook_takes_are_skipped_and_a_redelivery_adds_nothing(
        hooks: Running) -> None:
    """The group asks which types an active webhook takes before it decodes a
    batch: the rest are never stored. It keeps no inbox rows; the deliveries'
    own keys make a redelivered event add nothing."""
    cid = _new_id()
    pool = hooks.runner.pool
    assert pool is not None
    with Receiver() as receiver:
        hook = await _create(hooks, receiver.url, customer_id=cid,
                             event_types=["customer.stage_changed"])
        taken = _event(StageChanged(customer_id=cid, from_stage="potential",
                                    to_stage="one_time", cause="purchase",
                                    causing_event_id=_new_id(), purchase_count=1), cid)
        ignored = _updated(cid)
        await _produce(hooks, ignored, taken)
        await _consumed(hooks, ignored, taken)
        await _delivery_when(hooks, hook.webhook_id, taken.id, "delivered")
        await _produce(hooks, taken)  # the same event again, as after a lost offset commit
        await _consumed(hooks, taken)
        assert [d.event_id for d in await _deliveries(hooks, hook.webhook_id)] == [taken.id]
        assert _ids(receiver.requests()) == [taken.id]
        stored = await pool.fetchval(
            "SELECT array_agg(event_id) FROM webhook_events WHERE event_id = ANY($1)",
            [ignored.id, taken.id])
        assert stored == [taken.id]
        assert await pool.fetchval("SELECT count(*) FROM inbox WHERE consumer_group = $1",
                                   f"crm-{NAME}{GROUP_SUFFIX}") == 0


async def test_delete_stops_deliveries(hooks: Running) -> None:
    cid = _new_id()
    with Receiver() as receiver:
        receiver.default = Answer(500)
        hook = await _create(hooks, receiver.url, customer_id=cid, max_attempts=30)
        first = _updated(cid, 1)
        await _produce(hooks, first)
        await receiver.wait_for(2)
        api = _api(hooks)
        deleted = await api.DeleteWebhook(pb.DeleteWebhookRequest(webhook_id=hook.webhook_id),
                                          metadata=hooks.metadata)
        assert deleted.state == "deleted" and deleted.HasField("deleted_at")
        assert (deleted.pending, deleted.secret) == (0, "")
        seen = len(receiver.requests())
        second = _updated(cid, 2)
        await _produce(hooks, second)
        await _consumed(hooks, second)
        [dropped] = await _deliveries(hooks, hook.webhook_id)
        assert (dropped.event_id, dropped.state) == (first.id, "deleted")
        # At most the attempt that was on its way when it was deleted.
        assert _ids(receiver.requests()) in ([first.id] * seen, [first.id] * (seen + 1))
        again = await api.DeleteWebhook(pb.DeleteWebhookRequest(webhook_id=hook.webhook_id),
                                        metadata=hooks.metadata)
        assert again.deleted_at == deleted.deleted_at
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.ReplayWebhookDeliveries(pb.ReplayWebhookDeliveriesRequest(
                webhook_id=hook.webhook_id), metadata=hooks.metadata)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


# --- erasure and retention ---------------------------------------------------------------


async def test_erasure_deletes_the_customers_deliveries_once_finished(hooks: Running) -> None:
    cid = _new_id()
    pool = hooks.runner.pool
    assert pool is not None
    with Receiver() as receiver:
        hook = await _create(hooks, receiver.url, customer_id=cid)
        before = _updated(cid)
        await _produce(hooks, before)
        await _delivery_when(hooks, hook.webhook_id, before.id, "delivered")
        erased = _event(CustomerErased(customer_id=cid), cid)
        await _produce(hooks, erased)
        [_, last] = await receiver.wait_for(2)
        assert last.headers["ce-type"] == "customer.erased"

        async def gone() -> bool:
            rows = await pool.fetchval(
                "SELECT count(*) FROM webhook_deliveries WHERE subject = $1", cid)
            events = await pool.fetchval(
                "SELECT count(*) FROM webhook_events WHERE subject = $1", cid)
            return bool(rows == 0 and events == 0)

        await wait_for(gone, what="the erased customer's deliveries deleted")


async def test_retention_deletes_old_finished_deliveries_and_their_events(
        hooks: Running) -> None:
    cid = _new_id()
    pool = hooks.runner.pool
    assert pool is not None
    with Receiver() as receiver:
        hook = await _create(hooks, receiver.url, customer_id=cid)
        old, recent = _updated(cid, 1), _updated(cid, 2)
        await _produce(hooks, old, recent)
        await _delivery_when(hooks, hook.webhook_id, recent.id, "delivered")
        await pool.execute("""UPDATE webhook_deliveries SET updated_at = now() - interval '8 days'
                               WHERE event_id = $1""", old.id)
        async with pool.acquire() as conn, conn.transaction():
            assert await webhook_store.prune(conn, 7, 1000) >= 1
        assert [d.event_id for d in await _deliveries(hooks, hook.webhook_id)] == [recent.id]
        assert await pool.fetchval("SELECT count(*) FROM webhook_events WHERE event_id = $1",
                                   old.id) == 0


async def test_deliveries_page_newest_first(hooks: Running) -> None:
    cid = _new_id()
    with Receiver() as receiver:
        hook = await _create(hooks, receiver.url, customer_id=cid)
        events = [_updated(cid, n) for n in range(5)]
        await _produce(hooks, *events)
        await receiver.wait_for(5)
        api, seen, token = _api(hooks), [], ""
        while True:
            page = await api.ListWebhookDeliveries(pb.ListWebhookDeliveriesRequest(
                webhook_id=hook.webhook_id, page_size=2, page_token=token, subject=cid),
                metadata=hooks.metadata)
            seen += list(page.deliveries)
            token = page.next_page_token
            if not token:
                break
        assert len({d.delivery_id for d in seen}) == 5
        times = [d.created_at.ToDatetime() for d in seen]
        assert times == sorted(times, reverse=True)
        assert not await _deliveries(hooks, hook.webhook_id, subject=_new_id())


def test_no_webhook_call_answered_internal() -> None:
    """Runs last in this module: whatever the calls above sent."""
    for method in ("CreateWebhook", "ListWebhooks", "DeleteWebhook", "ListWebhookDeliveries",
                   "ReplayWebhookDeliveries"):
        for code in ("INTERNAL", "UNKNOWN"):
            assert not REGISTRY.get_sample_value("crm_grpc_requests_total", {
                "service": NAME, "method": method, "code": code}), (method, code)
