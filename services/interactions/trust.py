"""The customer's trust: the consent view this service keeps, and the
contacts it stops.

The customers service owns consent and announces every decision as
``customer.consent_changed``; this service keeps what it needs of it
(do-not-contact and the surveys consent, each with the time of its
decision) in ``known_customers`` (:func:`consent_changed`, with erasure and
merges in :func:`erase` and :func:`merge`), by the pure rules of
:mod:`domain`. A contact those rules stop, or the customers service's
contact gate refuses (a survey request, a proactive contact), is not made:
it is recorded in ``suppressed_contacts`` and published as
``contact.suppressed`` in the same transaction (:func:`suppress`), never
dropped silently. A survey request is scheduled work of its own
(:func:`schedule_survey` for a resolved case, :func:`schedule_periodic`
for a member of a cycle's periodic survey, both run by
:func:`request_survey`), so the gate is asked in a short transaction of its
own, not in the resolution's; it carries the questions of the service
cycles' matrix for the touchpoints involved on its channel.

Every function runs in the caller's transaction.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from crm_contracts.interactions import ContactSuppressed, SurveyRequested
from crm_runtime import ids, scheduler
from crm_runtime.contact_gate import ContactGate, ContactRequest
from crm_runtime.db import Conn
from crm_runtime.events import EventPayload
from crm_runtime.scheduler import DueWork
from crm_runtime.uow import CommandContext
from services.interactions import cycles, domain, store
from services.interactions.domain import ConsentView, Decision

#: What was stopped (``contact.suppressed``'s contact_type).
SURVEY_REQUEST = "survey_request"
PROACTIVE_CONTACT = "proactive_contact"
#: The purpose of a proactive contact: service, which needs no consent
#: beyond the absence of do-not-contact.
SERVICE_PURPOSE = "service"

log = logging.getLogger(__name__)

#: Namespace of the ids of suppressed contacts (:func:`contact_id`).
_NAMESPACE = uuid.UUID("3b0f6c1e-8a52-4d7f-9e21-5c4a7d90b6e3")


def contact_id(contact_type: str, *parts: object) -> uuid.UUID:
    """The stable id of a contact that may be stopped: derived from what the
    contact is, so a retry of the same contact has the same id."""
    return ids.uuid5(_NAMESPACE, "\x1f".join([contact_type, *map(str, parts)]))


# --- the consent view -----------------------------------------------------------

def _view(row: Any) -> ConsentView:
    return ConsentView(
        do_not_contact=Decision(row["do_not_contact"], row["do_not_contact_at"]),
        surveys=Decision(row["surveys_consent"], row["surveys_consent_at"]),
        erased=row["erased_at"] is not None)


async def views(conn: Conn, customer_ids: Iterable[uuid.UUID], *,
                lock: bool = False) -> dict[uuid.UUID, ConsentView]:
    """The consent views of these customers (ids without a row are absent);
    ``lock``: locked until the transaction ends, to be written back."""
    return {r["customer_id"]: _view(r)
            for r in await store.consent_rows(conn, customer_ids, lock=lock)}


async def _save(conn: Conn, changed: dict[uuid.UUID, ConsentView]) -> None:
    await store.save_consent(conn, [
        (customer_id, v.do_not_contact.granted, v.do_not_contact.at, v.surveys.granted,
         v.surveys.at) for customer_id, v in changed.items() if not v.erased])


async def consent_changed(conn: Conn,
                          decisions: Sequence[tuple[uuid.UUID, str, Decision]]) -> None:
    """``customer.consent_changed``: apply each (customer, purpose,
    decision), in order, under the customer or, when merged away, their
    survivor (:func:`domain.apply_consent`: an older decision changes
    nothing). A customer never heard of is known from now on with the
    decision (the customers service announces consent of its customers
    only, and the registration may still be on its way or dead-lettered);
    an erased one stays erased. One read and one write for a batch."""
    if not decisions:
        return
    merged = await store.survivors(conn, (c for c, _, _ in decisions))
    held = await views(conn, {merged.get(c, c) for c, _, _ in decisions}, lock=True)
    changed: dict[uuid.UUID, ConsentView] = {}
    for customer_id, purpose, decision in decisions:
        customer_id = merged.get(customer_id, customer_id)
        view = changed.get(customer_id) or held.get(customer_id) or ConsentView()
        changed[customer_id] = domain.apply_consent(view, purpose, decision)
    await _save(conn, changed)


async def erase(conn: Conn, customer_id: uuid.UUID, at: datetime) -> None:
    """``customer.erased``: the customer is forgotten as a customer and kept
    as never to be contacted (:func:`store.forget_customer`)."""
    await store.forget_customer(conn, customer_id, at)


async def merge(conn: Conn, survivor: uuid.UUID, merged: uuid.UUID) -> None:
    """``customer.merged``: the survivor's view takes the merged one's
    (:func:`domain.merge_views`); call before the merged row goes."""
    held = await views(conn, [survivor, merged], lock=True)
    if merged in held:
        await _save(conn, {survivor: domain.merge_views(
            held.get(survivor, ConsentView()), held[merged])})


# --- suppressed contacts ------------------------------------------------------

@dataclass(frozen=True)
class Suppression:
    """A contact the trust rules stopped, and why (``reason``)."""

    contact_id: uuid.UUID
    customer_id: uuid.UUID
    contact_type: str
    purpose: str
    reason: str
    case_id: uuid.UUID | None = None
    interaction_id: uuid.UUID | None = None


def _event(s: Suppression) -> ContactSuppressed:
    return ContactSuppressed(
        contact_id=str(s.contact_id), customer_id=str(s.customer_id),
        contact_type=s.contact_type, purpose=s.purpose, reason=s.reason,
        case_id=str(s.case_id or ""), interaction_id=str(s.interaction_id or ""))


async def record_suppressed(conn: Conn, suppressions: Sequence[Suppression],
                            at: datetime) -> list[ContactSuppressed]:
    """Record suppressed contacts, each id once; returns the events of those
    recorded now, for the caller to publish in its transaction."""
    fresh = await store.insert_suppressed(conn, [
        (s.contact_id, s.customer_id, s.contact_type, s.purpose, s.reason, s.case_id,
         s.interaction_id, at) for s in suppressions])
    events = []
    for s in suppressions:
        if s.contact_id in fresh:
            fresh.discard(s.contact_id)  # the same contact twice in one call: once
            events.append(_event(s))
    return events


async def suppress(conn: Conn, ctx: CommandContext, suppressions: Sequence[Suppression]) -> None:
    """Record suppressed contacts and publish ``contact.suppressed`` for
    each recorded now (a retry of one recorded before publishes nothing)."""
    now = ctx.clock.now()
    events = await record_suppressed(conn, suppressions, now)
    await ctx.events.write(conn, [ctx.events.envelope(e.customer_id, e, time=now)
                                  for e in events])


# --- survey requests ----------------------------------------------------------

#: Scheduled work: ask a customer for a survey, the customer of a resolved
#: case (:func:`schedule_survey`) or a member of a periodic survey's segment
#: (:func:`schedule_periodic`); the payload tells which.
SURVEY_REQUEST_DUE = "surveys.request"
#: How long a survey request waits when the contact gate cannot be asked.
GATE_RETRY = timedelta(seconds=30)
#: Why a survey is asked (``survey.requested``'s reason).
CASE_RESOLVED = "case_resolved"
PERIODIC = "periodic"


async def schedule_survey(conn: Conn, row: Any, resolved_at: datetime) -> None:
    """Ask the customer of a case resolved at ``resolved_at`` (a row of
    ``cases``) how it went, as scheduled work due at once
    (:func:`request_survey`): the contact gate is asked there, in a short
    transaction of its own, not in the resolution's. One request per
    resolution (a reopened case resolved again asks again)."""
    key = contact_id(SURVEY_REQUEST, row["case_id"], resolved_at.isoformat())
    await scheduler.schedule(conn, SURVEY_REQUEST_DUE, str(key), resolved_at, {
        "case_id": str(row["case_id"]), "resolved_at": resolved_at.isoformat()})


async def schedule_periodic(conn: Conn, cycle: str, version: int, channel: str,
                            run_at: datetime, customer_ids: Sequence[uuid.UUID],
                            due_at: datetime) -> None:
    """Ask these customers the questions of a cycle version's periodic
    survey of ``run_at``, each as scheduled work due at ``due_at``
    (:func:`request_survey`), keyed by (cycle, run, customer): one request
    per member per run, however often this is repeated."""
    run = run_at.isoformat()
    await scheduler.schedule_many(conn, SURVEY_REQUEST_DUE, [
        (str(contact_id(SURVEY_REQUEST, PERIODIC, cycle, run, c)), due_at,
         {"reason": PERIODIC, "customer_id": str(c), "cycle": cycle, "version": version,
          "channel": channel, "run_at": run}) for c in customer_ids])


async def _survey_of(conn: Conn, payload: Mapping[str, Any]) -> SurveyRequested | None:
    """The survey a request's payload asks for, with the questions of the
    matrix (None: a case reopened since: its next resolution asks)."""
    if payload.get("reason") == PERIODIC:
        customer_id = await store.survivor(conn, uuid.UUID(payload["customer_id"]))
        cycle = await cycles.load(conn, payload["cycle"], int(payload["version"]))
        return SurveyRequested(customer_id=str(customer_id), channel=payload["channel"],
                               reason=PERIODIC, cycle=cycle.name,
                               questions=cycles.questions(cycle, payload["channel"]))
    row = await store.load_case(conn, uuid.UUID(payload["case_id"]))
    if row["status"] != "resolved" or row["resolved_at"] != datetime.fromisoformat(
            payload["resolved_at"]):
        return None
    # The moment the case arose at, and that of the contact that opened it.
    touchpoints = [row["touchpoint"]]
    if row["interaction_id"] is not None:
        touchpoints.append(await conn.fetchval(
            "SELECT touchpoint FROM interactions WHERE interaction_id = $1",
            row["interaction_id"]) or "")
    return SurveyRequested(
        customer_id=str(row["customer_id"]), case_id=str(row["case_id"]),
        interaction_id=str(row["interaction_id"] or ""),
        touchpoint=next((t for t in touchpoints if t), ""), channel=row["channel"],
        unit=row["unit"], reason=CASE_RESOLVED,
        questions=await cycles.active_questions(conn, touchpoints, row["channel"]))


async def request_survey(conn: Conn, ctx: CommandContext, gate: ContactGate,
                         work: DueWork) -> None:
    """A survey request is due: publish ``survey.requested`` if the
    customer's consent (as this service knows it) and then the contact gate
    allow it; in the customer's quiet hours it waits for their end; refused,
    it is recorded and published as ``contact.suppressed``. Nothing is
    asked for a case reopened since. The gate unreachable: it waits
    :data:`GATE_RETRY` and asks again (other work goes on meanwhile)."""
    survey = await _survey_of(conn, work.payload)
    if survey is None:
        return
    customer_id = uuid.UUID(survey.customer_id)
    now = ctx.clock.now()
    reason = domain.survey_refusal((await views(conn, [customer_id])).get(customer_id))
    if reason is None:
        try:
            [decision] = await gate.reserve([ContactRequest(
                contact_id=work.key, customer_id=customer_id, purpose=domain.SURVEYS,
                at=now, channel=survey.channel)])
        except ConnectionError as exc:
            log.warning("survey request %s waits: %s", work.key, exc)
            await scheduler.schedule(conn, work.kind, work.key, now + GATE_RETRY, work.payload)
            return
        if decision.deferred:
            assert decision.not_before is not None
            await scheduler.schedule(conn, work.kind, work.key, decision.not_before,
                                     work.payload)
            return
        reason = None if decision.allowed else decision.reason
    events: Sequence[EventPayload]
    if reason is None:
        events = [survey]
    else:  # nothing when it was recorded before
        events = await record_suppressed(conn, [Suppression(
            contact_id=uuid.UUID(work.key), customer_id=customer_id,
            contact_type=SURVEY_REQUEST, purpose=domain.SURVEYS, reason=reason,
            case_id=uuid.UUID(survey.case_id) if survey.case_id else None,
            interaction_id=uuid.UUID(survey.interaction_id) if survey.interaction_id
            else None)], now)
    if events:
        await ctx.events.emit(conn, customer_id, events, time=now)
