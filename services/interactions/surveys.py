"""Surveys: recording a customer's answers, and running the periodic
surveys of service cycles.

* A survey response (:func:`record_survey`) holds free answers (a question
  and a CSAT 1-5 or NPS 0-10 score) and answers to questions of the
  matrix, which name their ``question_id`` and give a score on the
  question's scale; CSAT and NPS of such an answer are derived from its
  score (a yes/no answer is neither). Each matrix answer is also a row of
  ``survey_answers``, for the scorecard. Idempotent per customer and key.
* A cycle version with a periodic survey runs it every N days
  (:func:`run_periodic`, scheduled by :func:`cycles.define`): a run pages
  over the segment's members as this service knows them, one page a
  transaction (the work reschedules itself with a cursor), and asks each
  member through the same consent and contact-gate path as a resolved
  case's survey (:func:`trust.schedule_periodic`); at its end the next run
  is scheduled N days after it started.

Every function runs in the caller's transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from crm_contracts.interactions import DissatisfactionSignal, SurveyResponseRecorded
from crm_contracts.times import check_event_time
from crm_runtime import ids, scheduler, uow
from crm_runtime.db import Conn
from crm_runtime.errors import InvalidArgument
from crm_runtime.events import EventPayload
from crm_runtime.scheduler import DueWork
from services.interactions import cycles, domain, matrix, metrics, store, trust
from services.interactions.commands import Context, json_digest, key_conflict
from services.interactions.store import SERVICE

#: The fields of a survey response its digest covers besides ``occurred_at``
#: (columns of ``survey_responses``).
SURVEY_FIELDS = ("touchpoint", "channel", "unit", "interaction_id", "case_id", "answers")
#: Members of a segment one page of a periodic run asks.
PERIODIC_PAGE = 500


# --- answers ----------------------------------------------------------------------

@dataclass
class _Answers:
    """A response's answers as stored, and what they score."""

    answers: list[dict[str, Any]] = field(default_factory=list)
    csat_scores: list[int] = field(default_factory=list)
    nps_score: int | None = None
    #: The matrix answers: (question's row, score).
    matrix: list[tuple[Any, int]] = field(default_factory=list)


def _question_ids(answers: Sequence[dict[str, Any]]) -> dict[int, uuid.UUID]:
    """The question id of each answer that names one, by position."""
    out: dict[int, uuid.UUID] = {}
    seen: set[uuid.UUID] = set()
    for i, a in enumerate(answers):
        text = (a.get("question_id") or "").strip()
        if not text:
            continue
        try:
            qid = uuid.UUID(text)
        except ValueError:
            raise InvalidArgument(f"answers[{i}].question_id",
                                  f"{text[:40]!r} is not a question of a service cycle") from None
        if qid in seen:
            raise InvalidArgument(f"answers[{i}].question_id",
                                  f"{qid} is answered twice in the response")
        seen.add(qid)
        out[i] = qid
    return out


async def _check_answers(conn: Conn, answers: Sequence[dict[str, Any]]) -> _Answers:
    """The answers checked and as stored: a matrix answer's score on its
    question's scale, its CSAT or NPS derived from it; a free answer's CSAT
    1-5 and NPS 0-10; one NPS answer per response."""
    if not answers:
        raise InvalidArgument("answers", "at least one answer")
    named = _question_ids(answers)
    rows = {r["question_id"]: r for r in await conn.fetch(
        "SELECT * FROM survey_questions WHERE question_id = ANY($1::uuid[])",
        list(named.values()))} if named else {}
    out = _Answers()
    for i, a in enumerate(answers):
        qid = named.get(i)
        if qid is None:
            if a.get("score"):
                raise InvalidArgument(f"answers[{i}].score", "only with a question_id")
            answer = {k: a[k] for k in ("question", "csat", "nps", "comment")}
        else:
            q = rows.get(qid)
            if q is None:
                raise InvalidArgument(f"answers[{i}].question_id",
                                      f"{qid} is not a question of a service cycle")
            score = matrix.check_score(q["scale"], a.get("score", 0), f"answers[{i}].score")
            answer = {"question": a["question"] or q["text"],
                      "csat": score if q["scale"] == "csat" else 0,
                      "nps": score if q["scale"] == "nps" else -1, "comment": a["comment"],
                      "question_id": str(qid), "score": score,
                      "requirement_id": q["requirement_id"], "scale": q["scale"]}
            out.matrix.append((q, score))
        if answer["csat"]:
            if not 1 <= answer["csat"] <= 5:
                raise InvalidArgument(f"answers[{i}].csat", f"must be 1-5, got {answer['csat']}")
            out.csat_scores.append(answer["csat"])
        if answer["nps"] >= 0:
            if answer["nps"] > 10:
                raise InvalidArgument(f"answers[{i}].nps", f"must be 0-10, got {answer['nps']}")
            if out.nps_score is not None:
                raise InvalidArgument(f"answers[{i}].nps", "only one NPS answer per response")
            out.nps_score = answer["nps"]
        out.answers.append(answer)
    return out


# --- recording a response ----------------------------------------------------------

async def record_survey(conn: Conn, ctx: Context, *, idempotency_key: str,
                        customer_id: uuid.UUID, touchpoint: str, channel: str, unit: str,
                        interaction_id: uuid.UUID | None, case_id: uuid.UUID | None,
                        answers: list[dict[str, Any]], occurred_at: datetime | None) -> Any:
    """Store a survey response of the customer or, when merged away, their
    survivor (``occurred_at`` None: now; a given one must be an event time),
    with a ``survey_answers`` row per matrix answer. The customer's same key
    with the same request returns the stored response, with a different one
    raises AlreadyExists."""
    if not idempotency_key.strip():
        raise InvalidArgument("idempotency_key", "required")
    checked = await _check_answers(conn, answers)
    now = ctx.clock.now()
    stated = occurred_at is not None
    when = check_event_time(occurred_at, now) if occurred_at is not None else now
    if channel:
        channel = domain.check_choice("channel", channel, domain.CHANNELS)
    values = {"touchpoint": touchpoint, "channel": channel, "unit": unit,
              "interaction_id": interaction_id, "case_id": case_id,
              "answers": checked.answers}
    digest = json_digest([*(values[f] for f in SURVEY_FIELDS),
                          when.timestamp() if stated else None])
    customer_id = await store.survivor(conn, customer_id)
    existing = await store.survey_by_key(conn, customer_id, idempotency_key)
    if existing is None:
        response_id = ids.uuid4()
        csat = domain.csat_mean(checked.csat_scores)
        row = await store.insert_survey(conn, response_id, idempotency_key, customer_id,
                                        touchpoint, channel, unit, interaction_id, case_id,
                                        csat, checked.nps_score, checked.answers, when, digest)
        if row is not None:
            await _insert_answers(conn, row, checked.matrix)
            _count_survey(channel, csat, checked.nps_score)
            await _survey_recorded(conn, ctx, row, checked.csat_scores, csat,
                                   checked.nps_score)
            return row
        # A concurrent request of the same key committed first.
        existing = await store.survey_by_key(conn, customer_id, idempotency_key)
    if existing["request_digest"] not in (None, digest):
        differing = [f for f in SURVEY_FIELDS if existing[f] != values[f]]
        if stated and existing["occurred_at"] != when:
            differing.append("occurred_at")
        raise key_conflict(idempotency_key, "survey response", differing or ["occurred_at"])
    return existing


async def _insert_answers(conn: Conn, row: Any, answered: list[tuple[Any, int]]) -> None:
    """A ``survey_answers`` row per matrix answer of a new response."""
    if answered:
        await conn.executemany(
            """INSERT INTO survey_answers (survey_response_id, question_id, customer_id, cycle,
                                           version, touchpoint, requirement_id, scale, score,
                                           channel, unit, occurred_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)""",
            [(row["survey_response_id"], q["question_id"], row["customer_id"], q["cycle"],
              q["version"], q["touchpoint"], q["requirement_id"], q["scale"], score,
              row["channel"], row["unit"], row["occurred_at"]) for q, score in answered])


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


def _count_survey(channel: str, csat: float | None, nps_score: int | None) -> None:
    if csat is not None:
        uow.on_commit(metrics.CSAT_RESPONSES.labels(SERVICE, channel).inc)
        uow.on_commit(lambda: metrics.CSAT_SCORE.labels(SERVICE, channel).observe(csat))
    if nps_score is not None:
        uow.on_commit(metrics.NPS_RESPONSES.labels(
            SERVICE, channel, metrics.nps_category(nps_score)).inc)


# --- periodic surveys ---------------------------------------------------------------

async def run_periodic(conn: Conn, ctx: Context, work: DueWork) -> None:
    """One page of a run of a cycle's periodic survey (key: the cycle's
    name): the next :data:`PERIODIC_PAGE` members of its segment, by id
    after the payload's cursor, each asked once per run
    (:func:`trust.schedule_periodic`); then the next page at once, or, the
    segment done, the next run ``survey_every_days`` after this one
    started. Each page asks the latest version's questions; a new periodic
    survey (another period, segment or channel) defined meanwhile ends this
    run and starts its own at once."""
    after = work.payload.get("after") or None
    run_at = datetime.fromisoformat(work.payload["run_at"])
    latest = await cycles.get(conn, work.key)
    if not latest.survey_every_days:
        return
    now = ctx.clock.now()
    if work.payload.get("survey") != list(latest.survey):
        # A new periodic survey was defined while this run was under way:
        # it starts its own run now.
        await scheduler.schedule(conn, work.kind, work.key, now, cycles.run_payload(latest, now))
        return
    version = latest.cycle.version
    members = [r["customer_id"] for r in await conn.fetch(
        """SELECT customer_id FROM customer_segments
            WHERE segment = $1 AND member AND ($2::uuid IS NULL OR customer_id > $2)
            ORDER BY customer_id LIMIT $3""",
        latest.survey_segment, after, PERIODIC_PAGE)]
    await trust.schedule_periodic(conn, latest.cycle.name, version, latest.survey_channel,
                                  run_at, members, now)
    if len(members) == PERIODIC_PAGE:
        await scheduler.schedule(conn, work.kind, work.key, now,
                                 cycles.run_payload(latest, run_at, str(members[-1])))
    else:
        next_at = run_at + timedelta(days=latest.survey_every_days)
        await scheduler.schedule(conn, work.kind, work.key, next_at,
                                 cycles.run_payload(latest, next_at))
