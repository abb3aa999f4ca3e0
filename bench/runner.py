"""Runs workloads: an optional untimed warm-up round, then ``repeat`` timed
rounds. Each round is one fresh workload instance doing set-up, the baseline
and the product path (their order alternates between rounds, so neither
always runs on a warmer or fuller system), the check, and the tear-down.

The ratio of a row is product seconds / baseline seconds of the same round
(of the baseline's phase of the same name when the baseline times phases);
with several rounds each figure is the median over the rounds.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from dataclasses import dataclass, field

from bench.context import BenchContext
from bench.registry import Phases, Workload

#: Events of the untimed warm-up round (capped at the run's own count).
WARM_UP_EVENTS = 500


@dataclass(frozen=True)
class Round:
    #: Baseline seconds in total.
    baseline: float
    phases: Phases
    excluded: dict[str, float]
    #: Baseline seconds per phase, when the baseline timed phases.
    baseline_phases: Phases = field(default_factory=dict)
    #: Events per phase where it differs from the run's count.
    counts: dict[str, int] = field(default_factory=dict)
    #: The workload's other figures (:attr:`Workload.figures`).
    figures: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    label: str
    events: int
    seconds: float
    baseline_seconds: float
    ratio: float
    #: The ratio of every round, in order.
    ratios: tuple[float, ...] = ()

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")

    @property
    def baseline_rate(self) -> float:
        return self.events / self.baseline_seconds if self.baseline_seconds > 0 else float("inf")


@dataclass
class WorkloadResult:
    name: str
    product: str
    baseline: str
    rounds: int
    #: The workload's target, if it has one (printed, never asserted).
    target: str = ""
    rows: list[Row] = field(default_factory=list)
    #: Baseline seconds of every round, in order.
    baseline_rounds: tuple[float, ...] = ()
    #: Untimed costs (median seconds) shown below the table.
    excluded: dict[str, float] = field(default_factory=dict)
    #: Other figures of the workload: label -> value of every round, in order.
    figures: dict[str, tuple[float, ...]] = field(default_factory=dict)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _timed(part: str, workload: Workload) -> float | Phases:
    gc.collect()  # garbage of the set-up or the other part is not charged here
    return await (workload.baseline() if part == "baseline" else workload.product())


async def run_round(cls: type[Workload], ctx: BenchContext, events: int, *,
                    baseline_first: bool) -> tuple[Round, str]:
    workload = cls(ctx, events)
    try:
        await workload.setup()
        order = ("baseline", "product") if baseline_first else ("product", "baseline")
        results = {part: await _timed(part, workload) for part in order}
        await workload.verify()
    finally:
        await workload.teardown()
    baseline, phases = results["baseline"], results["product"]
    assert isinstance(phases, dict)
    baseline_phases: Phases = {}
    if isinstance(baseline, dict):
        if set(baseline) != set(phases):
            raise RuntimeError(f"{cls.name}: baseline phases {sorted(baseline)} differ from "
                               f"the product's {sorted(phases)}")
        baseline_phases, baseline = baseline, sum(baseline.values())
    return Round(baseline, phases, dict(workload.excluded), baseline_phases,
                 dict(workload.counts), dict(workload.figures)), workload.describe()


async def run_workload(cls: type[Workload], ctx: BenchContext, events: int, *, repeat: int,
                       warm_up: bool) -> WorkloadResult:
    if warm_up and cls.warm_up:
        started = time.monotonic()
        progress(f"{cls.name}: warm-up round ({min(events, WARM_UP_EVENTS)} events)")
        await run_round(cls, ctx, min(events, WARM_UP_EVENTS), baseline_first=True)
        progress(f"{cls.name}: warm-up done in {time.monotonic() - started:.1f}s")
    rounds: list[Round] = []
    description = cls.summary
    for i in range(repeat):
        started = time.monotonic()
        progress(f"{cls.name}: round {i + 1}/{repeat} ({events} events)")
        one, description = await run_round(cls, ctx, events, baseline_first=i % 2 == 0)
        rounds.append(one)
        progress(f"{cls.name}: round {i + 1}/{repeat} done in "
                 f"{time.monotonic() - started:.1f}s")
    return summarise(cls, description, events, rounds)


def summarise(cls: type[Workload], description: str, events: int,
              rounds: list[Round]) -> WorkloadResult:
    result = WorkloadResult(cls.name, description, cls.baseline_summary, len(rounds),
                            cls.target)
    result.baseline_rounds = tuple(r.baseline for r in rounds)
    phases = list(rounds[0].phases)

    def row(label: str, seconds: list[float], phase: str | None = None) -> Row:
        raw = [r.baseline_phases.get(phase, r.baseline) if phase else r.baseline
               for r in rounds]
        ratios = [s / b for s, b in zip(seconds, raw, strict=True)]
        count = rounds[0].counts.get(phase, events) if phase else events
        return Row(label, count, statistics.median(seconds), statistics.median(raw),
                   statistics.median(ratios), tuple(ratios))

    if len(phases) == 1:
        result.rows.append(row(cls.name, [r.phases[phases[0]] for r in rounds], phases[0]))
    else:
        for phase in phases:
            result.rows.append(row(f"{cls.name}.{phase}", [r.phases[phase] for r in rounds],
                                   phase))
        if not rounds[0].baseline_phases:
            # Phases compared with their own baselines have no meaningful sum.
            result.rows.append(row(f"{cls.name} total",
                                   [sum(r.phases.values()) for r in rounds]))
    for label in rounds[0].excluded:
        result.excluded[label] = statistics.median(r.excluded[label] for r in rounds)
    for label in rounds[0].figures:
        result.figures[label] = tuple(r.figures[label] for r in rounds)
    return result
