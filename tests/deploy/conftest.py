"""Fixtures of the deployment tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENSURE_PROMETHEUS = ROOT / "deploy" / "prometheus" / "ensure-prometheus.sh"


def _from_prometheus_package(tool: str) -> str:
    """Path of ``tool`` (promtool or prometheus), installing Debian's
    prometheus package when it is missing (deploy/prometheus/ensure-prometheus.sh).
    Fails, never skips, when it cannot be installed."""
    found = shutil.which(tool)
    if found is None:
        result = subprocess.run(["sh", str(ENSURE_PROMETHEUS)], capture_output=True, text=True,
                                stdin=subprocess.DEVNULL, timeout=900)
        if result.returncode != 0:
            pytest.fail(f"{tool} is needed and could not be installed by {ENSURE_PROMETHEUS}:\n"
                        f"{result.stdout}{result.stderr}", pytrace=False)
        found = shutil.which(tool)
    if found is None:
        pytest.fail(f"{tool} is not on PATH after {ENSURE_PROMETHEUS} ran: install Debian's "
                    "prometheus package (apt-get install -y prometheus), which ships both "
                    "promtool and the prometheus server", pytrace=False)
    return found


@pytest.fixture(scope="session")
def promtool() -> str:
    """Path of promtool (see :func:`_from_prometheus_package`)."""
    return _from_prometheus_package("promtool")


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    """Path of the prometheus server (see :func:`_from_prometheus_package`)."""
    return _from_prometheus_package("prometheus")


def run_promtool(promtool: str, *args: str, cwd: Path) -> str:
    result = subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True,
                            timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output
