"""Webhooks in motion: enqueueing consumed events, and the worker that POSTs them.

**Enqueueing.** Consumer group ``crm-loyalty-webhooks`` (its own, so a slow
subscription never holds back loyalty's rules) reads the customers',
interactions' and loyalty's topics and handles every known type
(:func:`subscription`). In the batch's transaction, where the inbox makes
it once per event, each event an active subscription takes is stored once
(``webhook_events``) with one pending delivery per subscription; the commit
NOTIFYs the worker. A subscription created at T takes the events consumed
after T. ``customer.erased`` also erases the customer's finished
deliveries (the pending ones still go out, the erasure among them, and are
deleted once finished).

**Delivering.** :class:`Worker` claims due deliveries that head their
(webhook, subject) queue, so one customer's events go out in order, leases
them in one short transaction (``FOR UPDATE SKIP LOCKED``: replicas share
the work), POSTs them concurrently with one ``httpx.AsyncClient`` (never
following redirects itself) and records each outcome in a second short
transaction as it comes. 2xx is delivered; a timeout, a connection error,
5xx, 408 or 429 is retried with backoff (``Retry-After`` honoured up to the
cap) until the webhook's ``max_attempts``, then parked (``failed``); any
other answer parks it at once, with its status and the first KiB of its
body. A 307/308 to the same scheme, host and port is followed (three at
most). A parked delivery does not block the later ones of its queue. One
subscription holds at most a quarter of the worker's concurrency, and every
attempt has its own time limit, so a failing endpoint never delays another
subscription's deliveries. Delivery is at least once: a receiver dedupes on
``webhook-id`` (the event's ce id).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import httpx

from crm_contracts.customers import CustomerErased
from crm_runtime import ids, uow, version
from crm_runtime.db import Conn, is_transient
from crm_runtime.events import Envelope
from crm_runtime.retry import Backoff
from crm_runtime.service import Subscription
from services.loyalty import metrics
from services.loyalty import webhook_store as store
from services.loyalty.settings import LoyaltySettings
from services.loyalty.webhooks import (
    BINARY,
    MAX_REDIRECTS,
    RESPONSE_KEPT,
    STRUCTURED,
    TOPICS,
    ContentMode,
    Kind,
    StoredEvent,
    backoff,
    classify,
    followed_redirect,
    known_types,
    matches,
    render,
    response_text,
    retry_after,
    secret_key,
)

log = logging.getLogger(__name__)

GROUP_SUFFIX = "-webhooks"
#: Retention runs this often, deleting at most PRUNE_BATCH rows a statement.
PRUNE_EVERY_S = 60.0
PRUNE_BATCH = 5000
#: A lease lasts the attempt's time limit twice, and this much more.
LEASE_MARGIN_S = 5.0


# --- enqueueing ------------------------------------------------------------------------


def subscription(pool: asyncpg.Pool) -> Subscription:
    """Consumer group ``crm-<service>-webhooks``: every known type of the
    three topics, enqueued for the subscriptions that take it. Before a
    batch is decoded, the group asks which types an active webhook takes
    (one statement a batch): the others, most events while few webhooks
    exist, are skipped undecoded. The deliveries' keys (one per webhook and
    event) make a redelivered event add nothing, so the group keeps no inbox
    row an event."""
    async def interest() -> frozenset[str]:
        return wanted_types(await store.active_patterns(pool))

    return Subscription(topics=list(TOPICS), handlers=dict.fromkeys(known_types(), enqueue),
                        group_suffix=GROUP_SUFFIX, interest=interest, natural_keys=True)


@functools.lru_cache(maxsize=64)
def wanted_types(patterns: tuple[str, ...]) -> frozenset[str]:
    """The known types some of ``patterns`` take, and an erasure (which
    always drops the erased customer's deliveries)."""
    return frozenset(t for t in known_types() if matches(patterns, t)) | {
        CustomerErased.event_type}


async def enqueue(conn: Conn, events: Sequence[Envelope]) -> None:
    """One pending delivery per (active subscription that takes it, event)."""
    filters = await store.active_filters(conn)
    stored: dict[str, StoredEvent] = {}
    deliveries: list[tuple[str, StoredEvent]] = []
    for env in events if filters else ():
        subject = env.subject.lower()
        takers = [f.webhook_id for f in filters if matches(f.event_types, env.type)
                  and (f.customer_id is None or f.customer_id == subject)]
        if takers:
            event = stored.get(env.id)
            if event is None:
                event = stored[env.id] = StoredEvent(
                    event_id=env.id, event_type=env.type, source=env.source,
                    subject=env.subject, time=env.time, traceparent=env.traceparent,
                    data=env.body())
            deliveries += [(webhook_id, event) for webhook_id in takers]
    if deliveries:
        await store.enqueue(conn, list(stored.values()), deliveries)
        await store.notify(conn)
    for env in events:
        if isinstance(env.data, CustomerErased):
            await _erase(conn, env.subject, env.data.customer_id)


async def _erase(conn: Conn, subject: str, customer_id: str) -> None:
    """The erased customer's deliveries (and those of the ids merged into them)."""
    subjects = {subject, customer_id}
    try:
        customer = str(ids.read_uuid(customer_id))
    except (ValueError, TypeError):
        customer = None
    if customer is not None:
        subjects |= {customer, *await store.aliases(conn, customer)}
    await store.erase_subjects(conn, sorted(subjects))


# --- delivering ------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to: ``label`` is the metric's ``status_code``
    (the HTTP status, or ``timeout``, ``connection_error``, ``redirect``)."""

    kind: Kind
    status_code: int
    label: str
    error: str = ""
    response: str = ""
    retry_after: float | None = None


class Worker:
    """Delivers the service's pending webhook deliveries until :meth:`stop`.

    ``transport``: an httpx transport for tests (default: the network)."""

    def __init__(self, pool: asyncpg.Pool, conf: LoyaltySettings, *, service: str,
                 schema: str, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._pool = pool
        self._conf = conf
        self._service = service
        self._channel = store.channel(schema)
        self._transport = transport
        self._concurrency = conf.webhook_concurrency
        self._per_webhook = max(1, conf.webhook_concurrency // 4)
        self._lease_s = 2 * conf.webhook_timeout_s + LEASE_MARGIN_S
        self._in_flight: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._by_webhook: Counter[str] = Counter()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._backoff = Backoff(0.2, 10.0)

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Claim and deliver until stopped; a database outage is waited out.
        On stop, attempts on their way get their time limit to finish (the
        others' leases end and they are sent again)."""
        client = httpx.AsyncClient(
            follow_redirects=False, timeout=httpx.Timeout(self._conf.webhook_timeout_s),
            transport=self._transport, headers={"user-agent": f"crm-webhooks/{version.VERSION}"},
            limits=httpx.Limits(max_connections=self._concurrency,
                                max_keepalive_connections=self._concurrency))
        try:
            while not self._stopping.is_set():
                try:
                    async with self._pool.acquire() as listener:
                        await listener.add_listener(self._channel, self._on_notify)
                        try:
                            await self._loop(client)
                        finally:
                            await listener.remove_listener(self._channel, self._on_notify)
                except Exception as exc:
                    delay = self._backoff.next()
                    log.warning("webhook worker: %s: %s; retrying in %.1fs",
                                type(exc).__name__, exc, delay)
                    await self._sleep(delay)
        finally:
            await self._drain()
            await client.aclose()

    async def _loop(self, client: httpx.AsyncClient) -> None:
        loop = asyncio.get_running_loop()
        next_prune = loop.time()
        while not self._stopping.is_set():
            self._wake.clear()  # before the claim: a NOTIFY during it wakes the next round
            await self._claim(client)
            self._backoff.reset()
            if loop.time() >= next_prune:
                await self._prune()
                next_prune = loop.time() + PRUNE_EVERY_S
            # Until a NOTIFY (new deliveries), a finished attempt (a free slot,
            # and the next of its queue), the poll (retries come due), or stop.
            await self._sleep(self._conf.webhook_poll_interval_s)

    async def _claim(self, client: httpx.AsyncClient) -> None:
        """Lease due queue heads into the free slots, taking turns among the
        webhooks (each up to its share), and start their attempts."""
        free = self._concurrency - len(self._in_flight)
        if free <= 0:
            return  # a finishing attempt wakes the loop
        async with self._pool.acquire() as conn, conn.transaction():
            queues: dict[str, list[uuid.UUID]] = {}
            for delivery_id, webhook_id in await store.candidates(conn, self._per_webhook):
                queues.setdefault(webhook_id, []).append(delivery_id)
            for webhook_id, queue in queues.items():
                del queue[max(0, self._per_webhook - self._by_webhook[webhook_id]):]
            taken: list[uuid.UUID] = []
            turn = 0
            while len(taken) < free and any(len(q) > turn for q in queues.values()):
                taken += [q[turn] for q in queues.values() if len(q) > turn][:free - len(taken)]
                turn += 1
            claimed = await store.lease(conn, taken, self._lease_s)
        for c in claimed:
            self._by_webhook[c.webhook_id] += 1
            task = asyncio.create_task(self._deliver(client, c),
                                       name=f"webhook-{c.webhook_id}-{c.delivery_id}")
            self._in_flight[c.delivery_id] = task
            task.add_done_callback(functools.partial(self._finished, c))

    def _finished(self, claimed: store.Claimed, _task: asyncio.Task[None]) -> None:
        self._in_flight.pop(claimed.delivery_id, None)
        self._by_webhook[claimed.webhook_id] -= 1
        if self._by_webhook[claimed.webhook_id] <= 0:
            del self._by_webhook[claimed.webhook_id]
        self._wake.set()  # a slot is free, and the next of its queue may be due

    async def _deliver(self, client: httpx.AsyncClient, claimed: store.Claimed) -> None:
        try:
            outcome = await self._attempt(client, claimed)
        except Exception as exc:  # a bug must not kill the worker; the lease retries it
            log.exception("webhook %s: delivery %s: attempt failed", claimed.webhook_id,
                          claimed.delivery_id)
            outcome = Outcome("retry", 0, "error", f"{type(exc).__name__}: {exc}")
        await self._record(claimed, outcome)

    async def _attempt(self, client: httpx.AsyncClient, claimed: store.Claimed) -> Outcome:
        """One attempt: the POST, and the same-origin redirects it follows,
        within the time limit."""
        key = secret_key(claimed.secret)
        mode: ContentMode = STRUCTURED if claimed.content_mode == STRUCTURED else BINARY
        url = claimed.url
        limit = self._conf.webhook_timeout_s
        try:
            async with asyncio.timeout(limit):
                for hop in range(MAX_REDIRECTS + 1):
                    request = render(claimed.event, mode, key, int(time.time()))
                    async with client.stream("POST", url, headers=request.headers,
                                             content=request.body) as response:
                        body = await _first_bytes(response)
                    status = response.status_code
                    answer = response_text(body)
                    if 300 <= status < 400:
                        location = response.headers.get("location")
                        target = followed_redirect(url, status, location)
                        if target is not None and hop < MAX_REDIRECTS:
                            url = target
                            continue
                        why = ("too many redirects" if target is not None else
                               "redirects are followed only as 307/308 to the same scheme, "
                               "host and port")
                        return Outcome("failed", status, "redirect",
                                       f"{status} to {location!r} not followed: {why}", answer)
                    kind = classify(status)
                    wait = (retry_after(response.headers.get("retry-after"), datetime.now(UTC))
                            if status in (429, 503) else None)
                    error = "" if kind == "delivered" else f"HTTP {status}"
                    return Outcome(kind, status, str(status), error, answer, wait)
        except (TimeoutError, httpx.TimeoutException):
            return Outcome("retry", 0, "timeout", f"no answer within {limit:g}s")
        except httpx.TransportError as exc:
            return Outcome("retry", 0, "connection_error",
                           f"{type(exc).__name__}: {exc}".rstrip(": "))
        return Outcome("failed", 0, "redirect", "too many redirects")  # not reached

    async def _record(self, claimed: store.Claimed, outcome: Outcome) -> None:
        """Store the outcome (a few tries while the database is away; then the
        lease ends and the delivery is tried again: at least once)."""
        kind, error, retry_in = outcome.kind, outcome.error, None
        if kind == "retry":
            if claimed.attempt >= claimed.max_attempts:
                kind = "failed"
                error = f"gave up after {claimed.attempt} attempts: {outcome.error}"
            else:
                retry_in = backoff(claimed.attempt, self._conf.webhook_backoff_base_s,
                                   self._conf.webhook_backoff_cap_s)
                if outcome.retry_after is not None:
                    retry_in = min(self._conf.webhook_backoff_cap_s, outcome.retry_after)
        state = "pending" if kind == "retry" else kind
        pause = Backoff(0.1, 2.0)
        for _ in range(5):
            try:
                async with uow.transaction(self._pool) as conn:
                    if await store.record(conn, claimed, state=state,
                                          status_code=outcome.status_code, error=error,
                                          response=outcome.response, retry_in=retry_in):
                        uow.on_commit(lambda: self._count(claimed, kind, outcome.label))
                return
            except Exception as exc:
                if not is_transient(exc) or self._stopping.is_set():
                    log.error("webhook %s: recording delivery %s failed (%s: %s); it is sent "
                              "again when its lease ends", claimed.webhook_id,
                              claimed.delivery_id, type(exc).__name__, exc)
                    return
                await asyncio.sleep(pause.next())
        log.error("webhook %s: the database did not take the outcome of delivery %s; it is "
                  "sent again when its lease ends", claimed.webhook_id, claimed.delivery_id)

    def _count(self, claimed: store.Claimed, kind: Kind, label: str) -> None:
        metrics.WEBHOOK_DELIVERIES.labels(self._service, claimed.webhook_id, kind, label).inc()
        if kind == "delivered":
            metrics.WEBHOOK_LATENCY.labels(self._service, claimed.webhook_id).observe(
                max(0.0, time.time() - claimed.event.time.timestamp()))

    async def _prune(self) -> None:
        """Retention: finished deliveries past CRM_LOYALTY_WEBHOOK_RETENTION_DAYS."""
        for _ in range(10):  # at most this many batches a round
            async with self._pool.acquire() as conn, conn.transaction():
                gone = await store.prune(conn, self._conf.webhook_retention_days, PRUNE_BATCH)
            if gone < PRUNE_BATCH:
                return

    async def _drain(self) -> None:
        tasks = list(self._in_flight.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self._conf.webhook_timeout_s + 1)
            for task in pending:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*pending, return_exceptions=True)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)


async def _first_bytes(response: httpx.Response) -> bytes:
    """Up to :data:`RESPONSE_KEPT` bytes of the answer's body (the rest is
    not read)."""
    kept = b""
    try:
        async for chunk in response.aiter_bytes():
            kept += chunk
            if len(kept) >= RESPONSE_KEPT:
                break
    except httpx.DecodingError:
        pass  # a body its content-encoding does not decode: the status is what counts
    return kept[:RESPONSE_KEPT]
