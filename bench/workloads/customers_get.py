"""Customer lookups: ``GetCustomer`` over gRPC on the real customers service,
against the same lookups as plain asyncpg queries.

Set-up (untimed), per round: a fresh database and broker (see
:mod:`bench.service`), the service's migrations, ``--customers`` customers
(default 100,000, 10,000 with ``--quick``) stored, vacuumed and analysed (see
:func:`seed`: one ``INSERT ... SELECT`` from ``generate_series`` per table,
inside PostgreSQL, so 10,000,000 take minutes rather than an hour, and the
bench never holds their ids), the customers service started as it
is deployed: ``--replicas`` processes (default 1) of ``crm serve customers``
sharing one gRPC port (dev token), a baseline pool as large as one
service's (``CRM_DB_POOL_MAX``), and a warm-up of both sides (1,000 untimed
calls each, which also fills both pools).

Two phases, each timed on both sides with the same random customer ids:

* ``max``: N calls (the run's event count, at most 5,000), 32 in flight:
  calls/s;
* ``paced``: 1,000 calls/s, open loop, for 5 s (2 s with ``--quick``): each
  call starts at its scheduled time whether or not earlier ones finished, and
  its latency is counted from that scheduled time (so a stalled loop shows as
  latency instead of as fewer calls). Its row's calls/s only shows the pace
  held; the figures below the table are the point: p50 and p99 in ms, also
  for the ``max`` phase. A call the server sheds under overload (grpc-core
  cancels calls beyond 1,000 waiting) is counted as failed, with an infinite
  latency, and the failures are printed; any other error stops the run.

* product: ``GetCustomer`` with the dev token (authentication, scope check,
  one statement, outside any transaction, loading the customer with
  identifiers, spend, consents and links; protobuf mapping), called by the load generator of
  ``--grpc-client``: ``node`` (default; ``bench/node/grpc_load.cjs``,
  @grpc/grpc-js through server reflection, from npm into ``.local/node`` on
  first use) or ``python`` (``grpc.aio`` in this process). Two connections per
  replica, calls round-robin over them;
* baseline: ``pool.fetchrow`` of one ``SELECT ... WHERE customer_id = $1``
  returning the customer row and its identifiers, from this process.

Why a Node.js client by default: a Python ``grpc.aio`` client costs about as
much CPU per call as the service does, so on a small machine it competes
with the service and the database for the cores and adds milliseconds of its
own to every call (measured here: paced p50 about 5 ms with it, against about
1 ms for the raw lookups from the same process). Without Node.js the run
falls back to the Python client and says so.

Figures beyond the table: p50/p99 of both phases, the floors' (a bare echo
on asyncio's event loop and on uvloop's, see :meth:`CustomersGet._floor`),
the product's ``max`` calls/s over each floor's, the seconds the set-up took
to store the customers, the milliseconds of one run of the
``crm_customers_by_stage`` gauge's query (the service repeats it every
``CRM_METRICS_REFRESH_S``, over the whole table), and the service's peak
resident memory (``VmHWM`` of the
largest replica) after both phases: with ``--customers`` 10,000,000 against
the default, it shows whether the service's memory grows with the table.
Nothing is asserted.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
import random
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import grpc

from bench import grpc_floor, node
from bench.customers import SCHEMA
from bench.registry import Phases, Workload, register
from bench.service import DEV_TOKEN, ServiceProcesses, Stack, fresh_stack
from bench.workloads.loyalty_campaign import peak_rss_mib, pids
from crm.customers.v1 import customers_pb2 as pb
from crm.customers.v1 import customers_pb2_grpc
from crm_runtime.db import create_pool
from services.customers import store
from services.customers.app import SPEC

CUSTOMERS = 100_000
QUICK_CUSTOMERS = 10_000
#: Calls in flight in the ``max`` phase, and at most how many calls it makes
#: (a few seconds of the service on a small machine).
CONCURRENCY = 32
MAX_CALLS = 5_000
#: Calls per second of the ``paced`` phase, and its length.
RATE = 1_000
PACED_S = 5.0
QUICK_PACED_S = 2.0
WARM_UP_CALLS = 1_000
#: Client connections per service replica (calls go round-robin over them).
CHANNELS_PER_REPLICA = 2
#: The phases and their titles in the printed figures.
PHASE_TITLES = (("max", f"max ({CONCURRENCY} in flight)"), ("paced", f"paced ({RATE:,}/s)"))
#: The floor figures' name (see :meth:`CustomersGet._floor`).
FLOOR = "bare grpc.aio echo"
#: Per-call deadline: a guard against hanging, not a timing check.
CALL_TIMEOUT_S = 30.0

RAW_QUERY = f"""SELECT c.*, ARRAY(SELECT i.kind || ':' || i.value
                                 FROM {SCHEMA}.customer_identifiers i
                                WHERE i.customer_id = c.customer_id
                                ORDER BY i.position, i.value) AS identifiers
                  FROM {SCHEMA}.customers c WHERE c.customer_id = $1"""

#: The customers' profile (as ``bench.customers`` stores it).
PROFILE = '{"preferred_channel": "email", "birth_year": 1984, "buyer_type": "individual"}'


def customer_id(i: int) -> uuid.UUID:
    """Customer ``i``'s id, as :data:`SEED_SQL` computes it (``md5(i::text)::uuid``):
    random-looking like a v4 id, so the primary key is probed as production's,
    yet the bench draws ids without reading 10,000,000 of them back."""
    return uuid.UUID(hashlib.md5(str(i).encode()).hexdigest())


#: Customers 1..$1 (stage potential, one email each), as registration would
#: leave them, each table filled in its primary key's order (the B-tree then
#: grows at its right edge). The other indexes are built afterwards (see :func:`seed`).
SEED_SQL = (
    f"""INSERT INTO {SCHEMA}.customers (customer_id, display_name, profile, created_at,
                                        updated_at)
        SELECT md5(i::text)::uuid, 'Customer ' || i, $2::jsonb, now(), now()
          FROM generate_series(1, $1::int) AS i ORDER BY 1""",
    f"""INSERT INTO {SCHEMA}.customer_identifiers (kind, value, customer_id, position)
        SELECT 'email', 'customer' || i || '@bench.example.com', md5(i::text)::uuid, 1
          FROM generate_series(1, $1::int) AS i ORDER BY 2""")
#: The indexes :func:`seed` drops and builds again: all but the constraints'.
SEED_INDEXES = f"""SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS ddl
                     FROM pg_index i
                    WHERE i.indrelid IN ('{SCHEMA}.customers'::regclass,
                                         '{SCHEMA}.customer_identifiers'::regclass)
                      AND NOT EXISTS (SELECT 1 FROM pg_constraint c
                                       WHERE c.conindid = i.indexrelid)"""


async def seed(conn: asyncpg.Connection, count: int) -> None:
    """Store customers 1..``count`` (ids: :func:`customer_id`), VACUUM and ANALYZE.

    One transaction: the secondary indexes are dropped and built again after
    the rows (one sort each instead of 10,000,000 random inserts), the foreign
    key triggers are off for it (``session_replication_role``: the rows are
    consistent by construction, and 10,000,000 queued checks would cost more
    than the rows), and sorts get memory enough to stay in RAM."""
    async with conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica; "
                           "SET LOCAL work_mem = '1GB'; "
                           "SET LOCAL maintenance_work_mem = '1GB'")
        indexes = await conn.fetch(SEED_INDEXES)
        for index in indexes:
            await conn.execute(f"DROP INDEX {index['name']}")
        customers, identifiers = SEED_SQL
        await conn.execute(customers, count, PROFILE)
        await conn.execute(identifiers, count)
        for index in indexes:
            await conn.execute(index["ddl"])
    # VACUUM too: else autovacuum's first pass over the freshly inserted
    # tables (10,000,000 rows: minutes of I/O and CPU) would run during the
    # timed phases; a table in service has long had it.
    await conn.execute(f"VACUUM (ANALYZE) {SCHEMA}.customers, {SCHEMA}.customer_identifiers")


#: Status codes of a server shedding load (grpc-core cancels calls beyond
#: 1,000 waiting for the application): counted as failed calls, with an
#: infinite latency, instead of stopping the run.
OVERLOAD_CODES = frozenset({grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED,
                            grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

#: One lookup; returns the customer id it found (checked by ``verify``), or
#: None when the call failed with one of :data:`OVERLOAD_CODES`.
Lookup = Callable[[uuid.UUID], Awaitable[str | None]]
#: Seconds, each call's latency (infinite for a failed call), what each call found.
Outcome = tuple[float, list[float], list[str | None]]


async def closed_loop(lookup: Lookup, ids: Sequence[uuid.UUID], concurrency: int) -> Outcome:
    """Every id, ``concurrency`` lookups in flight; returns the seconds, each
    call's latency and the ids found, in call order."""
    latencies = [0.0] * len(ids)
    found: list[str | None] = [None] * len(ids)
    todo = iter(range(len(ids)))

    async def worker() -> None:
        for i in todo:  # shared: each index is taken by one worker
            started = time.perf_counter()
            found[i] = await lookup(ids[i])
            latencies[i] = time.perf_counter() - started if found[i] is not None else math.inf

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies, found


async def paced(lookup: Lookup, ids: Sequence[uuid.UUID], rate: float) -> Outcome:
    """Start lookup ``i`` at ``i / rate`` seconds (open loop); latency counts
    from the scheduled start. Returns the seconds to the last answer, each
    call's latency and the ids found."""
    latencies = [0.0] * len(ids)
    found: list[str | None] = [None] * len(ids)

    async def one(i: int, due: float) -> None:
        found[i] = await lookup(ids[i])
        latencies[i] = time.perf_counter() - due if found[i] is not None else math.inf

    loop_start = time.perf_counter()
    tasks = []
    for i in range(len(ids)):
        due = loop_start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    return time.perf_counter() - loop_start, latencies, found


def _latencies(phase: dict[str, Any]) -> list[float]:
    """A load-generator phase's latencies in seconds (a shed call: infinite)."""
    return [math.inf if ms is None else ms / 1000 for ms in phase["latencies_ms"]]


def percentile_ms(latencies: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100, nearest rank) in milliseconds."""
    ranked = sorted(latencies)
    index = max(0, min(len(ranked) - 1, round(q / 100 * len(ranked)) - 1))
    return ranked[index] * 1000


@register
class CustomersGet(Workload):
    name = "customers.get"
    order = 40
    #: Set-up warms both sides (calls, pools, channel); a whole warm-up round
    #: would only store the customers once more.
    warm_up = False
    summary = ("GetCustomer over gRPC (dev token) on the customers service run as deployed "
               "(crm serve processes)")
    baseline_summary = ("asyncpg pool of the service's size: one SELECT of the customer row "
                        "and its identifiers WHERE customer_id = $1")
    target = (f"max calls/s at least 0.6x the floor's; paced ({RATE:,}/s) p99 under 50 ms, "
              "product; both within 20 % at 10,000,000 customers of 100,000")

    def describe(self) -> str:
        calls = min(self.events, MAX_CALLS)
        return (f"GetCustomer over gRPC (dev token) from a {self.client} client, customers "
                f"service in {self.ctx.replicas} crm serve process(es), "
                f"{self._customers():,} customers: max = {calls:,} calls with {CONCURRENCY} in "
                f"flight; paced = {RATE:,} calls/s for {self._paced_s():.0f}s, latency from "
                "each call's scheduled start")

    def _customers(self) -> int:
        if self.ctx.customers is not None:
            return self.ctx.customers
        return QUICK_CUSTOMERS if self.ctx.quick else CUSTOMERS

    def _paced_s(self) -> float:
        return QUICK_PACED_S if self.ctx.quick else PACED_S

    async def setup(self) -> None:
        #: The load generator: "node" or "python" (see the module docstring).
        self.client = self.ctx.grpc_client
        if self.client == "node":
            try:
                node.node_binary()
                await asyncio.to_thread(node.ensure_packages, *node.GRPC_PACKAGES)
            except (node.NodeMissing, OSError, subprocess.SubprocessError) as exc:
                self.client = f"python (fallback: {exc})"
        self.stack: Stack = await self.resources.enter_async_context(
            fresh_stack(self.ctx, "get"))
        await self.stack.migrate(SPEC)
        conn = await self.stack.connect()
        started = time.perf_counter()
        try:
            await seed(conn, self._customers())
        finally:
            await conn.close()
        self.figures["set-up: seconds to store the customers"] = time.perf_counter() - started
        conn = await self.stack.connect()
        try:
            await conn.execute(f"SET search_path TO {SCHEMA}")
            started = time.perf_counter()
            await conn.fetch(store.CUSTOMERS_BY_STAGE_SQL)
            # The service runs it every CRM_METRICS_REFRESH_S (crm_customers_by_stage).
            self.figures["set-up: ms of the customers-by-stage gauge's query"] = (
                time.perf_counter() - started) * 1000
        finally:
            await conn.close()
        rng = random.Random(self.ctx.run_id)

        def draw(k: int) -> list[uuid.UUID]:
            return [customer_id(rng.randint(1, self._customers())) for _ in range(k)]

        paced_calls = round(RATE * self._paced_s())
        max_calls = min(self.events, MAX_CALLS)
        self.ids = {"max": draw(max_calls), "paced": draw(paced_calls)}
        self.counts.update(max=max_calls, paced=paced_calls)

        self.warm = draw(WARM_UP_CALLS)
        if self.client == "node":
            await self._floor()
        self.service = ServiceProcesses(SPEC, self.stack.settings, replicas=self.ctx.replicas)
        self.resources.push_async_callback(self.service.stop)
        await self.service.start()
        channels = self.service.channels(CHANNELS_PER_REPLICA * self.ctx.replicas)
        for channel in channels:
            self.resources.push_async_callback(channel.close)
        self.stubs = itertools.cycle([customers_pb2_grpc.CustomersStub(c) for c in channels])
        self.pool: asyncpg.Pool = await create_pool(
            self.stack.database_url, SCHEMA, max_size=self.stack.settings.db_pool_max)
        self.resources.push_async_callback(self.pool.close)

        for lookup in (self._product_lookup, self._raw_lookup):
            await closed_loop(lookup, self.warm, CONCURRENCY)
        self.latencies: dict[tuple[str, str], list[float]] = {}
        self.found: dict[tuple[str, str], list[str | None]] = {}

    async def _product_lookup(self, customer_id: uuid.UUID) -> str | None:
        try:
            reply = await next(self.stubs).GetCustomer(
                pb.GetCustomerRequest(customer_id=str(customer_id)),
                metadata=self.stack.metadata, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in OVERLOAD_CODES:
                return None
            raise
        return str(reply.customer_id)

    async def _raw_lookup(self, customer_id: uuid.UUID) -> str | None:
        row = await self.pool.fetchrow(RAW_QUERY, customer_id, timeout=CALL_TIMEOUT_S)
        return str(row["customer_id"]) if row is not None else ""

    async def _phases(self, side: str, lookup: Lookup) -> Phases:
        seconds: Phases = {}
        for phase in ("max", "paced"):
            if phase == "max":
                took, lat, found = await closed_loop(lookup, self.ids[phase], CONCURRENCY)
            else:
                took, lat, found = await paced(lookup, self.ids[phase], RATE)
            seconds[phase] = took
            self.latencies[side, phase] = lat
            self.found[side, phase] = found
        return seconds

    async def baseline(self) -> Phases:
        return await self._phases("baseline", self._raw_lookup)

    async def product(self) -> Phases:
        self.service.check_running()
        if self.client != "node":
            return await self._phases("product", self._product_lookup)
        return await self._node_phases()

    async def _floor(self) -> None:
        """The same calls against a bare grpc.aio server (``bench.grpc_floor``:
        an echo, no auth, no database) in a process of its own, before the
        service starts: what Python grpcio alone allows on this machine, on
        asyncio's own event loop and on uvloop's (the services')."""
        for loop in grpc_floor.LOOPS:
            async with grpc_floor.running(loop) as target:
                result = await node.grpc_load(self._node_config(target, channels=2))
            where = FLOOR if loop == grpc_floor.LOOPS[0] else f"{FLOOR} on {loop}"
            for phase, title in PHASE_TITLES:
                latencies = _latencies(result[phase])
                if phase == "max":
                    self.figures[f"floor {title} calls/s, {where}"] = (
                        len(latencies) / float(result[phase]["seconds"]))
                for q in (50, 99):
                    self.figures[f"floor {title} p{q} ms, {where}"] = percentile_ms(
                        latencies, q)

    def _node_config(self, target: str, channels: int) -> dict[str, object]:
        return {
            "target": target, "service": "crm.customers.v1.Customers",
            "method": "GetCustomer", "id_field": "customer_id", "reply_field": "customer_id",
            "token": DEV_TOKEN, "channels": channels,
            "timeout_ms": CALL_TIMEOUT_S * 1000, "warm_up": [str(i) for i in self.warm],
            "phases": [{"name": "max", "concurrency": CONCURRENCY,
                        "ids": [str(i) for i in self.ids["max"]]},
                       {"name": "paced", "rate": RATE,
                        "ids": [str(i) for i in self.ids["paced"]]}]}

    async def _node_phases(self) -> Phases:
        """Both phases from the Node.js load generator (its start-up, reflection
        and warm-up calls are not timed)."""
        result = await node.grpc_load(self._node_config(
            self.service.target, channels=CHANNELS_PER_REPLICA * self.ctx.replicas))
        seconds: Phases = {}
        calls_s = len(result["max"]["latencies_ms"]) / float(result["max"]["seconds"])
        for loop in grpc_floor.LOOPS:
            where = FLOOR if loop == grpc_floor.LOOPS[0] else f"{FLOOR} on {loop}"
            floor = self.figures.get(f"floor {PHASE_TITLES[0][1]} calls/s, {where}")
            if floor:
                on = where[len(FLOOR):]  # "" or " on uvloop"
                self.figures[f"{PHASE_TITLES[0][1]} calls/s ratio (product/floor{on})"] = (
                    calls_s / floor)
        for phase in ("max", "paced"):
            seconds[phase] = float(result[phase]["seconds"])
            self.latencies["product", phase] = _latencies(result[phase])
            self.found["product", phase] = result[phase]["found"]
        return seconds

    async def verify(self) -> None:
        peaks = [peak_rss_mib(pid) for pid in pids(self.service)]
        if peaks and None not in peaks:
            self.figures["service peak RSS MiB (VmHWM, largest replica)"] = max(
                p for p in peaks if p is not None)
        for (side, phase), found in self.found.items():
            wrong = sum(f is not None and f != str(i)
                        for f, i in zip(found, self.ids[phase], strict=True))
            if wrong:
                raise RuntimeError(f"{self.name} {side} {phase}: {wrong} of {len(found)} "
                                   "lookups returned another customer or none")
        # Figures in a fixed order (the two sides run in alternating order).
        for phase, title in PHASE_TITLES:
            p99 = {}
            for q in (50, 99):
                for side in ("product", "baseline"):
                    value = percentile_ms(self.latencies[side, phase], q)
                    self.figures[f"{title} p{q} ms, {side}"] = value
                    if q == 99:
                        p99[side] = value
            self.figures[f"{title} p99 ratio (product/baseline)"] = (
                p99["product"] / p99["baseline"])
            self.figures[f"{title} failed calls (overload), product"] = float(sum(
                f is None for f in self.found["product", phase]))
