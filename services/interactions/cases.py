"""Cases and their promises, one function per command.

A case opens with the policy :func:`promises.choose_policy` picks for its
kind, channel and the customer's segments, counting on its unit's calendar
(:func:`promise_store.unit_calendar`, the version of the day); each of its
milestones (first response, resolution) has its own due time and state.
Every command runs in the caller's transaction and keeps one rule: **the
scheduled warnings and breaches of a case are derived from its milestones
in the same transaction that changes them**. A command first withdraws the
case's scheduled items (before locking the case: the scheduler locks its
work row first and the case second, so taking them in the same order cannot
deadlock), changes the milestones, and schedules again what is still
running (:func:`_reschedule`). A pause, a resume or a transfer therefore
moves the warning and the breach exactly once, whatever fails when; and a
warning or breach that runs anyway checks the milestone it is for and does
nothing when it is stale (:func:`promises.due_to_warn`,
:func:`promises.due_to_miss`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

from crm_contracts.interactions import (
    CaseAcknowledged,
    CaseBreached,
    CaseBreachWarning,
    CaseOpened,
    CasePaused,
    CasePromiseMoved,
    CaseReopened,
    CaseResolved,
    CaseResumed,
    CaseTransferred,
    DissatisfactionSignal,
)
from crm_runtime import ids, scheduler, uow
from crm_runtime.db import Conn
from crm_runtime.errors import FailedPrecondition, InvalidArgument
from crm_runtime.events import EventPayload
from services.interactions import cycles, domain, metrics, promises, store, trust
from services.interactions import promise_store as pstore
from services.interactions.business_time import Calendar
from services.interactions.commands import Context, json_digest, key_conflict
from services.interactions.promises import FIRST_RESPONSE, RESOLUTION, Milestone, Policy
from services.interactions.store import SERVICE

WARN = "cases.breach_warning"
BREACH = "cases.breach"

Milestones = dict[str, Milestone]


# --- policies -----------------------------------------------------------------------

async def policies(conn: Conn) -> list[Policy]:
    """The policies set over the defaults, by kind, channel and segment."""
    stored = {(p.kind, p.channel, p.segment): p for p in await pstore.policies(conn)}
    defaults = {(p.kind, p.channel, p.segment): p for p in promises.DEFAULT_POLICIES}
    return list({**defaults, **stored}.values())


def policy_fields(p: Policy) -> dict[str, Any]:
    """A policy as the fields of ``PromisePolicy`` (kept on the case as JSON)."""
    return {"kind": p.kind, "channel": p.channel, "segment": p.segment, "clock": p.clock,
            "min_seconds": _s(p.min_time), "max_seconds": _s(p.max_time),
            "warn_before_seconds": _s(p.warn_before),
            "first_response_seconds": _s(p.first_response),
            "first_response_warn_before_seconds": _s(p.first_response_warn_before)}


def _s(t: timedelta) -> int:
    return int(t.total_seconds())


# --- the schedule of a case's milestones ----------------------------------------------

def work_key(case_id: uuid.UUID, milestone: str) -> str:
    return f"{case_id}/{milestone}"


def parse_work_key(key: str) -> tuple[uuid.UUID, str]:
    """The case and milestone of a scheduled item; an item scheduled before
    milestones existed is keyed by the case alone and is its resolution's."""
    case_id, _, milestone = key.partition("/")
    return uuid.UUID(case_id), milestone or RESOLUTION


async def _withdraw(conn: Conn, case_id: uuid.UUID) -> None:
    """Remove the case's scheduled warnings and breaches (before its lock)."""
    keys = [str(case_id), *(work_key(case_id, m) for m in promises.MILESTONES)]
    await scheduler.cancel_many(conn, WARN, keys)
    await scheduler.cancel_many(conn, BREACH, keys)


async def _reschedule(conn: Conn, case_id: uuid.UUID, ms: Iterable[Milestone]) -> None:
    """Schedule the warning (not raised yet) and the breach of every running
    milestone: what :func:`_withdraw` removed, moved where it belongs now."""
    for m in ms:
        if not m.running or m.due_at is None:
            continue
        key = work_key(case_id, m.name)
        if m.state == promises.PENDING and m.warn_at is not None:
            await scheduler.schedule(conn, WARN, key, m.warn_at)
        await scheduler.schedule(conn, BREACH, key, m.due_at)


async def _counting(conn: Conn, row: Any) -> Calendar:
    """The calendar the case's promise counts on now."""
    cal = await pstore.calendar(conn, row["calendar"], row["calendar_version"])
    return promises.counting_calendar(row["clock"], cal)


def _promised(row: Any, ms: Mapping[str, Milestone]) -> dict[str, Any]:
    """The due times events carry: the resolution's (the row's while paused)
    and the first response's, when running."""
    res = ms.get(RESOLUTION)
    first = ms.get(FIRST_RESPONSE)
    return {"promised_by": res.due_at if res is not None and res.due_at else row["promised_by"],
            "first_response_by": first.due_at if first is not None and first.running else None}


async def _save(conn: Conn, row: Any, ms: Milestones, **case: Any) -> None:
    """Store the milestones, mirror the resolution on the case row, and
    schedule what runs."""
    await pstore.save_milestones(conn, row["case_id"], ms.values())
    res = ms.get(RESOLUTION)
    await pstore.set_case_promise(conn, row["case_id"], promised_by=res.due_at if res else None,
                                  warn_at=res.warn_at if res else None, **case)
    await _reschedule(conn, row["case_id"], ms.values())


def _about(row: Any) -> dict[str, str]:
    """The case's dissatisfaction cause and touchpoint, as events carry them."""
    return {"cause": row["cause"], "touchpoint": row["touchpoint"]}


def _base(row: Any, **extra: Any) -> dict[str, Any]:
    return {"case_id": str(row["case_id"]), "customer_id": str(row["customer_id"]),
            "kind": row["kind"], "channel": row["channel"], "unit": row["unit"], **extra}


async def _locked(conn: Conn, case_id: uuid.UUID) -> tuple[Any, Milestones]:
    """Withdraw the case's schedule, then lock it: its row and milestones."""
    await _withdraw(conn, case_id)
    row = await store.load_case(conn, case_id, lock=True)
    return row, await pstore.milestones(conn, case_id)


async def _missed(conn: Conn, ctx: Context, row: Any, m: Milestone,
                  ms: Mapping[str, Milestone]) -> list[EventPayload]:
    """What a missed milestone publishes and counts, whoever records it (the
    scheduler, or a command that met it late before the scheduler got to
    it). A missed resolution marks the case breached and is a
    dissatisfaction signal; a missed first response is published only."""
    uow.on_commit(metrics.CASES_BREACHED.labels(SERVICE, row["kind"], row["channel"], m.name,
                                                row["unit"]).inc)
    events: list[EventPayload] = [CaseBreached(**_base(row), milestone=m.name, due_at=m.due_at,
                                               promised_by=_promised(row, ms)["promised_by"])]
    if m.name == RESOLUTION:
        await store.mark_breached(conn, row["case_id"])
        events.append(DissatisfactionSignal(
            customer_id=str(row["customer_id"]), reason="breached_promise",
            occurred_at=ctx.clock.now(), case_id=str(row["case_id"]), **_about(row)))
    return events


async def _meet(conn: Conn, ctx: Context, row: Any, ms: Milestones, names: Iterable[str],
                cal: Calendar, now: datetime) -> list[EventPayload]:
    """Meet the named milestones at ``now``; one past due that nobody missed
    yet is missed first, so every late one follows exactly one breach."""
    events: list[EventPayload] = []
    for name in names:
        m = ms.get(name)
        if m is None or m.met_at is not None:
            continue
        met = promises.meet(m, cal, now)
        ms[name] = met
        if met.state == promises.MISSED and m.state != promises.MISSED:
            events += await _missed(conn, ctx, row, met, ms)
    return events


# --- opening ---------------------------------------------------------------------------

async def open_case(conn: Conn, ctx: Context, *, customer_id: uuid.UUID, kind: str,
                    channel: str, unit: str, summary: str, interaction_id: uuid.UUID | None,
                    idempotency_key: str, callback_phone: str = "", cause: str = "",
                    touchpoint: str = "") -> uuid.UUID:
    """Open a case with the promise of its policy, for the customer or, when
    they were merged away, their survivor; the customer's same key with the
    same request returns the existing case, with a different one raises
    AlreadyExists. Schedules the milestones' warnings and breaches. The
    cause and touchpoint not stated are those of the customer's contact
    ``interaction_id``, when it is one."""
    customer_id = await store.survivor(conn, customer_id)
    return await open_resolved_case(conn, ctx, customer_id=customer_id, kind=kind,
                                    channel=channel, unit=unit, summary=summary,
                                    interaction_id=interaction_id,
                                    idempotency_key=idempotency_key,
                                    callback_phone=callback_phone, cause=cause,
                                    touchpoint=touchpoint)


#: The fields of a case its digest covers (columns of ``cases``); the
#: :data:`LATER_CASE_FIELDS` only when stated (digests from before match).
CASE_FIELDS = ("kind", "channel", "unit", "summary", "interaction_id", "callback_phone")
LATER_CASE_FIELDS = ("cause", "touchpoint")


async def open_resolved_case(conn: Conn, ctx: Context, *, customer_id: uuid.UUID,
                             kind: str, channel: str, unit: str, summary: str,
                             interaction_id: uuid.UUID | None, idempotency_key: str,
                             callback_phone: str = "", compare: bool = True, cause: str = "",
                             touchpoint: str = "") -> uuid.UUID:
    """:func:`open_case` for a customer id already resolved to its survivor
    (the contacts of a batch are resolved together). ``compare`` False (a
    case a contact opens, keyed by the contact's key, which was compared):
    no digest is kept and an existing case of the key is returned as is."""
    kind = domain.check_choice("kind", kind, domain.CASE_KINDS)
    channel = domain.check_choice("channel", channel, domain.CHANNELS)
    if not idempotency_key.strip():
        raise InvalidArgument("idempotency_key", "required")
    values = {"kind": kind, "channel": channel, "unit": unit, "summary": summary,
              "interaction_id": interaction_id, "callback_phone": callback_phone,
              "cause": domain.check_cause(cause), "touchpoint": touchpoint.strip()}
    later = [f"{f}={values[f]}" for f in LATER_CASE_FIELDS if values[f]]
    digest = json_digest([*(values[f] for f in CASE_FIELDS), *later]) if compare else None
    existing = await store.case_by_key(conn, customer_id, idempotency_key)
    if existing is None:
        choice = promises.choose_policy(await policies(conn), kind, channel,
                                        await pstore.segments_of(conn, customer_id))
        unit_calendar = await pstore.unit_calendar(conn, unit)
        cal = promises.counting_calendar(choice.policy.clock, unit_calendar)
        now = ctx.clock.now()
        ms = {m.name: m for m in promises.open_milestones(choice.policy, cal, now)}
        res = ms[RESOLUTION]
        assert res.due_at is not None and res.warn_at is not None
        case_id = ids.uuid4()
        cause, touchpoint = await _cause_and_touchpoint(conn, customer_id, values)
        row = await store.insert_case(
            conn, case_id, idempotency_key, customer_id, kind, channel, unit, summary,
            interaction_id, now, promises.earliest(choice.policy, cal, now), res.due_at,
            res.warn_at, callback_phone, digest, calendar=unit_calendar,
            clock=choice.policy.clock, policy=policy_fields(choice.policy),
            policy_reason=choice.reason, cause=cause, touchpoint=touchpoint)
        if row is not None:
            await pstore.save_milestones(conn, case_id, ms.values())
            await _reschedule(conn, case_id, ms.values())
            await _opened(conn, ctx, row, ms, choice.policy.segment)
            return case_id
        # A concurrent request of the same key committed first.
        existing = await store.case_by_key(conn, customer_id, idempotency_key)
    if digest is not None and existing["request_digest"] not in (None, digest):
        raise key_conflict(idempotency_key, "case", [
            f for f in (*CASE_FIELDS, *LATER_CASE_FIELDS)
            if existing[f] != values[f] and (f in CASE_FIELDS or values[f])])
    return uuid.UUID(str(existing["case_id"]))


async def _cause_and_touchpoint(conn: Conn, customer_id: uuid.UUID,
                                values: Mapping[str, Any]) -> tuple[str, str]:
    """The case's cause and touchpoint: as stated, else its contact's."""
    cause, touchpoint = values["cause"], values["touchpoint"]
    if (not cause or not touchpoint) and values["interaction_id"] is not None:
        contact = await store.interaction_of_customer(conn, values["interaction_id"],
                                                      customer_id)
        if contact is not None:
            return cause or contact["cause"], touchpoint or contact["touchpoint"]
    return cause, touchpoint


async def _opened(conn: Conn, ctx: Context, row: Any, ms: Milestones, segment: str) -> None:
    """What a new case does: count, publish ``case.opened`` (and a repeated
    complaint's signal)."""
    kind, customer_id, now = row["kind"], row["customer_id"], row["opened_at"]
    uow.on_commit(metrics.CASES_OPENED.labels(SERVICE, kind, row["channel"]).inc)
    await cycles.note_touchpoints(conn, [(row["touchpoint"], "case")])
    events: list[EventPayload] = [CaseOpened(
        **_base(row), interaction_id=str(row["interaction_id"] or ""), opened_at=now,
        promised_earliest_at=row["promised_earliest_at"], calendar=row["calendar"],
        entitlement=segment, **_about(row), **_promised(row, ms))]
    if kind == "complaint":
        earlier = await store.other_complaints_opened_at(conn, customer_id, row["case_id"])
        if domain.is_repeated_complaint(earlier, now):
            events.append(DissatisfactionSignal(
                customer_id=str(customer_id), reason="repeated_complaint", occurred_at=now,
                case_id=str(row["case_id"]), **_about(row)))
    await ctx.events.emit(conn, customer_id, events, time=ctx.clock.now())


# --- the life of a case --------------------------------------------------------------

def _open_or_refuse(row: Any, what: str) -> None:
    if row["status"] == "resolved":
        raise FailedPrecondition(f"case {row['case_id']} is resolved; {what}")


async def acknowledge(conn: Conn, ctx: Context, case_id: uuid.UUID, agent: str) -> None:
    """Acknowledged by an agent: the first response is met."""
    row, ms = await _locked(conn, case_id)
    _open_or_refuse(row, "reopen it first")
    now = ctx.clock.now()
    events = await _meet(conn, ctx, row, ms, [FIRST_RESPONSE], await _counting(conn, row), now)
    await _save(conn, row, ms)
    if row["status"] == "acknowledged":
        await ctx.events.emit(conn, row["customer_id"], events, time=now)
        return
    await store.acknowledge_case(conn, case_id, now)
    events.append(CaseAcknowledged(**_base(row), acknowledged_at=now, agent=agent))
    await ctx.events.emit(conn, row["customer_id"], events, time=now)


async def contact_on_case(conn: Conn, ctx: Context, case_id: uuid.UUID,
                          direction: str) -> None:
    """A contact recorded on an open case: a proactive one meets its first
    response; one from the customer resumes it when it waits on them. On a
    resolved case it changes nothing."""
    row, ms = await _locked(conn, case_id)
    now = ctx.clock.now()
    events: list[EventPayload] = []
    resuming = row["status"] != "resolved" and direction != "proactive" and (
        row["paused_at"] is not None)
    if row["status"] != "resolved" and direction == "proactive":
        events = await _meet(conn, ctx, row, ms, [FIRST_RESPONSE], await _counting(conn, row),
                             now)
    elif resuming:
        events = _resumed(row, ms, await _counting(conn, row), now, "customer_contact")
    await _save(conn, row, ms, pausing=False if resuming else None)
    await ctx.events.emit(conn, row["customer_id"], events, time=now)


async def pause(conn: Conn, ctx: Context, case_id: uuid.UUID, reason: str) -> None:
    """The case waits on the customer: every running milestone stops with
    the time it has left (its warning and breach are withdrawn). Pausing a
    paused case changes nothing."""
    if not reason.strip():
        raise InvalidArgument("reason", "required: say what the case waits on")
    row, ms = await _locked(conn, case_id)
    _open_or_refuse(row, "a resolved case has no clock to stop")
    if row["paused_at"] is not None:
        return await _reschedule(conn, case_id, ms.values())
    now = ctx.clock.now()
    cal = await _counting(conn, row)
    ms = {name: promises.pause(m, cal, now) for name, m in ms.items()}
    await _save(conn, row, ms, pausing=True, paused_at=now, pause_reason=reason.strip())
    await ctx.events.emit(conn, row["customer_id"], [CasePaused(**_base(row), paused_at=now)],
                          time=now)


async def resume(conn: Conn, ctx: Context, case_id: uuid.UUID) -> None:
    """The clock runs again (an agent says so): each paused milestone is
    due after the time it had left. Resuming a running case changes nothing."""
    row, ms = await _locked(conn, case_id)
    _open_or_refuse(row, "reopen it first")
    if row["paused_at"] is None:
        return await _reschedule(conn, case_id, ms.values())
    now = ctx.clock.now()
    events = _resumed(row, ms, await _counting(conn, row), now, "agent")
    await _save(conn, row, ms, pausing=False)
    await ctx.events.emit(conn, row["customer_id"], events, time=now)


def _resumed(row: Any, ms: Milestones, cal: Calendar, now: datetime,
             cause: str) -> list[EventPayload]:
    """Resume the paused milestones in ``ms`` at ``now``; what it publishes."""
    ms.update({name: promises.resume(m, cal, now) for name, m in ms.items()})
    return [CaseResumed(**_base(row), resumed_at=now, cause=cause, **_promised(row, ms))]


async def transfer(conn: Conn, ctx: Context, case_id: uuid.UUID, to_unit: str,
                   reason: str) -> None:
    """Route to another unit. The business time elapsed is kept; what is
    left counts on the receiving unit's calendar from now."""
    if not to_unit.strip():
        raise InvalidArgument("to_unit", "required")
    if not reason.strip():
        raise InvalidArgument("reason", "required: say why the case moves")
    row, ms = await _locked(conn, case_id)
    _open_or_refuse(row, "reopen it first")
    if row["unit"] == to_unit:  # (the rollback restores the schedule)
        raise FailedPrecondition(f"case {case_id} is already with {to_unit!r}")
    now = ctx.clock.now()
    old = await _counting(conn, row)
    receiving = await pstore.unit_calendar(conn, to_unit)
    new = promises.counting_calendar(row["clock"], receiving)
    ms = {name: promises.rebase(m, old, new, now) for name, m in ms.items()}
    await _save(conn, row, ms, calendar=receiving)
    await store.transfer_case(conn, case_id, row["unit"], to_unit, reason, now)
    await ctx.events.emit(conn, row["customer_id"], [
        CaseTransferred(**{**_base(row), "unit": to_unit}, from_unit=row["unit"],
                        **_promised(row, ms))], time=now)


async def resolve(conn: Conn, ctx: Context, case_id: uuid.UUID, resolution: str) -> None:
    """Resolve: the first response (if still open) and the resolution are
    met. One past due that the scheduler has not missed yet (it was down, or
    behind) is missed first, exactly as the scheduler would have done it:
    every late resolution follows a ``case.breached``, once."""
    if not resolution.strip():
        raise InvalidArgument("resolution", "required: what was done")
    row, ms = await _locked(conn, case_id)
    if row["status"] == "resolved":
        return
    now = ctx.clock.now()
    events = await _meet(conn, ctx, row, ms, promises.MILESTONES, await _counting(conn, row),
                         now)
    late = ms[RESOLUTION].state == promises.MISSED
    await _save(conn, row, ms, pausing=False if row["paused_at"] is not None else None)
    await store.resolve_case(conn, case_id, now, resolution, late)
    events.append(CaseResolved(**_base(row), resolved_at=now, late=late,
                               promised_by=_promised(row, ms)["promised_by"]))
    # Ask how it went, unless a complaint of this customer is still open:
    # scheduled work that checks their consent and asks the contact gate.
    if not await store.open_complaints(conn, row["customer_id"]):
        await trust.schedule_survey(conn, row, now)
    await ctx.events.emit(conn, row["customer_id"], events, time=ctx.clock.now())


async def reopen(conn: Conn, ctx: Context, case_id: uuid.UUID, reason: str) -> None:
    """Reopened: a resolution met in time runs again towards the same due
    time (reopening buys no time; past it, the case is breached at once)."""
    row, ms = await _locked(conn, case_id)
    if row["status"] != "resolved":  # (the rollback restores the schedule)
        raise FailedPrecondition(f"case {case_id} is not resolved")
    now = ctx.clock.now()
    ms[RESOLUTION] = promises.reopen(ms[RESOLUTION], await _counting(conn, row), now)
    await store.reopen_case(conn, case_id, reason)
    await _save(conn, row, ms)
    await ctx.events.emit(conn, row["customer_id"], [
        CaseReopened(**_base(row), reopened_at=now, **_promised(row, ms))], time=now)


async def move_to_calendar(conn: Conn, ctx: Context, case_id: uuid.UUID, cal: Calendar) -> None:
    """The operator moved open cases to a new version of their calendar:
    the time used is kept, the rest counts on ``cal``."""
    row, ms = await _locked(conn, case_id)
    now = ctx.clock.now()
    old = await _counting(conn, row)
    new = promises.counting_calendar(row["clock"], cal)
    ms = {name: promises.rebase(m, old, new, now) for name, m in ms.items()}
    await _save(conn, row, ms, calendar=cal)
    await ctx.events.emit(conn, row["customer_id"], [CasePromiseMoved(
        **_base(row), cause="calendar_changed", calendar=cal.name, calendar_version=cal.version,
        **_promised(row, ms))], time=now)


# --- the scheduled warning and breach -------------------------------------------------

async def _due(conn: Conn, ctx: Context, case_id: uuid.UUID, milestone: str,
               due: Callable[[Milestone, datetime], bool]
               ) -> tuple[Any, Milestones, datetime] | None:
    """The locked case, its milestones and the time, when the scheduled item
    of ``milestone`` is due (``due``); None when it is stale: the milestone
    was moved, met or paused, or the case resolved."""
    row = await store.load_case(conn, case_id, lock=True)
    ms = await pstore.milestones(conn, case_id)
    m, now = ms.get(milestone), ctx.clock.now()
    if row["status"] == "resolved" or m is None or not due(m, now):
        return None
    return row, ms, now


async def warn_breach(conn: Conn, ctx: Context, case_id: uuid.UUID,
                      milestone: str = RESOLUTION) -> None:
    """The milestone's warning is due."""
    found = await _due(conn, ctx, case_id, milestone, promises.due_to_warn)
    if found is not None:
        row, ms, now = found
        ms[milestone] = warned = promises.warn(ms[milestone], now)
        await pstore.save_milestones(conn, case_id, [warned])
        await ctx.events.emit(conn, row["customer_id"], [CaseBreachWarning(
            **_base(row), milestone=milestone, due_at=warned.due_at,
            promised_by=_promised(row, ms)["promised_by"])], time=now)


async def breach(conn: Conn, ctx: Context, case_id: uuid.UUID,
                 milestone: str = RESOLUTION) -> None:
    """The milestone's due time passed unmet."""
    found = await _due(conn, ctx, case_id, milestone, promises.due_to_miss)
    if found is not None:
        row, ms, now = found
        ms[milestone] = missed = promises.miss(ms[milestone], now)
        await pstore.save_milestones(conn, case_id, [missed])
        await ctx.events.emit(conn, row["customer_id"],
                              await _missed(conn, ctx, row, missed, ms), time=now)


# --- reading -------------------------------------------------------------------------

CASE_FILTERS = ("open", "breaching", "breached", "paused", "resolved", "all")


async def list_cases(conn: Conn, ctx: Context, *, which: str, unit: str,
                     customer_id: uuid.UUID | None, after: uuid.UUID | None,
                     limit: int) -> list[Any]:
    which = domain.check_choice("filter", which, CASE_FILTERS, "open")
    now = ctx.clock.now()
    if customer_id is not None:
        customer_id = await store.survivor(conn, customer_id)
    return await store.list_cases(conn, which, now, unit, customer_id, after, limit)


def milestone_fields(m: Milestone) -> dict[str, Any]:
    """A milestone as the fields of the ``Milestone`` message (times as
    datetimes or None)."""
    fields = asdict(m)
    return {"name": m.name, "state": m.state, "due_at": fields["due_at"],
            "warn_at": fields["warn_at"], "met_at": fields["met_at"],
            "limit_seconds": _s(m.limit),
            "remaining_seconds": _s(m.remaining) if m.remaining is not None else 0,
            "took_seconds": _s(m.took) if m.took is not None else 0}
