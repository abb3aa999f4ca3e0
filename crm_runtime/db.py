"""PostgreSQL access: one asyncpg pool per service, bound to its own schema.

Every service owns one schema and never reads another's. The pool sets
``search_path`` to that schema, so service SQL uses plain table names and the
runtime's own tables (outbox, inbox, scheduled work, migrations) live beside
the service's tables in the same schema and commit in the same transactions.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
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
    """A batch of rows that a statement takes as a relation, sent the
    cheapest way for its size.

    ``unnest()`` of one array per column needs no extra round trip, but asyncpg
    checks and encodes every array element on its own: for a row of 17
    columns it costs the client about 15 µs, against 5 µs for the same row
    sent by ``COPY`` (measured at 500 rows a batch). ``COPY`` cannot take
    ``ON CONFLICT``, so from :attr:`COPY_FROM` rows on, the rows are copied
    into a temporary table of this connection and the statement takes them
    from there. Rows a statement joins to a table (an ``UPDATE ... FROM``)
    go as arrays at any size: ``copy_from=None``.

    The statement names the rows ``{<name>}`` in a ``WITH`` (see
    :func:`fetch_rows`)::

        WITH r AS ({interactions_batch}) INSERT INTO t SELECT * FROM r ...

    The temporary table (``pg_temp.<name>``, created with every new connection
    of the pools of ``schema``, the service that uses it: see
    :func:`_init_connection`) is emptied by the statement itself
    (``DELETE ... RETURNING``), so a second batch in the same transaction
    starts empty; ``ON COMMIT DELETE ROWS`` truncates its file at commit, so
    it never grows. Declare instances at import time, before pools are
    created."""

    #: Below this many rows, arrays (no extra round trip); from it, COPY (two).
    COPY_FROM = 50

    def __init__(self, name: str, columns: Sequence[tuple[str, str]], *, schema: str,
                 copy_from: int | None = COPY_FROM, into: str | None = None) -> None:
        """``copy_from=None``: always arrays. For rows a statement joins to a
        table, such as an ``UPDATE ... FROM``: with arrays, the plan cache's
        generic plan probes the table's index per row, where the size of a
        copied batch makes the planner hash the whole table (seen: a seq scan
        of 20,000 customer views to update 469 of them, 14 ms against 1).

        ``into``: the table the statement inserts these rows into as they
        are (``INSERT INTO <into> (<the columns>) SELECT * FROM <the batch>``,
        without ``ON CONFLICT``). From ``copy_from`` rows on they are copied
        straight into it, before the statement, which then sees no rows: the
        same rows and the same unique-key failures, written once instead of
        into the temporary table, out of it and into the table. No temporary
        table is made for them."""
        check_schema_name(name)
        for column, _ in columns:
            check_schema_name(column)
        self.name = name
        self.schema = check_schema_name(schema)
        self.copy_from = copy_from
        self.into = check_schema_name(into) if into is not None else None
        self.placeholder = "{" + name + "}"
        self.columns = list(columns)
        self._names = ", ".join(c for c, _ in columns)
        self._take = f"DELETE FROM pg_temp.{name} RETURNING {self._names}"
        self._none = (f"SELECT {', '.join(f'NULL::{t} AS {c}' for c, t in columns)} "
                      "WHERE false")
        self._unnest: dict[int, str] = {}
        self.ddl = (f"CREATE TEMPORARY TABLE IF NOT EXISTS {name} "
                    f"({', '.join(f'{c} {t}' for c, t in columns)}) ON COMMIT DELETE ROWS")
        if copy_from is not None and into is None:
            known = _ROWS.get(name)
            if known is not None and known.ddl != self.ddl:
                raise ValueError(f"two different batch tables named {name!r}")
            _ROWS[name] = self

    def _arrays(self, first: int) -> str:
        """The rows as ``unnest()`` of parameters ``$first`` onwards."""
        text = self._unnest.get(first)
        if text is None:
            arrays = ", ".join(f"${first + i}::{t}[]" for i, (_, t) in enumerate(self.columns))
            text = self._unnest[first] = f"SELECT * FROM unnest({arrays}) AS u({self._names})"
        return text

    async def fetch(self, conn: Conn, sql: str, rows: Sequence[tuple[Any, ...]]) -> list[Any]:
        """:func:`fetch_rows` with this one batch."""
        return await fetch_rows(conn, sql, {self: rows})

    async def copy_unless_taken(self, conn: Conn, table: str,
                                rows: Sequence[tuple[Any, ...]]) -> bool:
        """:func:`copy_unless_taken` of ``rows`` into ``table``, whose columns
        are named as this batch's, from :attr:`copy_from` rows on (False
        below, with nothing written).

        For batches that rarely repeat a key (the inbox has already dropped
        redelivered events): the database stores the rows once, where the
        temporary table costs a second write and a read (measured at 250
        contacts a batch: 13 µs a row against 21, the client's work the same)."""
        if self.copy_from is None or len(rows) < self.copy_from:
            return False
        return await copy_unless_taken(conn, table, [c for c, _ in self.columns], rows)

    async def _copy_into(self, conn: Conn, table: str, rows: Sequence[tuple[Any, ...]]) -> None:
        await conn.copy_records_to_table(table, records=rows,
                                         columns=[c for c, _ in self.columns])


async def copy_unless_taken(conn: Conn, table: str, columns: Sequence[str],
                            rows: Sequence[tuple[Any, ...]]) -> bool:
    """Copy ``rows`` straight into ``table`` inside a savepoint of the
    caller's transaction; True if every row went in. False, with nothing
    written, if a unique constraint refused a row (a key stored before, by
    these rows or by a concurrent transaction once it committed): the caller
    then runs its ``ON CONFLICT`` statement. ``COPY`` cannot take ``ON
    CONFLICT``, but where conflicts are rare it is the cheapest way in."""
    try:
        async with conn.transaction():  # the savepoint a refused COPY rolls back to
            await conn.copy_records_to_table(table, records=rows, columns=columns)
    except asyncpg.UniqueViolationError:
        return False
    return True


async def fetch_rows(conn: Conn, sql: str,
                     batches: Mapping[Rows, Sequence[tuple[Any, ...]]]) -> list[Any]:
    """Run ``sql`` (inside the caller's transaction) where each batch's
    ``{<name>}`` stands for its rows (tuples in the order of its columns):
    arrays below the batch's ``copy_from`` rows, its temporary table from there."""
    text, params = await load_rows(conn, sql, batches)
    return await conn.fetch(text, *params)


async def load_rows(conn: Conn, sql: str, batches: Mapping[Rows, Sequence[tuple[Any, ...]]]
                    ) -> tuple[str, list[Any]]:
    """Copy the batches that go by COPY into their temporary tables; return
    ``sql`` with every placeholder replaced, and the array parameters of the
    batches that go as arrays."""
    params: list[Any] = []
    for spec, rows in batches.items():
        if spec.copy_from is None or len(rows) < spec.copy_from:
            sql = sql.replace(spec.placeholder, spec._arrays(len(params) + 1))
            params.extend([r[i] for r in rows] for i in range(len(spec.columns)))
        elif spec.into is not None:
            await spec._copy_into(conn, spec.into, rows)
            sql = sql.replace(spec.placeholder, spec._none)
        else:
            await conn.copy_records_to_table(spec.name, records=rows, schema_name="pg_temp")
            sql = sql.replace(spec.placeholder, spec._take)
    return sql, params


#: Every copied :class:`Rows`, by table name.
_ROWS: dict[str, Rows] = {}


def temporary_tables(schema: str | None) -> list[str]:
    """The DDL of the temporary tables a new connection of ``schema``'s pool
    creates: those of its own batches (``crm serve`` imports every service,
    and a customers connection has no use for loyalty's tables)."""
    return [r.ddl for r in _ROWS.values() if r.schema == schema]


#: The array types the services' statements bind and return. asyncpg learns
#: an array type the first time a connection meets it, with a catalog query
#: of its own (about 5 ms here, and two more round trips to switch JIT off
#: around it): on a new pool connection, each of the first statements of a
#: consumed batch or a gRPC call paid that, 20-30 ms in all, on the hot path
#: and exactly when load grew the pool. One statement naming them all lets a
#: new connection learn them in one query instead, before its first use.
ARRAY_TYPES = ("int", "bigint", "smallint", "text", "uuid", "timestamptz", "bytea", "jsonb",
               "json", "bool", "float8", "numeric", "date", "interval")
_LEARN_ARRAY_TYPES = "SELECT " + ", ".join(f"NULL::{t}[]" for t in ARRAY_TYPES)


async def _init_connection(conn: Conn, schema: str | None = None) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads,
                              schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads,
                              schema="pg_catalog")
    await conn.fetch(_LEARN_ARRAY_TYPES)
    tables = temporary_tables(schema)
    if tables:
        await conn.execute(";".join(tables))


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
        init=functools.partial(_init_connection, schema=schema),
        reset=_reset_connection,
        server_settings={"search_path": f"{schema},public", "application_name": f"crm-{schema}",
                         **SERVICE_SESSION},
    )
    assert pool is not None
    return pool


async def connect(dsn: str, *, schema: str | None = None, **kwargs: Any) -> asyncpg.Connection:
    """A connection of its own (migrations, tools), with the temporary
    tables of ``schema``'s batches when one is given."""
    conn: asyncpg.Connection = await asyncpg.connect(dsn, **kwargs)
    await _init_connection(conn, schema)
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
