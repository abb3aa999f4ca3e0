"""The contact gate's use case (``ReserveContacts``) and its SQL.

:func:`reserve` decides a request's contacts in the caller's transaction, by
the pure rules of :mod:`services.customers.gate`:

1. the customers asked about (a merged id as its survivor) are locked
   ``FOR UPDATE``, in id order so that two requests never wait for each
   other in a circle; a concurrent request for one of them (another service,
   another replica) waits until this one commits, so the cap holds under
   concurrency;
2. then, in a statement of its own (whose snapshot sees what the requests
   this one waited for committed), what the gate decides with: each
   customer's erasure, do-not-contact, consents and time zone, and the
   contacts counted for them around the times asked about; and which
   contact ids were allowed before;
3. each contact is decided in the request's order, each one allowed
   counting for those after it (:func:`gate.decide_request`); a contact id
   allowed before (in an earlier request, or earlier in this one) is
   allowed again without being counted twice; a refused contact is not
   recorded, so asking again decides again;
4. the allowed ones are recorded in ``contact_ledger`` with one statement.

Every function runs on the caller's connection, inside its transaction.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from crm_runtime import uow
from crm_runtime.db import Conn
from crm_runtime.settings import SERVICES
from services.customers import metrics
from services.customers.gate import Ask, Customer, GatePolicy, Verdict, decide_request

#: How far ahead a contact may be asked for: a plan, not a guess.
AHEAD = timedelta(days=366)


@dataclass(frozen=True)
class Contact:
    """One contact of a request, its fields checked."""

    contact_id: str
    customer_id: uuid.UUID
    purpose: str
    channel: str
    at: datetime
    service: str = ""
    already_made: bool = False


async def reserve(conn: Conn, contacts: Sequence[Contact], policy: GatePolicy,
                  now: datetime) -> list[Verdict]:
    """One verdict per contact, in order; the allowed ones recorded (see the
    module's docstring)."""
    if not contacts:
        return []
    survivors = await _lock(conn, {c.customer_id for c in contacts})
    ats = [c.at for c in contacts]
    state = await _customers(conn, set(survivors.values()), min(ats) - policy.window,
                             max(ats) + policy.window)
    asks = [Ask(c.contact_id, survivors.get(c.customer_id), c.purpose, c.at, c.already_made)
            for c in contacts]
    verdicts, new = decide_request(
        asks, {cid: customer for cid, (customer, _) in state.items()},
        {cid: counted for cid, (_, counted) in state.items()},
        await _recorded(conn, [c.contact_id for c in contacts]), policy)
    await _record(conn, [(contacts[i].contact_id, asks[i].customer_id, contacts[i].purpose,
                          contacts[i].channel, contacts[i].service, contacts[i].at, now)
                         for i in new])
    _count(contacts, verdicts)
    return verdicts


def _count(contacts: Sequence[Contact], verdicts: Sequence[Verdict]) -> None:
    """``crm_contact_decisions_total``, once the transaction commits."""
    tally = Counter((c.service if c.service in SERVICES else "other", c.purpose,
                     "allowed" if v.allowed else v.reason)
                    for c, v in zip(contacts, verdicts, strict=True))
    for (caller, purpose, decision), n in tally.items():
        uow.on_commit(partial(metrics.CONTACT_DECISIONS.labels(
            "customers", caller, purpose, decision).inc, n))


async def _lock(conn: Conn, asked: set[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
    """Lock the customers asked about (a merged id: its survivor), in id
    order; returns each known id's survivor (itself when not merged). A
    merge that committed while this waited is followed: its survivor is
    locked too."""
    resolved = {r["customer_id"]: r["target"] for r in await conn.fetch(
        """SELECT customer_id, coalesce(merged_into, customer_id) AS target FROM customers
            WHERE customer_id = ANY($1::uuid[])""", list(asked))}
    while True:
        locked = {r["customer_id"]: r["merged_into"] for r in await conn.fetch(
            """SELECT customer_id, merged_into FROM customers
                WHERE customer_id = ANY($1::uuid[]) ORDER BY customer_id FOR UPDATE""",
            sorted(set(resolved.values())))}
        moved = {old: new for old, new in locked.items() if new is not None}
        if not moved:
            return resolved
        resolved = {cid: moved.get(target, target) for cid, target in resolved.items()}


async def _customers(conn: Conn, ids: set[uuid.UUID], since: datetime, until: datetime
                     ) -> dict[uuid.UUID, tuple[Customer, list[datetime]]]:
    """What the gate decides with, per customer: their state, and the times
    of the contacts counted for them strictly between ``since`` and
    ``until``."""
    rows = await conn.fetch(
        """SELECT c.customer_id, c.erased_at IS NOT NULL AS erased, c.do_not_contact,
                  coalesce(c.profile->>'time_zone', '') AS time_zone,
                  coalesce((SELECT array_agg(k.purpose) FROM consents k
                             WHERE k.customer_id = c.customer_id AND k.granted), '{}')
                      AS consents,
                  coalesce((SELECT array_agg(l.at ORDER BY l.at) FROM contact_ledger l
                             WHERE l.customer_id = c.customer_id AND l.at > $2
                               AND l.at < $3), '{}') AS counted
             FROM customers c WHERE c.customer_id = ANY($1::uuid[])""",
        list(ids), since, until)
    return {r["customer_id"]: (Customer(erased=r["erased"], do_not_contact=r["do_not_contact"],
                                        consents=frozenset(r["consents"]),
                                        time_zone=r["time_zone"]),
                               list(r["counted"])) for r in rows}


async def _recorded(conn: Conn, contact_ids: list[str]) -> set[str]:
    """Which of these contact ids the gate allowed before."""
    rows = await conn.fetch(
        "SELECT contact_id FROM contact_ledger WHERE contact_id = ANY($1::text[])", contact_ids)
    return {r["contact_id"] for r in rows}


async def _record(conn: Conn, rows: list[tuple[Any, ...]]) -> None:
    if not rows:
        return
    cols = list(zip(*rows, strict=True))
    await conn.execute(
        """INSERT INTO contact_ledger (contact_id, customer_id, purpose, channel, service, at,
                                       recorded_at)
           SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                                $6::timestamptz[], $7::timestamptz[])
           ON CONFLICT (contact_id) DO NOTHING""", *[list(c) for c in cols])


async def contact_rows(conn: Conn, customer_id: uuid.UUID) -> list[Mapping[str, Any]]:
    """The customer's counted contacts, for the data-subject export."""
    return list(await conn.fetch(
        """SELECT contact_id, purpose, channel, service, at, recorded_at FROM contact_ledger
            WHERE customer_id = $1 ORDER BY at, contact_id""", customer_id))
