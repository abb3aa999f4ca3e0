"""The ``crm`` command, run for real as a subprocess: version, settings errors,
topics, migrations, and ``crm up`` with the embedded stack end to end."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path

import asyncpg
import grpc
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from grpc_health.v1 import health_pb2, health_pb2_grpc

from crm_app.cli import EMBEDDED_BROKER_ENV, available_services
from crm_contracts import topics
from crm_runtime.consumer import dlq_topic
from crm_runtime.settings import SERVICES
from crm_runtime.stack import TansuBroker
from crm_runtime.version import VERSION
from tests.support.cli import Banner, CrmUp, Result, crm_env, free_port_block, run_crm
from tests.support.kafka import wait_for

#: Every topic ``crm topics`` creates.
ALL_TOPICS = [t for base in topics.ALL for t in (base, dlq_topic(base))]
#: Services that exist under services/ (each has an ``app.SPEC``).
PRESENT = list(available_services())


def assert_settings_error(result: Result, variable: str, expected: str) -> None:
    """Exit 2 with a one-screen message naming the variable, no traceback."""
    assert result.returncode == 2, result
    assert variable in result.stderr, result
    assert expected in result.stderr, result
    assert "Traceback" not in result.stderr, result
    assert result.stdout == "", result


# --- version and settings errors -------------------------------------------------------------


async def test_version_prints_the_product_version(tmp_path: Path) -> None:
    result = await run_crm("version", env=crm_env(tmp_path))
    assert result.returncode == 0, result
    assert result.stdout.strip() == VERSION
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", VERSION)


@pytest.mark.parametrize(("args", "env", "variable", "expected"), [
    (["topics"], {"CRM_TOPIC_PARTITIONS": "abc"}, "CRM_TOPIC_PARTITIONS", "valid integer"),
    (["topics"], {"CRM_TOPIC_PARTITIONS": "0"}, "CRM_TOPIC_PARTITIONS",
     "greater than or equal to 1"),
    (["topics"], {"KAFKA_BOOTSTRAP_SERVERS": "nohost"}, "KAFKA_BOOTSTRAP_SERVERS",
     "expected host:port"),
    (["topics"], {"CRM_TOPIC_PARTITION_OVERRIDES": "three"}, "CRM_TOPIC_PARTITION_OVERRIDES",
     "expected JSON"),
    (["topics"], {"CRM_TOPIC_PARTITION_OVERRIDES": '{"crm.loyalty.v1": "three"}'},
     "CRM_TOPIC_PARTITION_OVERRIDES[crm.loyalty.v1]", "valid integer"),
    (["migrate"], {"DATABASE_URL": "mysql://x"}, "DATABASE_URL", "postgresql://"),
    (["up"], {"CRM_GRPC_BASE_PORT": "70000"}, "CRM_GRPC_BASE_PORT",
     "less than or equal to 65000"),
    (["serve", "customers"], {"CRM_LOG_LEVEL": "LOUD"}, "CRM_LOG_LEVEL", "DEBUG|INFO"),
], ids=["partitions-not-int", "partitions-zero", "bootstrap-no-port", "overrides-not-json",
        "overrides-not-int", "database-not-postgres", "grpc-port-too-high", "log-level"])
async def test_a_malformed_setting_stops_start_up(
        tmp_path: Path, args: list[str], env: dict[str, str], variable: str,
        expected: str) -> None:
    result = await run_crm(*args, env=crm_env(tmp_path / "data", **env))
    assert_settings_error(result, variable, expected)
    assert not (tmp_path / "data").exists(), "nothing embedded may start"


async def test_a_bad_token_setting_is_named_without_echoing_the_secret(tmp_path: Path) -> None:
    secret = "s3cr3t-short"  # 12 characters, 16 needed
    tokens = json.dumps([{"system": "pos", "scopes": ["customers:read"], "token": secret}])
    result = await run_crm("topics", env=crm_env(tmp_path, CRM_API_TOKENS=tokens))
    assert_settings_error(result, "CRM_API_TOKENS[0][token]", "at least 16 characters")
    assert secret not in result.stderr


async def test_a_partition_override_below_one_stops_start_up(
        tmp_path: Path, own_broker: TansuBroker) -> None:
    env = crm_env(tmp_path, KAFKA_BOOTSTRAP_SERVERS=own_broker.bootstrap_servers,
                  CRM_TOPIC_PARTITION_OVERRIDES=json.dumps({topics.CUSTOMERS: 0}))
    result = await run_crm("topics", env=env)
    assert_settings_error(result, "CRM_TOPIC_PARTITION_OVERRIDES", "greater than or equal to 1")


async def test_topics_without_a_broker_names_the_missing_variable(tmp_path: Path) -> None:
    result = await run_crm("topics", env=crm_env(tmp_path))
    assert_settings_error(result, "KAFKA_BOOTSTRAP_SERVERS: not set", "host:port")


@pytest.mark.skipif("customers" not in PRESENT, reason="services/customers/app.py missing")
@pytest.mark.parametrize("missing", ["DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS"])
async def test_serve_names_the_missing_connection_setting(tmp_path: Path, missing: str) -> None:
    given = {"DATABASE_URL": "postgresql://crm@127.0.0.1:1/crm",
             "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    del given[missing]
    result = await run_crm("serve", "customers", env=crm_env(tmp_path, **given))
    assert_settings_error(result, f"{missing}: not set", "crm up")


async def test_serve_an_unknown_service_names_it(tmp_path: Path) -> None:
    result = await run_crm("serve", "nosuch", env=crm_env(tmp_path))
    assert_settings_error(result, "'nosuch'", "unknown")
    for name in PRESENT:
        assert name in result.stderr, result


async def test_serve_an_unknown_service_lists_the_choices(tmp_path: Path) -> None:
    result = await run_crm("serve", "nosuch", env=crm_env(tmp_path))
    assert result.returncode == 2, result
    assert not re.search(r"expected one of\s*$", result.stderr), result


# --- topics and migrations --------------------------------------------------------------------


async def partition_counts(bootstrap: str, names: list[str]) -> dict[str, int]:
    """Partitions per topic as a client sees them (0 for a missing topic)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await admin.start()
    await consumer.start()
    try:
        existing = set(await admin.list_topics())
        await consumer.topics()  # a full metadata refresh
        return {name: len(consumer.partitions_for_topic(name) or ())
                if name in existing else 0 for name in names}
    finally:
        await consumer.stop()
        await admin.close()


async def test_topics_creates_each_topic_and_dlq_with_the_configured_partitions(
        tmp_path: Path, own_broker: TansuBroker) -> None:
    """On a broker of its own, where every topic is this command's doing."""
    bootstrap = own_broker.bootstrap_servers
    overrides = {topics.LOYALTY: 5, dlq_topic(topics.CUSTOMERS): 1}
    env = crm_env(tmp_path, KAFKA_BOOTSTRAP_SERVERS=bootstrap, CRM_TOPIC_PARTITIONS="3",
                  CRM_TOPIC_PARTITION_OVERRIDES=json.dumps(overrides))
    expected = {t: overrides.get(t, 3) for t in ALL_TOPICS}

    first = await run_crm("topics", env=env)
    assert first.returncode == 0, first
    assert f"created {len(ALL_TOPICS)} topic(s)" in first.stdout, first
    assert await partition_counts(bootstrap, ALL_TOPICS) == expected

    # Again, even with other counts: nothing missing, nothing changed.
    again = await run_crm("topics", env={**env, "CRM_TOPIC_PARTITIONS": "7"})
    assert again.returncode == 0, again
    assert "created 0 topic(s): none missing" in again.stdout, again
    assert await partition_counts(bootstrap, ALL_TOPICS) == expected


async def test_topics_on_the_session_broker_creates_what_is_missing(
        tmp_path: Path, broker: TansuBroker) -> None:
    """Other tests share this broker and may have created product topics
    already (with the default count); only the missing ones are new."""
    bootstrap = broker.bootstrap_servers
    before = await partition_counts(bootstrap, ALL_TOPICS)
    missing = [t for t in ALL_TOPICS if before[t] == 0]
    env = crm_env(tmp_path, KAFKA_BOOTSTRAP_SERVERS=bootstrap, CRM_TOPIC_PARTITIONS="2",
                  CRM_TOPIC_PARTITION_OVERRIDES=json.dumps({topics.INTERACTIONS_INGEST: 4}))

    first = await run_crm("topics", env=env)
    assert first.returncode == 0, first
    assert f"created {len(missing)} topic(s)" in first.stdout, first
    after = await partition_counts(bootstrap, ALL_TOPICS)
    assert after == {t: before[t] or (4 if t == topics.INTERACTIONS_INGEST else 2)
                     for t in ALL_TOPICS}

    again = await run_crm("topics", env=env)
    assert again.returncode == 0, again
    assert "none missing" in again.stdout, again
    assert await partition_counts(bootstrap, ALL_TOPICS) == after


async def test_migrate_applies_every_service_and_is_idempotent(
        tmp_path: Path, database_url: str) -> None:
    env = crm_env(tmp_path / "data", DATABASE_URL=database_url)
    first = await run_crm("migrate", env=env, timeout=120)
    assert first.returncode == 0, first
    for name in PRESENT:
        assert re.search(rf"^{name}: \d+ migration\(s\) applied$", first.stdout, re.M), first

    again = await run_crm("migrate", env=env, timeout=120)
    assert again.returncode == 0, again
    for name in PRESENT:
        assert f"{name}: 0 migration(s) applied" in again.stdout, again
    assert not (tmp_path / "data" / "postgres").exists(), "no embedded PostgreSQL when given one"


# --- crm up, end to end -----------------------------------------------------------------------

START_TIMEOUT = 180.0  # the first start runs initdb
STOP_TIMEOUT = 45.0  # services get shutdown_grace_s (5s) + 5s, then the stack stops


@pytest.fixture
async def crm_up(tmp_path: Path) -> AsyncIterator[Callable[[Path], Awaitable[CrmUp]]]:
    """Starts ``crm up`` on a data dir, without DATABASE_URL or
    KAFKA_BOOTSTRAP_SERVERS (so embedded), on free ports; stops what remains."""
    grpc_base = free_port_block(len(SERVICES))
    metrics_base = free_port_block(len(SERVICES), frozenset(range(grpc_base, grpc_base + 3)))
    started: list[CrmUp] = []

    async def start(data_dir: Path) -> CrmUp:
        env = crm_env(data_dir, CRM_GRPC_BASE_PORT=str(grpc_base),
                      CRM_METRICS_BASE_PORT=str(metrics_base))
        job = await CrmUp.start(env, data_dir, tmp_path / f"crm-up-{len(started)}.log")
        started.append(job)
        return job

    yield start
    for job in started:
        await job.kill()


def service_ports(banner: Banner, name: str) -> tuple[int, int]:
    """The gRPC and metrics ports ``crm up`` printed for a service."""
    match = re.search(rf"^\s+{name}\s+gRPC 127\.0\.0\.1:(\d+)\s+"
                      rf"metrics http://127\.0\.0\.1:(\d+)/metrics$",
                      "\n".join(banner.lines), re.M)
    assert match, f"no addresses for {name} in:\n" + "\n".join(banner.lines)
    return int(match.group(1)), int(match.group(2))


async def grpc_serving(port: int) -> bool:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2)
        except grpc.aio.AioRpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=2) as response:
        return int(response.status), response.read().decode()


async def metrics_answer(port: int) -> bool:
    try:
        status, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
    except OSError:
        return False
    return status == 200 and "# TYPE" in body


async def check_running(job: CrmUp, banner: Banner) -> None:
    """What ``crm up`` printed is there and answers."""
    names = job.process_names()
    assert any("tansu" in n for n in names), names
    assert "postgres" in names, names
    assert re.fullmatch(r"127\.0\.0\.1:\d+", banner.broker), banner.broker
    assert any("embedded Tansu" in line for line in banner.lines)
    assert await partition_counts(banner.broker, ALL_TOPICS) == dict.fromkeys(ALL_TOPICS, 6)
    assert banner.database.startswith("postgresql://")
    conn = await asyncpg.connect(banner.database)
    await conn.close()
    if not PRESENT:
        assert "  no services exist yet under services/" in banner.lines
    for name in PRESENT:
        grpc_port, metrics_port = service_ports(banner, name)
        await wait_for(partial(grpc_serving, grpc_port), timeout=90,
                       what=f"{name} gRPC health SERVING on {grpc_port}\n{job.output()}")
        await wait_for(partial(metrics_answer, metrics_port), timeout=30,
                       what=f"{name} /metrics on {metrics_port}")
    job.stack_processes()  # remember the services' processes too


async def stop_cleanly(job: CrmUp) -> None:
    """Ctrl-C: exit 0 within the deadline, nothing of the stack left running."""
    code = await job.interrupt(STOP_TIMEOUT)
    assert code == 0, job.output()
    assert job.lines[-1] == "stopped", job.output()
    assert job.leftovers() == [], job.output()


@pytest.mark.slow
async def test_up_runs_the_embedded_stack_until_ctrl_c(
        tmp_path: Path, crm_up: Callable[[Path], Awaitable[CrmUp]]) -> None:
    data_dir = tmp_path / "data"
    job = await crm_up(data_dir)
    banner = await job.wait_ready(START_TIMEOUT)
    assert f"CRM {VERSION} is up" in banner.lines
    assert ("  gRPC      plaintext on loopback; set CRM_GRPC_TLS_CERT_FILE and "
            "CRM_GRPC_TLS_KEY_FILE for TLS") in banner.lines
    assert banner.dev_token, "no dev token printed"
    token_file = data_dir / "dev-token"
    assert token_file.read_text().strip() == banner.dev_token
    assert token_file.stat().st_mode & 0o077 == 0, "the dev token must be private"
    # On the embedded broker the services run with its consumer timings.
    environ = job.service_process("loyalty").environ()
    assert {k: environ.get(k) for k in EMBEDDED_BROKER_ENV} == EMBEDDED_BROKER_ENV
    await check_running(job, banner)
    await stop_cleanly(job)


@pytest.mark.slow
async def test_up_again_keeps_the_database_and_the_dev_token(
        tmp_path: Path, crm_up: Callable[[Path], Awaitable[CrmUp]]) -> None:
    data_dir = tmp_path / "data"
    first = await crm_up(data_dir)
    banner = await first.wait_ready(START_TIMEOUT)
    conn = await asyncpg.connect(banner.database)
    try:
        await conn.execute("CREATE TABLE kept_across_restarts (note text)")
        await conn.execute("INSERT INTO kept_across_restarts VALUES ('still here')")
    finally:
        await conn.close()
    await stop_cleanly(first)

    second = await crm_up(data_dir)
    again = await second.wait_ready(START_TIMEOUT)
    assert again.dev_token == banner.dev_token
    assert (data_dir / "dev-token").read_text().strip() == banner.dev_token
    conn = await asyncpg.connect(again.database)
    try:
        assert await conn.fetchval("SELECT note FROM kept_across_restarts") == "still here"
    finally:
        await conn.close()
    await check_running(second, again)
    await stop_cleanly(second)


@pytest.mark.parametrize(("kind", "variable"), [("metrics", "CRM_METRICS_BASE_PORT"),
                                                 ("gRPC", "CRM_GRPC_BASE_PORT")])
async def test_up_names_a_busy_port_before_starting_anything(
        tmp_path: Path, kind: str, variable: str) -> None:
    """Another program listens on a port a service would take: `crm up` says
    which port and what for in one line and exits, without a traceback, a
    banner, or anything started (no embedded database, no dev token)."""
    grpc_base = free_port_block(len(SERVICES))
    metrics_base = free_port_block(len(SERVICES), frozenset(range(grpc_base, grpc_base + 3)))
    second = SERVICES[1]
    busy = (metrics_base if kind == "metrics" else grpc_base) + 1
    data_dir = tmp_path / "data"
    env = crm_env(data_dir, CRM_GRPC_BASE_PORT=str(grpc_base),
                  CRM_METRICS_BASE_PORT=str(metrics_base))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", busy))
        taken.listen()
        result = await run_crm("up", env=env, timeout=60)
    assert result.returncode != 0, result
    output = result.stdout + result.stderr
    assert f"port {busy} ({second} {kind}) is in use" in result.stderr, result
    assert variable in result.stderr, result
    assert len(result.stderr.strip().splitlines()) == 1, result
    assert "Traceback" not in output, result
    assert "is up" not in output, result
    assert not data_dir.exists(), "nothing may start before the ports are checked"


@pytest.mark.slow
@pytest.mark.skipif(not PRESENT, reason="no service under services/ to fail")
async def test_up_names_a_service_that_dies_while_starting_and_prints_no_banner(
        tmp_path: Path, crm_up: Callable[[Path], Awaitable[CrmUp]]) -> None:
    """A service dies before it serves: `crm up` names it in one line, prints
    no banner, stops the rest and exits non-zero."""
    job = await crm_up(tmp_path / "data")
    name = PRESENT[0]

    async def services_started() -> bool:
        if job.proc.returncode is not None:
            raise AssertionError(f"crm up ended early\n{job.output()}")
        return any(line.startswith("starting ") for line in job.lines)

    await wait_for(services_started, timeout=START_TIMEOUT, what="the services to start")
    job.stack_processes()
    job.service_process(name).send_signal(signal.SIGKILL)  # long before it can serve
    code = await job.wait_exit(STOP_TIMEOUT, after="after a service died while starting")
    assert code != 0, job.output()
    assert f"crm up: {name} was killed by SIGKILL while starting" in job.stderr.read_text(), \
        job.output()
    assert not any("is up" in line for line in job.lines), job.output()
    assert job.lines[-1] == "stopped", job.output()
    assert job.leftovers() == [], job.output()


async def crash_a_service(job: CrmUp) -> str:
    """SIGKILL the first service once it serves; its name."""
    name = PRESENT[0]
    banner = await job.wait_ready(START_TIMEOUT)
    grpc_port, _ = service_ports(banner, name)
    await wait_for(partial(grpc_serving, grpc_port), timeout=90, what=f"{name} SERVING")
    job.stack_processes()
    job.service_process(name).send_signal(signal.SIGKILL)
    return name


@pytest.mark.slow
@pytest.mark.skipif(not PRESENT, reason="no service under services/ to crash")
async def test_up_stops_everything_when_a_service_dies(
        tmp_path: Path, crm_up: Callable[[Path], Awaitable[CrmUp]]) -> None:
    job = await crm_up(tmp_path / "data")
    name = await crash_a_service(job)
    await job.wait_exit(STOP_TIMEOUT, after="after a service died")
    assert f"{name} exited with -9; stopping" in job.stderr.read_text(), job.output()
    assert job.lines[-1] == "stopped", job.output()
    assert job.leftovers() == [], job.output()


@pytest.mark.slow
@pytest.mark.skipif(not PRESENT, reason="no service under services/ to crash")
async def test_up_exits_non_zero_when_a_service_dies(
        tmp_path: Path, crm_up: Callable[[Path], Awaitable[CrmUp]]) -> None:
    job = await crm_up(tmp_path / "data")
    await crash_a_service(job)
    assert await job.wait_exit(STOP_TIMEOUT, after="after a service died") != 0


# --- no warnings from libraries ------------------------------------------------------------------


@pytest.mark.parametrize("runtime_dir", ["unset", "not-private", "missing"])
async def test_commands_print_no_runtime_dir_warning(tmp_path: Path, runtime_dir: str) -> None:
    """pgserver (the embedded PostgreSQL) reads the user runtime directory
    through platformdirs when it is imported, which warned on stderr when
    XDG_RUNTIME_DIR was unset or unfit; no command prints that."""
    env = crm_env(tmp_path / "data", CRM_LOG_LEVEL="WARNING")
    env.pop("XDG_RUNTIME_DIR", None)
    if runtime_dir == "not-private":
        shared = tmp_path / "run"
        shared.mkdir(mode=0o755)
        shared.chmod(0o755)
        env["XDG_RUNTIME_DIR"] = str(shared)
    elif runtime_dir == "missing":
        env["XDG_RUNTIME_DIR"] = str(tmp_path / "no" / "such" / "dir")
    for args in (["--help"], ["version"], ["migrate"]):  # migrate: embedded PostgreSQL
        result = await run_crm(*args, env=env, timeout=120)
        assert result.returncode == 0, result
        assert result.stderr == "", result
    assert (tmp_path / "data" / "postgres").is_dir()
