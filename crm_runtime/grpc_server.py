"""gRPC server bootstrap shared by every service.

:func:`build_server` returns a ``grpc.aio`` server carrying the service's own
servicers, the standard health and reflection services, and one interceptor
that (1) authenticates the caller's bearer token and checks the scope the
method declares in its proto (``option (crm.common.v1.required_scope)``),
(2) maps domain errors to status codes, and (3) records metrics. The port is
plaintext or TLS (mutual TLS too) as the credentials given say; health and
reflection are served the same way as the APIs.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor as _descriptor
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_status import rpc_status
from pydantic import ValidationError

from crm.common.v1 import options_pb2
from crm_runtime import limits, logs, metrics
from crm_runtime.db import is_transient
from crm_runtime.errors import (
    AlreadyExists,
    Conflict,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from crm_runtime.settings import ApiToken

log = logging.getLogger(__name__)

#: Open to any caller: orchestrators probe health, tools discover the API.
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


@dataclass(frozen=True)
class ServiceRegistration:
    """One gRPC service to serve: the generated ``add_*_to_server`` function,
    the servicer instance, and the service descriptor from the ``_pb2`` module."""

    add: Callable[[Any, grpc.aio.Server], None]
    servicer: Any
    descriptor: _descriptor.ServiceDescriptor


def required_scopes(descriptors: Iterable[_descriptor.ServiceDescriptor]) -> dict[str, str]:
    """Full method name -> scope, read from the proto method options."""
    scopes: dict[str, str] = {}
    for service in descriptors:
        for method in service.methods:
            scope = method.GetOptions().Extensions[options_pb2.required_scope]
            if scope:
                scopes[f"/{service.full_name}/{method.name}"] = scope
    return scopes


def scope_granted(granted: Iterable[str], needed: str) -> bool:
    area = needed.split(":", 1)[0]
    return any(g in ("*", needed, f"{area}:*") for g in granted)


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ApiInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authentication, scope checks, error mapping and metrics for every call."""

    def __init__(self, *, service: str, tokens: Mapping[str, ApiToken],
                 scopes: Mapping[str, str]) -> None:
        self._service = service
        self._tokens = dict(tokens)
        self._scopes = dict(scopes)
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(PUBLIC_PREFIXES):
            return handler
        if handler.unary_unary is not None:
            inner = handler.unary_unary
            decode = handler.request_deserializer

            async def unary_unary(body: bytes, context: grpc.aio.ServicerContext) -> Any:
                metadata = dict(context.invocation_metadata() or ())
                return await self._call(method, metadata, context, inner, decode, body)

            # No request_deserializer: grpc hands over the raw body, which is
            # decoded only after the caller is authenticated.
            wrapped = grpc.unary_unary_rpc_method_handler(
                unary_unary, response_serializer=handler.response_serializer)
        else:
            # Streaming methods are not part of the CRM contracts; refuse rather
            # than serve them unauthenticated.
            wrapped = _refusing_handler(handler, method)
        self._wrapped[method] = wrapped  # built once per method, not per call
        return wrapped

    def _authorise(self, method: str, metadata: Mapping[str, Any]) -> ApiToken:
        header = str(metadata.get("authorization", ""))
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise _Refused(grpc.StatusCode.UNAUTHENTICATED,
                           "missing 'authorization: Bearer <token>' metadata")
        caller = self._tokens.get(hashlib.sha256(token.strip().encode()).hexdigest())
        if caller is None:
            raise _Refused(grpc.StatusCode.UNAUTHENTICATED, "unknown bearer token")
        needed = self._scopes.get(method)
        if needed is None:
            raise _Refused(grpc.StatusCode.PERMISSION_DENIED, f"{method} declares no scope")
        if not scope_granted(caller.scopes, needed):
            raise _Refused(grpc.StatusCode.PERMISSION_DENIED,
                           f"token of {caller.system!r} lacks scope {needed!r}")
        return caller

    async def _call(self, method: str, metadata: Mapping[str, Any],
                    context: grpc.aio.ServicerContext,
                    inner: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
                    decode: Callable[[bytes], Any], body: bytes) -> Any:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            self._authorise(method, metadata)
            request = _decode(decode, body)
            bad = limits.violations(request)
            if bad:
                raise _Invalid(bad)
            with logs.context(traceparent=str(metadata.get("traceparent", "")),
                              span=method.lstrip("/"), kind="server"):
                return await inner(request, context)
        except _Refused as refused:
            code = refused.code
            log.info("%s refused: %s %s", method, code.name, refused.message)
            await context.abort(refused.code, refused.message)
        except (_Invalid, InvalidArgument, ValidationError) as exc:
            code = grpc.StatusCode.INVALID_ARGUMENT
            status = _bad_request(_violations(exc))
            log.info("%s refused: INVALID_ARGUMENT %s", method, status.message)
            await context.abort_with_status(rpc_status.to_status(status))
        except DomainError as exc:
            code = _CODES.get(type(exc), grpc.StatusCode.FAILED_PRECONDITION)
            for cls, mapped in _CODES.items():
                if isinstance(exc, cls):
                    code = mapped
            await context.abort(code, _bounded(str(exc), MAX_MESSAGE))
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED  # the caller gave up or its deadline passed
            raise
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                code = context.code() or grpc.StatusCode.UNKNOWN  # servicer aborted itself
                raise
            if is_transient(exc):
                # A dependency is away (database, another service): retrying may work.
                code = grpc.StatusCode.UNAVAILABLE
                log.warning("%s: unavailable (%s: %s)", method, type(exc).__name__, exc)
                await context.abort(code, f"temporarily unavailable ({type(exc).__name__}); "
                                          "retry with backoff")
            code = grpc.StatusCode.INTERNAL
            log.exception("unhandled error in %s", method)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the service log")
        finally:
            name = method.rsplit("/", 1)[-1]
            metrics.GRPC_REQUESTS.labels(self._service, name, code.name).inc()
            metrics.GRPC_SECONDS.labels(self._service, name).observe(
                time.perf_counter() - started)


class _Invalid(Exception):
    """A request outside its fields' limits (:mod:`crm_runtime.limits`)."""

    def __init__(self, violations: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{f}: {p}" for f, p in violations))
        self.violations = violations


def _decode(decode: Callable[[bytes], Any], body: bytes) -> Any:
    """The request message of ``body``; a body that is not one is the caller's
    error (INVALID_ARGUMENT), not the server's."""
    try:
        return decode(body)
    except Exception as exc:  # protobuf raises DecodeError, or ValueError on bad UTF-8
        raise _Invalid([("request", f"the body is not a valid request message "
                                    f"({type(exc).__name__}: {_bounded(str(exc), 100)})")]
                       ) from None


def _violations(exc: Exception) -> list[tuple[str, str]]:
    if isinstance(exc, _Invalid):
        return exc.violations
    if isinstance(exc, InvalidArgument):
        return [(exc.field, exc.problem)]
    assert isinstance(exc, ValidationError)
    return [(".".join(str(p) for p in e["loc"]) or "request", e["msg"]) for e in exc.errors()]


#: Bounds of what an error carries back, far below grpcio's 16 KiB metadata
#: limit (a longer trailer would reach the caller as RESOURCE_EXHAUSTED).
MAX_MESSAGE = 1000
MAX_VIOLATIONS = 20
MAX_DESCRIPTION = 300


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


_CODES: dict[type[DomainError], grpc.StatusCode] = {
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Conflict: grpc.StatusCode.ABORTED,
}


def _bad_request(violations: list[tuple[str, str]]) -> status_pb2.Status:
    """A ``google.rpc.Status`` with ``BadRequest`` field violations, which
    clients in any language can read; the message names every field too.
    Bounded: at most :data:`MAX_VIOLATIONS` violations, each description at
    most :data:`MAX_DESCRIPTION` characters, whatever the caller sent."""
    shown = [(_bounded(f, 200), _bounded(d, MAX_DESCRIPTION))
             for f, d in violations[:MAX_VIOLATIONS]]
    if len(violations) > MAX_VIOLATIONS:
        shown.append(("request", f"{len(violations) - MAX_VIOLATIONS} more violations"))
    detail = error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in shown
    ])
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=_bounded(
        "; ".join(f"{f}: {d}" for f, d in shown), MAX_MESSAGE))
    status.details.add().Pack(detail)
    return status


def _refusing_handler(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not served")

    return grpc.unary_unary_rpc_method_handler(
        refuse, response_serializer=handler.response_serializer)


class HealthServicer(health.aio.HealthServicer):  # type: ignore[misc]
    """The standard health service with ``List`` answered: the reference
    servicer leaves it UNIMPLEMENTED although reflection advertises it."""

    async def List(self, request: health_pb2.HealthListRequest,
                   context: grpc.aio.ServicerContext) -> health_pb2.HealthListResponse:
        return health_pb2.HealthListResponse(statuses={
            name: health_pb2.HealthCheckResponse(status=status)
            for name, status in self._server_status.items()})


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def _serve_reflection(server: grpc.aio.Server, names: list[str]) -> None:
    """Server reflection under both ``grpc.reflection.v1`` (what current
    clients ask for first) and ``v1alpha`` (older clients). grpcio-reflection
    only ships v1alpha; the two protocols are the same messages with the same
    field numbers, so one servicer answers both."""
    servicer = reflection.aio.ReflectionServicer(
        [*names, reflection.SERVICE_NAME, REFLECTION_V1])
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)
    for service in (reflection.SERVICE_NAME, REFLECTION_V1):
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(service, {"ServerReflectionInfo": handler})])


def build_server(*, service: str, registrations: list[ServiceRegistration],
                 tokens: Mapping[str, ApiToken], address: str,
                 credentials: grpc.ServerCredentials | None = None,
                 ) -> tuple[grpc.aio.Server, health.aio.HealthServicer, int]:
    """A server with the service's APIs, health and reflection, bound to
    ``address`` (TLS with ``credentials``, see :func:`crm_runtime.tls.server_credentials`;
    plaintext without); returns the server, its health servicer and the bound port."""
    interceptor = ApiInterceptor(service=service, tokens=tokens,
                                 scopes=required_scopes(r.descriptor for r in registrations))
    server = grpc.aio.server(interceptors=[interceptor])
    for reg in registrations:
        reg.add(reg.servicer, server)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [r.descriptor.full_name for r in registrations]
    _serve_reflection(server, [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name])
    try:
        port = (server.add_insecure_port(address) if credentials is None
                else server.add_secure_port(address, credentials))
    except RuntimeError:  # grpcio's "Failed to bind"; its log line says why
        port = 0
    if port == 0:
        raise OSError(f"cannot bind gRPC server to {address}")
    return server, health_servicer, port


async def set_serving(health_servicer: health.aio.HealthServicer, names: Iterable[str],
                      serving: bool) -> None:
    status = (health_pb2.HealthCheckResponse.SERVING if serving
              else health_pb2.HealthCheckResponse.NOT_SERVING)
    for name in ["", *names]:
        await health_servicer.set(name, status)
