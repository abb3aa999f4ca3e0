"""What the interactions service does, one function per command.

Every function runs in the caller's transaction, validates, applies the pure
rules of :mod:`domain`, writes through :mod:`store` and queues its events in
the outbox. Contacts (recording them, the timeline) are in :mod:`contacts`,
which builds on this module: its :class:`Context`, the case a contact opens
(:func:`open_resolved_case`) and the helpers shared by every idempotent
command (:data:`DIGEST_VERSION`, :func:`key_conflict`). The consent view
and the contacts it stops are in :mod:`trust`.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from crm_contracts.interactions import (
    CaseAcknowledged,
    CaseBreached,
    CaseBreachWarning,
    CaseOpened,
    CaseReopened,
    CaseResolved,
    CaseTransferred,
    DissatisfactionSignal,
    SurveyResponseRecorded,
)
from crm_contracts.privacy import InteractionsErasureCompleted
from crm_contracts.times import check_event_time
from crm_runtime import ids, scheduler, sealing, uow
from crm_runtime.db import Conn
from crm_runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from crm_runtime.events import EventPayload
from crm_runtime.uow import CommandContext
from services.interactions import domain, metrics, store, trust
from services.interactions.domain import Policy
from services.interactions.store import SERVICE

SOURCE = "/crm/interactions"
WARN = "cases.breach_warning"
BREACH = "cases.breach"


@dataclass(frozen=True)
class Context(CommandContext):
    source = SOURCE


# --- shared by the use cases (contacts too) ---------------------------------

#: The version of the digests' layout, part of every digest: a layout that
#: changes must change it (and then treat digests of the old one as matching).
DIGEST_VERSION = "1"


def key_conflict(key: str, what: str, differing: Sequence[str]) -> AlreadyExists:
    """The refusal of a key the customer used for a different request."""
    detail = ""
    if differing:
        detail = f" ({', '.join(differing)} {'differs' if len(differing) == 1 else 'differ'})"
    return AlreadyExists(f"idempotency_key {key!r}: already used for a different {what} of "
                         f"this customer{detail}")


# --- promise policies -------------------------------------------------------

async def policies(conn: Conn) -> list[Policy]:
    """The stored policies over the defaults, by kind and channel."""
    rows = await store.policies(conn)
    stored = {(r["kind"], r["channel"]): Policy(
        r["kind"], r["channel"], timedelta(seconds=r["min_seconds"]),
        timedelta(seconds=r["max_seconds"]), timedelta(seconds=r["warn_before_seconds"]))
        for r in rows}
    defaults = {(p.kind, p.channel): p for p in domain.DEFAULT_POLICIES}
    return list({**defaults, **stored}.values())


async def set_policy(conn: Conn, policy: Policy) -> Policy:
    domain.check_choice("kind", policy.kind, domain.CASE_KINDS)
    if policy.channel != "*":
        domain.check_choice("channel", policy.channel, domain.CHANNELS)
    await store.upsert_policy(
        conn, policy.kind, policy.channel, int(policy.min_time.total_seconds()),
        int(policy.max_time.total_seconds()), int(policy.warn_before.total_seconds()))
    return policy


# --- cases ------------------------------------------------------------------

async def open_case(conn: Conn, ctx: Context, *, customer_id: uuid.UUID, kind: str,
                    channel: str, unit: str, summary: str, interaction_id: uuid.UUID | None,
                    idempotency_key: str, callback_phone: str = "") -> uuid.UUID:
    """Open a case with the promise of its policy, for the customer or, when
    they were merged away, their survivor; the customer's same key with the
    same request returns the existing case, with a different one raises
    AlreadyExists. Schedules the breach warning and the breach."""
    return await open_resolved_case(conn, ctx,
                                    customer_id=await store.survivor(conn, customer_id),
                                    kind=kind, channel=channel, unit=unit, summary=summary,
                                    interaction_id=interaction_id,
                                    idempotency_key=idempotency_key,
                                    callback_phone=callback_phone)


#: The fields of a case its digest covers (columns of ``cases``).
CASE_FIELDS = ("kind", "channel", "unit", "summary", "interaction_id", "callback_phone")


def _json_digest(values: Sequence[object]) -> bytes:
    """The digest of a request's stated values (JSON, so any text goes)."""
    text = json.dumps([DIGEST_VERSION, *values], default=str, sort_keys=True,
                      separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


async def open_resolved_case(conn: Conn, ctx: Context, *, customer_id: uuid.UUID,
                             kind: str, channel: str, unit: str, summary: str,
                             interaction_id: uuid.UUID | None, idempotency_key: str,
                             callback_phone: str = "", compare: bool = True) -> uuid.UUID:
    """:func:`open_case` for a customer id already resolved to its survivor
    (the contacts of a batch are resolved together,
    :func:`contacts.record_contacts`). ``compare`` False (a case a contact
    opens, keyed by the contact's key, which was compared): no digest is
    kept and an existing case of the key is returned as is."""
    kind = domain.check_choice("kind", kind, domain.CASE_KINDS)
    channel = domain.check_choice("channel", channel, domain.CHANNELS)
    if not idempotency_key.strip():
        raise InvalidArgument("idempotency_key", "required")
    values = {"kind": kind, "channel": channel, "unit": unit, "summary": summary,
              "interaction_id": interaction_id, "callback_phone": callback_phone}
    digest = _json_digest([values[f] for f in CASE_FIELDS]) if compare else None
    existing = await store.case_by_key(conn, customer_id, idempotency_key)
    if existing is None:
        policy = domain.choose_policy(await policies(conn), kind, channel)
        now = ctx.clock.now()
        promise = domain.promise_for(policy, now)
        case_id = ids.uuid4()
        if await store.insert_case(conn, case_id, idempotency_key, customer_id, kind, channel,
                                   unit, summary, interaction_id, now, promise.earliest_at,
                                   promise.deadline, promise.warn_at, callback_phone, digest):
            await _opened(conn, ctx, case_id, customer_id, kind, channel, unit, interaction_id,
                          now, promise, callback_phone)
            return case_id
        # A concurrent request of the same key committed first.
        existing = await store.case_by_key(conn, customer_id, idempotency_key)
    if digest is not None and existing["request_digest"] not in (None, digest):
        raise key_conflict(idempotency_key, "case",
                        [f for f in CASE_FIELDS if existing[f] != values[f]])
    return uuid.UUID(str(existing["case_id"]))


async def _opened(conn: Conn, ctx: Context, case_id: uuid.UUID, customer_id: uuid.UUID,
                  kind: str, channel: str, unit: str, interaction_id: uuid.UUID | None,
                  now: datetime, promise: domain.Promise, callback_phone: str) -> None:
    """What a new case does: count, schedule, publish ``case.opened`` (and a
    repeated complaint's signal)."""
    uow.on_commit(metrics.CASES_OPENED.labels(SERVICE, kind, channel).inc)
    await scheduler.schedule(conn, WARN, str(case_id), promise.warn_at)
    await scheduler.schedule(conn, BREACH, str(case_id), promise.deadline)
    events: list[EventPayload] = [CaseOpened(
        case_id=str(case_id), customer_id=str(customer_id), kind=kind, channel=channel,
        unit=unit, interaction_id=str(interaction_id or ""), opened_at=now,
        promised_earliest_at=promise.earliest_at, promised_by=promise.deadline)]
    if kind == "complaint":
        earlier = await store.other_complaints_opened_at(conn, customer_id, case_id)
        if domain.is_repeated_complaint(earlier, now):
            events.append(DissatisfactionSignal(
                customer_id=str(customer_id), reason="repeated_complaint", occurred_at=now,
                case_id=str(case_id)))
    await ctx.events.emit(conn, customer_id, events, time=ctx.clock.now())


def _base(row: Any, **extra: Any) -> dict[str, Any]:
    return {"case_id": str(row["case_id"]), "customer_id": str(row["customer_id"]),
            "kind": row["kind"], "channel": row["channel"], "unit": row["unit"], **extra}


async def acknowledge(conn: Conn, ctx: Context, case_id: uuid.UUID, agent: str) -> None:
    row = await store.load_case(conn, case_id, lock=True)
    if row["status"] == "resolved":
        raise FailedPrecondition(f"case {case_id} is resolved; reopen it first")
    if row["status"] == "acknowledged":
        return
    now = ctx.clock.now()
    await store.acknowledge_case(conn, case_id, now)
    await ctx.events.emit(conn, row["customer_id"], [
        CaseAcknowledged(**_base(row), acknowledged_at=now, agent=agent)], time=now)


async def transfer(conn: Conn, ctx: Context, case_id: uuid.UUID, to_unit: str,
                   reason: str) -> None:
    """Route to another unit; the promise and its clock are kept."""
    if not to_unit.strip():
        raise InvalidArgument("to_unit", "required")
    if not reason.strip():
        raise InvalidArgument("reason", "required: say why the case moves")
    row = await store.load_case(conn, case_id, lock=True)
    if row["status"] == "resolved":
        raise FailedPrecondition(f"case {case_id} is resolved; reopen it first")
    if row["unit"] == to_unit:
        raise FailedPrecondition(f"case {case_id} is already with {to_unit!r}")
    now = ctx.clock.now()
    await store.transfer_case(conn, case_id, row["unit"], to_unit, reason, now)
    await ctx.events.emit(conn, row["customer_id"], [
        CaseTransferred(**{**_base(row), "unit": to_unit}, from_unit=row["unit"],
                        promised_by=row["promised_by"])], time=now)


async def resolve(conn: Conn, ctx: Context, case_id: uuid.UUID, resolution: str) -> None:
    """Resolve; a resolution after the deadline is recorded as late.

    A case resolved past its deadline that the scheduler has not breached yet
    (it was down, or behind) is breached first, exactly as the scheduler
    would have done it (:func:`breach`), then resolved late: every late
    resolution follows a ``case.breached``, once.
    """
    if not resolution.strip():
        raise InvalidArgument("resolution", "required: what was done")
    # Cancel the scheduled warning and breach *before* locking the case: the
    # scheduler locks its work row first and the case second, so taking them
    # in the same order cannot deadlock. If the scheduler is running this
    # case's breach right now, the DELETE waits for it to commit; after that
    # the case row below shows ``breached`` and the breach is not repeated.
    await scheduler.cancel(conn, WARN, str(case_id))
    await scheduler.cancel(conn, BREACH, str(case_id))
    row = await store.load_case(conn, case_id, lock=True)
    if row["status"] == "resolved":
        return
    now = ctx.clock.now()
    late = domain.is_late(row["promised_by"], now)
    events: list[EventPayload] = []
    if domain.breaches_on_resolution(row["promised_by"], now, row["breached"]):
        events += _record_breach(conn, ctx, row)
        await store.mark_breached(conn, case_id)
    await store.resolve_case(conn, case_id, now, resolution, late)
    events.append(CaseResolved(**_base(row), resolved_at=now, promised_by=row["promised_by"],
                               late=late))
    # Ask how it went, unless a complaint of this customer is still open:
    # scheduled work that checks their consent and asks the contact gate.
    if not await store.open_complaints(conn, row["customer_id"]):
        await trust.schedule_survey(conn, row, now)
    await ctx.events.emit(conn, row["customer_id"], events, time=ctx.clock.now())


async def reopen(conn: Conn, ctx: Context, case_id: uuid.UUID, reason: str) -> None:
    row = await store.load_case(conn, case_id, lock=True)
    if row["status"] != "resolved":
        raise FailedPrecondition(f"case {case_id} is not resolved")
    now = ctx.clock.now()
    await store.reopen_case(conn, case_id, reason)
    if not row["breached"] and row["promised_by"] > now:
        if row["warn_at"] > now:  # the warning comes again ahead of the same deadline
            await scheduler.schedule(conn, WARN, str(case_id), row["warn_at"])
        await scheduler.schedule(conn, BREACH, str(case_id), row["promised_by"])
    elif not row["breached"]:
        await scheduler.schedule(conn, BREACH, str(case_id), now)  # already past: breach now
    await ctx.events.emit(conn, row["customer_id"], [
        CaseReopened(**_base(row), reopened_at=now, promised_by=row["promised_by"])], time=now)


async def warn_breach(conn: Conn, ctx: Context, case_id: uuid.UUID) -> None:
    row = await store.load_case(conn, case_id, lock=True)
    if row["status"] != "resolved":
        await ctx.events.emit(conn, row["customer_id"], [
            CaseBreachWarning(**_base(row), promised_by=row["promised_by"])],
            time=ctx.clock.now())


async def breach(conn: Conn, ctx: Context, case_id: uuid.UUID) -> None:
    """The scheduled breach: the deadline passed and the case is unresolved."""
    row = await store.load_case(conn, case_id, lock=True)
    if row["status"] == "resolved" or row["breached"]:
        return
    await store.mark_breached(conn, case_id)
    await ctx.events.emit(conn, row["customer_id"], _record_breach(conn, ctx, row),
                          time=ctx.clock.now())


def _record_breach(conn: Conn, ctx: Context, row: Any) -> list[EventPayload]:
    """What a breach publishes and counts, whoever records it (the scheduler,
    or a late resolution the scheduler did not get to). The caller holds the
    case's lock, has checked it is not breached yet and marks it breached."""
    uow.on_commit(metrics.CASES_BREACHED.labels(SERVICE, row["kind"], row["channel"]).inc)
    return [CaseBreached(**_base(row), promised_by=row["promised_by"]),
            DissatisfactionSignal(customer_id=str(row["customer_id"]), reason="breached_promise",
                                  occurred_at=ctx.clock.now(), case_id=str(row["case_id"]))]


CASE_FILTERS = ("open", "breaching", "breached", "resolved", "all")


async def list_cases(conn: Conn, ctx: Context, *, which: str, unit: str,
                     customer_id: uuid.UUID | None, after: uuid.UUID | None,
                     limit: int) -> list[Any]:
    which = domain.check_choice("filter", which, CASE_FILTERS, "open")
    now = ctx.clock.now()
    if customer_id is not None:
        customer_id = await store.survivor(conn, customer_id)
    return await store.list_cases(conn, which, now, unit, customer_id, after, limit)


# --- satisfaction -----------------------------------------------------------

#: The fields of a survey response its digest covers besides ``occurred_at``
#: (columns of ``survey_responses``).
SURVEY_FIELDS = ("touchpoint", "channel", "unit", "interaction_id", "case_id", "answers")


async def record_survey(conn: Conn, ctx: Context, *, idempotency_key: str,
                        customer_id: uuid.UUID, touchpoint: str, channel: str, unit: str,
                        interaction_id: uuid.UUID | None, case_id: uuid.UUID | None,
                        answers: list[dict[str, Any]], occurred_at: datetime | None) -> Any:
    """Store a survey response of the customer or, when merged away, their
    survivor (``occurred_at`` None: now; a given one must be an event time).
    The customer's same key with the same request returns the stored
    response, with a different one raises AlreadyExists."""
    if not idempotency_key.strip():
        raise InvalidArgument("idempotency_key", "required")
    if not answers:
        raise InvalidArgument("answers", "at least one answer")
    now = ctx.clock.now()
    stated = occurred_at is not None
    when = check_event_time(occurred_at, now) if occurred_at is not None else now
    csat_scores, nps_score = [], None
    for i, a in enumerate(answers):
        if a["csat"]:
            if not 1 <= a["csat"] <= 5:
                raise InvalidArgument(f"answers[{i}].csat", f"must be 1-5, got {a['csat']}")
            csat_scores.append(a["csat"])
        if a["nps"] >= 0:
            if a["nps"] > 10:
                raise InvalidArgument(f"answers[{i}].nps", f"must be 0-10, got {a['nps']}")
            if nps_score is not None:
                raise InvalidArgument(f"answers[{i}].nps", "only one NPS answer per response")
            nps_score = a["nps"]
    if channel:
        channel = domain.check_choice("channel", channel, domain.CHANNELS)
    values = {"touchpoint": touchpoint, "channel": channel, "unit": unit,
              "interaction_id": interaction_id, "case_id": case_id, "answers": answers}
    digest = _json_digest([*(values[f] for f in SURVEY_FIELDS),
                           when.timestamp() if stated else None])
    customer_id = await store.survivor(conn, customer_id)
    existing = await store.survey_by_key(conn, customer_id, idempotency_key)
    if existing is None:
        response_id = ids.uuid4()
        csat = domain.csat_mean(csat_scores)
        row = await store.insert_survey(conn, response_id, idempotency_key, customer_id,
                                        touchpoint, channel, unit, interaction_id, case_id,
                                        csat, nps_score, answers, when, digest)
        if row is not None:
            _count_survey(conn, channel, csat, nps_score)
            await _survey_recorded(conn, ctx, row, csat_scores, csat, nps_score)
            return row
        # A concurrent request of the same key committed first.
        existing = await store.survey_by_key(conn, customer_id, idempotency_key)
    if existing["request_digest"] not in (None, digest):
        differing = [f for f in SURVEY_FIELDS if existing[f] != values[f]]
        if stated and existing["occurred_at"] != when:
            differing.append("occurred_at")
        raise key_conflict(idempotency_key, "survey response", differing or ["occurred_at"])
    return existing


async def _survey_recorded(conn: Conn, ctx: Context, row: Any, csat_scores: list[int],
                           csat: float | None, nps_score: int | None) -> None:
    """Publish a new survey response and the dissatisfaction it signals."""
    customer_id = row["customer_id"]
    interaction_id, case_id = row["interaction_id"], row["case_id"]
    occurred_at = row["occurred_at"]
    events: list[EventPayload] = [SurveyResponseRecorded(
        survey_response_id=str(row["survey_response_id"]), customer_id=str(customer_id),
        touchpoint=row["touchpoint"], channel=row["channel"],
        csat=round(csat) if csat is not None else None, nps=nps_score,
        occurred_at=occurred_at, interaction_id=str(interaction_id or ""),
        case_id=str(case_id or ""))]
    for reason in domain.survey_signals(csat_scores, nps_score):
        events.append(DissatisfactionSignal(
            customer_id=str(customer_id), reason=reason, occurred_at=occurred_at,
            score=min(csat_scores) if reason == "low_csat" else nps_score,
            interaction_id=str(interaction_id or ""), case_id=str(case_id or "")))
    await ctx.events.emit(conn, customer_id, events, time=ctx.clock.now())


def _count_survey(conn: Conn, channel: str, csat: float | None, nps_score: int | None) -> None:
    if csat is not None:
        uow.on_commit(metrics.CSAT_RESPONSES.labels(SERVICE, channel).inc)
        uow.on_commit(lambda: metrics.CSAT_SCORE.labels(SERVICE, channel).observe(csat))
    if nps_score is not None:
        uow.on_commit(metrics.NPS_RESPONSES.labels(
            SERVICE, channel, metrics.nps_category(nps_score)).inc)


async def satisfaction_report(conn: Conn, *, since: datetime, until: datetime,
                              group_by: str) -> list[dict[str, Any]]:
    """The report of the window grouped by touchpoint, channel or unit: the
    database tallies, :func:`domain.satisfaction_report` aggregates."""
    group_by = domain.check_choice("group_by", group_by, store.REPORT_GROUPS, "touchpoint")
    surveys = await store.survey_tallies(conn, group_by, since, until)
    cases = await store.case_tallies(conn, group_by, since, until)
    rows = domain.satisfaction_report([domain.SurveyTally(**r) for r in surveys],
                                      [domain.CaseTally(**r) for r in cases])
    return [asdict(r) for r in rows]


# --- service cycle ------------------------------------------------------------

async def define_service_cycle(conn: Conn, ctx: Context, name: str,
                               moments: list[dict[str, Any]]) -> Any:
    if not name.strip():
        raise InvalidArgument("name", "required")
    if not moments:
        raise InvalidArgument("moments", "at least one moment of truth")
    seen = set()
    for i, m in enumerate(moments):
        if not m["touchpoint"].strip():
            raise InvalidArgument(f"moments[{i}].touchpoint", "required")
        if m["touchpoint"] in seen:
            raise InvalidArgument(f"moments[{i}].touchpoint", "appears twice")
        seen.add(m["touchpoint"])
        if m["priority"] < 1:
            raise InvalidArgument(f"moments[{i}].priority", "must be 1 or more (1 = highest)")
        m["survey_questions"] = domain.survey_questions(m["requirements"])
    return await store.upsert_service_cycle(conn, name, moments, ctx.clock.now())


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
