"""The customer's rights over their data: consent per purpose and
do-not-contact, erasure of personal data, and the data-subject export of
everything held. Each runs in the caller's transaction and emits what it
changes, like every use case in :mod:`commands`."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from crm_contracts.customers import ConsentChanged, CustomerErased
from crm_contracts.vocabulary import DO_NOT_CONTACT, ConsentPurpose
from crm_runtime import scheduler, sealing
from crm_runtime.db import Conn
from crm_runtime.errors import InvalidArgument
from services.customers import commands, domain, erasures, memberships, reservations, store


async def set_consent(conn: Conn, ctx: commands.Context, customer_id: uuid.UUID, *, purpose: str,
                      granted: bool, source: str,
                      at: datetime | None = None) -> store.CustomerRecord:
    """Record the customer's decision on ``purpose`` (a consent purpose, or
    ``do_not_contact``) made at ``at`` (default now) and publish it as one
    ``customer.consent_changed``. The latest decision wins: one older than
    the decision held (a withdrawal relayed late, a replayed event) changes
    nothing, so a withdrawal is undone only by a newer grant. Do-not-contact
    is kept as the customer's flag and, with its time and source, beside the
    consents."""
    allowed = [p.value for p in ConsentPurpose] + [DO_NOT_CONTACT]
    if purpose not in allowed:
        raise InvalidArgument("purpose", f"{purpose!r} is not one of {allowed}")
    rec = await store.load(conn, customer_id, lock=True)
    commands.require_active(rec)
    now = ctx.clock.now()
    at = at or now
    held = next((c for c in rec.consents if c.purpose == purpose), None)
    if held is not None and (at < held.at or held.granted == granted):
        return rec  # a newer decision is held, or nothing changes
    if held is None and purpose == DO_NOT_CONTACT and rec.do_not_contact == granted:
        return rec
    if purpose == DO_NOT_CONTACT:
        rec.do_not_contact = granted
    await store.set_consent(conn, rec.customer_id, purpose, granted, at, source)
    await store.save_core(conn, rec, now)
    await commands.emit_named(conn, ctx, rec.customer_id, ConsentChanged(
        customer_id=str(rec.customer_id), purpose=purpose, granted=granted, source=source,
        changed_at=at))
    await memberships.refresh(conn, ctx, [rec.customer_id], "consent")
    return await store.load(conn, rec.customer_id)


async def erase(conn: Conn, ctx: commands.Context, customer_id: uuid.UUID) -> None:
    """Remove personal data; the id, stage and counts stay for integrity.
    Erasing twice is a no-op (no second event). A merged id erases its
    survivor: the person. The other services' acknowledgements are awaited
    from now (:func:`erasures.request`)."""
    rec = await store.load(conn, customer_id, lock=True, full=False)
    if rec.erased_at is not None:
        return
    customer_id = rec.customer_id
    now = ctx.clock.now()
    await store.scrub(conn, customer_id)
    await memberships.forget(conn, customer_id)
    await sealing.forget(conn, str(customer_id))
    rec.display_name = ""
    rec.profile = {}
    rec.do_not_contact = True
    rec.erased_at = now
    await store.save_core(conn, rec, now)
    await scheduler.cancel(conn, commands.CHURN, str(customer_id))
    await erasures.request(conn, customer_id, now, ctx.erasure_ack_timeout)
    await commands.emit_named(conn, ctx, customer_id, CustomerErased(customer_id=str(customer_id)))


async def export(conn: Conn, ctx: commands.Context, customer_id: uuid.UUID) -> dict[str, Any]:
    """Everything held about the customer, a JSON object (data-subject access):
    every column of :data:`store.EXPORT_COLUMNS` (the segments as published:
    the stored membership). A merged id exports its survivor."""
    rec = await store.load(conn, customer_id)
    cid = rec.customer_id
    history = await store.stage_history(conn, cid)
    bought = await store.purchases(conn, cid)
    links = await store.links(conn, cid)
    signals = await store.risk_signal_rows(conn, cid)
    aliases = await store.aliases(conn, cid)
    document = domain.export_document(rec, history=history, purchases=bought, links=links,
                                      risk_signals=signals, aliases=aliases,
                                      segments=await memberships.held_by(conn, cid),
                                      contacts=await reservations.contact_rows(conn, cid))
    return document
