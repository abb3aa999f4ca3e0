"""What the interactions service does, one function per command.

Every function runs in the caller's transaction, validates, applies the pure
rules of :mod:`domain`, writes through :mod:`store` and queues its events in
the outbox. The use cases with a module of their own build on this one
(its :class:`Context` and the helpers shared by every idempotent command,
:data:`DIGEST_VERSION`, :func:`key_conflict`, :func:`json_digest`):
contacts (recording them, the timeline) in :mod:`contacts`, cases and their
promises in :mod:`cases`, calendars and policies in :mod:`calendars`, the
consent view and the contacts it stops in :mod:`trust`, service cycles in
:mod:`cycles`, survey responses and periodic surveys in :mod:`surveys`.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from crm_contracts.privacy import InteractionsErasureCompleted
from crm_runtime import sealing
from crm_runtime.db import Conn
from crm_runtime.errors import AlreadyExists
from crm_runtime.uow import CommandContext
from services.interactions import promise_store, store, trust
from services.interactions.store import SERVICE

SOURCE = "/crm/interactions"


@dataclass(frozen=True)
class Context(CommandContext):
    source = SOURCE


# --- shared by the use cases (contacts too) ---------------------------------

#: The version of the digests' layout, part of every digest: a layout that
#: changes must change it (and then treat digests of the old one as matching).
DIGEST_VERSION = "1"


def key_conflict(key: str, what: str, differing: Sequence[str], *,
                 of_customer: bool = True) -> AlreadyExists:
    """The refusal of a key used for a different request (``of_customer``:
    keys are the customer's; False: the service's, e.g. evaluations')."""
    detail = ""
    if differing:
        detail = f" ({', '.join(differing)} {'differs' if len(differing) == 1 else 'differ'})"
    whose = " of this customer" if of_customer else ""
    return AlreadyExists(f"idempotency_key {key!r}: already used for a different "
                         f"{what}{whose}{detail}")


def json_digest(values: Sequence[object]) -> bytes:
    """The digest of a request's stated values (JSON, so any text goes)."""
    text = json.dumps([DIGEST_VERSION, *values], default=str, sort_keys=True,
                      separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


# --- customers: erasure and merges ------------------------------------------

async def customers_registered(conn: Conn,
                               customers: Sequence[tuple[uuid.UUID, str]]) -> None:
    """``customer.registered``: these (customer, time zone) exist (one
    statement for a batch)."""
    await store.register_customers(conn, customers)


async def scrub_customer(conn: Conn, ctx: Context, customer_id: uuid.UUID,
                         at: datetime) -> None:
    """``customer.erased`` at ``at``: notes and contact details go; counts
    and scores stay. The id is no known customer any more: new records of it
    are refused, and it is never contacted (:func:`trust.erase`). Acknowledged
    with ``interactions.erasure_completed`` in the same transaction, whatever
    was held (the inbox makes it once per erasure)."""
    await store.scrub_customer(conn, customer_id)
    await promise_store.forget_segments(conn, customer_id)
    await sealing.forget(conn, str(customer_id))
    await trust.erase(conn, customer_id, at)
    now = ctx.clock.now()
    await ctx.events.emit(conn, customer_id, [InteractionsErasureCompleted(
        customer_id=str(customer_id), service=SERVICE, erased_at=now)], time=now)


async def repoint_customer(conn: Conn, survivor: uuid.UUID, merged: uuid.UUID) -> None:
    """``customer.merged``: the merged customer's records move to the
    survivor, and records that arrive later under the merged id follow; a
    key both used is kept twice, the merged one's renamed
    (:func:`store.repoint_customer`). The survivor keeps do-not-contact
    from either and the newer surveys decision (:func:`trust.merge`)."""
    await trust.merge(conn, survivor, merged)
    await store.repoint_customer(conn, survivor, merged)
    await promise_store.forget_segments(conn, merged)


async def segments_changed(conn: Conn,
                           changes: Sequence[tuple[uuid.UUID, str, bool, datetime]]) -> None:
    """``customer.segment_entered`` / ``customer.segment_left``: rows of
    (customer, segment, member, changed_at); entitlements read them when a
    case opens. The latest change per customer and segment wins."""
    await promise_store.apply_segment_changes(conn, changes)
