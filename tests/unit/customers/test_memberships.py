"""The pure parts of segment membership: the difference between an
evaluation and the stored rows, and which filters read the time."""

from __future__ import annotations

import uuid

from services.customers.memberships import Changes, diff, reads_time

A, B = uuid.UUID(int=1), uuid.UUID(int=2)


def test_the_diff_enters_the_new_matches_and_leaves_the_lost_ones() -> None:
    matching = [("gold", A), ("vip", A), ("vip", B)]
    held = [("vip", A), ("old", B), ("gold", B)]
    assert diff(matching, held) == Changes(entered=[("gold", A), ("vip", B)],
                                           left=[("gold", B), ("old", B)])


def test_the_diff_of_an_unchanged_membership_is_empty() -> None:
    assert diff([("vip", A)], [("vip", A)]) == Changes(entered=[], left=[])
    assert diff([], []) == Changes(entered=[], left=[])


def test_filters_reading_the_time_are_found_at_any_depth() -> None:
    days = {"field": "days_since_last_purchase", "op": "<=", "value": 90}
    stage = {"field": "stage", "op": "=", "value": "repeat"}
    assert reads_time(days)
    assert reads_time({"all": [stage, {"any": [stage, {"not": days}]}]})
    assert reads_time({"field": "days_since_registered", "op": ">", "value": 1})
    assert not reads_time({"all": [stage, {"not": stage}]})
