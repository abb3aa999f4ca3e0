"""Event handlers of the interactions service.

* ``contact.received`` on the ingest topic: a whole consumed batch becomes one
  bulk insert (:func:`contacts.record_contacts`); a contact that fails
  validation is dead-lettered with the field and the problem
  (``invalid_contact``), one stating a customer id that is no customer as
  ``unknown_customer`` (replayable once the customer exists), one repeating
  a key its customer used for a different contact as
  ``idempotency_conflict``. Contacts of someone unknown were registered with
  the customers service, and the stated customer ids checked, before the
  batch's transaction opened (:meth:`CustomerDirectory.prepare`, the
  subscription's prepare step); the handler reads what it found. A
  proactive contact the customer's trust forbids is not dead-lettered: it
  is recorded as suppressed and published (``contact.suppressed``), a
  decision and not bad input, and the batch goes on.
* ``customer.registered`` / ``customer.erased`` / ``customer.merged`` on
  ``crm.customers.v1``: know the customer (and their time zone); scrub this
  service's records and forget the customer, keeping them as never to be
  contacted, and acknowledge it (``interactions.erasure_completed``);
  re-point the records and merge the consent.
* ``customer.consent_changed`` on ``crm.customers.v1``: the consent view
  (:func:`trust.consent_changed`); a customer not heard of yet is stored
  with the decision, not dead-lettered (their registration may be late).
* ``customer.segment_entered`` / ``customer.segment_left``: the segments a
  customer is in, for the entitlements of the cases they open.
* Scheduled work: breach warnings and breaches of each milestone of a case's
  promise (keyed ``<case>/<milestone>``, :mod:`cases`); the open cases of a
  calendar moved to its new version, a page at a time (:mod:`calendars`); survey
  requests of resolved cases and of periodic surveys (the contact gate
  asked first, :func:`trust.request_survey`); the runs of service cycles'
  periodic surveys, a page of the segment at a time
  (:func:`surveys.run_periodic`).

Proactive contacts pass the contact gate of the customers service: a
batch's are asked for before its transaction opens (:func:`prepare_contacts`),
and one the gate refuses is suppressed like one of a customer with
do-not-contact.
"""

from __future__ import annotations

import uuid
from typing import cast

from crm_contracts.customers import (
    ConsentChanged,
    CustomerErased,
    CustomerRegistered,
    CustomersMerged,
    SegmentEntered,
    SegmentLeft,
)
from crm_contracts.interactions import ContactReceived
from crm_runtime import logs
from crm_runtime.consumer import Prepare, Seen
from crm_runtime.convert import parse_uuid
from crm_runtime.db import Conn
from crm_runtime.errors import AlreadyExists, InvalidArgument
from crm_runtime.events import Envelope, EventPayload, PoisonMessage
from crm_runtime.scheduler import DueWork, WorkHandler
from crm_runtime.service import Route, on
from services.interactions import calendars, cases, commands, contacts, store, surveys, trust
from services.interactions.directory import CustomerDirectory, stated_customers
from services.interactions.domain import Decision

#: Dead-letter kinds of contacts, besides the runtime's.
INVALID_CONTACT = "invalid_contact"
UNKNOWN_CUSTOMER = "unknown_customer"
IDEMPOTENCY_CONFLICT = "idempotency_conflict"


async def to_contact(env: Envelope[ContactReceived], directory: CustomerDirectory,
                     ctx: commands.Context) -> contacts.Contact:
    """The contact of an ingested event, its customer identified."""
    data = env.data
    if data.customer_id:
        customer_id = parse_uuid(data.customer_id, "customer_id")
    else:
        customer_id = await directory.customer_of(env)
    return _checked(data, customer_id, ctx)


def _checked(data: ContactReceived, customer_id: uuid.UUID,
             ctx: commands.Context) -> contacts.Contact:
    """The contact ``data`` describes, of ``customer_id``, validated."""
    return contacts.check_contact(
        idempotency_key=data.idempotency_key, customer_id=customer_id, channel=data.channel,
        direction=data.direction, kind=data.kind, occurred_at=data.occurred_at,
        now=ctx.clock.now(), attention=data.attention,
        requester_id=data.requester_customer_id,
        decision_maker_id=data.decision_maker_customer_id, touchpoint=data.touchpoint,
        agent=data.agent, unit=data.unit, outcome=data.outcome, notes=data.notes,
        amount_minor=data.amount_minor, currency=data.currency, case_id=data.case_id,
        cause=data.cause)


async def require_customers(conn: Conn, directory: CustomerDirectory,
                            events: list[Envelope[ContactReceived]]) -> None:
    """PoisonMessage (``unknown_customer``, naming the field and the id) for
    the first contact stating a customer id that is no customer. What
    :meth:`CustomerDirectory.prepare` checked is taken from it; the ids of
    events it did not check are checked here (one query, and a
    ``GetCustomer`` call for each id not known here)."""
    unchecked: list[tuple[str, uuid.UUID]] = []
    for env in events:
        unknown = directory.unknown_of(env)
        if unknown is None:
            unchecked += stated_customers(env.data)
            continue
        for field, customer_id in stated_customers(env.data) if unknown else ():
            if customer_id in unknown:
                raise PoisonMessage(UNKNOWN_CUSTOMER, f"{field}: customer '{customer_id}' "
                                                      "not found")
    if not unchecked:
        return
    missing = await store.unknown_customers(conn, (i for _, i in unchecked))
    if missing:
        found = await directory.lookup(missing)
        await store.remember_customers(conn, found)
        for field, customer_id in unchecked:
            if customer_id in missing and customer_id not in found:
                raise PoisonMessage(UNKNOWN_CUSTOMER, f"{field}: customer '{customer_id}' "
                                                      "not found")


def on_contacts(ctx: commands.Context, directory: CustomerDirectory) -> Route:
    async def handle(conn: Conn, events: list[Envelope[ContactReceived]]) -> None:
        # A record raising PoisonMessage makes the runtime re-run the batch
        # record by record and dead-letter that one alone.
        batch = []
        for env in logs.each(events):
            try:
                batch.append(await to_contact(env, directory, ctx))
            except InvalidArgument as exc:
                raise PoisonMessage(INVALID_CONTACT, str(exc),
                                    subject=directory.known_subject(env)) from None
        await require_customers(conn, directory, events)
        batch, _ = await contacts.screen(conn, ctx, batch, directory.reserve_contacts,
                                         directory.decided())
        about = str(batch[0].customer_id) if len(batch) == 1 else None
        try:
            await contacts.record_contacts(conn, ctx, batch)
        except AlreadyExists as exc:
            # Refused alone (the runtime re-runs the batch record by record).
            raise PoisonMessage(IDEMPOTENCY_CONFLICT, str(exc), subject=about) from None
        except InvalidArgument as exc:  # a case_id that is not the customer's
            raise PoisonMessage(INVALID_CONTACT, str(exc), subject=about) from None

    return on(ContactReceived, handle)


def prepare_contacts(directory: CustomerDirectory, ctx: commands.Context) -> Prepare:
    """The ingest subscription's step before each batch's transaction: the
    directory registers unknown contacts and checks stated customers
    (:meth:`CustomerDirectory.prepare`), then the batch's proactive contacts
    are put to the contact gate in one call (:func:`reserve_proactive`)."""
    async def prepare(envelopes: list[Envelope], seen: Seen) -> None:
        await directory.prepare(envelopes, seen)
        await reserve_proactive(envelopes, seen, directory, ctx)

    return prepare


async def reserve_proactive(envelopes: list[Envelope], seen: Seen,
                            directory: CustomerDirectory, ctx: commands.Context) -> None:
    """Ask the contact gate for a batch's proactive contacts, before its
    transaction opens: those whose customer is known without asking anyone
    and that are valid (the handler refuses the others), leaving out
    redeliveries of contacts applied before (the inbox drops them). The
    handler reads the decisions (:meth:`CustomerDirectory.decided`) and asks
    for any it lacks itself."""
    proactive: list[Envelope[ContactReceived]] = [
        cast(Envelope[ContactReceived], env) for env in envelopes
        if isinstance(env.data, ContactReceived)
        and env.data.direction.strip().lower() == "proactive"]
    if not proactive:
        return
    asked = {env.id for env in proactive}
    applied = await seen([env for env in envelopes if env.id in asked])
    requests = []
    for env in proactive:
        subject = directory.known_subject(env)
        if env.id in applied or subject is None:
            continue
        try:
            contact = _checked(env.data, parse_uuid(subject, "customer_id"), ctx)
        except InvalidArgument:
            continue
        requests.append(contacts.gate_request(contact))
    if requests:
        await directory.reserve_contacts(requests)


def on_customers_registered() -> Route:
    async def handle(conn: Conn, events: list[Envelope[CustomerRegistered]]) -> None:
        await commands.customers_registered(
            conn, [(uuid.UUID(env.data.customer_id), env.data.time_zone) for env in events])

    return on(CustomerRegistered, handle)


def on_customer_erased(ctx: commands.Context) -> Route:
    async def handle(conn: Conn, events: list[Envelope[CustomerErased]]) -> None:
        for env in logs.each(events):
            await commands.scrub_customer(conn, ctx, uuid.UUID(env.data.customer_id), env.time)

    return on(CustomerErased, handle)


def on_customers_merged() -> Route:
    async def handle(conn: Conn, events: list[Envelope[CustomersMerged]]) -> None:
        for env in logs.each(events):
            await commands.repoint_customer(conn, uuid.UUID(env.data.customer_id),
                                            uuid.UUID(env.data.merged_customer_id))

    return on(CustomersMerged, handle)


def on_consent_changed() -> Route:
    async def handle(conn: Conn, events: list[Envelope[ConsentChanged]]) -> None:
        # Events from before changed_at existed were published when decided.
        await trust.consent_changed(conn, [
            (uuid.UUID(env.data.customer_id), env.data.purpose,
             Decision(env.data.granted, env.data.changed_at or env.time)) for env in events])

    return on(ConsentChanged, handle)


def on_segment_changes() -> Route:
    async def handle(conn: Conn, events: list[Envelope[EventPayload]]) -> None:
        changes = [cast(SegmentEntered | SegmentLeft, env.data) for env in events]
        await commands.segments_changed(conn, [
            (uuid.UUID(c.customer_id), c.segment, isinstance(c, SegmentEntered), c.changed_at)
            for c in changes])

    return on((SegmentEntered, SegmentLeft), handle)


def on_survey_request(ctx: commands.Context, directory: CustomerDirectory) -> WorkHandler:
    async def run(conn: Conn, work: DueWork) -> None:
        await trust.request_survey(conn, ctx, directory.gate, work)

    return run


def on_periodic_survey(ctx: commands.Context) -> WorkHandler:
    async def run(conn: Conn, work: DueWork) -> None:
        await surveys.run_periodic(conn, ctx, work)

    return run


def on_move_open_cases(ctx: commands.Context) -> WorkHandler:
    async def run(conn: Conn, work: DueWork) -> None:
        await calendars.move_open_cases(conn, ctx, work)

    return run


def on_breach_warning(ctx: commands.Context) -> WorkHandler:
    async def run(conn: Conn, work: DueWork) -> None:
        await cases.warn_breach(conn, ctx, *cases.parse_work_key(work.key))

    return run


def on_breach(ctx: commands.Context) -> WorkHandler:
    async def run(conn: Conn, work: DueWork) -> None:
        await cases.breach(conn, ctx, *cases.parse_work_key(work.key))

    return run
