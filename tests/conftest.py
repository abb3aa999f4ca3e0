"""Shared fixtures: a real PostgreSQL (the local server on 127.0.0.1:5432 when
it answers, else the embedded one) and a real Kafka-protocol broker (Tansu)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from crm_runtime.settings import Settings
from crm_runtime.stack import EmbeddedPostgres, TansuBroker, postgres_answers


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


@pytest.fixture(scope="session")
async def database_url(pg_admin_dsn: str) -> AsyncIterator[str]:
    """A fresh database for this test session, dropped afterwards."""
    name = f"crm_test_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield _with_database(pg_admin_dsn, name)
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


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
                    shutdown_grace_s=1.0, consumer_session_timeout_ms=3000,
                    consumer_heartbeat_interval_ms=300, consumer_rebalance_timeout_ms=1000)
