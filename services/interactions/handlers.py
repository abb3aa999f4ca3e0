"""Event handlers of the interactions service.

* ``contact.received`` on the ingest topic: a whole consumed batch becomes one
  bulk insert (:func:`commands.record_contacts`); a contact that fails
  validation is dead-lettered with the field and the problem.
* ``customer.erased`` / ``customer.merged`` on ``crm.customers.v1``: scrub or
  re-point this service's records.
* Scheduled work: breach warnings and breaches of case promises.
"""

from __future__ import annotations

import uuid

from crm_contracts.customers import CustomerErased, CustomersMerged
from crm_contracts.interactions import ContactReceived
from crm_runtime import logs
from crm_runtime.consumer import BatchHandler
from crm_runtime.convert import parse_uuid
from crm_runtime.db import Conn
from crm_runtime.errors import InvalidArgument
from crm_runtime.events import Envelope, PoisonMessage
from crm_runtime.scheduler import DueWork, WorkHandler
from services.interactions import commands
from services.interactions.directory import CustomerDirectory


async def to_contact(data: ContactReceived, directory: CustomerDirectory) -> commands.Contact:
    if data.customer_id:
        customer_id = parse_uuid(data.customer_id, "customer_id")
    else:
        customer_id = await directory.identify(data.contact_email, data.contact_phone)
    return commands.check_contact(
        idempotency_key=data.idempotency_key, customer_id=customer_id, channel=data.channel,
        direction=data.direction, kind=data.kind, occurred_at=data.occurred_at,
        attention=data.attention, requester_id=data.requester_customer_id,
        decision_maker_id=data.decision_maker_customer_id, touchpoint=data.touchpoint,
        agent=data.agent, unit=data.unit, outcome=data.outcome, notes=data.notes,
        amount_minor=data.amount_minor, currency=data.currency)


def on_contacts(ctx: commands.Context, directory: CustomerDirectory) -> BatchHandler:
    async def handle(conn: Conn, events: list[Envelope]) -> None:
        contacts = []
        for env in logs.each(events):
            assert isinstance(env.data, ContactReceived)
            try:
                contacts.append(await to_contact(env.data, directory))
            except InvalidArgument as exc:
                # The runtime re-runs the batch record by record and dead-letters this one.
                raise PoisonMessage("invalid_contact", str(exc)) from None
        await commands.record_contacts(conn, ctx, contacts)

    return handle


def on_customer_erased() -> BatchHandler:
    async def handle(conn: Conn, events: list[Envelope]) -> None:
        for env in logs.each(events):
            assert isinstance(env.data, CustomerErased)
            await commands.scrub_customer(conn, uuid.UUID(env.data.customer_id))

    return handle


def on_customers_merged() -> BatchHandler:
    async def handle(conn: Conn, events: list[Envelope]) -> None:
        for env in logs.each(events):
            assert isinstance(env.data, CustomersMerged)
            await commands.repoint_customer(conn, uuid.UUID(env.data.customer_id),
                                            uuid.UUID(env.data.merged_customer_id))

    return handle


def on_breach_warning(ctx: commands.Context) -> WorkHandler:
    async def run(conn: Conn, work: DueWork) -> None:
        await commands.warn_breach(conn, ctx, uuid.UUID(work.key))

    return run


def on_breach(ctx: commands.Context) -> WorkHandler:
    async def run(conn: Conn, work: DueWork) -> None:
        await commands.breach(conn, ctx, uuid.UUID(work.key))

    return run
