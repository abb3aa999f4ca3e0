"""The workload registry: a workload is a :class:`Workload` subclass
decorated with :func:`register`.

A workload times one job done two ways, within one run:

* :meth:`Workload.baseline` -- the raw way, with the bare client libraries;
  returns its seconds, or the seconds of each phase (same names as the
  product's phases) when each product phase has a raw counterpart of its own;
* :meth:`Workload.product` -- the product path; returns the seconds of each
  phase, in order (``{"write": 1.2, "relay": 0.8}``). A workload with several
  phases gets one row per phase plus a total row (no total row when the
  baseline is timed per phase).

:meth:`Workload.setup` and :meth:`Workload.teardown` are not timed (topics,
schemas, pre-produced records; push what needs closing onto
:attr:`Workload.resources`); :meth:`Workload.verify` runs after both timed
parts and raises when events are missing. Costs a timed part deliberately
leaves out (a consumer group join, say) go in :attr:`Workload.excluded` and are
printed as notes. A phase whose event count differs from the run's goes in
:attr:`Workload.counts`; figures that are not seconds (latency percentiles,
say) go in :attr:`Workload.figures` and are printed below the table.

Adding a workload: a module in ``bench/workloads/`` with a registered
subclass, imported from ``bench/workloads/__init__.py``.
"""

from __future__ import annotations

import abc
import contextlib
from typing import ClassVar, TypeVar

from bench.context import BenchContext

#: Phase name -> seconds, in the order the phases ran.
Phases = dict[str, float]


class Workload(abc.ABC):
    #: Name on the command line and in the table.
    name: ClassVar[str]
    #: What the product path does, one line.
    summary: ClassVar[str]
    #: What the raw baseline does, one line.
    baseline_summary: ClassVar[str]
    #: Run a small untimed round first (imports, connections, code paths).
    warm_up: ClassVar[bool] = True
    #: Position in a default run (lower first), then registration order.
    order: ClassVar[int] = 100
    #: A target the figures are read against (printed, never asserted).
    target: ClassVar[str] = ""

    def __init__(self, ctx: BenchContext, events: int) -> None:
        self.ctx = ctx
        self.events = events
        #: Untimed costs worth showing: label -> seconds.
        self.excluded: dict[str, float] = {}
        #: Events of a phase when not :attr:`events`: phase -> count.
        self.counts: dict[str, int] = {}
        #: Other measured figures, printed as they are: label (with its unit) -> value.
        self.figures: dict[str, float] = {}
        #: What :meth:`setup` opened, closed by the default :meth:`teardown`.
        self.resources = contextlib.AsyncExitStack()

    def describe(self) -> str:
        """The product path in one line (may mention this run's parameters)."""
        return self.summary

    async def setup(self) -> None:  # noqa: B027 (optional hook)
        """Untimed preparation shared by both timed parts."""

    @abc.abstractmethod
    async def baseline(self) -> float | Phases:
        """Do the job the raw way; returns the seconds it took (in total, or
        per phase when every product phase has its own raw counterpart)."""

    @abc.abstractmethod
    async def product(self) -> Phases:
        """Do the job through the product; returns seconds per phase."""

    async def verify(self) -> None:  # noqa: B027 (optional hook)
        """Raise if either part lost or duplicated events."""

    async def teardown(self) -> None:
        """Release what :meth:`setup` took (runs even after a failure)."""
        await self.resources.aclose()


W = TypeVar("W", bound=type[Workload])

WORKLOADS: dict[str, type[Workload]] = {}


def register(cls: W) -> W:
    if cls.name in WORKLOADS:
        raise ValueError(f"workload {cls.name!r} registered twice")
    WORKLOADS[cls.name] = cls
    return cls


def ordered() -> list[type[Workload]]:
    """Every registered workload, in default run order."""
    return sorted(WORKLOADS.values(), key=lambda cls: cls.order)
