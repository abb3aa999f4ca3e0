"""The satisfaction report (``GetSatisfactionReport``): per touchpoint,
channel, unit, dissatisfaction cause or attention, the window's survey
responses (CSAT, NPS), cases (opened, in time, breached, milestones) and
contacts (all, negative).

The database tallies each source per group (one query each, keys from a
fixed table, never from the caller); :func:`domain.satisfaction_report`
adds them up. By cause, only what states one is counted (a contact, a case,
a response rating either): the rows are the causes, not "no cause". By
attention, a case counts under its contact's attention, a response under
the attention of the contact it rates (directly, or through the case it
rates); those without a contact are left out.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from crm_runtime.db import Conn
from services.interactions import domain


async def satisfaction_report(conn: Conn, *, since: datetime, until: datetime,
                              group_by: str) -> list[dict[str, Any]]:
    """The report of the window grouped by ``group_by`` (one of
    :data:`REPORT_GROUPS`, default touchpoint), as the fields of
    ``SatisfactionRow``."""
    group_by = domain.check_choice("group_by", group_by, REPORT_GROUPS, "touchpoint")
    surveys = await survey_tallies(conn, group_by, since, until)
    cases = await case_tallies(conn, group_by, since, until)
    contacts = await contact_tallies(conn, group_by, since, until)
    rows = domain.satisfaction_report([domain.SurveyTally(**r) for r in surveys],
                                      [domain.CaseTally(**r) for r in cases],
                                      [domain.ContactTally(**r) for r in contacts])
    return [asdict(r) for r in rows]


#: The keys a satisfaction report may be grouped by.
REPORT_GROUPS = ("touchpoint", "channel", "unit", "cause", "attention")

#: Per group, the key of a survey response ``s`` (its rated contact ``si``,
#: case ``sc`` and the case's contact ``sci``), of a case ``c`` (its contact
#: ``i``) and of a contact ``i``. A NULL key leaves the row out: no cause
#: stated, or no contact to take the attention of.
_REPORT_KEYS: dict[str, tuple[str, str, str]] = {
    "touchpoint": ("s.touchpoint", "coalesce(nullif(c.touchpoint, ''), i.touchpoint, '')",
                   "i.touchpoint"),
    "channel": ("s.channel", "c.channel", "i.channel"),
    "unit": ("s.unit", "c.unit", "i.unit"),
    "cause": ("coalesce(nullif(sc.cause, ''), nullif(si.cause, ''))", "nullif(c.cause, '')",
              "nullif(i.cause, '')"),
    "attention": ("coalesce(si.attention, sci.attention)", "i.attention", "i.attention"),
}


def _report_keys(group_by: str) -> tuple[str, str, str]:
    if group_by not in _REPORT_KEYS:
        raise ValueError(f"group_by {group_by!r} is not one of {REPORT_GROUPS}")
    return _REPORT_KEYS[group_by]


async def survey_tallies(conn: Conn, group_by: str, since: datetime,
                         until: datetime) -> list[Any]:
    """Per ``group_by`` key (one of :data:`REPORT_GROUPS`), the window's
    responses, CSAT sum and answers, NPS answers, promoters and detractors.
    By cause or attention, a response counts under the case or contact it
    rates (the case's cause first), and not at all when it rates none."""
    # The key's SQL comes from the fixed table, never from the caller.
    key = _report_keys(group_by)[0]
    return list(await conn.fetch(
        f"""SELECT {key} AS key, count(*) AS responses,
                   coalesce(sum(s.csat), 0)::float8 AS csat_sum, count(s.csat) AS csat_answers,
                   count(s.nps) AS nps_answers, count(*) FILTER (WHERE s.nps >= 9) AS promoters,
                   count(*) FILTER (WHERE s.nps <= 6) AS detractors
              FROM survey_responses s
              LEFT JOIN interactions si ON si.interaction_id = s.interaction_id
              LEFT JOIN cases sc ON sc.case_id = s.case_id
              LEFT JOIN interactions sci ON sci.interaction_id = sc.interaction_id
             WHERE s.occurred_at >= $1 AND s.occurred_at <= $2 AND {key} IS NOT NULL
             GROUP BY 1""", since, until))


async def case_tallies(conn: Conn, group_by: str, since: datetime,
                       until: datetime) -> list[Any]:
    """Per ``group_by`` key, the cases opened in the window, those resolved in
    time and those breached (a case's touchpoint is its own, else its
    contact's; its attention its contact's), and per milestone how many were
    hit and missed and the median time they took."""
    key = _report_keys(group_by)[1]
    return list(await conn.fetch(
        f"""SELECT {key} AS key, count(*) AS opened,
                   count(*) FILTER (WHERE c.status = 'resolved' AND NOT c.resolved_late)
                     AS resolved_in_time,
                   count(*) FILTER (WHERE c.breached) AS breached,
                   count(*) FILTER (WHERE f.state = 'hit') AS first_response_hit,
                   count(*) FILTER (WHERE f.state = 'missed') AS first_response_missed,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM f.took))
                     AS first_response_median,
                   count(*) FILTER (WHERE r.state = 'hit') AS resolution_hit,
                   count(*) FILTER (WHERE r.state = 'missed') AS resolution_missed,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM r.took))
                     AS resolution_median
              FROM cases c LEFT JOIN interactions i ON i.interaction_id = c.interaction_id
              LEFT JOIN case_milestones f
                ON f.case_id = c.case_id AND f.milestone = 'first_response'
              LEFT JOIN case_milestones r ON r.case_id = c.case_id AND r.milestone = 'resolution'
             WHERE c.opened_at >= $1 AND c.opened_at <= $2 AND {key} IS NOT NULL
             GROUP BY 1""", since, until))


async def contact_tallies(conn: Conn, group_by: str, since: datetime,
                          until: datetime) -> list[Any]:
    """Per ``group_by`` key, the contacts that occurred in the window and how
    many of them were negative."""
    key = _report_keys(group_by)[2]
    return list(await conn.fetch(
        f"""SELECT {key} AS key, count(*) AS contacts,
                   count(*) FILTER (WHERE i.outcome = 'negative') AS negative_contacts
              FROM interactions i
             WHERE i.occurred_at >= $1 AND i.occurred_at <= $2 AND {key} IS NOT NULL
             GROUP BY 1""", since, until))
