"""The benchmark's CPU figure: CPU seconds of the service's processes, from /proc."""

from __future__ import annotations

import os
import sys
import time
from types import SimpleNamespace

import pytest

from bench.service import ServiceProcesses, cpu_figure
from crm_runtime.settings import Settings
from services.interactions.app import SPEC

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_cpu_seconds_count_the_work_of_the_processes() -> None:
    service = ServiceProcesses(SPEC, Settings())
    service._procs = [SimpleNamespace(pid=os.getpid())]  # type: ignore[list-item]
    before = service.cpu_seconds()
    assert before is not None
    spin_until = time.process_time() + 0.2
    while time.process_time() < spin_until:
        pass
    after = service.cpu_seconds()
    assert after is not None and after - before >= 0.1

    service.work_cpu_s = 0.5
    figures: dict[str, float] = {}
    cpu_figure(figures, service, 1000)
    assert figures == {"product CPU per event (µs, the interactions process(es))": 500.0}


def test_no_figure_without_proc() -> None:
    service = ServiceProcesses(SPEC, Settings())
    service._procs = [SimpleNamespace(pid=2**22 + 1)]  # type: ignore[list-item]
    assert service.cpu_seconds() is None
    figures: dict[str, float] = {}
    cpu_figure(figures, service, 1000)
    assert figures == {}
