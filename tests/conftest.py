"""Shared fixtures: a real PostgreSQL (the local server on 127.0.0.1:5432 when
it answers, else the embedded one) and a real Kafka-protocol broker (Tansu)."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from crm_runtime.settings import Settings
from crm_runtime.stack import (
    EMBEDDED_BROKER_SETTINGS,
    EmbeddedPostgres,
    TansuBroker,
    postgres_answers,
)


@pytest.fixture(scope="session")
def pg_admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if postgres_answers("127.0.0.1", 5432):
        yield "postgresql://postgres@127.0.0.1:5432/postgres"
        return
    pg = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data").start()
    try:
        yield pg.dsn
    finally:
        pg.stop()


@contextlib.asynccontextmanager
async def fresh_database(admin_dsn: str, prefix: str) -> AsyncIterator[str]:
    """A new database on the server of ``admin_dsn``, dropped afterwards."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield _with_database(admin_dsn, name)
    finally:
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(scope="session")
async def database_url(pg_admin_dsn: str) -> AsyncIterator[str]:
    """A fresh database for this test session, dropped afterwards."""
    async with fresh_database(pg_admin_dsn, "crm_test") as url:
        yield url


@pytest.fixture
async def own_database(pg_admin_dsn: str) -> AsyncIterator[str]:
    """A database of this test alone (a service process it starts must not
    touch the session's schemas: its relay would publish their rows)."""
    async with fresh_database(pg_admin_dsn, "crm_own") as url:
        yield url


def _with_database(dsn: str, name: str) -> str:
    base, _, query = dsn.partition("?")
    base = base.rsplit("/", 1)[0] + "/" + name
    return f"{base}?{query}" if query else base


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    b = TansuBroker(log_path=tmp_path_factory.mktemp("tansu") / "tansu.log").start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[TansuBroker]:
    """A broker of this test's own, for tests that take it down."""
    b = TansuBroker(log_path=tmp_path / "tansu.log").start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def uid() -> str:
    return secrets.token_hex(4)


@pytest.fixture
def settings(database_url: str, broker: TansuBroker, tmp_path: Path) -> Settings:
    return Settings(database_url=database_url,
                    kafka_bootstrap_servers=broker.bootstrap_servers, data_dir=tmp_path,
                    retry_initial_s=0.05, retry_max_s=0.5, relay_poll_interval_s=0.2,
                    scheduler_poll_interval_s=0.05, consumer_batch_wait_ms=50,
                    shutdown_grace_s=1.0, **EMBEDDED_BROKER_SETTINGS)
