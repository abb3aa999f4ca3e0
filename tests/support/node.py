"""Node.js tools the contract tests use (see :mod:`bench.node`): a missing
Node.js or npm fails the test that needs it, naming what to install."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import node
from bench.node import GRPC_PACKAGES

__all__ = ["GRPC_PACKAGES", "ensure_packages", "node_binary"]


def ensure_packages(*specs: str) -> Path:
    try:
        return node.ensure_packages(*specs)
    except node.NodeMissing as exc:
        pytest.fail(str(exc))


def node_binary() -> str:
    try:
        return node.node_binary()
    except node.NodeMissing as exc:
        pytest.fail(str(exc))
