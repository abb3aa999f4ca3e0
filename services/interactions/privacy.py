"""The interactions service's part of a customer's data-subject export
(``Interactions/ExportCustomerData``, asked by the customers service, which
assembles every service's part into ``Customers/ExportCustomer``).

The part holds every row of the schema about the customer: their contacts;
their cases, with transfers and milestones (a callback is a case of kind
``callback_request`` with the number to call); the segments the customers
service said they are in; their survey responses (and the answers to
questions of the service-cycle matrix among them); the
merges this service knows, whether it knows the id as a customer and its
view of their consent (``contact_preferences``); the proactive contacts the
trust rules stopped; and the other customers' contacts that name them as
requester or decision-maker. A
merged id exports its survivor's records, and the records of every id merged
into the survivor (this service's aliases, and those the caller names).

:data:`EXPORT_COLUMNS` maps each column to its place in the part and
:data:`NOT_EXPORTED` says why the others are left out;
``tests/integration/test_export_coverage.py`` fails when a migration adds a
column that neither lists. An id this service holds nothing for is an empty
part: whether it is a customer is for the customers service to say. The
queries are in this module's last section, not in ``store.py``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from crm_runtime.convert import json_default
from crm_runtime.db import Conn
from services.interactions import store

SERVICE = "interactions"


def _fields(path: str, *columns: str) -> dict[str, str]:
    """Columns exported as the same-named fields of the part's ``path`` entries."""
    return {c: f"{path}[].{c}" for c in columns}


#: Where each column of the schema's customer tables appears in the part (a
#: path: ``key``, ``key[]`` an entry of a list, ``key[].field`` a field of its
#: entries).
EXPORT_COLUMNS: dict[str, dict[str, str]] = {
    "interactions": _fields(
        "interactions", "interaction_id", "idempotency_key", "customer_id", "channel",
        "direction", "kind", "attention", "requester_id", "decision_maker_id", "touchpoint",
        "agent", "unit", "occurred_at", "outcome", "notes", "amount_minor", "currency",
        "case_id", "recorded_at", "cause"),
    "cases": _fields(
        "cases", "case_id", "idempotency_key", "customer_id", "kind", "channel", "unit",
        "status", "summary", "interaction_id", "opened_at", "promised_earliest_at",
        "promised_by", "warn_at", "acknowledged_at", "resolved_at", "resolution", "breached",
        "resolved_late", "callback_phone", "reopen_reason", "calendar", "calendar_version",
        "clock", "policy", "policy_reason", "paused_at", "pause_reason", "cause", "touchpoint"),
    "case_milestones": {"case_id": "cases[].case_id",
                        **_fields("cases[].milestones", "milestone", "limit_time",
                                  "warn_before", "state", "due_at", "warn_at", "warned_at",
                                  "remaining", "met_at", "took", "missed_at")},
    "customer_segments": _fields("segments", "customer_id", "segment", "member",
                                 "changed_at"),
    "case_transfers": {"case_id": "cases[].case_id",
                       **_fields("cases[].transfers", "from_unit", "to_unit", "reason", "at")},
    "survey_responses": _fields(
        "survey_responses", "survey_response_id", "idempotency_key", "customer_id",
        "touchpoint", "channel", "unit", "interaction_id", "case_id", "csat", "nps", "answers",
        "occurred_at"),
    "survey_answers": _fields(
        "survey_answers", "survey_response_id", "question_id", "customer_id", "cycle",
        "version", "touchpoint", "requirement_id", "scale", "score", "channel", "unit",
        "occurred_at"),
    "customer_aliases": _fields("aliases", "merged_customer_id", "survivor_customer_id",
                                "merged_at"),
    "known_customers": {"customer_id": "known_customer_ids[]",
                        **_fields("contact_preferences", "do_not_contact", "do_not_contact_at",
                                  "surveys_consent", "surveys_consent_at", "time_zone",
                                  "erased_at")},
    "suppressed_contacts": _fields(
        "suppressed_contacts", "contact_id", "customer_id", "contact_type", "purpose", "reason",
        "case_id", "interaction_id", "at"),
}

_DIGEST = ("a digest of the request's fields, kept only to recognise a repeated idempotency "
           "key; the fields themselves are exported")

#: Tables (``table``) and columns (``table.column``) deliberately left out, and why.
NOT_EXPORTED: dict[str, str] = {
    "promise_policies": "promised response times per case kind and channel: no customer data",
    "calendars": "business hours of the company's units: no customer data",
    "unit_calendars": "which calendar each unit keeps: no customer data",
    "service_cycle_versions": "the versions of the service-cycle matrix (moments of truth, "
                              "requirements, periodic surveys): no customer data",
    "survey_questions": "the questions of the service-cycle matrix: no customer data",
    "evaluations": "mystery shoppers' evaluations of units: no customer data",
    "evaluation_scores": "the criteria scores of mystery shoppers' evaluations: no customer "
                         "data",
    "action_plans": "the company's plans to improve the service cycle: no customer data",
    "interactions.request_digest": _DIGEST,
    "cases.request_digest": _DIGEST,
    "survey_responses.request_digest": _DIGEST,
}


async def export(conn: Conn, customer_id: uuid.UUID,
                 merged: Sequence[uuid.UUID] = ()) -> str:
    """The part of ``customer_id`` as JSON (run it in one snapshot: a
    repeatable-read transaction). ``merged``: ids the customers service
    merged into the customer, whose records count as the customer's even
    before this service has seen the merge."""
    survivor = await store.survivor(conn, customer_id)
    aliases = await _aliases(conn, survivor, [customer_id, *merged])
    ids = sorted({survivor, customer_id, *merged, *(a["merged_customer_id"] for a in aliases)})
    cases = await _cases(conn, ids)
    known = await _known(conn, ids)
    transfers: dict[uuid.UUID, list[dict[str, Any]]] = {c["case_id"]: [] for c in cases}
    for t in await _transfers(conn, list(transfers)):
        transfers[t["case_id"]].append({k: t[k] for k in ("from_unit", "to_unit", "reason", "at")})
    milestones: dict[uuid.UUID, list[dict[str, Any]]] = {c["case_id"]: [] for c in cases}
    for m in await _milestones(conn, list(milestones)):
        milestones[m["case_id"]].append({k: v for k, v in m.items() if k != "case_id"})
    part = {
        "customer_id": survivor,
        "known_customer_ids": [r["customer_id"] for r in known],
        "contact_preferences": [dict(r) for r in known],
        "suppressed_contacts": [dict(r) for r in await _suppressed(conn, ids)],
        "aliases": [dict(a) for a in aliases],
        "interactions": [dict(r) for r in await _contacts(conn, ids)],
        "cases": [{**dict(c), "transfers": transfers[c["case_id"]],
                   "milestones": milestones[c["case_id"]]} for c in cases],
        "segments": [dict(r) for r in await _segments(conn, ids)],
        "survey_responses": [dict(r) for r in await _surveys(conn, ids)],
        "survey_answers": [dict(r) for r in await _survey_answers(conn, ids)],
        "named_in_interactions": [_naming(r, set(ids)) for r in await _named_in(conn, ids)],
    }
    return json.dumps(part, default=json_default, indent=2, sort_keys=True)


def _naming(row: Any, ids: set[uuid.UUID]) -> dict[str, Any]:
    """Another customer's contact that names this one: whose it is, in which
    role, and what and when (not its notes: they are the other customer's)."""
    return {"interaction_id": row["interaction_id"], "customer_id": row["customer_id"],
            "as": "requester" if row["requester_id"] in ids else "decision_maker",
            "channel": row["channel"], "kind": row["kind"], "occurred_at": row["occurred_at"]}


# --- queries ------------------------------------------------------------------
# Here rather than in store.py (near its size limit): every column of a
# customer's rows, as EXPORT_COLUMNS maps them (request digests left out).

async def _aliases(conn: Conn, survivor: uuid.UUID, ids: list[uuid.UUID]) -> list[Any]:
    """The merges of ``survivor`` (and of ``ids``) this service knows."""
    return list(await conn.fetch(
        """SELECT merged_customer_id, survivor_customer_id, merged_at FROM customer_aliases
            WHERE survivor_customer_id = $1 OR merged_customer_id = ANY($2::uuid[])
            ORDER BY merged_at, merged_customer_id""", survivor, ids))


async def _known(conn: Conn, ids: list[uuid.UUID]) -> list[Any]:
    """What this service knows of the ids as customers: its consent view."""
    return list(await conn.fetch(
        """SELECT customer_id, do_not_contact, do_not_contact_at, surveys_consent,
                  surveys_consent_at, time_zone, erased_at
             FROM known_customers WHERE customer_id = ANY($1::uuid[]) ORDER BY 1""", ids))


async def _suppressed(conn: Conn, ids: list[uuid.UUID]) -> list[Any]:
    return list(await conn.fetch(
        """SELECT contact_id, customer_id, contact_type, purpose, reason, case_id,
                  interaction_id, at
             FROM suppressed_contacts WHERE customer_id = ANY($1::uuid[])
            ORDER BY at, contact_id""", ids))


async def _contacts(conn: Conn, ids: list[uuid.UUID]) -> list[Any]:
    return list(await conn.fetch(
        """SELECT interaction_id, idempotency_key, customer_id, channel, direction, kind,
                  attention, requester_id, decision_maker_id, touchpoint, agent, unit,
                  occurred_at, outcome, notes, amount_minor, currency, case_id, recorded_at,
                  cause
             FROM interactions WHERE customer_id = ANY($1::uuid[])
            ORDER BY occurred_at, interaction_id""", ids))


async def _named_in(conn: Conn, ids: list[uuid.UUID]) -> list[Any]:
    """Other customers' contacts that name one of ``ids`` as requester or
    decision-maker (indirect attention)."""
    return list(await conn.fetch(
        """SELECT interaction_id, customer_id, requester_id, decision_maker_id, channel, kind,
                  occurred_at
             FROM interactions
            WHERE (requester_id = ANY($1::uuid[]) OR decision_maker_id = ANY($1::uuid[]))
              AND NOT customer_id = ANY($1::uuid[])
            ORDER BY occurred_at, interaction_id""", ids))


async def _cases(conn: Conn, ids: list[uuid.UUID]) -> list[Any]:
    return list(await conn.fetch(
        """SELECT case_id, idempotency_key, customer_id, kind, channel, unit, status, summary,
                  interaction_id, opened_at, promised_earliest_at, promised_by, warn_at,
                  acknowledged_at, resolved_at, resolution, breached, resolved_late,
                  callback_phone, reopen_reason, calendar, calendar_version, clock, policy,
                  policy_reason, paused_at, pause_reason, cause, touchpoint
             FROM cases WHERE customer_id = ANY($1::uuid[]) ORDER BY opened_at, case_id""",
        ids))


async def _transfers(conn: Conn, case_ids: list[uuid.UUID]) -> list[Any]:
    return list(await conn.fetch(
        """SELECT case_id, from_unit, to_unit, reason, at FROM case_transfers
            WHERE case_id = ANY($1::uuid[]) ORDER BY case_id, at""", case_ids))


async def _milestones(conn: Conn, case_ids: list[uuid.UUID]) -> list[Any]:
    return list(await conn.fetch(
        """SELECT case_id, milestone, limit_time, warn_before, state, due_at, warn_at,
                  warned_at, remaining, met_at, took, missed_at
             FROM case_milestones WHERE case_id = ANY($1::uuid[]) ORDER BY case_id, milestone""",
        case_ids))


async def _segments(conn: Conn, ids: list[uuid.UUID]) -> list[Any]:
    """The segments the customers service said the customer entered or left."""
    return list(await conn.fetch(
        """SELECT customer_id, segment, member, changed_at FROM customer_segments
            WHERE customer_id = ANY($1::uuid[]) ORDER BY customer_id, segment""", ids))


async def _surveys(conn: Conn, ids: list[uuid.UUID]) -> list[Any]:
    return list(await conn.fetch(
        """SELECT survey_response_id, idempotency_key, customer_id, touchpoint, channel, unit,
                  interaction_id, case_id, csat, nps, answers, occurred_at
             FROM survey_responses WHERE customer_id = ANY($1::uuid[])
            ORDER BY occurred_at, survey_response_id""", ids))


async def _survey_answers(conn: Conn, ids: list[uuid.UUID]) -> list[Any]:
    """The answers of the customer's survey responses to questions of the matrix."""
    return list(await conn.fetch(
        """SELECT survey_response_id, question_id, customer_id, cycle, version, touchpoint,
                  requirement_id, scale, score, channel, unit, occurred_at
             FROM survey_answers WHERE customer_id = ANY($1::uuid[])
            ORDER BY occurred_at, survey_response_id, question_id""", ids))
