"""An erasure, acknowledged by every service that keeps customer data.

:func:`privacy.erase <services.customers.privacy.erase>` records the
erasure in its own transaction (:func:`request`): this service's part is
complete at once, and each service of :data:`AWAITED` has a pending part,
due within the acknowledgement timeout (``CRM_ERASURE_ACK_TIMEOUT_S``). Each
of those services scrubs its data when it consumes ``customer.erased`` and,
in the same transaction, publishes ``<service>.erasure_completed``
(:mod:`crm_contracts.privacy`), which :func:`acknowledge` records.
:func:`status` answers ``Customers/GetErasureStatus`` (by the pure
:func:`status_of`); :data:`OVERDUE_SQL` is the gauge
``crm_erasures_overdue``.

A new service that keeps customer data joins in three steps: it publishes,
in the transaction that scrubs its data for ``customer.erased``, its own
subclass of :class:`crm_contracts.privacy.ErasureCompleted` registered on its
topic; this service routes that type to ``handlers.on_erasure_completed`` on
a subscription to that topic (deployed first, so the type is known before it
is published); its name goes into :data:`AWAITED`. Erasures requested before
then do not wait for it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from crm_runtime.db import Conn
from services.customers import store

log = logging.getLogger(__name__)

#: This service: its part of an erasure is done when the erasure is.
SELF = "customers"
#: The services that must acknowledge every erasure (see the module doc).
AWAITED: tuple[str, ...] = ("interactions", "loyalty")


# --- the status, pure --------------------------------------------------------------

@dataclass(frozen=True)
class Part:
    """One service's part of an erasure: pending until ``completed_at``,
    overdue from ``due_at``."""

    service: str
    requested_at: datetime
    due_at: datetime
    completed_at: datetime | None = None

    @property
    def complete(self) -> bool:
        return self.completed_at is not None

    def overdue(self, now: datetime) -> bool:
        """Still pending at ``now``, which is past its due time."""
        return self.completed_at is None and now >= self.due_at


@dataclass(frozen=True)
class ErasureStatus:
    """Where a customer's erasure stands. A customer erased before
    acknowledgements were tracked is ``erased`` with no ``parts``, and never
    ``complete``: nobody said so."""

    customer_id: uuid.UUID
    erased: bool
    requested_at: datetime | None
    parts: tuple[Part, ...]

    @property
    def complete(self) -> bool:
        """Every service has acknowledged (this one included)."""
        return self.erased and bool(self.parts) and all(p.complete for p in self.parts)

    def pending(self) -> list[str]:
        """The services that have not acknowledged yet."""
        return [p.service for p in self.parts if not p.complete]


def _order(service: str) -> tuple[int, str]:
    """This service first, then :data:`AWAITED` in its order, then any other."""
    known = (SELF, *AWAITED)
    return (known.index(service), "") if service in known else (len(known), service)


def status_of(customer_id: uuid.UUID, erased_at: datetime | None,
              parts: Sequence[Part]) -> ErasureStatus:
    """The status from the customer's erasure time (None: not erased) and
    the parts recorded for the id."""
    ordered = tuple(sorted(parts, key=lambda p: _order(p.service)))
    requested_at = min((p.requested_at for p in ordered), default=erased_at)
    return ErasureStatus(customer_id=customer_id, erased=erased_at is not None or bool(ordered),
                         requested_at=requested_at, parts=ordered)


# --- the use cases -------------------------------------------------------------------

async def request(conn: Conn, customer_id: uuid.UUID, at: datetime,
                  timeout: timedelta) -> None:
    """Record the erasure of ``customer_id`` asked at ``at``, in the
    caller's transaction: this service's part complete, every awaited
    service's pending until ``at + timeout``. Once per customer."""
    await conn.execute(
        """INSERT INTO erasures (customer_id, service, requested_at, due_at, completed_at)
           SELECT $1::uuid, s.service, $2::timestamptz,
                  CASE WHEN s.service = $4::text THEN $2::timestamptz ELSE $3::timestamptz END,
                  CASE WHEN s.service = $4::text THEN $2::timestamptz END
             FROM unnest($5::text[]) AS s (service)
           ON CONFLICT (customer_id, service) DO NOTHING""",
        customer_id, at, at + timeout, SELF, [SELF, *AWAITED])


class Ack(StrEnum):
    """What an acknowledgement came to."""

    RECORDED = "recorded"
    REPEATED = "repeated"  # the part was complete already
    UNREQUESTED = "unrequested"  # no erasure of this id awaits this service


async def acknowledge(conn: Conn, customer_id: uuid.UUID, service: str,
                      erased_at: datetime) -> Ack:
    """``service`` scrubbed the customer's data at ``erased_at``: its part
    is complete. One for an erasure never requested here (an id that is no
    customer, a customer erased before acknowledgements were tracked, or a
    service not awaited) is logged and ignored: it asks for nothing, so
    there is nothing to retry."""
    (row,) = await conn.fetch(
        """WITH done AS (
               UPDATE erasures SET completed_at = $3
                WHERE customer_id = $1 AND service = $2 AND completed_at IS NULL
               RETURNING 1)
           SELECT EXISTS (SELECT 1 FROM done) AS recorded,
                  EXISTS (SELECT 1 FROM erasures
                           WHERE customer_id = $1 AND service = $2) AS requested""",
        customer_id, service, erased_at)
    if row["recorded"]:
        log.info("erasure of %s acknowledged by %s", customer_id, service)
        return Ack.RECORDED
    if row["requested"]:
        log.info("erasure of %s acknowledged by %s again; already complete", customer_id,
                 service)
        return Ack.REPEATED
    log.warning("erasure of %s acknowledged by %s, but none was requested of it; ignored",
                customer_id, service)
    return Ack.UNREQUESTED


async def status(conn: Conn, customer_id: uuid.UUID) -> ErasureStatus:
    """Where the customer's erasure stands; NotFound for an unknown id."""
    rec = await store.load(conn, customer_id, full=False)
    rows = await conn.fetch(
        """SELECT service, requested_at, due_at, completed_at FROM erasures
            WHERE customer_id = $1""", customer_id)
    return status_of(customer_id, rec.erased_at, [Part(**dict(r)) for r in rows])


# --- the gauge -------------------------------------------------------------------------

def _overdue_sql(awaited: Sequence[str]) -> str:
    """``crm_erasures_overdue``: per awaited service, its parts pending past
    their due time (``$1``: the service clock's now); 0 when none. The names
    come from :data:`AWAITED`, never from input, and are checked."""
    if not all(name.isidentifier() for name in awaited):
        raise ValueError(f"service names must be identifiers: {list(awaited)}")
    names = ", ".join(f"('{name}')" for name in awaited)
    return f"""
    SELECT a.service, count(e.customer_id)
      FROM (VALUES {names}) AS a (service)
      LEFT JOIN erasures e ON e.service = a.service AND e.completed_at IS NULL
                          AND e.due_at <= $1
     GROUP BY a.service"""


#: ``crm_erasures_overdue``.
OVERDUE_SQL = _overdue_sql(AWAITED)
