"""The contact gate's rules as pure functions (services.customers.gate):
erased, do-not-contact, consent per purpose, quiet hours in the customer's
zone, and one ledger per customer with a cap per purpose; properties over
sequences of contacts, retries included."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from crm_runtime.settings import DEFAULT_CONTACT_CAPS
from services.customers.gate import Ask, Customer, GatePolicy, decide, decide_request

POLICY = GatePolicy(caps=dict(DEFAULT_CONTACT_CAPS))
WEEK = timedelta(days=7)
#: Noon UTC on a Monday: outside the default quiet hours in UTC.
NOON = datetime(2031, 3, 3, 12, tzinfo=UTC)
EVERYTHING = Customer(consents=frozenset({"surveys", "promotional_offers", "newsletter"}))
MADRID = ZoneInfo("Europe/Madrid")


def test_an_erased_customer_is_never_contacted_whatever_else_holds() -> None:
    erased = Customer(erased=True, do_not_contact=True, consents=EVERYTHING.consents)
    for purpose in DEFAULT_CONTACT_CAPS:
        verdict = decide(purpose, NOON, erased, [], POLICY)
        assert (verdict.allowed, verdict.reason) == (False, "erased")


def test_do_not_contact_stops_every_purpose_service_too() -> None:
    dnc = Customer(do_not_contact=True, consents=EVERYTHING.consents)
    for purpose in DEFAULT_CONTACT_CAPS:
        assert decide(purpose, NOON, dnc, [], POLICY).reason == "do_not_contact"


def test_each_purpose_needs_its_own_consent_but_service_none() -> None:
    nobody = Customer()
    assert decide("service", NOON, nobody, [], POLICY).allowed
    for purpose in ("surveys", "promotional_offers", "newsletter"):
        verdict = decide(purpose, NOON, nobody, [], POLICY)
        assert (verdict.allowed, verdict.reason) == (False, f"no_{purpose}_consent")
        only_this = Customer(consents=frozenset({purpose}))
        assert decide(purpose, NOON, only_this, [], POLICY).allowed
    surveys_only = Customer(consents=frozenset({"surveys"}))
    assert decide("newsletter", NOON, surveys_only, [], POLICY).reason == \
        "no_newsletter_consent"


def test_quiet_hours_in_the_customers_zone_say_when_they_end() -> None:
    in_madrid = Customer(time_zone="Europe/Madrid")
    # 21:30 UTC in winter is 22:30 in Madrid: quiet until 08:00 Madrid.
    late = datetime(2031, 1, 10, 21, 30, tzinfo=UTC)
    verdict = decide("service", late, in_madrid, [], POLICY)
    assert (verdict.allowed, verdict.reason) == (False, "quiet_hours")
    assert verdict.not_before == datetime(2031, 1, 11, 8, 0, tzinfo=MADRID)
    # 20:30 UTC (21:30 Madrid) is quiet there and not in UTC.
    evening = datetime(2031, 1, 10, 20, 30, tzinfo=UTC)
    assert not decide("service", evening, in_madrid, [], POLICY).allowed
    assert decide("service", evening, Customer(), [], POLICY).allowed
    # An unknown zone is the default one.
    tokyo_default = GatePolicy(caps=POLICY.caps, default_time_zone="Asia/Tokyo")
    assert not decide("service", NOON, Customer(time_zone="Mars/Olympus"), [],
                      tokyo_default).allowed  # 21:00 in Tokyo


def test_quiet_hours_across_a_daylight_saving_change() -> None:
    """The night Madrid moves its clocks forward (2031-03-30, 02:00 -> 03:00):
    a contact at 01:30 UTC (03:30 local, summer time) waits for 08:00 local,
    which is 06:00 UTC, not 07:00."""
    in_madrid = Customer(time_zone="Europe/Madrid")
    verdict = decide("service", datetime(2031, 3, 30, 1, 30, tzinfo=UTC), in_madrid, [],
                     POLICY)
    assert verdict.not_before == datetime(2031, 3, 30, 6, 0, tzinfo=UTC)
    # In the autumn (2031-10-26, 03:00 -> 02:00) 08:00 local is 07:00 UTC.
    verdict = decide("service", datetime(2031, 10, 26, 1, 30, tzinfo=UTC), in_madrid, [],
                     POLICY)
    assert verdict.not_before == datetime(2031, 10, 26, 7, 0, tzinfo=UTC)


def test_a_contact_made_already_in_quiet_hours_is_allowed_and_noted() -> None:
    night = datetime(2031, 1, 10, 22, 0, tzinfo=UTC)
    verdict = decide("service", night, Customer(), [], POLICY, already_made=True)
    assert (verdict.allowed, verdict.reason, verdict.not_before) == (True, "quiet_hours", None)
    # The cap still refuses it.
    full = [night - timedelta(hours=h) for h in range(1, 7)]
    assert decide("service", night, Customer(), full, POLICY,
                  already_made=True).reason == "frequency_cap"


def test_one_ledger_each_purpose_its_own_limit() -> None:
    """Two contacts of any purpose in the week use up surveys (2) but leave
    room for newsletters (4), promotions (3) and service (6)."""
    two = [NOON - timedelta(days=1), NOON - timedelta(days=2)]
    assert decide("surveys", NOON, EVERYTHING, two, POLICY).reason == "frequency_cap"
    for purpose in ("newsletter", "promotional_offers", "service"):
        assert decide(purpose, NOON, EVERYTHING, two, POLICY).allowed
    three = [*two, NOON - timedelta(days=3)]
    assert decide("promotional_offers", NOON, EVERYTHING, three, POLICY).reason == \
        "frequency_cap"
    assert decide("newsletter", NOON, EVERYTHING, three, POLICY).allowed
    six = [NOON - timedelta(hours=h) for h in range(1, 7)]
    assert decide("service", NOON, EVERYTHING, six, POLICY).reason == "frequency_cap"


def test_the_window_edges_and_when_the_oldest_leaves_it() -> None:
    oldest = NOON - WEEK
    two = [oldest, NOON - timedelta(days=1)]
    # Exactly a window after the oldest, it no longer counts.
    assert decide("surveys", NOON, EVERYTHING, two, POLICY).allowed
    # A microsecond earlier it does, and the verdict says when it leaves.
    just_before = NOON - timedelta(microseconds=1)
    verdict = decide("surveys", just_before, EVERYTHING, two, POLICY)
    assert (verdict.allowed, verdict.reason) == (False, "frequency_cap")
    assert verdict.not_before == oldest + WEEK


def test_contacts_ahead_count_too() -> None:
    """A follow-up counted for tomorrow and one for the day after fill the
    surveys cap of a window holding today."""
    ahead = [NOON + timedelta(days=1), NOON + timedelta(days=2)]
    verdict = decide("surveys", NOON, EVERYTHING, ahead, POLICY)
    assert (verdict.allowed, verdict.reason) == (False, "frequency_cap")
    # Free once the first of them is a window behind.
    assert verdict.not_before == NOON + timedelta(days=1) + WEEK
    assert decide("surveys", NOON - WEEK + timedelta(days=1), EVERYTHING, ahead,
                  POLICY).allowed


def test_a_retried_contact_id_is_allowed_again_and_recorded_once() -> None:
    cid = uuid.uuid4()
    ask = Ask("c-1", cid, "surveys", NOON)
    verdicts, record = decide_request([ask, ask], {cid: EVERYTHING}, {}, set(), POLICY)
    assert [v.allowed for v in verdicts] == [True, True] and record == [0]
    verdicts, record = decide_request([ask], {cid: EVERYTHING}, {cid: [NOON]}, {"c-1"}, POLICY)
    assert verdicts[0].allowed and record == []


def test_an_unknown_customer_is_refused_alone() -> None:
    cid = uuid.uuid4()
    verdicts, record = decide_request(
        [Ask("a", None, "service", NOON), Ask("b", uuid.uuid4(), "service", NOON),
         Ask("c", cid, "service", NOON)], {cid: Customer()}, {}, set(), POLICY)
    assert [v.reason for v in verdicts] == ["unknown_customer", "unknown_customer", ""]
    assert record == [2]


# --- properties ------------------------------------------------------------------

PURPOSES = st.sampled_from(sorted(DEFAULT_CONTACT_CAPS))
#: A contact: minutes from a start, its purpose, and the id of a contact it
#: retries (an index into earlier contacts) or None.
CONTACTS = st.lists(st.tuples(st.integers(0, 60 * 24 * 40), PURPOSES,
                              st.none() | st.integers(0, 200)), max_size=80)
DAYTIME = GatePolicy(caps=dict(DEFAULT_CONTACT_CAPS), quiet_start=time(0), quiet_end=time(0))


def _windows_hold(allowed: Sequence[tuple[datetime, str]], policy: GatePolicy) -> None:
    """Every window (counted by brute force, whatever the gate counts with):
    the contacts in it, in the order they were allowed, each found fewer
    than its purpose's cap before it; so no window holds more than the
    largest cap."""
    tick = timedelta(microseconds=1)
    starts = {s for t, _ in allowed for s in (t, t - policy.window + tick)}
    for start in starts:
        inside = [p for t, p in allowed if start <= t < start + policy.window]
        for position, purpose in enumerate(inside, 1):
            assert position <= policy.caps[purpose], (start, inside)


@settings(max_examples=200, deadline=None)
@given(CONTACTS, st.integers(1, 10))
def test_no_window_ever_exceeds_the_caps_and_a_retry_never_counts_twice(
        contacts: list[tuple[int, str, int | None]], window_days: int) -> None:
    """Contacts of every purpose, asked for in any order of time (a retry
    asks again with an earlier contact's id, perhaps at another time), one
    request each: what the ledger holds keeps every cap, and each id at most
    once."""
    policy = GatePolicy(caps=DAYTIME.caps, window=timedelta(days=window_days),
                        quiet_start=DAYTIME.quiet_start, quiet_end=DAYTIME.quiet_end)
    cid = uuid.uuid4()
    ledger: dict[str, tuple[datetime, str]] = {}
    order: list[tuple[datetime, str]] = []
    ids: list[str] = []
    for minute, purpose, retry in contacts:
        contact_id = ids[retry] if retry is not None and retry < len(ids) else f"c{len(ids)}"
        ids.append(contact_id)
        at = NOON + timedelta(minutes=minute)
        verdicts, record = decide_request(
            [Ask(contact_id, cid, purpose, at)], {cid: EVERYTHING},
            {cid: [t for t, _ in ledger.values()]}, set(ledger), policy)
        if record:
            assert contact_id not in ledger
            ledger[contact_id] = (at, purpose)
            order.append((at, purpose))
        if contact_id in ledger:
            assert verdicts[0].allowed
    assert len(order) == len(ledger)
    _windows_hold(order, policy)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 60 * 24 * 30), max_size=60), st.integers(1, 6),
       st.integers(1, 10))
def test_one_purpose_never_more_than_its_cap_in_any_window(
        minutes: list[int], cap: int, window_days: int) -> None:
    policy = GatePolicy(caps={"service": cap}, window=timedelta(days=window_days),
                        quiet_start=time(0), quiet_end=time(0))
    sent: list[datetime] = []
    for minute in minutes:  # in the order drawn, not in time order
        at = NOON + timedelta(minutes=minute)
        verdict = decide("service", at, Customer(), sent, policy)
        if verdict.allowed:
            sent.append(at)
        else:
            assert verdict.not_before is not None and verdict.not_before > at
            assert decide("service", verdict.not_before, Customer(), sent, policy).allowed
    for start in sent:
        assert sum(1 for t in sent if start <= t < start + policy.window) <= cap
