"""Prints the results: one table row per product phase (and a total row for
multi-phase workloads), then what each side did, the untimed costs and the
workloads' other figures (latency percentiles, say)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from bench.runner import WorkloadResult

HEADERS = ("workload", "events", "seconds", "events/s", "baseline events/s", "ratio")


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def _figure(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"


def table(results: Sequence[WorkloadResult]) -> str:
    lines = [[r.label, f"{r.events:,}", f"{r.seconds:.3f}", _rate(r.rate),
              _rate(r.baseline_rate), f"{r.ratio:.2f}x"]
             for result in results for r in result.rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(HEADERS)]

    def fmt(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest])

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(HEADERS), rule, *(fmt(line) for line in lines)])


def details(results: Sequence[WorkloadResult]) -> str:
    out = ["ratio = product seconds / baseline seconds measured in the same round "
           "(>1: slower than raw)."]
    for result in results:
        rounds = f"median of {result.rounds} rounds" if result.rounds > 1 else "1 round"
        out.append(f"{result.name} ({rounds}):")
        out.append(f"  product : {result.product}")
        raw = {row.label: row.baseline_seconds for row in result.rows}
        per_phase = len(set(raw.values())) > 1
        if not per_phase:
            out.append(f"  baseline: {result.baseline} -- {next(iter(raw.values()), 0.0):.3f}s")
        else:
            phases = ", ".join(f"{label} {s:.3f}s" for label, s in raw.items())
            out.append(f"  baseline: {result.baseline} -- {phases}")
        if result.rounds > 1:
            times = " ".join(f"{b:.3f}" for b in result.baseline_rounds)
            total = " (all phases)" if per_phase else ""
            out.append(f"  rounds  : baseline seconds{total} {times}")
            for row in result.rows:
                ratios = " ".join(f"{r:.2f}x" for r in row.ratios)
                out.append(f"            {row.label} ratios {ratios}")
        for label, seconds in result.excluded.items():
            out.append(f"  not timed: {label} {seconds:.3f}s")
        for label, values in result.figures.items():
            every = (" (rounds: " + " ".join(_figure(v) for v in values) + ")"
                     if len(values) > 1 else "")
            out.append(f"  figure  : {label} {_figure(statistics.median(values))}{every}")
        if result.target:
            out.append(f"  target  : {result.target} -- not asserted")
    return "\n".join(out)
