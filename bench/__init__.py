"""Benchmark harness of the CRM runtime (``python -m bench`` / ``make bench``).

Every workload times the product path (the outbox, the relay, the idempotent
consumer) and a raw baseline doing the same job with the bare client libraries,
in the same run, on the same broker and database. The machine is shared and
noisy, so the figure that matters is the ratio of the two, not the seconds.
Nothing here asserts a timing; the harness only checks that every event
arrived, so a fast but wrong run cannot print a good figure.

Modules:

* :mod:`bench.__main__` -- command line: options, then runs and prints;
* :mod:`bench.infra` -- the PostgreSQL database and Kafka broker of one run;
* :mod:`bench.context` -- what workloads get: servers, settings, unique names;
* :mod:`bench.registry` -- the :class:`~bench.registry.Workload` base class
  and the registry that ``@register`` fills;
* :mod:`bench.runner` -- warm-up, repeats, pairing baseline and product;
* :mod:`bench.report` -- the printed table;
* :mod:`bench.events` -- the bench event type and its encoded records;
* :mod:`bench.kafka` -- topic, producer and read-back helpers;
* :mod:`bench.service` -- a product service run in-process on a fresh
  database and broker of its own (for services with fixed schema and topic
  names);
* :mod:`bench.customers` -- customers stored with COPY, purchase events;
* :mod:`bench.workloads` -- the workloads, one module each.
"""
