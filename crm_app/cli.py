"""The ``crm`` command: run the stack, one service, migrations and topics."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Annotated

import grpc
import typer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from crm_contracts import topics as topic_names
from crm_runtime import logs, tls
from crm_runtime.consumer import dlq_topic
from crm_runtime.grpc_client import open_blocking_channel
from crm_runtime.service import ServiceRunner, ServiceSpec, migrate_service, open_pool, run_forever
from crm_runtime.settings import SERVICES, Settings, SettingsError, env_name, load_settings
from crm_runtime.stack import (
    EMBEDDED_BROKER_SETTINGS,
    Infrastructure,
    child_env,
    infrastructure,
    port_problem,
)
from crm_runtime.version import VERSION

app = typer.Typer(help="Event-driven CRM: customers, interactions and loyalty services.",
                  no_args_is_help=True, add_completion=False)
log = logging.getLogger("crm")


def _settings() -> Settings:
    try:
        settings = load_settings()
    except SettingsError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    logs.configure(settings.log_level, settings.log_format)
    return settings


def _check_tls(settings: Settings) -> None:
    """Exit naming the TLS variable and file that cannot be used, before
    anything starts."""
    try:
        tls.check(settings)
    except SettingsError as exc:
        typer.echo(f"invalid settings:\n  {exc}", err=True)
        raise typer.Exit(2) from None


def available_services() -> dict[str, ServiceSpec]:
    """Every service under ``services/`` that has an ``app.SPEC``."""
    found: dict[str, ServiceSpec] = {}
    for name in SERVICES:
        try:
            module = importlib.import_module(f"services.{name}.app")
        except ModuleNotFoundError as exc:
            if exc.name not in (f"services.{name}", f"services.{name}.app"):
                raise
            continue
        found[name] = module.SPEC
    return found


def _require(settings: Settings, *names: str) -> None:
    values = {"DATABASE_URL": settings.database_url,
              "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers}
    for name in names:
        if not values[name]:
            typer.echo(f"{name}: not set; expected {_EXPECTED[name]} "
                       "(or run `crm up`, which starts embedded servers)", err=True)
            raise typer.Exit(2)


_EXPECTED = {"DATABASE_URL": "postgresql://user@host:port/database",
             "KAFKA_BOOTSTRAP_SERVERS": "host:port[,host:port]"}


@app.command()
def health(service: Annotated[str | None, typer.Argument(
               help="customers, interactions or loyalty: localhost at its port")] = None,
           target: Annotated[str | None, typer.Option(help="host:port to check instead")] = None,
           timeout: Annotated[float, typer.Option(help="seconds")] = 3.0) -> None:
    """One gRPC health check (TLS as configured); exit code 0 when SERVING."""
    from crm_app.health import probe

    settings = _settings()
    if service is not None and service not in SERVICES:
        typer.echo(f"service: unknown {service!r}; expected one of {', '.join(SERVICES)}",
                   err=True)
        raise typer.Exit(2)
    code, line = probe(settings, service=service, target=target, timeout=timeout)
    typer.echo(line, err=code != 0)
    raise typer.Exit(code)


@app.command()
def version() -> None:
    """Print the product version."""
    typer.echo(VERSION)


@app.command()
def serve(service: Annotated[str, typer.Argument(help="customers, interactions or loyalty")]
          ) -> None:
    """Run one service against the configured database and broker."""
    settings = _settings()
    specs = available_services()
    if service not in specs:
        typer.echo(f"service: unknown {service!r}; expected one of "
                   f"{', '.join(specs) or '(no service exists yet under services/)'}", err=True)
        raise typer.Exit(2)
    _require(settings, "DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS")
    _check_tls(settings)
    run_forever(ServiceRunner(specs[service], settings))


async def _migrate_all(settings: Settings, specs: dict[str, ServiceSpec]) -> None:
    for spec in specs.values():
        pool = await open_pool(settings, spec.schema)
        try:
            applied = await migrate_service(pool, spec)
            typer.echo(f"{spec.name}: {len(applied)} migration(s) applied")
        finally:
            await pool.close()


@app.command()
def migrate() -> None:
    """Apply every service's migrations (embedded PostgreSQL when unset)."""
    settings = _settings()
    with infrastructure(settings.database_url, None, settings.data_dir,
                        with_broker=False) as infra:
        settings = settings.model_copy(update={"database_url": infra.database_url})
        asyncio.run(_migrate_all(settings, available_services()))


async def create_topics(settings: Settings) -> list[str]:
    """Create every product topic and its dead-letter topic; returns the new ones."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [t for base in topic_names.ALL for t in (base, dlq_topic(base))]
        new = [NewTopic(t, num_partitions=settings.partitions_for(t),
                        replication_factor=settings.topic_replication_factor)
               for t in wanted if t not in existing]
        if not new:
            return []
        response = await admin.create_topics(new)
        # aiokafka returns per-topic errors instead of raising them.
        refused = [f"{name}: error {code} {message or ''}".strip()
                   for name, code, message in response.topic_errors if code != 0]
        if refused:
            raise RuntimeError("the broker refused to create topics: " + "; ".join(refused))
        return [t.name for t in new]
    finally:
        await admin.close()


@app.command()
def topics() -> None:
    """Create the topics (partition counts from CRM_TOPIC_PARTITIONS and overrides)."""
    settings = _settings()
    _require(settings, "KAFKA_BOOTSTRAP_SERVERS")
    try:
        created = asyncio.run(create_topics(settings))
    except (KafkaError, RuntimeError) as exc:
        typer.echo(f"topics: cannot create topics on {settings.kafka_bootstrap_servers}: {exc}",
                   err=True)
        raise typer.Exit(1) from None
    typer.echo(f"created {len(created)} topic(s): {', '.join(created) or 'none missing'}")


dlq_app = typer.Typer(help="Dead-letter topics.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")


@dlq_app.command("replay")
def dlq_replay(topic: Annotated[str, typer.Argument(help="e.g. crm.interactions.ingest.v1")],
               limit: Annotated[int | None, typer.Option(min=1, help="at most this many")] = None
               ) -> None:
    """Republish dead letters of TOPIC (from TOPIC.dlq) for processing again
    (their sealed values opened with the keys in DATABASE_URL)."""
    from crm_runtime.dlq import SealedWithoutDatabase, replay

    settings = _settings()
    _require(settings, "KAFKA_BOOTSTRAP_SERVERS")
    if topic not in topic_names.ALL:
        typer.echo(f"topic: unknown {topic!r}; expected one of {list(topic_names.ALL)}",
                   err=True)
        raise typer.Exit(2)
    assert settings.kafka_bootstrap_servers
    try:
        result = asyncio.run(replay(settings.kafka_bootstrap_servers, topic, limit=limit,
                                    database_url=settings.database_url))
    except SealedWithoutDatabase as exc:
        typer.echo(f"DATABASE_URL: {exc}", err=True)
        raise typer.Exit(2) from None
    by_reason = ", ".join(f"{k}: {v}" for k, v in sorted(result.reasons.items())) or "none"
    typer.echo(f"replayed {result.replayed} record(s) from {dlq_topic(topic)} to {topic} "
               f"({by_reason})")


@app.command()
def demo(stack: Annotated[Path | None, typer.Option(
        help="stack description written by `crm up` (default <data dir>/stack.json)")] = None,
         ) -> None:
    """Play one customer's story against the running stack (`make run` first)."""
    from crm_app.demo import Demo, DemoFailed, load_targets

    settings = _settings()
    path = stack or settings.data_dir / "stack.json"
    if not path.exists():
        typer.echo(f"stack: {path} not found; start the stack with `make run` first", err=True)
        raise typer.Exit(2)
    _check_tls(settings)
    targets = load_targets(str(path))
    if targets.grpc_tls != "plaintext" and not tls.client_enabled(settings):
        typer.echo(f"demo: the stack serves gRPC over {targets.grpc_tls}; set the "
                   "CRM_GRPC_TLS_* variables `crm up` was given", err=True)
        raise typer.Exit(2)
    try:
        asyncio.run(Demo(targets, out=typer.echo, settings=settings).run())
    except DemoFailed as exc:
        typer.echo(f"demo failed: {exc}", err=True)
        raise typer.Exit(1) from None
    except grpc.aio.AioRpcError as exc:
        typer.echo(f"demo failed: {exc.code().name}: {exc.details()}", err=True)
        raise typer.Exit(1) from None


def _dev_token(settings: Settings) -> str | None:
    """A stable local token with every scope when no token is configured."""
    if settings.api_tokens or settings.dev_token:
        return settings.dev_token
    path = settings.data_dir / "dev-token"
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


@app.command()
def up(services: Annotated[list[str] | None, typer.Argument(help="default: all")] = None,
       play_demo: Annotated[bool, typer.Option(
           "--demo", help="play `crm demo` once the services are up")] = False) -> None:
    """Start the infrastructure (embedded where unset) and every service; Ctrl-C stops all."""
    settings = _settings()
    specs = available_services()
    chosen = services or list(specs)
    unknown = [s for s in chosen if s not in specs]
    if unknown:
        typer.echo(f"services: unknown {unknown}; expected some of {list(specs)}", err=True)
        raise typer.Exit(2)
    _check_ports(settings, chosen)  # before anything starts
    _check_tls(settings)
    # One line per migration is detail for `crm migrate`; `up` prints a sum.
    logging.getLogger("crm_runtime.migrations").setLevel(logging.WARNING)
    token = _dev_token(settings)
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        with infrastructure(settings.database_url, settings.kafka_bootstrap_servers,
                            settings.data_dir) as infra:
            code = _run_stack(settings, specs, chosen, infra, token, children, play_demo)
    except KeyboardInterrupt:  # Ctrl-C before the stack was up
        _stop_children(children, settings.shutdown_grace_s)
        typer.echo("stopped")
        raise typer.Exit(130) from None
    if code:
        raise typer.Exit(code)


def _run_stack(settings: Settings, specs: dict[str, ServiceSpec], chosen: list[str],
               infra: Infrastructure, token: str | None,
               children: dict[str, subprocess.Popen[bytes]], play_demo: bool) -> int:
    """Migrate, create the topics, start the services (into ``children``),
    print the banner once they all serve, then supervise them; the exit code."""
    settings = settings.model_copy(update={"database_url": infra.database_url,
                                           "kafka_bootstrap_servers":
                                               infra.kafka_bootstrap_servers})
    asyncio.run(_migrate_all(settings, {n: specs[n] for n in chosen}))
    asyncio.run(create_topics(settings))
    extra = {"CRM_DEV_TOKEN": token} if token else {}
    broker_note = ""
    if not settings_given("KAFKA_BOOTSTRAP_SERVERS"):
        broker_note = " (embedded Tansu, in memory)"
        extra |= {k: v for k, v in EMBEDDED_BROKER_ENV.items() if k not in os.environ}
    if not settings_given("DATABASE_URL") and not settings_given("KAFKA_BOOTSTRAP_SERVERS"):
        # The all-embedded stack is a development stack: the demo moves its clock.
        extra.setdefault("CRM_DEV_CLOCK_CONTROL", os.environ.get("CRM_DEV_CLOCK_CONTROL",
                                                                 "true"))
    env = child_env(infra, extra)
    grpc_at = {n: f"{settings.grpc_host}:{settings.grpc_port(n)}" for n in chosen}
    metrics_at = {n: f"http://{settings.grpc_host}:{settings.metrics_port(n)}/metrics"
                  for n in chosen}
    if chosen:
        typer.echo(f"starting {', '.join(chosen)} ...")
    for name in chosen:
        children[name] = subprocess.Popen([sys.executable, "-m", "crm_app", "serve", name],
                                          env=env)
    failed = _wait_until_ready({n: (grpc_at[n], metrics_at[n]) for n in chosen}, children,
                               settings)
    if failed:
        name, problem = failed
        typer.echo(f"crm up: {name} {problem}; its log is above. Stopping.", err=True)
        _stop_children(children, settings.shutdown_grace_s)
        typer.echo("stopped")
        return 1
    typer.echo("")
    typer.echo(f"CRM {VERSION} is up")
    typer.echo(f"  broker    {infra.kafka_bootstrap_servers}{broker_note}")
    typer.echo(f"  database  {infra.database_url}")
    typer.echo(f"  gRPC      {tls.summary(settings)}")
    for name in chosen:
        typer.echo(f"  {name:<12} gRPC {grpc_at[name]}  metrics {metrics_at[name]}")
    if token:
        typer.echo(f"  dev token  {token}   (metadata 'authorization: Bearer <token>')")
    if not chosen:
        typer.echo("  no services exist yet under services/")
    typer.echo("Ctrl-C stops everything.")
    info = settings.data_dir / "stack.json"
    info.write_text(json.dumps({
        "broker": infra.kafka_bootstrap_servers, "token": token or "",
        "grpc": grpc_at, "metrics": metrics_at, "grpc_tls": tls.mode(settings)}, indent=2))
    if play_demo:
        children["demo"] = subprocess.Popen(
            [sys.executable, "-m", "crm_app", "demo", "--stack", str(info)], env=env)
    try:
        return _supervise(children, settings.shutdown_grace_s)
    finally:
        info.unlink(missing_ok=True)


#: The variable that moves each kind of port ``crm up`` listens on.
_PORT_SETTINGS = {"gRPC": "CRM_GRPC_BASE_PORT", "metrics": "CRM_METRICS_BASE_PORT"}


def _check_ports(settings: Settings, chosen: list[str]) -> None:
    """Exit with one line naming each port ``crm up`` would listen on that is
    taken (or planned twice), before anything starts."""
    planned: dict[int, list[tuple[str, str]]] = {}
    for name in chosen:
        planned.setdefault(settings.grpc_port(name), []).append((name, "gRPC"))
        planned.setdefault(settings.metrics_port(name), []).append((name, "metrics"))
    problems: list[str] = []
    variables: set[str] = set()
    clash = False
    for port, users in sorted(planned.items()):
        uses = " and ".join(f"{name} {kind}" for name, kind in users)
        if len(users) > 1:
            problems.append(f"port {port} is planned for both {uses}")
            clash = True
        elif why := port_problem(settings.grpc_host, port):
            problems.append(f"port {port} ({uses}) {why}")
        else:
            continue
        variables |= {_PORT_SETTINGS[kind] for _, kind in users}
    if problems:
        free = "" if clash else f"free {'it' if len(problems) == 1 else 'them'} or "
        now = {"CRM_GRPC_BASE_PORT": settings.grpc_base_port,
               "CRM_METRICS_BASE_PORT": settings.metrics_base_port}
        moves = " or ".join(f"{v} (now {now[v]})" for v in sorted(variables))
        typer.echo(f"crm up: {'; '.join(problems)}; {free}set {moves} "
                   "to another base port", err=True)
        raise typer.Exit(1)


def _wait_until_ready(targets: dict[str, tuple[str, str]],
                      children: dict[str, subprocess.Popen[bytes]], settings: Settings,
                      timeout: float = 120.0) -> tuple[str, str] | None:
    """Block until every service (gRPC address, metrics URL) answers its gRPC
    health check with SERVING and serves its metrics: None then, else the
    first service that exited or did not make it in time, and what happened."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    channels = {name: open_blocking_channel(grpc_at, settings)
                for name, (grpc_at, _) in targets.items()}
    pending, serving = set(targets), set()
    try:
        while pending:
            for name in sorted(pending):
                code = children[name].poll()
                if code is not None:
                    return name, f"{_exit_text(code)} while starting"
                if name not in serving:
                    try:
                        reply = health_pb2_grpc.HealthStub(channels[name]).Check(
                            health_pb2.HealthCheckRequest(), timeout=1)
                    except grpc.RpcError:
                        continue
                    if reply.status != health_pb2.HealthCheckResponse.SERVING:
                        continue
                    serving.add(name)
                if _answers(targets[name][1]):
                    pending.discard(name)
            if pending and time.monotonic() > deadline:
                name = min(pending)
                what = "metrics" if name in serving else "gRPC health check"
                return name, f"did not answer its {what} within {timeout:.0f} s"
            if pending:
                time.sleep(0.2)
    finally:
        for channel in channels.values():
            channel.close()
    return None


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


#: ``EMBEDDED_BROKER_SETTINGS`` as the services' environment variables.
EMBEDDED_BROKER_ENV = {env_name(k): str(v) for k, v in EMBEDDED_BROKER_SETTINGS.items()}


def settings_given(name: str) -> bool:
    return bool(os.environ.get(name) or os.environ.get(f"CRM_{name}"))


def _supervise(children: dict[str, subprocess.Popen[bytes]], grace: float) -> int:
    """Wait for Ctrl-C or a service dying, then stop all; returns the exit
    code: 0 after Ctrl-C, 1 when a service died on its own."""
    stopping = False
    crashed = False

    def ask_stop(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, ask_stop)
    signal.signal(signal.SIGTERM, ask_stop)
    try:
        while not stopping:
            for name, child in list(children.items()):
                if child.poll() is None:
                    continue
                if name == "demo":  # the demo ends; the stack keeps running
                    typer.echo(f"demo finished (exit code {child.returncode}); "
                               "the stack keeps running, Ctrl-C stops it")
                    del children[name]
                    continue
                typer.echo(f"{name} exited with {child.returncode}; stopping", err=True)
                stopping = crashed = True
            time.sleep(0.2)
    finally:
        _stop_children(children, grace)
        typer.echo("stopped")
    return 1 if crashed else 0


def _stop_children(children: dict[str, subprocess.Popen[bytes]], grace: float) -> None:
    """SIGTERM every child still running, wait up to ``grace`` + 5 s, then kill."""
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace + 5
    for child in children.values():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
