"""Node.js tools the contract tests use, installed from the npm registry on
first use into .local/node (kept across runs, like the embedded database)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / ".local" / "node"


def ensure_packages(*specs: str) -> Path:
    """``npm install`` the ``name@version`` specs missing from .local/node;
    returns its node_modules folder."""
    modules = NODE_DIR / "node_modules"
    missing = [s for s in specs if not (modules / s.rsplit("@", 1)[0] / "package.json").exists()]
    if missing:
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is needed to install " + ", ".join(missing) + " (Debian package npm)")
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR),
                        *missing], check=True, stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=600)
    return modules
