"""Transactions with after-commit hooks.

Some effects must happen only if the transaction commits and never twice
when it is retried, yet do not belong in the database: incrementing a
Prometheus counter is the common one. Code inside a transaction registers
them with :func:`on_commit`; whoever owns the transaction (:func:`transaction`,
the consumer, the scheduler) runs them after the commit and drops them on
rollback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import asyncpg

from crm_runtime.db import Conn

_PENDING: dict[int, list[Callable[[], None]]] = {}


def _key(conn: Conn) -> int:
    # A pool hands out proxies; hooks belong to the connection underneath.
    raw = getattr(conn, "_con", None) or conn
    return id(raw)


def on_commit(conn: Conn, hook: Callable[[], None]) -> None:
    """Run ``hook`` once the current transaction of ``conn`` commits."""
    _PENDING.setdefault(_key(conn), []).append(hook)


def mark(conn: Conn) -> int:
    """How many hooks are pending; :func:`rollback_to` forgets later ones
    (for work undone by a savepoint)."""
    return len(_PENDING.get(_key(conn), []))


def rollback_to(conn: Conn, position: int) -> None:
    hooks = _PENDING.get(_key(conn))
    if hooks is not None:
        del hooks[position:]


def committed(conn: Conn) -> None:
    for hook in _PENDING.pop(_key(conn), []):
        hook()


def rolled_back(conn: Conn) -> None:
    _PENDING.pop(_key(conn), None)


@asynccontextmanager
async def transaction(pool: asyncpg.Pool) -> AsyncIterator[Conn]:
    """A pooled connection in a transaction; hooks run after it commits."""
    async with pool.acquire() as conn:
        try:
            async with conn.transaction():
                yield conn
        except BaseException:
            rolled_back(conn)
            raise
        committed(conn)
