"""Promise policies, entitlements and milestones as pure functions (the
business-time arithmetic under them: test_business_time.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crm_runtime.errors import InvalidArgument
from services.interactions import business_time, promises
from services.interactions.business_time import ALWAYS
from services.interactions.promises import (
    DEFAULT_POLICIES,
    FIRST_RESPONSE,
    HIT,
    MISSED,
    PAUSED,
    PENDING,
    RESOLUTION,
    WARNING,
    Policy,
    choose_policy,
)

T0 = datetime(2031, 5, 1, 9, tzinfo=UTC)
H = timedelta(hours=1)
MADRID = ZoneInfo("Europe/Madrid")
WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday"]
OFFICE = business_time.calendar("office", "Europe/Madrid",
                                [{"days": WEEKDAYS, "opens": "09:00", "closes": "18:00"}], [])


def local(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=MADRID)


def test_the_most_specific_policy_wins() -> None:
    custom = [*DEFAULT_POLICIES, Policy("complaint", "email", 2 * H, 72 * H, 10 * H)]
    assert choose_policy(custom, "complaint", "email").policy.max_time == 72 * H
    assert choose_policy(custom, "complaint", "in_person").policy.max_time == 24 * H
    chat = choose_policy(custom, "complaint", "chat")
    assert chat.policy.channel == "*" and chat.reason == "policy complaint/*"
    with pytest.raises(InvalidArgument) as err:
        choose_policy(custom, "suggestion", "web")
    assert err.value.field == "kind"


def test_an_entitlement_of_a_segment_the_customer_is_in_wins() -> None:
    vip = Policy("complaint", "*", H, 4 * H, H, segment="vip")
    gold = Policy("complaint", "phone", H, 8 * H, H, segment="gold")
    custom = [*DEFAULT_POLICIES, vip, gold]
    assert choose_policy(custom, "complaint", "phone").policy.max_time == 48 * H
    assert choose_policy(custom, "complaint", "phone", ["other"]).policy.segment == ""
    chosen = choose_policy(custom, "complaint", "phone", ["gold", "vip"])
    assert chosen.policy is vip  # the shortest resolution of the customer's segments
    assert chosen.reason == "entitlement of segment 'vip': complaint/*"
    assert choose_policy(custom, "complaint", "phone", ["gold"]).policy is gold
    assert choose_policy(custom, "complaint", "web", ["gold"]).policy.segment == ""
    # An entitlement for a kind with no general policy still serves its segment.
    only_vip = [Policy("suggestion", "*", H, 2 * H, H, segment="vip")]
    assert choose_policy(only_vip, "suggestion", "web", ["vip"]).policy.max_time == 2 * H


@pytest.mark.parametrize(("fields", "field"), [
    ({"first_response": 49 * H}, "first_response_seconds"),
    ({"first_response": 4 * H, "first_response_warn_before": 4 * H},
     "first_response_warn_before_seconds"),
    ({"first_response_warn_before": H}, "first_response_warn_before_seconds"),
    ({"clock": "lunar"}, "clock"),
    ({"segment": "no spaces"}, "segment"),
])
def test_bad_policies_name_the_field(fields: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        Policy("complaint", "*", H, 48 * H, 8 * H, **fields)  # type: ignore[arg-type]
    assert err.value.field == field


@given(st.integers(0, 100), st.integers(1, 500), st.integers(0, 499))
def test_promises_are_ordered(min_h: int, max_h: int, warn_h: int) -> None:
    if max_h < min_h or warn_h >= max_h:
        with pytest.raises(InvalidArgument):
            Policy("support", "*", min_h * H, max_h * H, warn_h * H)
        return
    policy = Policy("support", "*", min_h * H, max_h * H, warn_h * H)
    [res] = promises.open_milestones(policy, ALWAYS, T0)
    assert res.due_at is not None and res.warn_at is not None
    assert T0 <= promises.earliest(policy, ALWAYS, T0) <= res.due_at
    assert T0 <= res.warn_at <= res.due_at


def test_complaint_by_phone_on_the_24x7_calendar_is_as_before() -> None:
    policy = choose_policy(DEFAULT_POLICIES, "complaint", "phone").policy
    first, res = promises.open_milestones(policy, ALWAYS, T0)
    assert (first.name, first.due_at, first.warn_at) == (FIRST_RESPONSE, T0 + 4 * H, T0 + 3 * H)
    assert (res.name, res.due_at, res.warn_at) == (RESOLUTION, T0 + 48 * H, T0 + 40 * H)
    assert promises.earliest(policy, ALWAYS, T0) == T0 + H


def test_a_friday_evening_complaint_is_due_on_monday_in_business_time() -> None:
    policy = Policy("complaint", "phone", H, 8 * H, 2 * H)
    [res] = promises.open_milestones(policy, OFFICE, local(2026, 12, 4, 17, 30))
    assert res.due_at == local(2026, 12, 7, 16, 30)
    assert res.warn_at == local(2026, 12, 7, 14, 30)


def test_pausing_keeps_the_time_left_and_resuming_moves_the_due_time() -> None:
    opened = local(2026, 12, 7, 9)  # Monday
    [res] = promises.open_milestones(Policy("support", "*", H, 8 * H, 2 * H), OFFICE, opened)
    paused = promises.pause(res, OFFICE, local(2026, 12, 7, 12))
    assert (paused.state, paused.remaining, paused.due_at) == (PAUSED, 5 * H, None)
    resumed = promises.resume(paused, OFFICE, local(2026, 12, 9, 17))  # Wednesday 17:00
    assert resumed.state == PENDING
    assert resumed.due_at == local(2026, 12, 10, 13)  # 1 h Wednesday, 4 h Thursday
    assert resumed.warn_at == local(2026, 12, 10, 11)
    met = promises.meet(resumed, OFFICE, local(2026, 12, 10, 10))
    assert (met.state, met.took) == (HIT, 8 * H - 3 * H)


def test_a_warned_milestone_is_not_warned_again_after_a_pause() -> None:
    [res] = promises.open_milestones(Policy("support", "*", H, 8 * H, 2 * H), ALWAYS, T0)
    warned = promises.warn(res, T0 + 6 * H)
    assert warned.state == WARNING
    resumed = promises.resume(promises.pause(warned, ALWAYS, T0 + 7 * H), ALWAYS, T0 + 20 * H)
    assert resumed.state == WARNING and resumed.warn_at is None
    assert resumed.due_at == T0 + 21 * H


def test_less_left_than_the_warning_lead_warns_at_once() -> None:
    [res] = promises.open_milestones(Policy("support", "*", H, 8 * H, 2 * H), ALWAYS, T0)
    paused = promises.pause(res, ALWAYS, T0 + 7 * H)  # 1 h left, before the warning was run
    resumed = promises.resume(paused, ALWAYS, T0 + 9 * H)
    assert resumed.warn_at == T0 + 9 * H and resumed.due_at == T0 + 10 * H


def test_a_milestone_past_due_is_not_paused_and_a_late_one_is_missed() -> None:
    [res] = promises.open_milestones(Policy("support", "*", H, 8 * H, 2 * H), ALWAYS, T0)
    assert promises.pause(res, ALWAYS, T0 + 9 * H) == res
    assert promises.due_to_miss(res, T0 + 9 * H)
    late = promises.meet(res, ALWAYS, T0 + 9 * H)
    assert (late.state, late.took, late.missed_at) == (MISSED, 9 * H, T0 + 9 * H)
    missed = promises.miss(res, T0 + 8 * H)
    assert promises.meet(missed, ALWAYS, T0 + 10 * H).state == MISSED


def test_stale_warnings_and_breaches_do_nothing() -> None:
    [res] = promises.open_milestones(Policy("support", "*", H, 8 * H, 2 * H), ALWAYS, T0)
    paused = promises.pause(res, ALWAYS, T0 + H)
    assert not promises.due_to_warn(paused, T0 + 7 * H)
    assert not promises.due_to_miss(paused, T0 + 9 * H)
    moved = promises.resume(paused, ALWAYS, T0 + 5 * H)
    assert not promises.due_to_miss(moved, T0 + 9 * H)  # the old due time
    assert promises.due_to_miss(moved, T0 + 12 * H)
    met = promises.meet(res, ALWAYS, T0 + 2 * H)
    assert not promises.due_to_warn(met, T0 + 7 * H) and not promises.due_to_miss(met, T0 + 9 * H)


def test_a_transfer_keeps_the_business_time_used() -> None:
    opened = local(2026, 12, 7, 9)
    [res] = promises.open_milestones(Policy("support", "*", H, 8 * H, 2 * H), OFFICE, opened)
    moved = promises.rebase(res, OFFICE, ALWAYS, local(2026, 12, 7, 15))  # 6 h used
    assert moved.due_at == local(2026, 12, 7, 17)
    assert promises.rebase(promises.pause(res, OFFICE, opened + H), OFFICE, ALWAYS,
                           opened + 2 * H).state == PAUSED


def test_reopening_buys_no_time() -> None:
    [res] = promises.open_milestones(Policy("support", "*", H, 8 * H, 2 * H), ALWAYS, T0)
    met = promises.meet(res, ALWAYS, T0 + H)
    again = promises.reopen(met, ALWAYS, T0 + 2 * H)
    assert (again.state, again.due_at, again.met_at) == (PENDING, T0 + 8 * H, None)
    while_paused = promises.meet(promises.pause(res, ALWAYS, T0 + 3 * H), ALWAYS, T0 + 5 * H)
    assert (while_paused.state, while_paused.took) == (HIT, 3 * H)
    later = promises.reopen(while_paused, ALWAYS, T0 + 10 * H)
    assert later.due_at == T0 + 15 * H and later.state == PENDING


def test_a_due_time_beyond_the_horizon_is_the_horizon_not_an_error() -> None:
    weekly = business_time.calendar(
        "weekly", "UTC", [{"days": ["wednesday"], "opens": "10:00", "closes": "10:01"}], [])
    assert promises.add(weekly, T0, 10_000 * H) == T0 + business_time.HORIZON
