"""Webhook deliveries: N ``customer.updated`` events of N distinct customers
delivered by the loyalty service's webhooks to a local HTTP receiver,
against a bare HTTP client posting the same requests to the same receiver.

Set-up (untimed), per round: a fresh database and broker (see
:mod:`bench.service`); the receiver (:mod:`bench.receiver`: an asyncio
HTTP/1.1 keep-alive server answering ``204``, a process of its own, counting
deliveries by ``webhook-id`` per path); the loyalty service started once to
create the webhook (``CreateWebhook``: event types ``customer.*``, the
receiver's ``/product`` path, binary content mode, a generated secret) and
stopped (a webhook takes the events consumed after it was created); then the
N events are produced on ``crm.customers.v1``, one per customer, so that no
customer's order serialises them (deliveries of one customer go one at a
time). ``customer.updated`` is a type loyalty's rules do not consume, so its
main consumer group skips them and the round measures webhooks alone.

* product: the loyalty service as deployed, ``--replicas`` processes
  (default one) of ``crm serve loyalty``, started again; from the first
  event stored by consumer group ``crm-loyalty-webhooks`` (it stores each
  event once and one pending delivery per matching webhook, and keeps no
  inbox row; the group join is a note; both ends on the database's clock) until every delivery is
  ``delivered`` (the worker records that after the receiver's 204), polled at
  the pace of the progress. The worker claims queue heads with ``FOR UPDATE
  SKIP LOCKED`` and a lease, POSTs them signed (Standard Webhooks) with one
  ``httpx.AsyncClient``, at most ``CRM_LOYALTY_WEBHOOK_CONCURRENCY / 4`` in
  flight for one webhook, and records each outcome in a transaction of its
  own;
* baseline: ``httpx.AsyncClient`` posting the same N requests (the same
  bodies and headers, rendered and signed in set-up by the product's own
  renderer) to the receiver's ``/baseline`` path, with as many requests in
  flight as the product allows one webhook, each answered before the next of
  its worker is sent.

The service runs with the default ``CRM_LOYALTY_*`` settings (a service
process gets the runtime's ``CRM_*`` settings only), so the baseline's
in-flight limit and time limit are read from those defaults.

Figures below the table: the CPU per delivery of each process (loyalty, its
database backends, the broker, the receiver; the baseline's: this process,
the bench client, and the receiver).

The check: the receiver got each of the N events exactly once on each path
(distinct ``webhook-id`` = requests = N, no duplicate), the product holds N
deliveries, all delivered on the first attempt, for exactly the N events
produced, and no dead letter.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import asyncpg
import grpc
import httpx

from bench import kafka
from bench.context import BenchContext
from bench.events import encode
from bench.receiver import ReceiverProcess
from bench.registry import Phases, Workload, register
from bench.service import (
    ServiceProcesses,
    Stack,
    consumed_until,
    cpu_figure,
    cpu_figures,
    fresh_stack,
    process_cpu_seconds,
)
from crm.loyalty.v1 import loyalty_pb2, loyalty_pb2_grpc
from crm_contracts.customers import CustomerUpdated
from crm_contracts.topics import CUSTOMERS
from crm_runtime import version
from crm_runtime.events import Envelope
from services.loyalty.app import SPEC
from services.loyalty.settings import LoyaltySettings
from services.loyalty.webhooks import StoredEvent, render, secret_key

SCHEMA = SPEC.schema
#: The webhook's consumer group (``crm-<service>`` + the subscription's suffix).
GROUP = f"crm-{SPEC.name}-webhooks"
WEBHOOK_ID = "bench"
EVENT_TYPES = ["customer.*"]
PRODUCT_PATH = "/product"
BASELINE_PATH = "/baseline"
SOURCE = "/crm/customers"
POLL_S = 0.01


def updated_envelopes(count: int) -> list[Envelope]:
    """``count`` ``customer.updated`` events, each of a customer of its own."""
    out: list[Envelope] = []
    for _ in range(count):
        cid = str(uuid.uuid4())
        out.append(Envelope(data=CustomerUpdated(customer_id=cid, version=2,
                                                 changed=["display_name", "profile"]),
                            subject=cid, source=SOURCE))
    return out


def per_webhook_concurrency(concurrency: int) -> int:
    """The POSTs the product's worker keeps in flight for one webhook (a
    quarter of ``CRM_LOYALTY_WEBHOOK_CONCURRENCY``, as
    ``services.loyalty.webhook_delivery.Worker`` shares it)."""
    return max(1, concurrency // 4)


@register
class LoyaltyWebhooks(Workload):
    name = "loyalty.webhooks"
    order = 46
    summary = ("loyalty service (crm serve): customer.updated events delivered by a webhook "
               "to a local HTTP receiver until every delivery is recorded delivered")
    baseline_summary = ("httpx.AsyncClient posting the same requests (bodies and signed "
                        "headers) to the same receiver, as many in flight as the product "
                        "allows one webhook")

    def __init__(self, ctx: BenchContext, events: int) -> None:
        super().__init__(ctx, events)
        # The defaults: bench.service passes a service process the runtime's
        # CRM_* settings only, so CRM_LOYALTY_* variables do not reach it.
        conf = LoyaltySettings.model_construct()
        self.timeout_s = conf.webhook_timeout_s
        self.concurrency = conf.webhook_concurrency
        self.in_flight = per_webhook_concurrency(conf.webhook_concurrency)

    def describe(self) -> str:
        return (f"loyalty service ({self.ctx.replicas} crm serve process(es), webhook worker "
                f"of {self.concurrency} POSTs in flight, {self.in_flight} for one webhook) "
                f"delivering {self.events} customer.updated events of distinct customers to a "
                f"local receiver (204) until {SCHEMA}.webhook_deliveries has them all "
                "delivered")

    def _deadline(self) -> float:
        """A guard against hanging, not a timing check."""
        return time.monotonic() + 120.0 + self.events / 50

    async def setup(self) -> None:
        self.stack: Stack = await self.resources.enter_async_context(
            fresh_stack(self.ctx, "webhooks"))
        await self.stack.migrate(SPEC)
        conn = await self.stack.connect()
        self.resources.push_async_callback(conn.close)
        self.conn: asyncpg.Connection = conn
        self.receiver = ReceiverProcess()
        await self.receiver.start()
        self.resources.push_async_callback(self.receiver.stop)
        secret = await self._create_webhook()
        envelopes = updated_envelopes(self.events)
        self.event_ids = {e.id for e in envelopes}
        await kafka.produce(self.stack.bootstrap_servers, CUSTOMERS,
                            [encode(e) for e in envelopes])
        key, now = secret_key(secret), int(time.time())
        self.requests = []
        for e in envelopes:
            request = render(StoredEvent(
                event_id=e.id, event_type=e.type, source=e.source, subject=e.subject,
                time=e.time, traceparent=e.traceparent, data=e.body()), "binary", key, now)
            self.requests.append((request.headers, request.body))

    async def _create_webhook(self) -> str:
        """Run the service once to create the webhook; its secret."""
        service = ServiceProcesses(SPEC, self.stack.settings)
        try:
            await service.start()
            async with grpc.aio.insecure_channel(service.target) as channel:
                created = await loyalty_pb2_grpc.LoyaltyStub(channel).CreateWebhook(
                    loyalty_pb2.CreateWebhookRequest(
                        webhook_id=WEBHOOK_ID, url=self.receiver.url(PRODUCT_PATH),
                        event_types=EVENT_TYPES, description="bench receiver"),
                    metadata=self.stack.metadata, timeout=30)
        finally:
            await service.stop()
        return str(created.secret)

    async def baseline(self) -> float:
        receiver_before = process_cpu_seconds(self.receiver.pid)
        client = httpx.AsyncClient(
            follow_redirects=False, timeout=httpx.Timeout(self.timeout_s),
            headers={"user-agent": f"crm-webhooks/{version.VERSION}"},
            limits=httpx.Limits(max_connections=self.concurrency,
                                max_keepalive_connections=self.concurrency))
        url = self.receiver.url(BASELINE_PATH)
        queue = iter(self.requests)
        refused: list[int] = []

        async def worker() -> None:
            for headers, body in queue:  # the workers share one iterator
                response = await client.post(url, headers=headers, content=body)
                if response.status_code != 204:
                    refused.append(response.status_code)

        try:
            bench_before = sum(os.times()[:2])
            started = time.perf_counter()
            await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(self.in_flight))),
                                   timeout=self._deadline() - time.monotonic())
            seconds = time.perf_counter() - started
            bench_after = sum(os.times()[:2])
        finally:
            await client.aclose()
        if refused:
            raise RuntimeError(f"{self.name} baseline: {len(refused)} requests refused "
                               f"({sorted(set(refused))})")
        receiver_after = process_cpu_seconds(self.receiver.pid)
        cpu_figures(self.figures, "baseline", self.events, {
            "the bench process: httpx": bench_after - bench_before,
            "the receiver": (None if receiver_before is None or receiver_after is None
                             else receiver_after - receiver_before)})
        return seconds

    async def product(self) -> Phases:
        service = ServiceProcesses(SPEC, self.stack.settings, replicas=self.ctx.replicas)
        receiver_before = process_cpu_seconds(self.receiver.pid)
        try:
            seconds, start_up = await consumed_until(
                service, self.conn, GROUP,
                count_sql=f"SELECT count(*) FROM {SCHEMA}.webhook_deliveries "
                          "WHERE state = 'delivered'",
                expected=self.events, what="deliveries delivered", published=False,
                deadline=self._deadline(), poll_s=POLL_S, broker_pid=self.stack.broker_pid,
                first_sql=f"SELECT min(created_at) FROM {SCHEMA}.webhook_events "
                          "WHERE created_at >= $1")
        finally:
            await service.stop()
        receiver_after = process_cpu_seconds(self.receiver.pid)
        self.excluded["product start-up and consumer group join"] = start_up
        cpu_figure(self.figures, service, self.events)
        if receiver_before is not None and receiver_after is not None:
            self.figures["product CPU per event (µs, the receiver)"] = (
                (receiver_after - receiver_before) / self.events * 1e6)
        return {"deliver": seconds}

    async def verify(self) -> None:
        n = self.events
        stats = await self.receiver.stats()
        for path in (PRODUCT_PATH, BASELINE_PATH):
            got = stats.get(path, {})
            want = {"requests": n, "distinct": n, "duplicates": 0, "without_id": 0}
            if got != want:
                raise RuntimeError(f"{self.name}: the receiver counted {got} on {path}; "
                                   f"expected {want}")
        row = await self.conn.fetchrow(
            f"""SELECT (SELECT count(*) FROM {SCHEMA}.webhook_deliveries) AS deliveries,
                       (SELECT count(*) FROM {SCHEMA}.webhook_deliveries
                         WHERE state = 'delivered' AND attempts = 1
                           AND webhook_id = '{WEBHOOK_ID}') AS first_try,
                       (SELECT count(*) FROM {SCHEMA}.webhook_events) AS events,
                       (SELECT count(*) FROM {SCHEMA}.dead_letters) AS dead""")
        assert row is not None
        expected = {"deliveries": n, "first_try": n, "events": n, "dead": 0}
        if dict(row) != expected:
            raise RuntimeError(f"{self.name}: {dict(row)}; expected {expected}")
        delivered = {r["event_id"] for r in await self.conn.fetch(
            f"SELECT event_id FROM {SCHEMA}.webhook_deliveries")}
        if delivered != self.event_ids:
            raise RuntimeError(f"{self.name}: the deliveries are not of the {n} events "
                               "produced")
