"""What the interactions service does, one function per command.

Every function runs in the caller's transaction and queues its events in the
outbox. Contacts are recorded in bulk (:func:`record_contacts`): the gRPC call
records one, the ingest consumer records a whole batch with one INSERT, which
is what lets channels publish thousands of contacts per second.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
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
    InteractionRecorded,
    SurveyRequested,
    SurveyResponseRecorded,
)
from crm_runtime import db, ids, logs, scheduler, uow
from crm_runtime.convert import parse_uuid
from crm_runtime.db import Conn
from crm_runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from crm_runtime.events import Envelope, EventPayload
from crm_runtime.uow import CommandContext
from services.interactions import domain, metrics
from services.interactions.domain import Policy

SOURCE = "/crm/interactions"
SERVICE = "interactions"
WARN = "cases.breach_warning"
BREACH = "cases.breach"


@dataclass(frozen=True)
class Context(CommandContext):
    source = SOURCE


# --- contacts ---------------------------------------------------------------

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


def check_contact(*, idempotency_key: str, customer_id: uuid.UUID, channel: str,
                  direction: str, kind: str, occurred_at: datetime, attention: str = "",
                  requester_id: str = "", decision_maker_id: str = "", touchpoint: str = "",
                  agent: str = "", unit: str = "", outcome: str = "", notes: str = "",
                  amount_minor: int = 0, currency: str = "") -> Contact:
    """Validate a contact's fields, naming the first bad one."""
    key = idempotency_key.strip()
    if not key or len(key) > 200:
        raise InvalidArgument("idempotency_key", "required, at most 200 characters")
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
    if len(notes) > 10_000:
        raise InvalidArgument("notes", "at most 10000 characters")
    return Contact(
        idempotency_key=key, customer_id=customer_id,
        channel=domain.check_choice("channel", channel, domain.CHANNELS),
        direction=domain.check_choice("direction", direction, domain.DIRECTIONS, "reactive"),
        kind=kind, occurred_at=occurred_at, attention=mode, requester_id=requester,
        decision_maker_id=decider, touchpoint=touchpoint.strip(), agent=agent.strip(),
        unit=unit.strip(), outcome=domain.check_choice("outcome", outcome, domain.OUTCOMES,
                                                       "neutral"),
        notes=notes, amount_minor=amount_minor if kind == "purchase" else 0,
        currency=code if kind == "purchase" else "")


#: A batch of contacts as rows (arrays or COPY, by size: :class:`db.Rows`).
_CONTACT_ROWS = db.Rows("interactions_batch", [
    ("interaction_id", "uuid"), ("idempotency_key", "text"), ("customer_id", "uuid"),
    ("channel", "text"), ("direction", "text"), ("kind", "text"), ("attention", "text"),
    ("requester_id", "uuid"), ("decision_maker_id", "uuid"), ("touchpoint", "text"),
    ("agent", "text"), ("unit", "text"), ("occurred_at", "timestamptz"), ("outcome", "text"),
    ("notes", "text"), ("amount_minor", "bigint"), ("currency", "text"),
    ("recorded_at", "timestamptz")], schema=SERVICE)

_INSERT_CONTACTS = """
    WITH batch AS ({interactions_batch})
    INSERT INTO interactions (interaction_id, idempotency_key, customer_id, channel, direction,
                              kind, attention, requester_id, decision_maker_id, touchpoint, agent,
                              unit, occurred_at, outcome, notes, amount_minor, currency,
                              recorded_at)
    SELECT * FROM batch
    ON CONFLICT (idempotency_key) DO NOTHING RETURNING idempotency_key"""


async def record_contacts(conn: Conn, ctx: Context, contacts: list[Contact]
                          ) -> list[tuple[Contact, bool]]:
    """Store contacts once per idempotency key (one INSERT for the batch);
    publish ``interaction.recorded`` for the new ones and open cases for the
    kinds that need one. Returns each contact with ``True`` if it was new;
    a known key returns the stored contact."""
    if not contacts:
        return []
    merged = await survivors(conn, [c.customer_id for c in contacts])
    if merged:
        contacts = [replace(c, customer_id=merged.get(c.customer_id, c.customer_id))
                    for c in contacts]
    now = ctx.clock.now()
    rows = [(c.interaction_id, c.idempotency_key, c.customer_id, c.channel, c.direction, c.kind,
             c.attention, c.requester_id, c.decision_maker_id, c.touchpoint, c.agent, c.unit,
             c.occurred_at, c.outcome, c.notes, c.amount_minor, c.currency, now)
            for c in contacts]
    if await _CONTACT_ROWS.copy_unless_taken(conn, "interactions", rows):
        new_keys = {c.idempotency_key for c in contacts}
    else:  # a small batch, or a key seen before: the statement keeps the first
        new_keys = {r["idempotency_key"]
                    for r in await _CONTACT_ROWS.fetch(conn, _INSERT_CONTACTS, rows)}
    result: list[tuple[Contact, bool]] = []
    events: list[Envelope] = []
    seen: set[str] = set()
    recorded: Counter[tuple[str, str]] = Counter()
    for c in contacts:
        fresh = c.idempotency_key in new_keys and c.idempotency_key not in seen
        seen.add(c.idempotency_key)
        result.append((c, fresh))
        if fresh:
            recorded[c.channel, c.kind] += 1
            customer = str(c.customer_id)
            events.append(ctx.events.envelope(customer, InteractionRecorded(
                interaction_id=str(c.interaction_id), customer_id=customer,
                channel=c.channel, direction=c.direction, kind=c.kind,
                occurred_at=c.occurred_at, outcome=c.outcome, touchpoint=c.touchpoint,
                unit=c.unit, amount_minor=c.amount_minor, currency=c.currency),
                time=now, traceparent=c.traceparent))
    for (channel, kind), count in recorded.items():
        uow.on_commit(partial(metrics.INTERACTIONS.labels(SERVICE, channel, kind).inc,
                                    count))
    await ctx.events.write(conn, events)
    for c, fresh in result:
        if fresh and c.kind in domain.AUTO_CASE_KINDS:
            case_id = await _open_case(conn, ctx, customer_id=c.customer_id, kind=c.kind,
                                       channel=c.channel, unit=c.unit, summary=c.notes[:500],
                                       interaction_id=c.interaction_id,
                                       idempotency_key=f"interaction:{c.idempotency_key}")
            await conn.execute("UPDATE interactions SET case_id = $1 WHERE interaction_id = $2",
                               case_id, c.interaction_id)
    return result


async def interaction_by_key(conn: Conn, key: str) -> Any:
    return await conn.fetchrow("SELECT * FROM interactions WHERE idempotency_key = $1", key)


async def timeline(conn: Conn, customer_id: uuid.UUID, channels: list[str], kinds: list[str],
                   after: tuple[datetime, uuid.UUID] | None, limit: int) -> list[Any]:
    for i, ch in enumerate(channels):
        domain.check_choice(f"channels[{i}]", ch, domain.CHANNELS)
    for i, k in enumerate(kinds):
        domain.check_choice(f"kinds[{i}]", k, domain.KINDS)
    return list(await conn.fetch(
        """SELECT * FROM interactions
            WHERE customer_id = $1
              AND (cardinality($2::text[]) = 0 OR channel = ANY($2))
              AND (cardinality($3::text[]) = 0 OR kind = ANY($3))
              AND ($4::timestamptz IS NULL OR (occurred_at, interaction_id) < ($4, $5::uuid))
            ORDER BY occurred_at DESC, interaction_id DESC LIMIT $6""",
        await survivor(conn, customer_id), channels, kinds, after[0] if after else None,
        after[1] if after else None, limit))


# --- promise policies -------------------------------------------------------

async def policies(conn: Conn) -> list[Policy]:
    rows = await conn.fetch("SELECT * FROM promise_policies")
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
    await conn.execute(
        """INSERT INTO promise_policies (kind, channel, min_seconds, max_seconds,
                                         warn_before_seconds) VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (kind, channel) DO UPDATE SET min_seconds = EXCLUDED.min_seconds,
               max_seconds = EXCLUDED.max_seconds,
               warn_before_seconds = EXCLUDED.warn_before_seconds""",
        policy.kind, policy.channel, int(policy.min_time.total_seconds()),
        int(policy.max_time.total_seconds()), int(policy.warn_before.total_seconds()))
    return policy


# --- cases ------------------------------------------------------------------

async def open_case(conn: Conn, ctx: Context, *, customer_id: uuid.UUID, kind: str,
                    channel: str, unit: str, summary: str, interaction_id: uuid.UUID | None,
                    idempotency_key: str, callback_phone: str = "") -> uuid.UUID:
    """Open a case with the promise of its policy, for the customer or, when
    they were merged away, their survivor; the same key returns the existing
    case. Schedules the breach warning and the breach."""
    return await _open_case(conn, ctx, customer_id=await survivor(conn, customer_id),
                            kind=kind, channel=channel, unit=unit, summary=summary,
                            interaction_id=interaction_id, idempotency_key=idempotency_key,
                            callback_phone=callback_phone)


async def _open_case(conn: Conn, ctx: Context, *, customer_id: uuid.UUID, kind: str,
                     channel: str, unit: str, summary: str, interaction_id: uuid.UUID | None,
                     idempotency_key: str, callback_phone: str = "") -> uuid.UUID:
    """:func:`open_case` for a customer id already resolved to its survivor
    (the contacts of a batch are resolved together)."""
    kind = domain.check_choice("kind", kind, domain.CASE_KINDS)
    channel = domain.check_choice("channel", channel, domain.CHANNELS)
    if not idempotency_key.strip():
        raise InvalidArgument("idempotency_key", "required")
    existing = await conn.fetchval("SELECT case_id FROM cases WHERE idempotency_key = $1",
                                   idempotency_key)
    if existing:
        return uuid.UUID(str(existing))
    policy = domain.choose_policy(await policies(conn), kind, channel)
    now = ctx.clock.now()
    promise = domain.promise_for(policy, now)
    case_id = ids.uuid4()
    await conn.execute(
        """INSERT INTO cases (case_id, idempotency_key, customer_id, kind, channel, unit, summary,
                              interaction_id, opened_at, promised_earliest_at, promised_by,
                              warn_at, callback_phone)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)""",
        case_id, idempotency_key, customer_id, kind, channel, unit, summary, interaction_id, now,
        promise.earliest_at, promise.deadline, promise.warn_at, callback_phone)
    uow.on_commit(metrics.CASES_OPENED.labels(SERVICE, kind, channel).inc)
    await scheduler.schedule(conn, WARN, str(case_id), promise.warn_at)
    await scheduler.schedule(conn, BREACH, str(case_id), promise.deadline)
    events: list[EventPayload] = [CaseOpened(
        case_id=str(case_id), customer_id=str(customer_id), kind=kind, channel=channel,
        unit=unit, interaction_id=str(interaction_id or ""), opened_at=now,
        promised_earliest_at=promise.earliest_at, promised_by=promise.deadline,
        callback_phone=callback_phone)]
    if kind == "complaint":
        earlier = await conn.fetch(
            """SELECT opened_at FROM cases WHERE customer_id = $1 AND kind = 'complaint'
                  AND case_id <> $2""", customer_id, case_id)
        if domain.is_repeated_complaint([r["opened_at"] for r in earlier], now):
            events.append(DissatisfactionSignal(
                customer_id=str(customer_id), reason="repeated_complaint", occurred_at=now,
                case_id=str(case_id)))
    await ctx.events.emit(conn, customer_id, events, time=ctx.clock.now())
    return case_id


async def load_case(conn: Conn, case_id: uuid.UUID, *, lock: bool = False) -> Any:
    row = await conn.fetchrow("SELECT * FROM cases WHERE case_id = $1"
                              + (" FOR UPDATE" if lock else ""), case_id)
    if row is None:
        raise NotFound("case", str(case_id))
    return row


def _base(row: Any, **extra: Any) -> dict[str, Any]:
    return {"case_id": str(row["case_id"]), "customer_id": str(row["customer_id"]),
            "kind": row["kind"], "channel": row["channel"], "unit": row["unit"], **extra}


async def acknowledge(conn: Conn, ctx: Context, case_id: uuid.UUID, agent: str) -> None:
    row = await load_case(conn, case_id, lock=True)
    if row["status"] == "resolved":
        raise FailedPrecondition(f"case {case_id} is resolved; reopen it first")
    if row["status"] == "acknowledged":
        return
    now = ctx.clock.now()
    await conn.execute("UPDATE cases SET status = 'acknowledged', acknowledged_at = $2 "
                       "WHERE case_id = $1", case_id, now)
    await ctx.events.emit(conn, row["customer_id"], [
        CaseAcknowledged(**_base(row), acknowledged_at=now, agent=agent)], time=now)


async def transfer(conn: Conn, ctx: Context, case_id: uuid.UUID, to_unit: str,
                   reason: str) -> None:
    """Route to another unit; the promise and its clock are kept."""
    if not to_unit.strip():
        raise InvalidArgument("to_unit", "required")
    if not reason.strip():
        raise InvalidArgument("reason", "required: say why the case moves")
    row = await load_case(conn, case_id, lock=True)
    if row["status"] == "resolved":
        raise FailedPrecondition(f"case {case_id} is resolved; reopen it first")
    if row["unit"] == to_unit:
        raise FailedPrecondition(f"case {case_id} is already with {to_unit!r}")
    now = ctx.clock.now()
    await conn.execute("UPDATE cases SET unit = $2 WHERE case_id = $1", case_id, to_unit)
    await conn.execute("INSERT INTO case_transfers VALUES ($1, $2, $3, $4, $5)",
                       case_id, row["unit"], to_unit, reason, now)
    await ctx.events.emit(conn, row["customer_id"], [
        CaseTransferred(**{**_base(row), "unit": to_unit}, from_unit=row["unit"], reason=reason,
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
    row = await load_case(conn, case_id, lock=True)
    if row["status"] == "resolved":
        return
    now = ctx.clock.now()
    late = domain.is_late(row["promised_by"], now)
    events: list[EventPayload] = []
    if domain.breaches_on_resolution(row["promised_by"], now, row["breached"]):
        events += _record_breach(conn, ctx, row)
        await conn.execute("UPDATE cases SET breached = true WHERE case_id = $1", case_id)
    await conn.execute(
        """UPDATE cases SET status = 'resolved', resolved_at = $2, resolution = $3,
                  resolved_late = $4 WHERE case_id = $1""", case_id, now, resolution, late)
    events.append(CaseResolved(**_base(row), resolved_at=now,
                               resolution=resolution, promised_by=row["promised_by"],
                               late=late))
    # Ask how it went, unless a complaint of this customer is still open.
    still_open = await conn.fetchval(
        """SELECT count(*) FROM cases WHERE customer_id = $1 AND kind = 'complaint'
              AND status <> 'resolved'""", row["customer_id"])
    if not still_open:
        events.append(SurveyRequested(customer_id=str(row["customer_id"]),
                                      case_id=str(case_id), channel=row["channel"],
                                      unit=row["unit"]))
    await ctx.events.emit(conn, row["customer_id"], events, time=ctx.clock.now())


async def reopen(conn: Conn, ctx: Context, case_id: uuid.UUID, reason: str) -> None:
    row = await load_case(conn, case_id, lock=True)
    if row["status"] != "resolved":
        raise FailedPrecondition(f"case {case_id} is not resolved")
    now = ctx.clock.now()
    await conn.execute(
        """UPDATE cases SET status = 'open', resolved_at = NULL, resolution = '',
                  resolved_late = false WHERE case_id = $1""", case_id)
    if not row["breached"] and row["promised_by"] > now:
        if row["warn_at"] > now:  # the warning comes again ahead of the same deadline
            await scheduler.schedule(conn, WARN, str(case_id), row["warn_at"])
        await scheduler.schedule(conn, BREACH, str(case_id), row["promised_by"])
    elif not row["breached"]:
        await scheduler.schedule(conn, BREACH, str(case_id), now)  # already past: breach now
    await ctx.events.emit(conn, row["customer_id"], [
        CaseReopened(**_base(row), reopened_at=now, reason=reason,
                     promised_by=row["promised_by"])], time=now)


async def warn_breach(conn: Conn, ctx: Context, case_id: uuid.UUID) -> None:
    row = await load_case(conn, case_id, lock=True)
    if row["status"] != "resolved":
        await ctx.events.emit(conn, row["customer_id"], [
            CaseBreachWarning(**_base(row), promised_by=row["promised_by"])],
            time=ctx.clock.now())


async def breach(conn: Conn, ctx: Context, case_id: uuid.UUID) -> None:
    """The scheduled breach: the deadline passed and the case is unresolved."""
    row = await load_case(conn, case_id, lock=True)
    if row["status"] == "resolved" or row["breached"]:
        return
    await conn.execute("UPDATE cases SET breached = true WHERE case_id = $1", case_id)
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
        customer_id = await survivor(conn, customer_id)
    return list(await conn.fetch(
        """SELECT * FROM cases c
            WHERE ($1 = 'all'
                   OR ($1 = 'open' AND status <> 'resolved')
                   OR ($1 = 'resolved' AND status = 'resolved')
                   OR ($1 = 'breached' AND breached)
                   OR ($1 = 'breaching' AND status <> 'resolved' AND NOT breached
                       AND warn_at <= $2))
              AND ($3 = '' OR unit = $3)
              AND ($4::uuid IS NULL OR customer_id = $4)
              AND ($5::uuid IS NULL OR case_id > $5)
            ORDER BY case_id LIMIT $6""",
        which, now, unit, customer_id, after, limit))


async def transfers(conn: Conn, case_id: uuid.UUID) -> list[Any]:
    return list(await conn.fetch(
        "SELECT from_unit, to_unit, reason, at FROM case_transfers WHERE case_id = $1"
        " ORDER BY at", case_id))


# --- satisfaction -----------------------------------------------------------

async def record_survey(conn: Conn, ctx: Context, *, idempotency_key: str,
                        customer_id: uuid.UUID, touchpoint: str, channel: str, unit: str,
                        interaction_id: uuid.UUID | None, case_id: uuid.UUID | None,
                        answers: list[dict[str, Any]], occurred_at: datetime) -> Any:
    if not idempotency_key.strip():
        raise InvalidArgument("idempotency_key", "required")
    if not answers:
        raise InvalidArgument("answers", "at least one answer")
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
    existing = await conn.fetchrow("SELECT * FROM survey_responses WHERE idempotency_key = $1",
                                   idempotency_key)
    if existing:
        return existing
    customer_id = await survivor(conn, customer_id)
    response_id = ids.uuid4()
    csat = domain.csat_mean(csat_scores)
    _count_survey(conn, channel, csat, nps_score)
    row = await conn.fetchrow(
        """INSERT INTO survey_responses (survey_response_id, idempotency_key, customer_id,
               touchpoint, channel, unit, interaction_id, case_id, csat, nps, answers,
               occurred_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
           RETURNING *""",
        response_id, idempotency_key, customer_id, touchpoint, channel, unit, interaction_id,
        case_id, csat, nps_score, answers, occurred_at)
    events: list[EventPayload] = [SurveyResponseRecorded(
        survey_response_id=str(response_id), customer_id=str(customer_id),
        touchpoint=touchpoint, channel=channel,
        csat=round(csat) if csat is not None else None, nps=nps_score,
        occurred_at=occurred_at, interaction_id=str(interaction_id or ""),
        case_id=str(case_id or ""))]
    for reason in domain.survey_signals(csat_scores, nps_score):
        events.append(DissatisfactionSignal(
            customer_id=str(customer_id), reason=reason, occurred_at=occurred_at,
            score=min(csat_scores) if reason == "low_csat" else nps_score,
            interaction_id=str(interaction_id or ""), case_id=str(case_id or "")))
    await ctx.events.emit(conn, customer_id, events, time=ctx.clock.now())
    return row


def _count_survey(conn: Conn, channel: str, csat: float | None, nps_score: int | None) -> None:
    if csat is not None:
        uow.on_commit(metrics.CSAT_RESPONSES.labels(SERVICE, channel).inc)
        uow.on_commit(lambda: metrics.CSAT_SCORE.labels(SERVICE, channel).observe(csat))
    if nps_score is not None:
        uow.on_commit(metrics.NPS_RESPONSES.labels(
            SERVICE, channel, metrics.nps_category(nps_score)).inc)


GROUPS = ("touchpoint", "channel", "unit")


async def satisfaction_report(conn: Conn, *, since: datetime, until: datetime,
                              group_by: str) -> list[dict[str, Any]]:
    """The report of the window grouped by touchpoint, channel or unit: the
    database tallies, :func:`domain.satisfaction_report` aggregates."""
    group_by = domain.check_choice("group_by", group_by, GROUPS, "touchpoint")
    # The column name comes from the fixed list above, never from the caller.
    surveys = await conn.fetch(
        f"""SELECT {group_by} AS key, count(*) AS responses,
                   coalesce(sum(csat), 0)::float8 AS csat_sum, count(csat) AS csat_answers,
                   count(nps) AS nps_answers, count(*) FILTER (WHERE nps >= 9) AS promoters,
                   count(*) FILTER (WHERE nps <= 6) AS detractors
              FROM survey_responses WHERE occurred_at >= $1 AND occurred_at <= $2
             GROUP BY 1""", since, until)
    case_key = "coalesce(i.touchpoint, '')" if group_by == "touchpoint" else f"c.{group_by}"
    cases = await conn.fetch(
        f"""SELECT {case_key} AS key, count(*) AS opened,
                   count(*) FILTER (WHERE c.status = 'resolved' AND NOT c.resolved_late)
                     AS resolved_in_time,
                   count(*) FILTER (WHERE c.breached) AS breached
              FROM cases c LEFT JOIN interactions i ON i.interaction_id = c.interaction_id
             WHERE c.opened_at >= $1 AND c.opened_at <= $2 GROUP BY 1""", since, until)
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
    return await conn.fetchrow(
        """INSERT INTO service_cycles (name, version, moments, updated_at)
           VALUES ($1, 1, $2, $3)
           ON CONFLICT (name) DO UPDATE SET version = service_cycles.version + 1,
               moments = EXCLUDED.moments, updated_at = EXCLUDED.updated_at
           RETURNING name, version, moments""", name, moments, ctx.clock.now())


async def get_service_cycle(conn: Conn, name: str) -> Any:
    row = await conn.fetchrow("SELECT name, version, moments FROM service_cycles WHERE name = $1",
                              name)
    if row is None:
        raise NotFound("service cycle", name)
    return row


# --- privacy ----------------------------------------------------------------

async def scrub_customer(conn: Conn, customer_id: uuid.UUID) -> None:
    """Erasure: notes and contact details go; counts and scores stay."""
    await conn.execute("UPDATE interactions SET notes = '' WHERE customer_id = $1", customer_id)
    await conn.execute(
        "UPDATE cases SET summary = '', resolution = '', callback_phone = '' "
        "WHERE customer_id = $1", customer_id)
    rows = await conn.fetch(
        "SELECT survey_response_id, answers FROM survey_responses WHERE customer_id = $1",
        customer_id)
    for r in rows:
        answers = [{**a, "comment": ""} for a in r["answers"]]
        await conn.execute("UPDATE survey_responses SET answers = $2 WHERE survey_response_id = $1",
                           r["survey_response_id"], answers)


async def survivors(conn: Conn, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
    """The survivor of each id the customers service merged away (ids not
    merged are absent): one statement for a whole batch."""
    rows = await conn.fetch(
        """SELECT merged_customer_id, survivor_customer_id FROM customer_aliases
            WHERE merged_customer_id = ANY($1::uuid[])""", list(set(ids)))
    return {r["merged_customer_id"]: r["survivor_customer_id"] for r in rows}


async def survivor(conn: Conn, customer_id: uuid.UUID) -> uuid.UUID:
    return (await survivors(conn, [customer_id])).get(customer_id, customer_id)


async def repoint_customer(conn: Conn, survivor: uuid.UUID, merged: uuid.UUID) -> None:
    """Move the merged customer's records to the survivor and remember the
    alias, so records that arrive later under the merged id follow too."""
    await conn.execute(
        """INSERT INTO customer_aliases (merged_customer_id, survivor_customer_id)
           VALUES ($1, $2) ON CONFLICT (merged_customer_id)
           DO UPDATE SET survivor_customer_id = EXCLUDED.survivor_customer_id""",
        merged, survivor)
    # Ids merged into the merged one earlier now resolve to the survivor too.
    await conn.execute(
        "UPDATE customer_aliases SET survivor_customer_id = $1 WHERE survivor_customer_id = $2",
        survivor, merged)
    for table in ("interactions", "cases", "survey_responses"):
        await conn.execute(f"UPDATE {table} SET customer_id = $1 WHERE customer_id = $2",
                           survivor, merged)


def answers_json(answers: list[dict[str, Any]]) -> str:
    return json.dumps(answers)
