"""``python -m bench``: run the benchmarks and print the figures.

Examples::

    python -m bench                      # every workload, 20000 events
    python -m bench --quick              # 2000 events, for a fast look
    python -m bench -w consume --events 50000 --repeat 3
    python -m bench --list

Set ``DATABASE_URL`` / ``KAFKA_BOOTSTRAP_SERVERS`` to use those servers;
``CRM_*`` variables change the product settings (lanes, batch sizes,
partitions) as they do for the services. Figures only: nothing is asserted
about timings.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import platform
import sys
import time
import warnings
from collections.abc import Sequence

import bench.workloads  # noqa: F401  (registers the workloads)
from bench import report
from bench.context import BenchContext
from bench.infra import new_run_id, open_infra
from bench.registry import WORKLOADS, ordered
from bench.runner import WorkloadResult, progress, run_workload
from crm_runtime.settings import SettingsError, load_settings

DEFAULT_EVENTS = 20_000
QUICK_EVENTS = 2_000
DEFAULT_REPEAT = 3
DEFAULT_REPLICAS = 1


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", "-n", type=int, default=None,
                        help=f"events per workload (default {DEFAULT_EVENTS}, "
                             f"{QUICK_EVENTS} with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help=f"small run: {QUICK_EVENTS} events unless --events is given")
    parser.add_argument("--workload", "-w", action="append", choices=sorted(WORKLOADS),
                        help="run only this workload (repeatable; default: all)")
    parser.add_argument("--repeat", "-r", type=int, default=DEFAULT_REPEAT,
                        help="timed rounds per workload; figures are medians "
                             f"(default {DEFAULT_REPEAT})")
    parser.add_argument("--tx-size", type=int, default=100,
                        help="events per outbox transaction (default 100)")
    parser.add_argument("--no-warm-up", dest="warm_up", action="store_false",
                        help="skip the untimed warm-up round of each workload")
    parser.add_argument("--replicas", type=int, default=DEFAULT_REPLICAS,
                        help="crm serve processes per service in the workloads that run "
                             "services (every customers.*, interactions.* and loyalty.* "
                             f"workload; default {DEFAULT_REPLICAS})")
    parser.add_argument("--grpc-client", choices=("node", "python"), default="node",
                        help="load generator of customers.get: node (@grpc/grpc-js, from npm "
                             "into .local/node on first use; default) or python (grpc.aio in "
                             "the bench process)")
    parser.add_argument("--customers", type=int, default=None,
                        help="customers stored for customers.get (default 100,000, 10,000 "
                             "with --quick; 10,000,000 takes a few minutes to store)")
    parser.add_argument("--list", action="store_true", help="list the workloads and exit")
    args = parser.parse_args(argv)
    if args.events is None:
        args.events = QUICK_EVENTS if args.quick else DEFAULT_EVENTS
    for flag, value in (("--events", args.events), ("--repeat", args.repeat),
                        ("--tx-size", args.tx_size), ("--replicas", args.replicas),
                        ("--customers", 1 if args.customers is None else args.customers)):
        if value < 1:
            parser.error(f"{flag} must be at least 1")
    return args


async def run(args: argparse.Namespace) -> list[WorkloadResult]:
    settings = load_settings()
    names: list[str] = args.workload or [cls.name for cls in ordered()]
    run_id = new_run_id()
    results: list[WorkloadResult] = []
    async with open_infra(settings.database_url, settings.kafka_bootstrap_servers,
                          run_id) as infra:
        print(f"database: {infra.database_label}")
        print(f"broker  : {infra.broker_label}")
        print(f"python {platform.python_version()}, {args.events} events per workload, "
              f"{args.repeat} round(s), topics of {settings.topic_partitions} partitions, "
              f"run {run_id}", flush=True)
        ctx = BenchContext(infra.database_url, infra.bootstrap_servers, settings, run_id,
                           outbox_tx_size=args.tx_size, delete_topics=infra.external_broker,
                           quick=args.quick, replicas=args.replicas,
                           grpc_client=args.grpc_client, customers=args.customers)
        try:
            for name in names:
                results.append(await run_workload(WORKLOADS[name], ctx, args.events,
                                                  repeat=args.repeat, warm_up=args.warm_up))
        finally:
            await ctx.cleanup()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for cls in ordered():
            print(f"{cls.name}: {cls.summary}\n  baseline: {cls.baseline_summary}")
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="aiokafka")
    started = time.monotonic()
    try:
        results = asyncio.run(run(args))
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print()
    print(report.table(results))
    print()
    print(report.details(results))
    progress(f"bench finished in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
