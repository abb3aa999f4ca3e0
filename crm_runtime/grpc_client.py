"""Channels from one service of the product to another (interactions to
customers, customers to interactions and loyalty), and from the ``crm``
tools to the services: one place decides how a process reaches a service,
so every client follows the same transport settings (TLS when configured,
see :mod:`crm_runtime.tls`; plaintext otherwise), and reads a failed call
the same way (:func:`failure`)."""

from __future__ import annotations

import grpc

from crm_runtime import tls
from crm_runtime.settings import Settings


def open_channel(target: str, settings: Settings | None = None) -> grpc.aio.Channel:
    """An asyncio channel to ``target`` (host:port): secure when ``settings``
    configure TLS, plaintext without settings or TLS settings."""
    if settings is None or (credentials := tls.channel_credentials(settings)) is None:
        return grpc.aio.insecure_channel(target)
    return grpc.aio.secure_channel(target, credentials, options=tls.channel_options(settings))


def open_blocking_channel(target: str, settings: Settings | None = None) -> grpc.Channel:
    """The same as :func:`open_channel`, for synchronous callers."""
    if settings is None or (credentials := tls.channel_credentials(settings)) is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, credentials, options=tls.channel_options(settings))


def failure(what: str, err: grpc.aio.AioRpcError) -> Exception:
    """What a failed call to another service means to its caller: the
    request refused as bad (``INVALID_ARGUMENT``) is a ``RuntimeError``,
    retrying cannot help; anything else (unavailable, deadline, a token
    without the scope, an older release without the method) a
    ``ConnectionError``: ask again later rather than go on unchecked."""
    if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
        return RuntimeError(f"{what} refused the request: {err.details()}")
    return ConnectionError(f"{what}: {err.code().name} {err.details()}")
