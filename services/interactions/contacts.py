"""Contacts, the moments of truth: validating one, recording them, reading a
customer's timeline.

Contacts are recorded in bulk (:func:`record_contacts`): the gRPC call
records one, the ingest consumer records a whole batch with one INSERT,
which is what lets channels publish thousands of contacts per second. Each
is stored once per customer and idempotency key; a repeat is compared on the
digest of its request (:func:`contact_digest`). Before that, :func:`screen`
stops the proactive contacts the customer's trust forbids (do-not-contact,
erased): they are recorded as suppressed, not stored.

Separate from :mod:`commands` because it is the service's hot path and its
largest use case, readable on its own. It builds on :mod:`commands` (its
:class:`~commands.Context`, the case a contact opens, the helpers shared by
every idempotent command); :mod:`commands` never imports it.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from typing import Any

from crm_contracts.interactions import (
    ContactOutsideQuietHours,
    DissatisfactionSignal,
    InteractionRecorded,
)
from crm_contracts.times import check_event_time
from crm_runtime import ids, logs, uow
from crm_runtime.contact_gate import ContactDecision, ContactRequest
from crm_runtime.convert import parse_uuid
from crm_runtime.db import Conn
from crm_runtime.errors import InvalidArgument
from crm_runtime.events import Envelope, EventPayload
from services.interactions import cases, cycles, domain, metrics, store, trust
from services.interactions.commands import DIGEST_VERSION, Context, key_conflict
from services.interactions.store import SERVICE


@dataclass
class Contact:
    """A validated contact, ready to store. ``customer_id`` is resolved."""

    idempotency_key: str
    customer_id: uuid.UUID
    channel: str
    direction: str
    kind: str
    occurred_at: datetime
    attention: str = "direct"
    requester_id: uuid.UUID | None = None
    decision_maker_id: uuid.UUID | None = None
    touchpoint: str = ""
    agent: str = ""
    unit: str = ""
    outcome: str = "neutral"
    notes: str = ""
    amount_minor: int = 0
    currency: str = ""
    interaction_id: uuid.UUID = field(default_factory=ids.uuid4)
    #: The trace this contact arrived in; its events continue it.
    traceparent: str = field(default_factory=logs.current_traceparent)
    #: What the request stated (:func:`contact_digest`); None matches any.
    request_digest: bytes | None = None
    #: False when ``occurred_at`` was not given and is the time it was recorded.
    time_stated: bool = True
    #: A proactive contact the gate found made in the customer's quiet hours.
    outside_quiet_hours: bool = False
    #: The open case the contact is about (:func:`cases.contact_on_case`).
    case_id: uuid.UUID | None = None
    #: Why the customer is dissatisfied (a negative contact or a complaint).
    cause: str = ""


#: The fields of a contact its digest covers besides ``occurred_at``, in
#: order; they are columns of ``interactions`` too.
CONTACT_FIELDS = ("channel", "direction", "kind", "attention", "requester_id",
                  "decision_maker_id", "touchpoint", "agent", "unit", "outcome", "notes",
                  "amount_minor", "currency", "cause")
#: The fields added after digests were first kept: part of a digest only
#: when stated, so a retry of a request from before them still matches.
_LATER_FIELDS = ("cause",)


def contact_digest(contact: Contact) -> bytes:
    """The digest of what a contact's request stated, after normalisation:
    the :data:`CONTACT_FIELDS` and ``occurred_at`` (as an instant, whatever its
    offset; left out when the request did not state it, so a retry recorded
    at another moment is still the same request). Not the customer nor the
    key: they are the key's scope. 16 bytes of BLAKE2b over the values joined
    by NUL, which no text of a contact may hold (:func:`check_contact`)."""
    parts = [DIGEST_VERSION]
    for name in CONTACT_FIELDS:
        if name not in _LATER_FIELDS:
            value = getattr(contact, name)
            parts.append("" if value is None else str(value))
    parts.append(repr(contact.occurred_at.timestamp()) if contact.time_stated else "")
    if contact.case_id is not None:  # digests of contacts on no case stay as they were
        parts.append(str(contact.case_id))
    # Likewise for the later fields (named: a value never reads as a case id).
    parts += [f"{name}={value}" for name in _LATER_FIELDS if (value := getattr(contact, name))]
    return hashlib.blake2b("\x00".join(parts).encode(), digest_size=16).digest()


def check_contact(*, idempotency_key: str, customer_id: uuid.UUID, channel: str,
                  direction: str, kind: str, occurred_at: datetime | None, now: datetime,
                  attention: str = "", requester_id: str = "", decision_maker_id: str = "",
                  touchpoint: str = "", agent: str = "", unit: str = "", outcome: str = "",
                  notes: str = "", amount_minor: int = 0, currency: str = "",
                  case_id: str = "", cause: str = "") -> Contact:
    """Validate a contact's fields, naming the first bad one. ``occurred_at``
    None (not given) is ``now``, the service's time; a given one must be an
    event time (``crm_contracts.times.check_event_time``: not before 2000,
    at most 15 minutes after ``now``). A ``cause`` (one of
    :data:`domain.CAUSES`) is stated by a negative contact or a complaint
    only."""
    # Lengths and NUL characters were refused at the edge: the request's
    # limits (gRPC) or the payload's (the ingest topic), written once each.
    key = idempotency_key.strip()
    if not key:
        raise InvalidArgument("idempotency_key", "required")
    stated = occurred_at is not None
    when = check_event_time(occurred_at, now) if occurred_at is not None else now
    mode = domain.check_choice("attention.mode", attention, ("direct", "indirect"), "direct")
    requester = decider = None
    if mode == "indirect":
        if not requester_id or not decision_maker_id:
            raise InvalidArgument("attention", "indirect attention needs requester and "
                                               "decision-maker customer ids")
        requester = parse_uuid(requester_id, "attention.requester_customer_id")
        decider = parse_uuid(decision_maker_id, "attention.decision_maker_customer_id")
    kind = domain.check_choice("kind", kind, domain.KINDS)
    code = currency.strip().upper()
    if kind == "purchase":
        if amount_minor < 0:
            raise InvalidArgument("amount.amount_minor", "must not be negative")
        if len(code) != 3 or not code.isalpha():
            raise InvalidArgument("amount.currency", f"{currency!r} is not an ISO 4217 code")
    elif amount_minor:
        raise InvalidArgument("amount", "only purchases carry an amount")
    result = domain.check_choice("outcome", outcome, domain.OUTCOMES, "neutral")
    contact = Contact(
        idempotency_key=key, customer_id=customer_id,
        channel=domain.check_choice("channel", channel, domain.CHANNELS),
        direction=domain.check_choice("direction", direction, domain.DIRECTIONS, "reactive"),
        kind=kind, occurred_at=when, attention=mode, requester_id=requester,
        decision_maker_id=decider, touchpoint=touchpoint.strip(), agent=agent.strip(),
        unit=unit.strip(), outcome=result, notes=notes,
        amount_minor=amount_minor if kind == "purchase" else 0,
        currency=code if kind == "purchase" else "", time_stated=stated,
        case_id=parse_uuid(case_id, "case_id") if case_id.strip() else None,
        cause=domain.check_cause(cause, kind, result))
    contact.request_digest = contact_digest(contact)
    return contact


def _check_contact_repeat(contact: Contact, stored: Any) -> None:
    """AlreadyExists unless ``stored`` (the customer's contact of the same
    key) was recorded from the same request, or before digests were kept."""
    if stored["request_digest"] is None or stored["request_digest"] == contact.request_digest:
        return
    differing = [name for name in CONTACT_FIELDS if stored[name] != getattr(contact, name)]
    if contact.time_stated and stored["occurred_at"] != contact.occurred_at:
        differing.append("occurred_at")
    if contact.case_id is not None and stored["case_id"] != contact.case_id:
        differing.append("case_id")
    if not differing and not contact.time_stated:
        differing.append("occurred_at")  # stated in one request, not in the other
    raise key_conflict(contact.idempotency_key, "contact", differing)


#: Asks the contact gate (:meth:`CustomerDirectory.reserve_contacts`).
Reserve = Callable[[Sequence[ContactRequest]], Awaitable[list[ContactDecision]]]


def gate_request(contact: Contact) -> ContactRequest:
    """What the contact gate is asked for a proactive contact: purpose
    service, when it occurred, made already (so quiet hours do not refuse
    it); its id derives from the customer as stated and the key, so a retry
    asks with the same id and is never counted twice."""
    return ContactRequest(
        contact_id=str(trust.contact_id(trust.PROACTIVE_CONTACT, contact.customer_id,
                                        contact.idempotency_key)),
        customer_id=contact.customer_id, purpose=trust.SERVICE_PURPOSE,
        at=contact.occurred_at, channel=contact.channel, already_made=True)


async def screen(conn: Conn, ctx: Context, contacts: list[Contact], reserve: Reserve,
                 decided: Mapping[str, ContactDecision] | None = None
                 ) -> tuple[list[Contact], list[trust.Suppression]]:
    """The contacts that may be recorded, and the suppressions of those that
    may not. A proactive contact passes two checks: the customer's trust as
    this service knows it (:func:`domain.proactive_refusal`: do-not-contact,
    erased; the customer or, merged away, their survivor), then the contact
    gate (:func:`gate_request`; the decisions ``decided`` holds, else asked
    now with ``reserve``: the frequency cap across every service, and the
    customers service's own consent). One refused is recorded in
    ``suppressed_contacts`` and published as ``contact.suppressed``, once per
    customer and idempotency key; one the gate found made in the customer's
    quiet hours is marked (:attr:`Contact.outside_quiet_hours`). A contact
    the customer started is never stopped, nor a repeat of a key stored
    before (it answers with the stored contact). Costs nothing for a batch
    without proactive contacts."""
    proactive = [c for c in contacts if c.direction == "proactive"]
    if not proactive:
        return contacts, []
    merged = await store.survivors(conn, [c.customer_id for c in proactive])
    held = await trust.views(conn, {merged.get(c.customer_id, c.customer_id) for c in proactive})
    reasons = {id(c): domain.proactive_refusal(held.get(merged.get(c.customer_id,
                                                                   c.customer_id)))
               for c in proactive}
    asked = [c for c in proactive if reasons[id(c)] is None]
    for c, decision in zip(asked, await _decisions(asked, reserve, decided or {}), strict=True):
        if not decision.allowed:
            reasons[id(c)] = decision.reason
        c.outside_quiet_hours = decision.in_quiet_hours
    refused: dict[int, trust.Suppression] = {}
    for c in proactive:
        customer_id = merged.get(c.customer_id, c.customer_id)
        reason = reasons[id(c)]
        if reason is not None:
            refused[id(c)] = trust.Suppression(
                contact_id=trust.contact_id(trust.PROACTIVE_CONTACT, customer_id,
                                            c.idempotency_key),
                customer_id=customer_id, contact_type=trust.PROACTIVE_CONTACT,
                purpose=trust.SERVICE_PURPOSE, reason=reason)
    if not refused:
        return contacts, []
    stored = await store.contacts_by_keys(
        conn, [(s.customer_id, c.idempotency_key) for c in proactive
               if (s := refused.get(id(c))) is not None])
    for c in proactive:
        s = refused.get(id(c))
        if s is not None and (s.customer_id, c.idempotency_key) in stored:
            del refused[id(c)]
    await trust.suppress(conn, ctx, list(refused.values()))
    return [c for c in contacts if id(c) not in refused], list(refused.values())


async def _decisions(asked: list[Contact], reserve: Reserve,
                     decided: Mapping[str, ContactDecision]) -> list[ContactDecision]:
    """The gate's decision on each contact: taken from ``decided``, the
    others asked for now, in one call."""
    requests = [gate_request(c) for c in asked]
    missing = [r for r in requests if r.contact_id not in decided]
    fresh = {d.contact_id: d for d in await reserve(missing)} if missing else {}
    return [decided.get(r.contact_id) or fresh[r.contact_id] for r in requests]


async def record_contacts(conn: Conn, ctx: Context, contacts: list[Contact]
                          ) -> list[tuple[Contact, bool]]:
    """Store contacts once per customer and idempotency key (one INSERT for
    the batch), each under its customer or, when merged away, their
    survivor; publish ``interaction.recorded`` for the new ones and open
    cases for the kinds that need one. Returns each contact (its customer
    resolved) with ``True`` if it was new. A key the customer used before
    (or earlier in the batch) for the same request stores nothing; for a
    different request it raises AlreadyExists naming the key and the fields
    that differ. Keys are never compared across customers. Contacts are
    screened first (:func:`screen`)."""
    if not contacts:
        return []
    merged = await store.survivors(conn, [c.customer_id for c in contacts])
    if merged:
        contacts = [replace(c, customer_id=merged.get(c.customer_id, c.customer_id))
                    for c in contacts]
    now = ctx.clock.now()
    # In the order of store.CONTACT_COLUMNS.
    rows = [(c.interaction_id, c.idempotency_key, c.customer_id, c.channel, c.direction, c.kind,
             c.attention, c.requester_id, c.decision_maker_id, c.touchpoint, c.agent, c.unit,
             c.occurred_at, c.outcome, c.notes, c.amount_minor, c.currency, now,
             c.request_digest, c.cause)
            for c in contacts]
    await _check_cases(conn, contacts)
    new_keys = await store.insert_contacts(conn, rows)
    result: list[tuple[Contact, bool]] = []
    events: list[Envelope] = []
    seen: set[store.ScopedKey] = set()
    recorded: Counter[tuple[str, str]] = Counter()
    for c in contacts:
        scoped = (c.customer_id, c.idempotency_key)
        fresh = scoped in new_keys and scoped not in seen
        seen.add(scoped)
        result.append((c, fresh))
        if fresh:
            recorded[c.channel, c.kind] += 1
            customer = str(c.customer_id)
            events += [ctx.events.envelope(customer, e, time=now, traceparent=c.traceparent)
                       for e in _recorded(c)]
            if c.outside_quiet_hours:
                events.append(ctx.events.envelope(customer, ContactOutsideQuietHours(
                    interaction_id=str(c.interaction_id), customer_id=customer,
                    channel=c.channel, occurred_at=c.occurred_at),
                    time=now, traceparent=c.traceparent))
    repeats = [c for c, fresh in result if not fresh]
    if repeats:  # retries, redeliveries with a new event id: rare
        stored = await store.contacts_by_keys(
            conn, [(c.customer_id, c.idempotency_key) for c in repeats])
        for c in repeats:
            _check_contact_repeat(c, stored[c.customer_id, c.idempotency_key])
    for (channel, kind), count in recorded.items():
        uow.on_commit(partial(metrics.INTERACTIONS.labels(SERVICE, channel, kind).inc, count))
    await cycles.note_touchpoints(conn, ((c.touchpoint, "contact") for c, f in result if f))
    await ctx.events.write(conn, events)
    for c, fresh in result:
        if fresh and c.case_id is not None:
            await store.set_case_of_interaction(conn, c.interaction_id, c.case_id)
            await cases.contact_on_case(conn, ctx, c.case_id, c.direction)
        elif fresh and c.kind in domain.AUTO_CASE_KINDS:
            # Scoped as the contact's key: cases' keys are unique per customer.
            case_id = await cases.open_resolved_case(
                conn, ctx, customer_id=c.customer_id, kind=c.kind, channel=c.channel,
                unit=c.unit, summary=c.notes[:500], interaction_id=c.interaction_id,
                idempotency_key=f"interaction:{c.idempotency_key}", compare=False,
                cause=c.cause, touchpoint=c.touchpoint)
            await store.set_case_of_interaction(conn, c.interaction_id, case_id)
    return result


def _recorded(c: Contact) -> list[EventPayload]:
    """What a new contact publishes: ``interaction.recorded`` and, for a
    negative one (a bad moment of truth), a dissatisfaction signal."""
    customer = str(c.customer_id)
    events: list[EventPayload] = [InteractionRecorded(
        interaction_id=str(c.interaction_id), customer_id=customer, channel=c.channel,
        direction=c.direction, kind=c.kind, occurred_at=c.occurred_at, outcome=c.outcome,
        touchpoint=c.touchpoint, unit=c.unit, amount_minor=c.amount_minor,
        currency=c.currency, attention=c.attention,
        requester_customer_id=str(c.requester_id or ""),
        decision_maker_customer_id=str(c.decision_maker_id or ""), cause=c.cause)]
    if c.outcome == "negative":
        events.append(DissatisfactionSignal(
            customer_id=customer, reason="negative_contact", occurred_at=c.occurred_at,
            interaction_id=str(c.interaction_id), touchpoint=c.touchpoint, cause=c.cause))
    return events


async def _check_cases(conn: Conn, contacts: Sequence[Contact]) -> None:
    """InvalidArgument (``case_id``) for a contact stating a case that is not
    one of its customer's (or their survivor's): one customer's contact
    never touches another's case, nor learns whether it exists."""
    stated = {c.case_id for c in contacts if c.case_id is not None}
    if not stated:
        return
    owners = await store.case_owners(conn, stated)
    for c in contacts:
        if c.case_id is not None and owners.get(c.case_id) != c.customer_id:
            raise InvalidArgument("case_id", f"no case {c.case_id} of this customer")


async def timeline(conn: Conn, customer_id: uuid.UUID, channels: list[str], kinds: list[str],
                   after: tuple[datetime, uuid.UUID] | None, limit: int) -> list[Any]:
    """The customer's contacts (a merged-away id reads its survivor's)."""
    for i, ch in enumerate(channels):
        domain.check_choice(f"channels[{i}]", ch, domain.CHANNELS)
    for i, k in enumerate(kinds):
        domain.check_choice(f"kinds[{i}]", k, domain.KINDS)
    return await store.timeline(conn, await store.survivor(conn, customer_id), channels, kinds,
                                after, limit)
