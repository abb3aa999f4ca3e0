"""Service cycles: defining their versions, reading them, and the
touchpoints the active ones know.

Every function runs in the caller's transaction.
"""

from __future__ import annotations

from crm_runtime.db import Conn
from crm_runtime.errors import NotFound
from services.interactions import matrix
from services.interactions.matrix import Cycle


async def load(conn: Conn, name: str, version: int = 0) -> Cycle:
    """A version of a cycle (0: its latest); NotFound names the cycle or the
    version that does not exist."""
    if version:
        row = await conn.fetchrow(
            "SELECT name, version, moments FROM service_cycle_versions "
            "WHERE name = $1 AND version = $2", name, version)
        if row is None:
            if await conn.fetchval("SELECT 1 FROM service_cycle_versions WHERE name = $1 "
                                   "LIMIT 1", name) is None:
                raise NotFound("service cycle", name)
            raise NotFound("service cycle version", f"{name} version {version}")
    else:
        row = await conn.fetchrow(
            "SELECT name, version, moments FROM service_cycle_versions WHERE name = $1 "
            "ORDER BY version DESC LIMIT 1", name)
        if row is None:
            raise NotFound("service cycle", name)
    return matrix.from_json(row["name"], row["version"], row["moments"])
