"""Units of work: one transaction, the events it writes, its after-commit hooks.

A :class:`UnitOfWork` is one database transaction of a service, opened by
whoever owns it (:func:`transaction` for an API call, the consumer for a
batch, the scheduler for due work) and current for the code that runs in it
(:func:`current`). It carries:

- the connection (``unit.conn``; :func:`transaction` yields it, so use cases
  take the connection and reach the unit only for what is not SQL);
- after-commit hooks (:meth:`UnitOfWork.on_commit`): effects that must happen
  only if the transaction commits and never twice when it is retried, yet do
  not belong in the database (incrementing a Prometheus counter is the
  common one). They run after the commit and are dropped on rollback; a
  savepoint that rolls back drops the hooks registered inside it
  (:func:`savepoint`).

An :class:`Emitter` writes a service's events into the outbox of the
transaction at hand, bound once to the service's CloudEvents ``source`` and
its outbox lanes; each service's context holds one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import ClassVar, TypeVar

import asyncpg

from crm_runtime import logs, outbox
from crm_runtime.clock import Clock
from crm_runtime.db import Conn
from crm_runtime.events import Envelope, EventPayload

T = TypeVar("T")


class UnitOfWork:
    """One open transaction: its connection and its after-commit hooks."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self._hooks: list[Callable[[], None]] = []

    def on_commit(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` once this unit's transaction commits."""
        self._hooks.append(hook)

    def mark(self) -> int:
        """A position in the hooks; :meth:`rollback_to` forgets the later ones
        (work undone by a savepoint)."""
        return len(self._hooks)

    def rollback_to(self, position: int) -> None:
        del self._hooks[position:]

    def _committed(self) -> None:
        hooks, self._hooks = self._hooks, []
        for hook in hooks:
            hook()


_CURRENT: ContextVar[UnitOfWork | None] = ContextVar("crm_unit_of_work", default=None)


def current() -> UnitOfWork | None:
    """The unit of work the running code is in, if any."""
    return _CURRENT.get()


def on_commit(hook: Callable[[], None]) -> None:
    """Run ``hook`` once the current unit of work commits. Code that runs in
    a transaction nobody opened as a unit of work (a test holding its own
    connection) has no commit to wait for: the hook is not run."""
    unit = _CURRENT.get()
    if unit is not None:
        unit.on_commit(hook)


@asynccontextmanager
async def unit_on(conn: Conn) -> AsyncIterator[UnitOfWork]:
    """A unit of work in a new transaction of a connection the caller holds;
    current inside the block, its hooks run after the commit."""
    unit = UnitOfWork(conn)
    token = _CURRENT.set(unit)
    try:
        async with conn.transaction():
            yield unit
    finally:
        _CURRENT.reset(token)
    unit._committed()


@asynccontextmanager
async def savepoint(conn: Conn) -> AsyncIterator[None]:
    """A savepoint in the current transaction (one item of a batch that must
    fail alone): when it rolls back, the hooks registered inside it are
    dropped with it."""
    unit = _CURRENT.get()
    position = unit.mark() if unit is not None else 0
    try:
        async with conn.transaction():
            yield
    except BaseException:
        if unit is not None:
            unit.rollback_to(position)
        raise


@asynccontextmanager
async def transaction(pool: asyncpg.Pool) -> AsyncIterator[Conn]:
    """A pooled connection in a unit of work; hooks run after it commits."""
    async with pool.acquire() as conn, unit_on(conn):
        yield conn


@dataclass(frozen=True)
class Emitter:
    """Writes a service's events to its outbox, in the caller's transaction:
    each event's CloudEvents ``source`` is the service's, its subject (and
    Kafka key) the customer it is about."""

    source: str
    lanes: int

    def envelope(self, subject: object, payload: EventPayload, *, time: datetime,
                 traceparent: str | None = None) -> Envelope:
        """The envelope of one event (``traceparent``: by default the trace of
        the work that writes it)."""
        return Envelope(data=payload, subject=str(subject), source=self.source, time=time,
                        traceparent=logs.current_traceparent() if traceparent is None
                        else traceparent)

    async def emit(self, conn: Conn, subject: object, payloads: Iterable[EventPayload], *,
                   time: datetime) -> None:
        """Queue events about ``subject``."""
        await self.write(conn, [self.envelope(subject, p, time=time) for p in payloads])

    async def write(self, conn: Conn, envelopes: Sequence[Envelope]) -> None:
        """Queue envelopes made with :meth:`envelope`, in their order."""
        await outbox.add(conn, envelopes, lanes=self.lanes)


@dataclass(frozen=True)
class CommandContext:
    """What every use case of a service needs besides the connection: the
    clock, and the emitter of its events. A service's ``Context`` extends it
    with its own settings and names its CloudEvents ``source``."""

    clock: Clock
    lanes: int
    #: The service's CloudEvents source, e.g. ``/crm/customers``.
    source: ClassVar[str]

    @cached_property
    def events(self) -> Emitter:
        return Emitter(self.source, self.lanes)


async def run(pool: asyncpg.Pool, work: Callable[[Conn], Awaitable[T]]) -> T:
    """``work`` in a unit of work of its own (:func:`transaction`): the usual
    shape of a gRPC method that changes state."""
    async with transaction(pool) as conn:
        return await work(conn)


async def snapshot(pool: asyncpg.Pool, work: Callable[[Conn], Awaitable[T]]) -> T:
    """``work`` reading from one snapshot (a read-only, repeatable-read
    transaction): reads of several tables that agree with each other."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                        readonly=True):
        return await work(conn)
