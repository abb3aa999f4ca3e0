"""The registered workloads; importing this package registers them all.

A new workload is a module here defining a ``@register``-ed
:class:`bench.registry.Workload` subclass, added to the imports below.
"""

from bench.workloads import (
    consume,
    customers_get,
    customers_purchases,
    interactions_ingest,
    loyalty_actions,
    loyalty_campaign,
    loyalty_latency,
    loyalty_webhooks,
    publish,
    scheduler_drain,
    stack_handover,
    stack_idle,
)

__all__ = ["consume", "customers_get", "customers_purchases", "interactions_ingest",
           "loyalty_actions", "loyalty_campaign", "loyalty_latency", "loyalty_webhooks",
           "publish", "scheduler_drain", "stack_handover",
           "stack_idle"]
