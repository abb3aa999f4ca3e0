"""Event handlers of the interactions service.

* ``contact.received`` on the ingest topic: a whole consumed batch becomes one
  bulk insert (:func:`commands.record_contacts`); a contact that fails
  validation is dead-lettered with the field and the problem. Contacts of
  someone unknown were registered with the customers service before the
  batch's transaction opened (:meth:`CustomerDirectory.prepare`, the
  subscription's prepare step); the handler reads the customer id it got.
* ``customer.erased`` / ``customer.merged`` on ``crm.customers.v1``: scrub or
  re-point this service's records.
* Scheduled work: breach warnings and breaches of case promises.
"""

from __future__ import annotations

import uuid

from crm_contracts.customers import CustomerErased, CustomersMerged
from crm_contracts.interactions import ContactReceived
from crm_runtime import logs
from crm_runtime.convert import parse_uuid
from crm_runtime.db import Conn
from crm_runtime.errors import InvalidArgument
from crm_runtime.events import Envelope, PoisonMessage
from crm_runtime.scheduler import DueWork, WorkHandler
from crm_runtime.service import Route, on
from services.interactions import commands
from services.interactions.directory import CustomerDirectory


async def to_contact(env: Envelope[ContactReceived],
                     directory: CustomerDirectory) -> commands.Contact:
    """The contact of an ingested event, its customer identified."""
    data = env.data
    if data.customer_id:
        customer_id = parse_uuid(data.customer_id, "customer_id")
    else:
        customer_id = await directory.customer_of(env)
    return commands.check_contact(
        idempotency_key=data.idempotency_key, customer_id=customer_id, channel=data.channel,
        direction=data.direction, kind=data.kind, occurred_at=data.occurred_at,
        attention=data.attention, requester_id=data.requester_customer_id,
        decision_maker_id=data.decision_maker_customer_id, touchpoint=data.touchpoint,
        agent=data.agent, unit=data.unit, outcome=data.outcome, notes=data.notes,
        amount_minor=data.amount_minor, currency=data.currency)


def on_contacts(ctx: commands.Context, directory: CustomerDirectory) -> Route:
    async def handle(conn: Conn, events: list[Envelope[ContactReceived]]) -> None:
        contacts = []
        for env in logs.each(events):
            try:
                contacts.append(await to_contact(env, directory))
            except InvalidArgument as exc:
                # The runtime re-runs the batch record by record and dead-letters this one.
                raise PoisonMessage("invalid_contact", str(exc)) from None
        await commands.record_contacts(conn, ctx, contacts)

    return on(ContactReceived, handle)


def on_customer_erased() -> Route:
    async def handle(conn: Conn, events: list[Envelope[CustomerErased]]) -> None:
        for env in logs.each(events):
            await commands.scrub_customer(conn, uuid.UUID(env.data.customer_id))

    return on(CustomerErased, handle)


def on_customers_merged() -> Route:
    async def handle(conn: Conn, events: list[Envelope[CustomersMerged]]) -> None:
        for env in logs.each(events):
            await commands.repoint_customer(conn, uuid.UUID(env.data.customer_id),
                                            uuid.UUID(env.data.merged_customer_id))

    return on(CustomersMerged, handle)


def on_breach_warning(ctx: commands.Context) -> WorkHandler:
    async def run(conn: Conn, work: DueWork) -> None:
        await commands.warn_breach(conn, ctx, uuid.UUID(work.key))

    return run


def on_breach(ctx: commands.Context) -> WorkHandler:
    async def run(conn: Conn, work: DueWork) -> None:
        await commands.breach(conn, ctx, uuid.UUID(work.key))

    return run
