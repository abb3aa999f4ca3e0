"""Node.js tools, installed from the npm registry on first use into
``.local/node`` (kept across runs, like the embedded database): the bench's
gRPC load generator and the contract tests' foreign clients use them."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NODE_DIR = ROOT / ".local" / "node"
#: The gRPC client packages (the reflection test and the load generator).
GRPC_PACKAGES = ("@grpc/grpc-js@1.14.7", "grpc-js-reflection-client@1.4.2")


class NodeMissing(RuntimeError):
    """Node.js or npm is not installed."""


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        raise NodeMissing("node is needed (Debian package nodejs)")
    return node


def ensure_packages(*specs: str) -> Path:
    """``npm install`` the ``name@version`` specs missing from .local/node;
    returns its node_modules folder."""
    modules = NODE_DIR / "node_modules"
    missing = [s for s in specs if not (modules / s.rsplit("@", 1)[0] / "package.json").exists()]
    if missing:
        npm = shutil.which("npm")
        if npm is None:
            raise NodeMissing("npm is needed to install " + ", ".join(missing)
                              + " (Debian package npm)")
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR),
                        *missing], check=True, stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=600)
    return modules


#: The gRPC load generator (see its header for the configuration it reads).
GRPC_LOAD = ROOT / "bench" / "node" / "grpc_load.cjs"


async def grpc_load(config: dict[str, Any]) -> dict[str, Any]:
    """Run the Node.js gRPC load generator with ``config``; returns, per phase,
    ``seconds``, ``latencies_ms`` (None for a call the server shed) and
    ``found``. Installs its packages on first use; raises RuntimeError with
    the generator's error when a call fails otherwise."""
    binary = node_binary()
    modules = await asyncio.to_thread(ensure_packages, *GRPC_PACKAGES)
    proc = await asyncio.create_subprocess_exec(
        binary, str(GRPC_LOAD), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NODE_PATH": str(modules)})
    out, err = await proc.communicate(json.dumps(config).encode())
    if proc.returncode != 0:
        raise RuntimeError(f"the Node.js load generator exited with {proc.returncode}: "
                           + err.decode(errors="replace")[-2000:])
    result: dict[str, Any] = json.loads(out)
    return result
