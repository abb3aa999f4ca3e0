"""The satisfaction report's aggregation (domain.satisfaction_report), as a
pure function of the tallies the database returns per group."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.interactions.domain import (
    CaseTally,
    ContactTally,
    ReportRow,
    SurveyTally,
    csat_mean,
    nps,
    nps_of_counts,
    satisfaction_report,
)


def test_rows_by_channel_join_surveys_and_cases_sorted_by_key() -> None:
    rows = satisfaction_report(
        [SurveyTally("web", responses=3, csat_sum=12.0, csat_answers=3, nps_answers=2,
                     promoters=1, detractors=1),
         SurveyTally("phone", responses=2, csat_sum=3.0, csat_answers=2, nps_answers=2,
                     promoters=0, detractors=2)],
        [CaseTally("phone", opened=4, resolved_in_time=1, breached=2),
         CaseTally("chat", opened=1)])
    assert rows == [
        ReportRow("chat", cases_opened=1),
        ReportRow("phone", responses=2, csat=1.5, nps=-100.0, cases_opened=4,
                  cases_resolved_in_time=1, cases_breached=2),
        ReportRow("web", responses=3, csat=4.0, nps=0.0),
    ]


def test_a_group_without_csat_or_nps_answers_reports_zero_not_an_error() -> None:
    [row] = satisfaction_report([SurveyTally("unit-a", responses=2)], [])
    assert (row.csat, row.nps, row.responses) == (0.0, 0.0, 2)


def test_no_tallies_no_rows() -> None:
    assert satisfaction_report([], []) == []


def test_the_empty_key_is_a_group_of_its_own() -> None:
    """Cases of a contact without a touchpoint (or of no unit) are reported
    under the empty key, apart from the named ones."""
    rows = satisfaction_report([], [CaseTally("", opened=2), CaseTally("returns", opened=1)])
    assert [(r.key, r.cases_opened) for r in rows] == [("", 2), ("returns", 1)]


def test_nps_of_counts() -> None:
    assert nps_of_counts(7, 1, 10) == 60.0
    assert nps_of_counts(0, 0, 0) is None
    assert nps_of_counts(0, 5, 5) == -100.0




@given(st.lists(st.tuples(st.sampled_from(["web", "phone", "email"]),
                          st.lists(st.integers(1, 5), max_size=3), st.none() | st.integers(0, 10)),
                max_size=60),
       st.integers(0, 60))
def test_a_window_is_the_sum_of_its_parts(responses: list[tuple[str, list[int], int | None]],
                                          cut: int) -> None:
    """Tallies of two halves of a window give the report of the whole, and the
    report matches CSAT means and NPS computed straight from the answers."""
    def tally(part: list[tuple[str, list[int], int | None]]) -> list[SurveyTally]:
        out = []
        for key in {k for k, _, _ in part}:
            mine = [(c, n) for k, c, n in part if k == key]
            means = [m for m in (csat_mean(c) for c, _ in mine) if m is not None]
            answers = [n for _, n in mine if n is not None]
            out.append(SurveyTally(key, responses=len(mine), csat_sum=sum(means),
                                   csat_answers=len(means), nps_answers=len(answers),
                                   promoters=sum(1 for a in answers if a >= 9),
                                   detractors=sum(1 for a in answers if a <= 6)))
        return out

    whole = satisfaction_report(tally(responses), [])
    halves = satisfaction_report(tally(responses[:cut]) + tally(responses[cut:]), [])
    assert [r.key for r in halves] == [r.key for r in whole]
    for a, b in zip(halves, whole, strict=True):
        assert a.responses == b.responses
        assert a.csat == pytest.approx(b.csat) and a.nps == pytest.approx(b.nps)
    for row in whole:
        mine = [(c, n) for k, c, n in responses if k == row.key]
        means = [m for m in (csat_mean(c) for c, _ in mine) if m is not None]
        expected_csat = sum(means) / len(means) if means else 0.0
        assert row.csat == pytest.approx(expected_csat)
        assert row.nps == pytest.approx(nps([n for _, n in mine if n is not None]) or 0.0)


def test_milestone_hit_rates_count_decided_milestones_and_keep_the_medians() -> None:
    [row] = satisfaction_report([], [
        CaseTally("desk", opened=5, first_response_hit=3, first_response_missed=1,
                  first_response_median=600.0, resolution_hit=1, resolution_missed=1,
                  resolution_median=None)])
    assert (row.first_response_hit, row.first_response_missed) == (3, 1)
    assert row.first_response_hit_rate == pytest.approx(0.75)
    assert row.first_response_median_seconds == 600.0
    assert row.resolution_hit_rate == pytest.approx(0.5)
    assert row.resolution_median_seconds == 0.0  # none met yet
    [empty] = satisfaction_report([], [CaseTally("idle", opened=2)])
    assert (empty.first_response_hit_rate, empty.resolution_hit_rate) == (0.0, 0.0)


# --- contacts beside surveys and cases --------------------------------------------

def test_contacts_and_negative_contacts_are_columns_of_every_group() -> None:
    rows = satisfaction_report(
        [SurveyTally("web", responses=1, csat_sum=2.0, csat_answers=1)],
        [CaseTally("phone", opened=1)],
        [ContactTally("web", contacts=4, negative_contacts=1),
         ContactTally("email", contacts=2)])
    assert [(r.key, r.responses, r.cases_opened, r.contacts, r.negative_contacts)
            for r in rows] == [("email", 0, 0, 2, 0), ("phone", 0, 1, 0, 0),
                               ("web", 1, 0, 4, 1)]


@given(st.lists(st.tuples(st.sampled_from(["price_felt_high", "slow_delivery", "return"]),
                          st.sampled_from(["positive", "neutral", "negative"]),
                          st.booleans()),
                max_size=60),
       st.integers(0, 60))
def test_the_contacts_and_cases_of_a_window_are_the_sum_of_its_parts(
        contacts: list[tuple[str, str, bool]], cut: int) -> None:
    """Contacts (by cause, say; each a case too or not) tallied in two halves
    of a window give the report of the whole, and the counts straight from
    the contacts."""
    def tally(part: list[tuple[str, str, bool]]) -> tuple[list[CaseTally], list[ContactTally]]:
        keys = {k for k, _, _ in part}
        return ([CaseTally(k, opened=n) for k in keys
                 if (n := sum(1 for c, _, case in part if c == k and case))],
                [ContactTally(k, contacts=sum(1 for c, _, _ in part if c == k),
                              negative_contacts=sum(1 for c, o, _ in part
                                                    if c == k and o == "negative"))
                 for k in keys])

    whole_cases, whole_contacts = tally(contacts)
    first_cases, first_contacts = tally(contacts[:cut])
    rest_cases, rest_contacts = tally(contacts[cut:])
    whole = satisfaction_report([], whole_cases, whole_contacts)
    assert satisfaction_report([], first_cases + rest_cases,
                               first_contacts + rest_contacts) == whole
    for row in whole:
        mine = [(o, case) for k, o, case in contacts if k == row.key]
        assert row.contacts == len(mine)
        assert row.negative_contacts == sum(1 for o, _ in mine if o == "negative")
        assert row.cases_opened == sum(1 for _, case in mine if case)
