"""Ordered SQL migrations, per service schema, applied once and recorded.

A service's migrations are the runtime's own files (outbox, inbox, scheduled
work) followed by the service's ``migrations/NNN_name.sql`` files. All
pending files and their ``schema_migrations`` rows run in one transaction, so
a failing file leaves the schema as it was.
A transaction-level advisory lock keyed by the schema serialises processes
that start together, so two replicas never apply the same file twice.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from crm_runtime.db import Conn, check_schema_name

log = logging.getLogger(__name__)

RUNTIME_MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass(frozen=True)
class Migration:
    source: str
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_dir(source: str, folder: Path) -> list[Migration]:
    """Read ``NNN_name.sql`` files in version order; gaps and duplicates are errors."""
    found: list[Migration] = []
    for path in folder.glob("*.sql"):
        prefix, _, rest = path.stem.partition("_")
        if not prefix.isdigit() or not rest:
            raise ValueError(f"migration file {path} must be named NNN_description.sql")
        found.append(Migration(source, int(prefix), rest, path.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration versions in {folder}")
    if versions and versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"migration versions in {folder} must run 1, 2, 3... without gaps; "
                         f"found {versions}")
    return found


def migrations_for(service_dir: Path | None) -> list[Migration]:
    plan = load_dir("runtime", RUNTIME_MIGRATIONS)
    if service_dir is not None and service_dir.is_dir():
        plan += load_dir("service", service_dir)
    return plan


async def migrate(conn: Conn, schema: str, plan: list[Migration]) -> list[str]:
    """Apply what is missing from ``plan`` to ``schema``; returns what was applied."""
    check_schema_name(schema)
    applied: list[str] = []
    lock_key = int.from_bytes(hashlib.sha256(f"migrate:{schema}".encode()).digest()[:8],
                              "big", signed=True)
    async with conn.transaction():
        # Serialise concurrent migrators before anything else touches the schema.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key)
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(
            f"""CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations (
                    source text NOT NULL,
                    version integer NOT NULL,
                    name text NOT NULL,
                    checksum text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (source, version))"""
        )
        rows = await conn.fetch(
            f'SELECT source, version, checksum FROM "{schema}".schema_migrations')
        done = {(r["source"], r["version"]): r["checksum"] for r in rows}
        for m in plan:
            previous = done.get((m.source, m.version))
            if previous is not None:
                if previous != m.checksum:
                    log.warning("migration %s/%03d_%s changed after it was applied",
                                m.source, m.version, m.name)
                continue
            await conn.execute(f'SET LOCAL search_path TO "{schema}", public')
            await conn.execute(m.sql)
            await conn.execute(
                f'INSERT INTO "{schema}".schema_migrations (source, version, name, checksum)'
                " VALUES ($1, $2, $3, $4)",
                m.source, m.version, m.name, m.checksum,
            )
            applied.append(f"{m.source}/{m.version:03d}_{m.name}")
            log.info("applied migration %s/%03d_%s to schema %s", m.source, m.version, m.name,
                     schema)
    return applied
