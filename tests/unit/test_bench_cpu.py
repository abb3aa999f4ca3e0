"""The benchmark's CPU figure: CPU seconds of the service's processes, from /proc."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.service import ServiceProcesses, cpu_figure, cpu_figures, process_cpu_seconds
from bench.workloads.loyalty_latency import _spent
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


def test_the_sum_only_when_every_part_was_measured() -> None:
    service = ServiceProcesses(SPEC, Settings())
    service.work_cpu_s, service.work_db_cpu_s, service.work_broker_cpu_s = 0.5, 0.25, 0.125
    figures: dict[str, float] = {}
    cpu_figure(figures, service, 1000, "runtime floor")
    assert figures == {
        "runtime floor CPU per event (µs, the interactions process(es))": 500.0,
        "runtime floor CPU per event (µs, the database's backends)": 250.0,
        "runtime floor CPU per event (µs, the broker)": 125.0,
        "runtime floor CPU per event (µs, all of the above)": 875.0}
    figures = {}
    cpu_figures(figures, "baseline", 1000, {"the bench process": 0.5, "the broker": None})
    assert figures == {"baseline CPU per event (µs, the bench process)": 500.0}


def test_no_figure_without_proc() -> None:
    service = ServiceProcesses(SPEC, Settings())
    service._procs = [SimpleNamespace(pid=2**22 + 1)]  # type: ignore[list-item]
    assert service.cpu_seconds() is None
    figures: dict[str, float] = {}
    cpu_figure(figures, service, 1000)
    assert figures == {}


def test_a_process_counts_only_under_its_own_name() -> None:
    # A database on another machine has backend ids that mean nothing here:
    # a process of that id on this machine is not counted as one.
    assert process_cpu_seconds(os.getpid()) is not None
    assert process_cpu_seconds(os.getpid(), named="postgres") is None
    own = Path(f"/proc/{os.getpid()}/cmdline").read_bytes().split(b"\0")[0].decode()
    assert process_cpu_seconds(os.getpid(), named=own) is not None
    assert process_cpu_seconds(2**22 + 1) is None


def test_spent_counts_processes_started_in_between_from_zero() -> None:
    before = {"db": {10: 1.0, 11: 2.0}, "broker": {0: 5.0}}
    after = {"db": {10: 1.5, 12: 0.25}, "broker": {0: 6.0}, "new part": {0: 0.5}}
    assert _spent(before, after) == {"db": 0.75, "broker": 1.0, "new part": 0.5}
