"""gRPC over TLS, over the wire: a real customers service serving TLS (and
another one requiring client certificates), with certificates made here.

Who gets in: a client trusting the right CA (health, reflection and a real
call with a bearer token); not a plaintext client, nor one trusting another
CA, nor one checking another name. With mutual TLS: not a client without a
certificate or with one of another CA; a client with a certificate of the
client CA does, and a service presents its own pair by default. Interactions
registers contacts with customers over TLS through the same channel code
(:func:`crm_runtime.grpc_client.open_channel`), and the health probe
(``crm health``) speaks TLS too."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from crm.customers.v1 import customers_pb2 as cpb
from crm.customers.v1 import customers_pb2_grpc
from crm.interactions.v1 import interactions_pb2 as ipb
from crm.interactions.v1 import interactions_pb2_grpc
from crm_app.health import probe
from crm_runtime.grpc_client import open_blocking_channel, open_channel
from crm_runtime.settings import SERVICES, Settings
from crm_runtime.stack import EMBEDDED_BROKER_SETTINGS, TansuBroker
from services.customers.app import SPEC as CUSTOMERS
from services.interactions.directory import CustomerDirectory
from tests.support import certs
from tests.support.cli import CrmUp, crm_env, free_port_block, run_crm
from tests.support.customers import START
from tests.support.services import DEV_TOKEN, Running, running

TOKEN = [("authorization", f"Bearer {DEV_TOKEN}")]
CLIENT_ONLY = (ExtendedKeyUsageOID.CLIENT_AUTH,)


@dataclass(frozen=True)
class Pki:
    """The services' CA and certificates, and a stranger CA with its own."""

    ca: certs.Authority
    server: certs.Pair  # customers: 127.0.0.1 and localhost
    interactions: certs.Pair  # another service of the product (no name needed)
    client: certs.Pair  # a calling system, client use only
    other_ca: certs.Authority
    stranger: certs.Pair  # a client certificate of the other CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, other = certs.authority(folder, "ca"), certs.authority(folder, "other-ca")
    return Pki(ca=ca, server=ca.issue(folder, "customers", hosts=("127.0.0.1", "localhost")),
               interactions=ca.issue(folder, "interactions"),
               client=ca.issue(folder, "pos", usages=CLIENT_ONLY),
               other_ca=other, stranger=other.issue(folder, "stranger", usages=CLIENT_ONLY))


def service_settings(database_url: str, broker: TansuBroker, **tls: Any) -> Settings:
    return Settings(database_url=database_url, kafka_bootstrap_servers=broker.bootstrap_servers,
                    retry_initial_s=0.05, retry_max_s=0.5, scheduler_poll_interval_s=0.05,
                    consumer_batch_wait_ms=20, shutdown_grace_s=1.0,
                    **EMBEDDED_BROKER_SETTINGS, **tls)


@pytest.fixture(scope="module")
async def tls_customers(pki: Pki, database_url: str, broker: TansuBroker
                        ) -> AsyncIterator[Running]:
    """Customers serving TLS; its test channel trusts the CA."""
    settings = service_settings(database_url, broker, grpc_tls_cert_file=pki.server.cert,
                                grpc_tls_key_file=pki.server.key,
                                grpc_tls_ca_file=pki.ca.cert_file)
    async with running(CUSTOMERS, settings, START) as svc:
        yield svc


@pytest.fixture(scope="module")
async def mtls_customers(pki: Pki, database_url: str, broker: TansuBroker
                         ) -> AsyncIterator[Running]:
    """Customers requiring client certificates signed by the services' CA."""
    settings = service_settings(database_url, broker, grpc_tls_cert_file=pki.server.cert,
                                grpc_tls_key_file=pki.server.key,
                                grpc_tls_client_ca_file=pki.ca.cert_file,
                                grpc_tls_ca_file=pki.ca.cert_file)
    async with running(CUSTOMERS, settings, START) as svc:
        yield svc


def target(svc: Running) -> str:
    return f"127.0.0.1:{svc.runner.bound_grpc_port}"


async def health(channel: grpc.aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=10)
    status: int = reply.status
    return status


async def register_and_get(channel: grpc.aio.Channel) -> None:
    """A real call of the customers API with a bearer token, and another to read it back."""
    stub = customers_pb2_grpc.CustomersStub(channel)
    email = f"{uuid.uuid4().hex[:10]}@example.com"
    reply = await stub.RegisterCustomer(cpb.RegisterCustomerRequest(emails=[email]),
                                        metadata=TOKEN, timeout=10)
    found = await stub.GetCustomer(
        cpb.GetCustomerRequest(customer_id=reply.customer.customer_id), metadata=TOKEN,
        timeout=10)
    assert list(found.emails) == [email]


async def refused(channel: grpc.aio.Channel) -> grpc.StatusCode:
    """The code a health check gets on ``channel``, which must fail."""
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health(channel)
    return info.value.code()


def client(**tls: Any) -> Settings:
    """Settings of a process calling the services, with only these TLS settings."""
    return Settings(**tls)


# --- TLS --------------------------------------------------------------------------------------


async def test_a_client_trusting_the_ca_gets_health_reflection_and_the_api(
        tls_customers: Running, pki: Pki) -> None:
    async with open_channel(target(tls_customers),
                            client(grpc_tls_ca_file=pki.ca.cert_file)) as channel:
        assert await health(channel) == health_pb2.HealthCheckResponse.SERVING
        stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
        names = {s.name async for r in stream for s in r.list_services_response.service}
        assert {"crm.customers.v1.Customers", "grpc.health.v1.Health"} <= names
        await register_and_get(channel)


async def test_the_bearer_token_is_still_required_over_tls(
        tls_customers: Running, pki: Pki) -> None:
    async with open_channel(target(tls_customers),
                            client(grpc_tls_ca_file=pki.ca.cert_file)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await customers_pb2_grpc.CustomersStub(channel).GetCustomer(
                cpb.GetCustomerRequest(customer_id=str(uuid.uuid4())), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_plaintext_client_is_refused(tls_customers: Running) -> None:
    assert await refused(open_channel(target(tls_customers))) == grpc.StatusCode.UNAVAILABLE


async def test_a_client_trusting_another_ca_is_refused(
        tls_customers: Running, pki: Pki) -> None:
    channel = open_channel(target(tls_customers), client(grpc_tls_ca_file=pki.other_ca.cert_file))
    assert await refused(channel) == grpc.StatusCode.UNAVAILABLE


async def test_the_server_name_is_checked_and_can_be_replaced(
        tls_customers: Running, pki: Pki) -> None:
    wrong = client(grpc_tls_ca_file=pki.ca.cert_file, grpc_tls_server_name="loyalty.example")
    assert await refused(open_channel(target(tls_customers), wrong)) == \
        grpc.StatusCode.UNAVAILABLE
    # By a name the certificate has, at an address it does not need to name.
    named = client(grpc_tls_ca_file=pki.ca.cert_file, grpc_tls_server_name="localhost")
    async with open_channel(f"localhost:{tls_customers.runner.bound_grpc_port}",
                            named) as channel:
        assert await health(channel) == health_pb2.HealthCheckResponse.SERVING


async def test_a_blocking_channel_speaks_tls_too(tls_customers: Running, pki: Pki) -> None:
    def check() -> int:
        with open_blocking_channel(target(tls_customers),
                                   client(grpc_tls_ca_file=pki.ca.cert_file)) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10)
        status: int = reply.status
        return status

    # In a thread: the service answers on this test's event loop.
    assert await asyncio.to_thread(check) == health_pb2.HealthCheckResponse.SERVING


# --- mutual TLS -------------------------------------------------------------------------------


async def test_mutual_tls_refuses_a_client_without_a_certificate(
        mtls_customers: Running, pki: Pki) -> None:
    channel = open_channel(target(mtls_customers), client(grpc_tls_ca_file=pki.ca.cert_file))
    assert await refused(channel) == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_refuses_a_certificate_of_another_ca(
        mtls_customers: Running, pki: Pki) -> None:
    channel = open_channel(target(mtls_customers), client(
        grpc_tls_ca_file=pki.ca.cert_file, grpc_tls_client_cert_file=pki.stranger.cert,
        grpc_tls_client_key_file=pki.stranger.key))
    assert await refused(channel) == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_admits_a_client_certificate_of_the_client_ca(
        mtls_customers: Running, pki: Pki) -> None:
    settings = client(grpc_tls_ca_file=pki.ca.cert_file,
                      grpc_tls_client_cert_file=pki.client.cert,
                      grpc_tls_client_key_file=pki.client.key)
    async with open_channel(target(mtls_customers), settings) as channel:
        assert await health(channel) == health_pb2.HealthCheckResponse.SERVING
        await register_and_get(channel)


async def test_a_service_presents_its_own_pair_by_default(
        mtls_customers: Running, pki: Pki) -> None:
    """A service's settings name its server pair only: its channels present it."""
    interactions = client(grpc_tls_cert_file=pki.interactions.cert,
                          grpc_tls_key_file=pki.interactions.key,
                          grpc_tls_client_ca_file=pki.ca.cert_file,
                          grpc_tls_ca_file=pki.ca.cert_file)
    async with open_channel(target(mtls_customers), interactions) as channel:
        await register_and_get(channel)


# --- interactions calling customers, and the health probe -------------------------------------


def interactions_settings(pki: Pki, *, own_pair: bool = True) -> Settings:
    pair: dict[str, Path] = {"grpc_tls_cert_file": pki.interactions.cert,
                             "grpc_tls_key_file": pki.interactions.key} if own_pair else {}
    return client(grpc_tls_ca_file=pki.ca.cert_file, **pair)


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
async def test_interactions_registers_contacts_with_customers_over_tls(
        tls_customers: Running, mtls_customers: Running, pki: Pki, mutual: bool) -> None:
    customers = mtls_customers if mutual else tls_customers
    directory = CustomerDirectory(target(customers), DEV_TOKEN,
                                  settings=interactions_settings(pki))
    try:
        email = f"{uuid.uuid4().hex[:10]}@example.com"
        first = await directory.identify(email, "")
        assert await directory.identify(email, "") == first  # the same customer
        assert await directory.lookup([first]) == {first}
    finally:
        await directory.close()


async def test_interactions_without_a_certificate_cannot_reach_mutual_tls_customers(
        mtls_customers: Running, pki: Pki) -> None:
    directory = CustomerDirectory(target(mtls_customers), DEV_TOKEN,
                                  settings=interactions_settings(pki, own_pair=False))
    try:
        with pytest.raises(ConnectionError, match="UNAVAILABLE"):
            await directory.identify(f"{uuid.uuid4().hex[:10]}@example.com", "")
    finally:
        await directory.close()


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
async def test_the_health_probe_speaks_tls(tls_customers: Running, mtls_customers: Running,
                                           pki: Pki, mutual: bool) -> None:
    customers = mtls_customers if mutual else tls_customers
    at = f"localhost:{customers.runner.bound_grpc_port}"
    checked = await asyncio.to_thread(probe, interactions_settings(pki), service=None,
                                      target=at, timeout=10)
    assert checked == (0, f"{at}: SERVING")
    code, line = await asyncio.to_thread(probe, client(), service=None, target=at, timeout=10)
    assert code == 1 and "UNAVAILABLE" in line, line


# --- start-up errors --------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["serve", "customers"], ["health", "customers"]])
async def test_a_missing_certificate_stops_start_up_naming_variable_and_path(
        tmp_path: Path, pki: Pki, command: list[str]) -> None:
    missing = tmp_path / "nowhere" / "tls.crt"
    env = crm_env(tmp_path, DATABASE_URL="postgresql://crm@127.0.0.1:1/crm",
                  KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1",
                  CRM_GRPC_TLS_CERT_FILE=str(missing),
                  CRM_GRPC_TLS_KEY_FILE=str(pki.server.key))
    result = await run_crm(*command, env=env)
    assert result.returncode == 2, result
    assert f"CRM_GRPC_TLS_CERT_FILE={missing}: cannot read it" in result.stderr, result
    assert "Traceback" not in result.stderr, result


# --- crm up with mutual TLS -------------------------------------------------------------------


@pytest.mark.slow
async def test_crm_up_serves_mutual_tls_and_its_services_call_each_other_over_it(
        tmp_path: Path, pki: Pki, own_database: str) -> None:
    """The banner says mutual TLS; interactions registers an unknown contact
    with customers through it; plaintext is refused; ``crm health`` gets in."""
    grpc_base = free_port_block(len(SERVICES))
    metrics_base = free_port_block(len(SERVICES), frozenset(range(grpc_base, grpc_base + 3)))
    data_dir = tmp_path / "data"
    env = crm_env(data_dir, DATABASE_URL=own_database, CRM_GRPC_BASE_PORT=str(grpc_base),
                  CRM_METRICS_BASE_PORT=str(metrics_base),
                  CRM_GRPC_TLS_CERT_FILE=str(pki.server.cert),
                  CRM_GRPC_TLS_KEY_FILE=str(pki.server.key),
                  CRM_GRPC_TLS_CLIENT_CA_FILE=str(pki.ca.cert_file),
                  CRM_GRPC_TLS_CA_FILE=str(pki.ca.cert_file))
    job = await CrmUp.start(env, data_dir, tmp_path / "crm-up.log", "customers", "interactions")
    try:
        banner = await job.wait_ready(180)
        assert "  gRPC      mutual TLS, client certificates required" in banner.lines
        assert banner.dev_token
        settings = interactions_settings(pki)
        interactions = f"127.0.0.1:{grpc_base + 1}"
        async with open_channel(interactions, settings) as channel:
            reply = await interactions_pb2_grpc.InteractionsStub(channel).RecordInteraction(
                ipb.RecordInteractionRequest(
                    idempotency_key=str(uuid.uuid4()), channel="web", kind="inquiry",
                    contact_email=f"{uuid.uuid4().hex[:10]}@example.com"),
                metadata=[("authorization", f"Bearer {banner.dev_token}")], timeout=30)
        assert uuid.UUID(reply.customer_id)
        assert await refused(open_channel(f"127.0.0.1:{grpc_base}")) == \
            grpc.StatusCode.UNAVAILABLE
        checked = await run_crm("health", "customers", env=env)
        assert (checked.returncode, checked.stdout) == (0, f"localhost:{grpc_base}: SERVING\n")
        # A demo without the TLS variables is told what it lacks.
        demo = await run_crm("demo", "--stack", str(data_dir / "stack.json"),
                             env=crm_env(data_dir))
        assert demo.returncode == 2, demo
        assert "serves gRPC over mutual TLS; set the CRM_GRPC_TLS_*" in demo.stderr, demo
        assert await job.interrupt(45) == 0, job.output()
    finally:
        await job.kill()
