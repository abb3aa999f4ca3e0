"""What the interactions service does, one function per command.

Every function runs in the caller's transaction, validates, applies the pure
rules of :mod:`domain`, writes through :mod:`store` and queues its events in
the outbox. The use cases with a module of their own build on this one
(its :class:`Context` and the helpers shared by every idempotent command,
:data:`DIGEST_VERSION`, :func:`key_conflict`, :func:`json_digest`):
contacts (recording them, the timeline) in :mod:`contacts`, cases and their
promises in :mod:`cases`, calendars and policies in :mod:`calendars`, the
consent view and the contacts it stops in :mod:`trust`.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from crm_contracts.interactions import DissatisfactionSignal, SurveyResponseRecorded
from crm_contracts.privacy import InteractionsErasureCompleted
from crm_contracts.times import check_event_time
from crm_runtime import ids, sealing, uow
from crm_runtime.db import Conn
from crm_runtime.errors import AlreadyExists, InvalidArgument
from crm_runtime.events import EventPayload
from crm_runtime.uow import CommandContext
from services.interactions import domain, metrics, promise_store, store, trust
from services.interactions.store import SERVICE

SOURCE = "/crm/interactions"


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


def json_digest(values: Sequence[object]) -> bytes:
    """The digest of a request's stated values (JSON, so any text goes)."""
    text = json.dumps([DIGEST_VERSION, *values], default=str, sort_keys=True,
                      separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


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
    digest = json_digest([*(values[f] for f in SURVEY_FIELDS),
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
    await promise_store.forget_segments(conn, customer_id)
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
    await promise_store.forget_segments(conn, merged)


async def segments_changed(conn: Conn,
                           changes: Sequence[tuple[uuid.UUID, str, bool, datetime]]) -> None:
    """``customer.segment_entered`` / ``customer.segment_left``: rows of
    (customer, segment, member, changed_at); entitlements read them when a
    case opens. The latest change per customer and segment wins."""
    await promise_store.apply_segment_changes(conn, changes)
