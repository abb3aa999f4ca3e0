"""Every column of every service's schema is in the data-subject export
(``Customers/ExportCustomer``), or is deliberately left out with a reason.

Each service's migrations (the runtime's files, then its own) are applied to
a scratch schema of a real PostgreSQL, and the tables and columns are read
back from ``information_schema``: whatever a migration does (adds, renames or
drops a column, creates a table under any spelling), the test sees the schema
the service runs on. A migration that adds a column fails here until the
service's export covers it (its ``EXPORT_COLUMNS``) or its list of what is not
exported gives the reason."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass

import asyncpg
import pytest

from crm_runtime.migrations import migrate, migrations_for
from crm_runtime.service import ServiceSpec
from services.customers import store as customers_store
from services.customers.app import SPEC as CUSTOMERS
from services.interactions import privacy as interactions_privacy
from services.interactions.app import SPEC as INTERACTIONS
from services.loyalty import privacy as loyalty_privacy
from services.loyalty.app import SPEC as LOYALTY

#: The runtime's tables, in every schema, and why none is exported.
RUNTIME_NOT_EXPORTED = {
    "outbox": "events on their way to Kafka: copies of changes to the records exported, "
              "deleted CRM_OUTBOX_RETENTION_HOURS after the broker acked them",
    "inbox": "ids of the events a consumer has applied (for idempotency); no content",
    "dead_letters": "where a record that could not be processed lies (topic, partition, "
                    "offset) and why; the record itself is on the topic's .dlq",
    "scheduled_work": "timers of the records exported (a case's promised time, a "
                      "follow-up's due time, a customer's churn date)",
    "schema_migrations": "the migrations applied: no customer data",
}


@dataclass(frozen=True)
class Coverage:
    """A service's schema as its export accounts for it."""

    spec: ServiceSpec
    #: table -> column -> where it appears in the service's part.
    exported: Mapping[str, Mapping[str, str]]
    #: ``table`` or ``table.column`` -> why it is not exported.
    not_exported: Mapping[str, str]


SERVICES = [
    Coverage(CUSTOMERS, customers_store.EXPORT_COLUMNS, customers_store.NOT_CUSTOMER_DATA),
    Coverage(INTERACTIONS, interactions_privacy.EXPORT_COLUMNS,
             interactions_privacy.NOT_EXPORTED),
    Coverage(LOYALTY, loyalty_privacy.EXPORT_COLUMNS, loyalty_privacy.NOT_EXPORTED),
]


async def _schema(database_url: str, spec: ServiceSpec) -> dict[str, set[str]]:
    """Table -> columns of the service's schema, migrated into a scratch schema."""
    schema = f"coverage_{spec.name}_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn, schema, migrations_for(spec.migrations))
        rows = await conn.fetch(
            """SELECT c.table_name, c.column_name FROM information_schema.columns c
                 JOIN information_schema.tables t USING (table_schema, table_name)
                WHERE c.table_schema = $1 AND t.table_type = 'BASE TABLE'""", schema)
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        await conn.close()
    tables: dict[str, set[str]] = {}
    for r in rows:
        tables.setdefault(r["table_name"], set()).add(r["column_name"])
    return tables


def gaps(schema: Mapping[str, set[str]], cov: Coverage) -> list[str]:
    """What the export does not account for, and what it names that the
    schema does not have (a renamed or dropped column left in a map)."""
    found = []
    for table, columns in sorted(schema.items()):
        if table in RUNTIME_NOT_EXPORTED or table in cov.not_exported:
            continue
        mapped = cov.exported.get(table, {})
        found += [f"{table}.{c}: neither exported nor listed as not exported, with a reason"
                  for c in sorted(columns) if c not in mapped
                  and f"{table}.{c}" not in cov.not_exported]
    for table, paths in cov.exported.items():
        found += [f"{table}.{c}: exported but not in the schema"
                  for c in paths if c not in schema.get(table, set())]
    for name in cov.not_exported:
        table, _, column = name.partition(".")
        if table not in schema or (column and column not in schema[table]):
            found.append(f"{name}: listed as not exported but not in the schema")
        if table in cov.exported and not column:
            found.append(f"{name}: both exported and listed as not exported")
    return found


@pytest.mark.parametrize("cov", SERVICES, ids=[c.spec.name for c in SERVICES])
async def test_every_column_is_exported_or_excluded_with_a_reason(database_url: str,
                                                                  cov: Coverage) -> None:
    schema = await _schema(database_url, cov.spec)
    assert set(RUNTIME_NOT_EXPORTED) <= set(schema), "the runtime's tables changed"
    problems = gaps(schema, cov)
    assert not problems, (f"the {cov.spec.name} export does not account for its schema:\n  "
                          + "\n  ".join(problems))
    reasons = {**RUNTIME_NOT_EXPORTED, **cov.not_exported}
    assert all(len(reason.split()) >= 3 for reason in reasons.values()), "give each a reason"


def test_the_check_names_a_new_column_and_a_stale_one() -> None:
    cov = Coverage(CUSTOMERS, {"t": {"a": "t[].a", "gone": "t[].gone"}},
                   {"u": "rules: no customer data"})
    schema = {"t": {"a", "new"}, "u": {"x"}, "outbox": {"id"}}
    assert gaps(schema, cov) == [
        "t.new: neither exported nor listed as not exported, with a reason",
        "t.gone: exported but not in the schema"]
