"""``crm health``: one gRPC health check of a service, for container probes
and operators. Exit code 0 when the service answers ``SERVING``, 1 when it
answers anything else or cannot be reached, 2 for a bad setting or argument.

It connects the way the services connect to each other: TLS when the
``CRM_GRPC_TLS_*`` settings say so (:func:`crm_runtime.grpc_client.open_blocking_channel`),
by default to ``localhost`` at the service's port, so under TLS the
service's certificate must name ``localhost`` (or set
``CRM_GRPC_TLS_SERVER_NAME``). Kept light (no Typer, no Kafka client)
because an orchestrator runs it every few seconds:
``python -m crm_app.health customers``.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from crm_runtime.grpc_client import open_blocking_channel
from crm_runtime.settings import SERVICES, Settings, SettingsError, load_settings


def status(target: str, settings: Settings, *, service: str = "",
           timeout: float = 3.0) -> str:
    """The health status ``target`` answers for ``service`` (empty: the
    server as a whole), e.g. ``SERVING``; raises grpc.RpcError when it does
    not answer."""
    with open_blocking_channel(target, settings) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return name


def local_target(settings: Settings, service: str) -> str:
    """``localhost`` at the service's gRPC port."""
    return f"localhost:{settings.grpc_port(service)}"


def probe(settings: Settings, *, service: str | None, target: str | None,
          timeout: float) -> tuple[int, str]:
    """Exit code and the line to print for one check."""
    if target is None:
        if service is None:
            return 2, "health: give a service (customers, interactions, loyalty) or --target"
        target = local_target(settings, service)
    try:
        answer = status(target, settings, timeout=timeout)
    except SettingsError as exc:
        return 2, str(exc)
    except grpc.RpcError as exc:
        code = exc.code().name if isinstance(exc, grpc.Call) else "UNAVAILABLE"
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        return 1, f"{target}: {code} {details}"
    return (0 if answer == "SERVING" else 1), f"{target}: {answer}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="crm health", description="One gRPC health check; exit code 0 when SERVING.")
    parser.add_argument("service", nargs="?", choices=SERVICES,
                        help="check localhost at this service's port")
    parser.add_argument("--target", help="host:port to check instead")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    code, line = probe(settings, service=args.service, target=args.target,
                       timeout=args.timeout)
    print(line, file=sys.stdout if code == 0 else sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
