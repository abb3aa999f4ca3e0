"""PostgreSQL access: one asyncpg pool per service, bound to its own schema.

Every service owns one schema and never reads another's. The pool sets
``search_path`` to that schema, so service SQL uses plain table names and the
runtime's own tables (outbox, inbox, scheduled work, migrations) live beside
the service's tables in the same schema and commit in the same transactions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

#: A connection as handlers see it: a plain one or one borrowed from a pool.
Conn: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"


def check_schema_name(schema: str) -> str:
    """Schema names are identifiers built into SQL text, so only plain
    lower-case identifiers are accepted."""
    if not _IDENT.match(schema):
        raise ValueError(f"schema name {schema!r} must match {_IDENT.pattern}")
    return schema


class Rows:
    """A batch of rows that one statement takes as a relation, sent the
    cheapest way for its size.

    ``unnest()`` of one array per column needs no extra round trip, but asyncpg
    checks and encodes every array element on its own: for a row of 17
    columns it costs the client about 15 µs, against 5 µs for the same row
    sent by ``COPY`` (measured at 500 rows a batch; the server's side is
    cheaper too). ``COPY`` cannot take ``ON CONFLICT`` or feed an ``UPDATE``,
    so from :attr:`COPY_FROM` rows on, the rows are copied into a temporary
    table of this connection and the statement takes them from there.

    The statement names the rows ``{rows}`` in a ``WITH``::

        WITH r AS ({rows}) INSERT INTO t SELECT * FROM r ON CONFLICT DO NOTHING

    The temporary table (``pg_temp``, one per connection, created with every
    new connection by :func:`_init_connection`) is emptied by the statement
    itself (``DELETE ... RETURNING``), so a second batch in the same
    transaction starts empty; ``ON COMMIT DELETE ROWS`` truncates its file at
    commit, so it never grows. Declare instances at import time, before pools
    are created."""

    #: Below this many rows, arrays (one round trip); from it, COPY (two).
    COPY_FROM = 50

    def __init__(self, name: str, columns: Sequence[tuple[str, str]]) -> None:
        check_schema_name(name)
        for column, _ in columns:
            check_schema_name(column)
        self.name = name
        self.columns = list(columns)
        names = ", ".join(c for c, _ in columns)
        arrays = ", ".join(f"${i}::{t}[]" for i, (_, t) in enumerate(columns, 1))
        self._unnest = f"SELECT * FROM unnest({arrays}) AS u({names})"
        self._take = f"DELETE FROM pg_temp.{name} RETURNING {names}"
        self.ddl = (f"CREATE TEMPORARY TABLE IF NOT EXISTS {name} "
                    f"({', '.join(f'{c} {t}' for c, t in columns)}) ON COMMIT DELETE ROWS")
        _ROWS[name] = self

    async def fetch(self, conn: Conn, sql: str, rows: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Run ``sql`` (inside the caller's transaction) with ``{rows}`` as
        ``rows``, tuples in the order of :attr:`columns`."""
        if len(rows) < self.COPY_FROM:
            width = len(self.columns)
            return await conn.fetch(sql.replace("{rows}", self._unnest),
                                    *([r[i] for r in rows] for i in range(width)))
        await conn.copy_records_to_table(self.name, records=rows, schema_name="pg_temp")
        return await conn.fetch(sql.replace("{rows}", self._take))


#: Every :class:`Rows`, by table name: each new connection creates their tables.
_ROWS: dict[str, Rows] = {}


async def _init_connection(conn: Conn) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads,
                              schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads,
                              schema="pg_catalog")
    if _ROWS:
        await conn.execute(";".join(r.ddl for r in _ROWS.values()))


async def _reset_connection(conn: asyncpg.Connection) -> None:
    """What a connection returned to the pool needs before its next use.

    asyncpg's default reset sends ``pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL`` on every release: a round trip for each gRPC call
    and each consumed batch. None of that state outlives a transaction here:
    advisory locks are transaction-level (``pg_advisory_xact_lock``),
    settings are ``SET LOCAL``, cursors live inside transactions, and the
    relay's LISTEN is removed with its listener. With a reset function given,
    asyncpg still clears the connection's client-side state and rolls back a
    transaction left open (a task cancelled mid-way), so nothing is left to do."""


#: Session settings of every service connection. JIT compilation is off: it
#: starts once a plan's estimated cost passes ``jit_above_cost``, and then
#: costs about 50 ms (seen on loyalty's view lock at 500 customers a batch),
#: far more than any statement of a service takes to run.
SERVICE_SESSION = {"jit": "off"}


async def create_pool(dsn: str, schema: str, *, max_size: int = 10,
                      min_size: int = 1) -> asyncpg.Pool:
    """A pool whose connections resolve unqualified names in ``schema``."""
    check_schema_name(schema)
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_reset_connection,
        server_settings={"search_path": f"{schema},public", "application_name": f"crm-{schema}",
                         **SERVICE_SESSION},
    )
    assert pool is not None
    return pool


async def connect(dsn: str, **kwargs: Any) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(dsn, **kwargs)
    await _init_connection(conn)
    return conn


#: Errors after which retrying the same work later can succeed: the database
#: went away, was restarting, or two transactions collided.
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    OSError,
    ConnectionError,
    TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT_DB_ERRORS)
