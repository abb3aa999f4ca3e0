"""What a workload gets: the servers of this run, the product settings, and
unique topic and schema names that are cleaned up when the run ends."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from bench import kafka
from crm_runtime.db import connect, create_pool
from crm_runtime.migrations import Migration, migrate, migrations_for
from crm_runtime.settings import Settings


@dataclass
class BenchContext:
    database_url: str
    bootstrap_servers: str
    #: Product settings (``CRM_*`` variables apply): lanes, batch sizes, partitions.
    settings: Settings
    #: Random token of this run, part of every topic and schema name.
    run_id: str
    #: Events per outbox transaction in workloads that write the outbox.
    outbox_tx_size: int = 100
    #: Delete the topics at the end (a broker of the user's; the embedded one dies anyway).
    delete_topics: bool = False
    #: ``--quick``: workloads whose size is not just the event count scale down too.
    quick: bool = False
    #: ``--replicas``: processes per service, for workloads that run services
    #: as deployed (``crm serve`` processes) rather than in-process.
    replicas: int = 1
    #: ``--grpc-client``: the load generator of the gRPC workloads, "node" or "python".
    grpc_client: str = "node"
    #: ``--customers``: customers stored for the lookup workloads (None: each
    #: workload's own default, see ``customers.get``).
    customers: int | None = None
    _counter: itertools.count[int] = field(default_factory=itertools.count)
    _topics: list[str] = field(default_factory=list)
    _schemas: list[str] = field(default_factory=list)

    @property
    def partitions(self) -> int:
        return self.settings.topic_partitions

    async def new_topic(self, label: str) -> str:
        name = f"bench.{self.run_id}.{label}.{next(self._counter)}"
        await kafka.create_topic(self.bootstrap_servers, name, self.partitions)
        self._topics.append(name)
        return name

    def new_name(self, label: str) -> str:
        """A name unique in this run, for things the caller creates and drops."""
        return f"{self.run_id}_{label}_{next(self._counter)}"

    def new_schema(self, label: str) -> str:
        """A schema name of this run; create it with :meth:`migrated_pool` or
        :meth:`plain_schema`. Every one is dropped by :meth:`cleanup`."""
        name = f"bench_{self.run_id}_{label}_{next(self._counter)}"
        self._schemas.append(name)
        return name

    async def connect(self) -> asyncpg.Connection:
        return await connect(self.database_url)

    async def migrated_pool(self, schema: str,
                            extra: Sequence[Migration] = ()) -> asyncpg.Pool:
        """A product pool on ``schema`` after the runtime migrations (outbox,
        inbox, dead letters) and ``extra`` were applied, as a service starts."""
        conn = await self.connect()
        try:
            await migrate(conn, schema, [*migrations_for(None), *extra])
        finally:
            await conn.close()
        return await create_pool(self.database_url, schema,
                                 max_size=self.settings.db_pool_max)

    async def plain_schema(self, schema: str, ddl: str) -> None:
        """Create ``schema`` with just ``ddl`` in it (no runtime tables)."""
        conn = await self.connect()
        try:
            async with conn.transaction():
                await conn.execute(f'CREATE SCHEMA "{schema}"')
                await conn.execute(f'SET LOCAL search_path TO "{schema}"')
                await conn.execute(ddl)
        finally:
            await conn.close()

    async def cleanup(self) -> None:
        if self._schemas:
            conn = await self.connect()
            try:
                for schema in self._schemas:
                    await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()
            self._schemas.clear()
        if self.delete_topics:
            await kafka.delete_topics(self.bootstrap_servers, self._topics)
        self._topics.clear()
