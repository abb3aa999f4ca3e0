"""Who is this contact, and is this customer one? Interactions does not own
customers: the customers service does.

* Unknown contacts (an email or a phone, no customer id) are registered
  through the customers service, which returns the existing customer when it
  already knows the email or phone (registration is idempotent there), or a
  new potential customer.
* A customer id a request states (the contact's customer, the requester and
  decision-maker of indirect attention, the customer of a case or survey)
  must be a customer: ``known_customers`` (fed by ``customer.registered``,
  emptied of erased customers, merged ids known through their alias) holds
  the ones this service knows; an id not in it is looked up with
  ``GetCustomer`` (:meth:`CustomerDirectory.lookup`) and remembered when the
  customers service has it. Not found, or erased: unknown.

* A proactive contact passes the customers service's contact gate
  (``ReserveContacts``, :attr:`CustomerDirectory.gate`, on the same channel;
  :meth:`CustomerDirectory.reserve_contacts` keeps a consumed batch's
  decisions for its handler).

The ingest consumer asks once per batch, before the batch's transaction
opens (:meth:`CustomerDirectory.prepare`, the subscription's prepare step):
one ``RegisterCustomers`` call for up to :data:`MAX_PER_CALL` contact points,
and one query of ``known_customers`` for the batch's stated ids (then a
``GetCustomer`` call per id it does not know, a few at a time), so no
transaction waits on the network and a batch of unknown contacts costs one
round trip, not one each. See docs/decisions/0008 and 0038.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice

import asyncpg
import grpc

from crm.customers.v1 import customers_pb2, customers_pb2_grpc
from crm_contracts.interactions import ContactReceived
from crm_runtime import ids, limits, logs
from crm_runtime.consumer import Seen
from crm_runtime.contact_gate import ContactDecision, ContactGate, ContactRequest
from crm_runtime.errors import InvalidArgument
from crm_runtime.events import Envelope
from crm_runtime.grpc_client import failure, open_channel
from crm_runtime.settings import Settings
from services.interactions import store

log = logging.getLogger(__name__)

#: Most registrations in one ``RegisterCustomers`` call: the limit the
#: customers service's contract states (customers.proto).
MAX_PER_CALL = limits.limits_of(
    customers_pb2.RegisterCustomersRequest.DESCRIPTOR.fields_by_name["customers"]).max_items
#: Deadline of one call; a thousand registrations take about a second.
TIMEOUT_S = 30.0
#: Deadline of one ``GetCustomer`` call.
LOOKUP_TIMEOUT_S = 10.0
#: ``GetCustomer`` calls in flight at once (the customers service has no
#: call that looks up many ids).
LOOKUPS_AT_ONCE = 16
#: Events whose stated customers :meth:`CustomerDirectory.prepare` checked,
#: kept for the handlers: the latest this many (about the consumer's batches
#: in flight, ten times over). An event that fell out is checked again by
#: its handler, in its transaction.
CHECKED_KEPT = 20_000
#: Stated customers of an event that are all customers (shared).
_NONE_UNKNOWN: frozenset[uuid.UUID] = frozenset()

#: An email and a phone, either of them possibly empty.
ContactPoint = tuple[str, str]


@dataclass(frozen=True)
class Refused:
    """The customers service refused a contact point: the contact's field
    (``contact_email`` or ``contact_phone``) and what is wrong with it."""

    field: str
    problem: str


#: What registering one contact point gave: its customer, or the refusal.
Resolution = uuid.UUID | Refused


def stated_customers(data: ContactReceived) -> list[tuple[str, uuid.UUID]]:
    """The customer ids a contact states, each with its field: its
    ``customer_id`` and, for indirect attention, the requester and the
    decision-maker. An id that is not a UUID is left out (the contact's
    validation names it)."""
    stated = [("customer_id", data.customer_id)]
    if data.attention != "direct" and data.attention.strip().lower() == "indirect":
        stated += [("requester_customer_id", data.requester_customer_id),
                   ("decision_maker_customer_id", data.decision_maker_customer_id)]
    found = []
    for name, text in stated:
        if text:
            try:
                found.append((name, ids.read_uuid(text)))
            except ValueError:
                continue
    return found


class CustomerDirectory:
    def __init__(self, target: str, token: str | None,
                 pool: asyncpg.Pool | None = None, settings: Settings | None = None) -> None:
        """``pool``: the service's, where the customers it knows are kept;
        without one (a directory that only registers), nothing is
        remembered and :meth:`prepare` checks no stated customer."""
        self._target = target
        self._settings = settings
        self._metadata = [("authorization", f"Bearer {token}")] if token else []
        self._channel: grpc.aio.Channel | None = None
        self._pool = pool
        #: By event id, what :meth:`prepare` resolved; an entry goes when its
        #: envelope does (the consumer holds a batch's envelopes until the
        #: batch is applied, retries included).
        self._resolved: dict[str, Resolution] = {}
        #: By event id, the stated customers :meth:`prepare` found unknown
        #: (empty: all are customers); the latest :data:`CHECKED_KEPT`.
        self._checked: dict[str, frozenset[uuid.UUID]] = {}
        #: The contact gate, asked on this directory's channel.
        self.gate = ContactGate(self._stub, self._metadata, target, "interactions")
        #: By contact id, the gate's decisions on a consumed batch's proactive
        #: contacts (:meth:`reserve_contacts`), for its handler; the latest
        #: :data:`CHECKED_KEPT`.
        self._decided: dict[str, ContactDecision] = {}

    def _stub(self) -> customers_pb2_grpc.CustomersStub:
        if self._channel is None:
            self._channel = open_channel(self._target, self._settings)
        return customers_pb2_grpc.CustomersStub(self._channel)

    async def prepare(self, envelopes: list[Envelope], seen: Seen) -> None:
        """Register the unknown contacts of a consumed batch (each distinct
        email and phone once) before its transaction opens, and remember each
        event's customer, or the refusal of its email or phone, for
        :meth:`customer_of`. Events resolved by an earlier attempt at the same
        batch are not asked for again, nor redeliveries of events applied
        before (``seen``: the inbox drops them, and registering their contact
        again could bring back a customer erased since); the customers they
        get are known from then on. Then check the customer ids the contacts
        state (:meth:`_check_stated`, for :meth:`unknown_of`). Raises
        ConnectionError while the customers service cannot be reached or does
        not answer (the batch waits and is retried)."""
        unknown = [(env, (data.contact_email, data.contact_phone)) for env in envelopes
                   if isinstance(data := env.data, ContactReceived) and not data.customer_id
                   and (data.contact_email or data.contact_phone)
                   and env.id not in self._resolved]
        applied = await seen([env for env, _ in unknown]) if unknown else set()
        pending: dict[ContactPoint, list[Envelope]] = {}
        for env, point in unknown:
            if env.id not in applied:
                pending.setdefault(point, []).append(env)
        points = list(pending)
        registered: list[uuid.UUID] = []
        for start in range(0, len(points), MAX_PER_CALL):
            chunk = points[start:start + MAX_PER_CALL]
            for point, resolution in zip(chunk, await self._register(chunk), strict=True):
                if isinstance(resolution, uuid.UUID):
                    registered.append(resolution)
                for env in pending[point]:
                    self._remember(env, resolution)
        if points:
            await self.remember_customers(registered)
            log.debug("registered %d unknown contact points of %d events", len(points),
                      sum(len(e) for e in pending.values()))
        await self._check_stated(envelopes)

    async def _check_stated(self, envelopes: list[Envelope]) -> None:
        """Check the customers the batch's contacts state, for
        :meth:`unknown_of`: one query for the ids not known here, a
        ``GetCustomer`` call for each of those. Events checked before (an
        earlier attempt at the batch) are left out, unless an id of theirs was
        unknown then (it may exist now)."""
        if self._pool is None:
            return
        stated: dict[str, frozenset[uuid.UUID]] = {}
        for env in envelopes:
            if (isinstance(data := env.data, ContactReceived)
                    and self._checked.get(env.id) != _NONE_UNKNOWN):
                customers = frozenset(i for _, i in stated_customers(data))
                if customers:
                    stated[env.id] = customers
        if not stated:
            return
        async with self._pool.acquire() as conn:
            missing = await store.unknown_customers(conn, frozenset().union(*stated.values()))
        absent: set[uuid.UUID] = set()
        if missing:
            found = await self.lookup(missing)
            await self.remember_customers(found)
            absent = missing - found
        for event_id, customers in stated.items():
            self._checked[event_id] = customers & absent if absent else _NONE_UNKNOWN
        excess = len(self._checked) - CHECKED_KEPT
        if excess > 0:
            for event_id in list(islice(self._checked, excess)):
                del self._checked[event_id]

    def unknown_of(self, env: Envelope[ContactReceived]) -> frozenset[uuid.UUID] | None:
        """Of the customers the contact states, those :meth:`prepare` found
        to be none (empty: all are customers); None if it did not check them."""
        return self._checked.get(env.id)

    async def lookup(self, ids: Collection[uuid.UUID]) -> set[uuid.UUID]:
        """Of ``ids``, those the customers service has as customers (a merged
        id counts: it answers with the survivor; an erased customer does
        not): a ``GetCustomer`` call per id, :data:`LOOKUPS_AT_ONCE` at a
        time. Raises ConnectionError while the customers service cannot be
        reached or does not answer."""
        if not ids:
            return set()
        gate = asyncio.Semaphore(LOOKUPS_AT_ONCE)
        metadata = [*self._metadata, ("traceparent", logs.current_traceparent())]

        async def exists(customer_id: uuid.UUID) -> bool:
            async with gate:
                return await self._exists(customer_id, metadata)

        asked = list(ids)
        answers = await asyncio.gather(*(exists(i) for i in asked))
        return {i for i, known in zip(asked, answers, strict=True) if known}

    async def _exists(self, customer_id: uuid.UUID, metadata: list[tuple[str, str]]) -> bool:
        try:
            reply = await self._stub().GetCustomer(
                customers_pb2.GetCustomerRequest(customer_id=str(customer_id)),
                metadata=metadata, timeout=LOOKUP_TIMEOUT_S)
        except grpc.aio.AioRpcError as err:
            if err.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                return False
            # Unavailable, deadline, auth (the token needs customers:read):
            # retry later rather than refuse a customer who may exist.
            raise ConnectionError(f"customers service at {self._target}: {err.code().name} "
                                  f"{err.details()}") from None
        return not reply.erased

    async def remember_customers(self, customer_ids: Iterable[uuid.UUID]) -> None:
        """Keep these ids as known customers (the customers service gave
        them), in a statement of their own."""
        known = set(customer_ids)
        if self._pool is not None and known:
            async with self._pool.acquire() as conn:
                await store.remember_customers(conn, known)

    def _remember(self, env: Envelope, resolution: Resolution) -> None:
        if env.id in self._resolved:  # the same event twice in the batch
            return
        self._resolved[env.id] = resolution
        weakref.finalize(env, self._resolved.pop, env.id, None)

    def known_subject(self, env: Envelope[ContactReceived]) -> str | None:
        """The customer a contact is about as far as known without asking
        anyone (its stated id, or the one :meth:`prepare` resolved): what its
        dead letter is filed under, so erasing the customer destroys its key."""
        if env.data.customer_id:
            return env.data.customer_id
        resolution = self._resolved.get(env.id)
        return str(resolution) if isinstance(resolution, uuid.UUID) else None

    async def customer_of(self, env: Envelope[ContactReceived]) -> uuid.UUID:
        """The customer of a contact without a customer id: the one
        :meth:`prepare` resolved, else (an event it did not see) registered
        now, alone. InvalidArgument names the contact's refused field."""
        data = env.data
        _require_a_point(data.contact_email, data.contact_phone)
        resolution = self._resolved.get(env.id)
        if resolution is None:
            [resolution] = await self._register([(data.contact_email, data.contact_phone)])
            await self.remember_customers([resolution] if isinstance(resolution, uuid.UUID) else [])
        return _customer(resolution)

    async def identify(self, email: str, phone: str) -> uuid.UUID:
        """The customer of an email or phone, registered if new (one call),
        and known from then on."""
        _require_a_point(email, phone)
        [resolution] = await self._register([(email, phone)])
        customer_id = _customer(resolution)
        await self.remember_customers([customer_id])
        return customer_id

    async def _register(self, points: Sequence[ContactPoint]) -> list[Resolution]:
        """One ``RegisterCustomers`` call; a resolution per point, in order."""
        request = customers_pb2.RegisterCustomersRequest(customers=[
            customers_pb2.RegisterCustomerRequest(
                emails=[email] if email else [], phones=[phone] if phone else [],
                source="interactions")
            for email, phone in points])
        try:
            # The call continues the trace of the work at hand (a gRPC call's,
            # a fallback's event); a batch's call, of many traces, starts one.
            metadata = [*self._metadata, ("traceparent", logs.current_traceparent())]
            reply = await self._stub().RegisterCustomers(request, metadata=metadata,
                                                         timeout=TIMEOUT_S)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                # A customers release from before RegisterCustomers (a rolling
                # upgrade): one RegisterCustomer call a point, still before
                # any transaction.
                return [await self._register_one(point, metadata) for point in points]
            # Refused as a whole (not one contact): the consumer applies the
            # batch anyway, event by event; unreachable: retried later.
            raise failure(f"customers service at {self._target}", err) from None
        if len(reply.results) != len(points):
            raise ConnectionError(f"customers service at {self._target} answered "
                                  f"{len(reply.results)} results for {len(points)} contacts")
        return [_resolution(r) for r in reply.results]

    async def _register_one(self, point: ContactPoint,
                            metadata: list[tuple[str, str]]) -> Resolution:
        """One ``RegisterCustomer`` call (customers releases without
        ``RegisterCustomers``)."""
        email, phone = point
        request = customers_pb2.RegisterCustomerRequest(
            emails=[email] if email else [], phones=[phone] if phone else [],
            source="interactions")
        try:
            reply = await self._stub().RegisterCustomer(request, metadata=metadata,
                                                        timeout=TIMEOUT_S)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                details = err.details() or ""
                return Refused("contact_phone" if details.startswith("phones")
                               else "contact_email", details.split(": ", 1)[-1])
            raise ConnectionError(f"customers service at {self._target}: {err.code().name} "
                                  f"{err.details()}") from None
        return uuid.UUID(reply.customer.customer_id)

    async def reserve_contacts(self, requests: Sequence[ContactRequest]
                               ) -> list[ContactDecision]:
        """Ask the contact gate (``ReserveContacts``) for these contacts and
        remember the decisions for :meth:`decided`. ConnectionError while
        the customers service cannot be asked."""
        decisions = await self.gate.reserve(requests)
        self._decided.update((d.contact_id, d) for d in decisions)
        excess = len(self._decided) - CHECKED_KEPT
        if excess > 0:
            for contact_id in list(islice(self._decided, excess)):
                del self._decided[contact_id]
        return decisions

    def decided(self) -> Mapping[str, ContactDecision]:
        """The gate's latest decisions, by contact id (a consumed batch's,
        asked for before its transaction opened)."""
        return self._decided

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


def _require_a_point(email: str, phone: str) -> None:
    if not email and not phone:
        raise InvalidArgument("customer_id",
                              "required, or contact_email / contact_phone to identify them")


def _resolution(result: customers_pb2.RegisterCustomersResult) -> Resolution:
    if result.WhichOneof("result") == "error":
        # "customers[3].phones[0]": the contact's phone; anything else its email.
        field = result.error.field.split("].", 1)[-1]
        return Refused("contact_phone" if field.startswith("phones") else "contact_email",
                       result.error.description)
    return uuid.UUID(result.customer.customer_id)


def _customer(resolution: Resolution) -> uuid.UUID:
    if isinstance(resolution, Refused):
        raise InvalidArgument(resolution.field, resolution.problem)
    return resolution
