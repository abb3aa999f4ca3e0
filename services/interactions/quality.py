"""The service's quality, one function per command: mystery-shopping
evaluations against a cycle's matrix, action plans to improve its
requirements, and the scorecard that puts customers' and evaluators'
scores, contacts and plans side by side (:mod:`scorecard`).

Every function runs in the caller's transaction. Evaluations are stored
once per idempotency key (the same request again returns the stored one, a
different one is ALREADY_EXISTS naming what differs) and published as
``service.evaluation_recorded`` in the same transaction, keyed by the unit
evaluated. Action plans are internal: they publish nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from crm_contracts.interactions import CriterionResult, EvaluationRecorded
from crm_contracts.times import check_event_time
from crm_runtime import ids
from crm_runtime.convert import parse_uuid, read_time_page_token
from crm_runtime.db import Conn
from crm_runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from services.interactions import cycles, domain, matrix, scorecard
from services.interactions import quality_store as qstore
from services.interactions.commands import Context, json_digest, key_conflict
from services.interactions.matrix import Cycle
from services.interactions.scorecard import Plan

#: The window of a scorecard when the request names none.
DEFAULT_WINDOW = timedelta(days=30)
SOURCES = ("manual", "evaluation", "low_score")
#: A plan's state -> the states it may move to.
TRANSITIONS = {"planned": ("in_progress", "done", "dropped"),
               "in_progress": ("done", "dropped"), "done": (), "dropped": ()}


def _required(value: str, field: str) -> str:
    value = value.strip()
    if not value:
        raise InvalidArgument(field, "required")
    return value


# --- evaluations ----------------------------------------------------------------------

async def evaluation_form(conn: Conn, cycle: str, version: int) -> Cycle:
    """The version of the cycle whose requirements are the form's criteria."""
    if version < 0:
        raise InvalidArgument("version", "0 (the latest) or a version number")
    return await cycles.load(conn, _required(cycle, "cycle"), version)


@dataclass(frozen=True)
class Recorded:
    """An evaluation as stored, with its criteria in their order."""

    row: Any
    scores: list[Any]


def _stated_scores(scores: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out, seen = [], set()
    for i, s in enumerate(scores):
        rid = _required(s["requirement_id"], f"scores[{i}].requirement_id")
        if rid in seen:
            raise InvalidArgument(f"scores[{i}].requirement_id", f"{rid!r} is scored twice")
        seen.add(rid)
        out.append({"requirement_id": rid, "score": s["score"], "note": s["note"].strip()})
    return out


async def record_evaluation(conn: Conn, ctx: Context, *, cycle: str, version: int,
                            evaluator: str, unit: str, channel: str,
                            visited_at: datetime | None, scores: Sequence[dict[str, Any]],
                            notes: str, idempotency_key: str) -> Recorded:
    """Store a mystery shopper's evaluation (``visited_at`` None: now; a
    given one must be an event time) and publish it. Scores are checked
    against the cycle version's criteria (the requirement exists, applies
    on the channel, the score is on the criterion's scale); the evaluation's
    score is 100 x sum(weight x normalised score) / sum(weight)."""
    key = _required(idempotency_key, "idempotency_key")
    cycle = _required(cycle, "cycle")
    if version < 0:
        raise InvalidArgument("version", "0 (the latest) or a version number")
    evaluator = _required(evaluator, "evaluator")
    unit = _required(unit, "unit")
    channel = domain.check_choice("channel", _required(channel, "channel"), domain.CHANNELS)
    if not scores:
        raise InvalidArgument("scores", "at least one score")
    stated = _stated_scores(scores)
    now = ctx.clock.now()
    when = check_event_time(visited_at, now, "visited_at") if visited_at is not None else now
    notes = notes.strip()
    values = {"cycle": cycle, "evaluator": evaluator, "unit": unit, "channel": channel,
              "notes": notes, "scores": stated}
    digest = json_digest([*values.values(), version,
                          when.timestamp() if visited_at is not None else None])
    existing = await qstore.evaluation_by_key(conn, key)
    if existing is None:
        recorded = await _insert_evaluation(conn, ctx, key, digest, cycle, version, evaluator,
                                            unit, channel, when, notes, stated)
        if recorded is not None:
            return recorded
        existing = await qstore.evaluation_by_key(conn, key)  # a concurrent twin committed
    found = await qstore.scores_of(conn, [existing["evaluation_id"]])
    mine = found[existing["evaluation_id"]]
    if existing["request_digest"] != digest:
        was = {**{f: existing[f] for f in values if f != "scores"},
               "scores": [{"requirement_id": s["requirement_id"], "score": s["score"],
                           "note": s["note"]} for s in mine]}
        differing = [f for f in values if was[f] != values[f]]
        if version and existing["version"] != version:
            differing.append("version")
        if visited_at is not None and existing["visited_at"] != when:
            differing.append("visited_at")
        raise key_conflict(key, "evaluation", differing or ["version", "visited_at"],
                           of_customer=False)
    return Recorded(existing, mine)


async def _insert_evaluation(conn: Conn, ctx: Context, key: str, digest: bytes, cycle: str,
                             version: int, evaluator: str, unit: str, channel: str,
                             when: datetime, notes: str,
                             stated: list[dict[str, Any]]) -> Recorded | None:
    c = await cycles.load(conn, cycle, version)
    rows = []
    for i, s in enumerate(stated):
        found = c.requirement(s["requirement_id"])
        if found is None:
            raise InvalidArgument(f"scores[{i}].requirement_id",
                                  f"{s['requirement_id']!r} is no requirement of {c.name!r} "
                                  f"version {c.version}")
        moment, r = found
        if not r.applies_to(channel):
            raise InvalidArgument(f"scores[{i}].requirement_id",
                                  f"{r.requirement_id!r} does not apply on {channel} "
                                  f"(only {', '.join(r.channels)})")
        scale = matrix.criterion_scale(r.scale)
        matrix.check_score(scale, s["score"], f"scores[{i}].score")
        rows.append({**s, "touchpoint": moment.touchpoint, "scale": scale, "weight": r.weight})
    weights = sum(r["weight"] for r in rows)
    score = round(100 * sum(r["weight"] * matrix.normalise(r["scale"], r["score"])
                            for r in rows) / weights, 2)
    now = ctx.clock.now()
    evaluation_id = ids.uuid4()
    row = await qstore.insert_evaluation(conn, evaluation_id, key, digest, c.name, c.version,
                                         evaluator, unit, channel, when, notes, score, now)
    if row is None:
        return None
    await qstore.insert_scores(conn, evaluation_id, rows)
    await ctx.events.emit(conn, f"unit:{unit}", [EvaluationRecorded(
        evaluation_id=str(evaluation_id), cycle=c.name, cycle_version=c.version, unit=unit,
        channel=channel, visited_at=when, score=score,
        criteria=[CriterionResult(touchpoint=r["touchpoint"], requirement_id=r["requirement_id"],
                                  scale=r["scale"], weight=r["weight"], score=r["score"])
                  for r in rows])], time=now)
    return Recorded(row, (await qstore.scores_of(conn, [evaluation_id]))[evaluation_id])


async def list_evaluations(conn: Conn, *, cycle: str, unit: str, channel: str,
                           since: datetime | None, until: datetime | None, page_token: str,
                           limit: int) -> list[Recorded]:
    """A page of evaluations, newest visit first; the window is [since, until)."""
    if channel:
        channel = domain.check_choice("channel", channel, domain.CHANNELS)
    if since is not None and until is not None and since >= until:
        raise InvalidArgument("from", "must be before 'to'")
    rows = await qstore.list_evaluations(
        conn, cycle=cycle.strip(), unit=unit.strip(), channel=channel, since=since,
        until=until, after=read_time_page_token(page_token) if page_token else None, limit=limit)
    scores = await qstore.scores_of(conn, [r["evaluation_id"] for r in rows])
    return [Recorded(r, scores[r["evaluation_id"]]) for r in rows]


# --- action plans -------------------------------------------------------------------------

def today(ctx: Context) -> date:
    """Today in UTC on the service's clock (when plans become overdue)."""
    return ctx.clock.now().astimezone(UTC).date()


def _date(value: str, field: str) -> date:
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise InvalidArgument(field, f"{value[:40]!r} is not a date (YYYY-MM-DD)") from None


def _not_past(day: date, ctx: Context, field: str) -> date:
    if day < today(ctx):
        raise InvalidArgument(field, f"{day} is in the past (today is {today(ctx)}, UTC)")
    return day


#: The fields of a plan its request digest covers.
PLAN_FIELDS = ("cycle", "touchpoint", "requirement_id", "description", "owner", "due_on",
               "source", "evaluation_id")


async def create_plan(conn: Conn, ctx: Context, *, cycle: str, touchpoint: str,
                      requirement_id: str, description: str, owner: str, due_date: str,
                      source: str, evaluation_id: str, idempotency_key: str) -> Plan:
    """A planned action plan for a requirement of the cycle's latest version
    (its moment derived) or for a moment as a whole, due on a day not before
    today (UTC). A plan from an evaluation names one of the same cycle that
    scored the requirement (or, for a moment, one of its requirements)."""
    key = _required(idempotency_key, "idempotency_key")
    cycle = _required(cycle, "cycle")
    touchpoint, requirement_id = touchpoint.strip(), requirement_id.strip()
    if not touchpoint and not requirement_id:
        raise InvalidArgument("requirement_id", "required (or touchpoint, for a whole moment)")
    description = _required(description, "description")
    owner = _required(owner, "owner")
    due_on = _date(_required(due_date, "due_date"), "due_date")
    source = domain.check_choice("source", source, SOURCES, "manual")
    evaluation: uuid.UUID | None = None
    if source == "evaluation":
        evaluation = parse_uuid(_required(evaluation_id, "evaluation_id"), "evaluation_id")
    elif evaluation_id.strip():
        raise InvalidArgument("evaluation_id", "only a plan of source 'evaluation' names one")
    values = {"cycle": cycle, "touchpoint": touchpoint, "requirement_id": requirement_id,
              "description": description, "owner": owner, "due_on": due_on,
              "source": source, "evaluation_id": evaluation}
    digest = json_digest([values[f] for f in PLAN_FIELDS])
    existing = await qstore.plan_by_key(conn, key)
    if existing is None:
        row = await _insert_plan(conn, ctx, key, digest, values)
        if row is not None:
            return qstore.to_plan(row)
        existing = await qstore.plan_by_key(conn, key)  # a concurrent twin committed
    if existing["request_digest"] != digest:
        differing = [f for f in PLAN_FIELDS if f not in ("touchpoint", "requirement_id")
                     and existing[f] != values[f]]
        for f in ("touchpoint", "requirement_id"):
            if values[f] and existing[f] != values[f]:
                differing.append(f)
        raise key_conflict(key, "action plan", differing or ["touchpoint"], of_customer=False)
    return qstore.to_plan(existing)


async def _insert_plan(conn: Conn, ctx: Context, key: str, digest: bytes,
                       values: dict[str, Any]) -> Any:
    c = await cycles.load(conn, values["cycle"])
    touchpoint, requirement_id = values["touchpoint"], values["requirement_id"]
    if requirement_id:
        found = c.requirement(requirement_id)
        if found is None:
            raise InvalidArgument("requirement_id", f"{requirement_id!r} is no requirement of "
                                                    f"{c.name!r} (version {c.version})")
        if touchpoint and touchpoint != found[0].touchpoint:
            raise InvalidArgument("touchpoint", f"{requirement_id!r} is a requirement of "
                                                f"{found[0].touchpoint!r}, not {touchpoint!r}")
        touchpoint = found[0].touchpoint
    elif c.moment(touchpoint) is None:
        raise InvalidArgument("touchpoint", f"{touchpoint!r} is no moment of {c.name!r} "
                                            f"(version {c.version})")
    _not_past(values["due_on"], ctx, "due_date")
    evaluation = values["evaluation_id"]
    if evaluation is not None:
        row = await qstore.evaluation(conn, evaluation)
        if row is None:
            raise NotFound("evaluation", str(evaluation))
        if row["cycle"] != c.name:
            raise InvalidArgument("evaluation_id", f"evaluates cycle {row['cycle']!r}, not "
                                                   f"{c.name!r}")
        scored = await qstore.scored(conn, evaluation)
        if not any(s["requirement_id"] == requirement_id if requirement_id
                   else s["touchpoint"] == touchpoint for s in scored):
            raise InvalidArgument("evaluation_id", "the evaluation did not score "
                                  + (f"requirement {requirement_id!r}" if requirement_id
                                     else f"moment {touchpoint!r}"))
    return await qstore.insert_plan(
        conn, ids.uuid4(), key, digest, c.name, touchpoint, requirement_id,
        values["description"], values["owner"], values["due_on"], values["source"],
        evaluation, ctx.clock.now())


async def update_plan(conn: Conn, ctx: Context, action_plan_id: str, *, state: str,
                      owner: str, due_date: str, description: str) -> Plan:
    """Change a plan's state, owner, due date or description ('' : kept).
    A request that changes nothing returns the plan as it is (a retry);
    a done or dropped plan changes no more (FAILED_PRECONDITION)."""
    plan_id = parse_uuid(action_plan_id, "action_plan_id")
    if state:
        state = domain.check_choice("state", state, scorecard.PLAN_STATES)
    due_on = _date(due_date, "due_date") if due_date.strip() else None
    row = await qstore.plan_for_update(conn, plan_id)
    if row is None:
        raise NotFound("action plan", str(plan_id))
    new: dict[str, Any] = {"state": state or row["state"], "owner": owner.strip() or row["owner"],
           "due_on": due_on or row["due_on"],
           "description": description.strip() or row["description"]}
    if all(new[f] == row[f] for f in new):
        return qstore.to_plan(row)
    if not TRANSITIONS[row["state"]]:
        raise FailedPrecondition(f"action plan {plan_id} is {row['state']}: it changes no more")
    if new["state"] != row["state"] and new["state"] not in TRANSITIONS[row["state"]]:
        raise FailedPrecondition(f"action plan {plan_id} is {row['state']}: it may become "
                                 f"{' or '.join(TRANSITIONS[row['state']])}, not {state}")
    if due_on is not None and due_on != row["due_on"]:
        _not_past(due_on, ctx, "due_date")
    return qstore.to_plan(await qstore.update_plan(conn, plan_id, now=ctx.clock.now(), **new))


async def list_plans(conn: Conn, ctx: Context, *, cycle: str, state: str, overdue: bool,
                     page_token: str, limit: int) -> list[Plan]:
    """A page of plans, newest first."""
    if state:
        state = domain.check_choice("state", state, scorecard.PLAN_STATES)
    rows = await qstore.list_plans(conn, cycle=cycle.strip(), state=state,
                                   overdue_before=today(ctx) if overdue else None,
                                   after=read_time_page_token(page_token) if page_token else None,
                                   limit=limit)
    return [qstore.to_plan(r) for r in rows]


# --- the scorecard -------------------------------------------------------------------------

@dataclass(frozen=True)
class Window:
    since: datetime
    until: datetime


async def get_scorecard(conn: Conn, ctx: Context, *, cycle: str, version: int,
                        since: datetime | None, until: datetime | None, unit: str,
                        channel: str) -> tuple[scorecard.Scorecard, Window]:
    """The scorecard of a cycle version over [since, until) (default: the 30
    days up to now, what is stamped now included), for one unit and channel
    ('' : all)."""
    cycle = _required(cycle, "cycle")
    if version < 0:
        raise InvalidArgument("version", "0 (the latest) or a version number")
    if channel:
        channel = domain.check_choice("channel", channel, domain.CHANNELS)
    until = until or ctx.clock.now() + timedelta(microseconds=1)
    since = since or until - DEFAULT_WINDOW
    if since >= until:
        raise InvalidArgument("from", "must be before 'to'")
    c = await cycles.load(conn, cycle, version)
    unit = unit.strip()
    tallies = await qstore.tallies(conn, c.name, since, until, unit, channel)
    plans = await qstore.scorecard_plans(conn, c.name, since, until)
    active = await cycles.active_touchpoints(conn)
    return scorecard.build(c, tallies, plans, today(ctx), active), Window(since, until)
