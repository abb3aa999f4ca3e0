"""The PostgreSQL database and the Kafka broker of one benchmark run.

* ``DATABASE_URL`` set: that database is used as it is (the run creates its
  own schemas and drops them). Otherwise a fresh ``crm_bench_<random>``
  database is created, on the server at 127.0.0.1:5432 when one answers there
  (user ``postgres``, trust auth), else on an embedded PostgreSQL (pgserver)
  in a temporary folder, and dropped at the end.
* ``KAFKA_BOOTSTRAP_SERVERS`` set: that broker. Otherwise an embedded Tansu
  broker (in-memory storage) is started, and stopped at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from crm_runtime.stack import EmbeddedPostgres, TansuBroker, postgres_answers

LOCAL_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass
class Infra:
    database_url: str
    bootstrap_servers: str
    #: Human-readable, for the report header.
    database_label: str
    broker_label: str
    #: The broker is the user's: topics the run created must be deleted.
    external_broker: bool


def with_database(dsn: str, name: str) -> str:
    """``dsn`` pointing at database ``name`` (query parameters kept)."""
    base, _, query = dsn.partition("?")
    base = base.rsplit("/", 1)[0] + "/" + name
    return f"{base}?{query}" if query else base


async def _server_version(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def fresh_database(admin_dsn: str, run_id: str) -> AsyncIterator[str]:
    name = f"crm_bench_{run_id}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield with_database(admin_dsn, name)
    finally:
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@contextlib.asynccontextmanager
async def open_infra(database_url: str | None, bootstrap_servers: str | None,
                     run_id: str) -> AsyncIterator[Infra]:
    async with contextlib.AsyncExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="crm-bench-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)

        if database_url:
            db_label = "DATABASE_URL (schemas of this run dropped at exit)"
        else:
            if postgres_answers("127.0.0.1", 5432):
                admin_dsn = LOCAL_ADMIN_DSN
                where = "127.0.0.1:5432"
            else:
                pg = EmbeddedPostgres(tmp / "postgres")
                await asyncio.to_thread(pg.start)
                stack.push_async_callback(asyncio.to_thread, pg.stop)
                admin_dsn = pg.dsn
                where = "embedded pgserver"
            database_url = await stack.enter_async_context(fresh_database(admin_dsn, run_id))
            db_label = f"{where}, fresh database crm_bench_{run_id} (dropped at exit)"
        version = await _server_version(database_url)
        db_label = f"PostgreSQL {version.split()[0]} at {db_label}"

        external = bool(bootstrap_servers)
        if bootstrap_servers:
            broker_label = f"KAFKA_BOOTSTRAP_SERVERS={bootstrap_servers}"
        else:
            broker = TansuBroker(log_path=tmp / "tansu.log")
            await asyncio.to_thread(broker.start)
            stack.push_async_callback(asyncio.to_thread, broker.stop)
            bootstrap_servers = broker.bootstrap_servers
            broker_label = f"embedded Tansu (in-memory) at {bootstrap_servers}"

        yield Infra(database_url, bootstrap_servers, db_label, broker_label, external)


def new_run_id() -> str:
    return secrets.token_hex(4)
