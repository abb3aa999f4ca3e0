"""Prints the results: one table row per product phase (and a total row for
multi-phase workloads), then what each side did and the untimed costs."""

from __future__ import annotations

from collections.abc import Sequence

from bench.runner import WorkloadResult

HEADERS = ("workload", "events", "seconds", "events/s", "baseline events/s", "ratio")


def _rate(value: float) -> str:
    return f"{value:,.0f}"


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
        baseline = result.rows[0].baseline_seconds if result.rows else 0.0
        rounds = f"median of {result.rounds} rounds" if result.rounds > 1 else "1 round"
        out.append(f"{result.name} ({rounds}):")
        out.append(f"  product : {result.product}")
        out.append(f"  baseline: {result.baseline} -- {baseline:.3f}s")
        if result.rounds > 1:
            times = " ".join(f"{b:.3f}" for b in result.baseline_rounds)
            out.append(f"  rounds  : baseline seconds {times}")
            for row in result.rows:
                ratios = " ".join(f"{r:.2f}x" for r in row.ratios)
                out.append(f"            {row.label} ratios {ratios}")
        for label, seconds in result.excluded.items():
            out.append(f"  not timed: {label} {seconds:.3f}s")
    return "\n".join(out)
