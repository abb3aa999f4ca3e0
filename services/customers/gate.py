"""The contact gate's rules, as pure functions: may this proactive contact
be made?

Every service asks the customers service before it contacts a customer on
its own initiative (``ReserveContacts``, :mod:`services.customers.reservations`);
:func:`decide` answers for one contact, from what this service holds of the
customer (:class:`Customer`) and the contacts already counted for them, in
this order:

1. an erased customer is never contacted (``erased``);
2. nor one who asked not to be (``do_not_contact``);
3. a purpose other than ``service`` needs the customer's consent to it
   (``no_<purpose>_consent``);
4. not in the customer's quiet hours, in their time zone (``quiet_hours``,
   ``not_before`` their end); a contact made already (an agent logging a
   call) cannot be stopped any more: it is allowed, noted ``quiet_hours``;
5. the cap: **one ledger of contacts per customer**, every purpose together;
   a contact of purpose ``p`` is allowed while every window of
   ``policy.window`` around it holds fewer than ``policy.caps[p]`` counted
   contacts (``frequency_cap``, ``not_before`` the first moment one would
   not). Windows are half-open: two contacts exactly a window apart never
   share one. Purposes have their own limits over the same ledger, so
   service contacts can have a looser cap than promotions.

Around the contact, not only before it: contacts are asked for out of
order (a follow-up for the morning, then an agent's call logged for last
night), and checking every window that holds the new contact is what keeps
the number of contacts in *any* window within the caps.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import datetime, time, timedelta

from crm_contracts.vocabulary import SERVICE_PURPOSE, ContactRefusal
from crm_runtime.quiet_hours import in_quiet_hours, outside_quiet_hours, time_zone

#: The smallest step of time PostgreSQL keeps (and ``datetime``).
TICK = timedelta(microseconds=1)


@dataclass(frozen=True)
class GatePolicy:
    """The settings the gate applies (``CRM_CONTACT_CAPS``,
    ``CRM_CONTACT_CAP_WINDOW_DAYS``, ``CRM_QUIET_HOURS_*``,
    ``CRM_DEFAULT_TIME_ZONE``)."""

    caps: Mapping[str, int]
    window: timedelta = timedelta(days=7)
    quiet_start: time = time(21, 0)
    quiet_end: time = time(8, 0)
    default_time_zone: str = "UTC"


@dataclass(frozen=True)
class Customer:
    """What the gate knows of a customer: the authoritative consent."""

    erased: bool = False
    do_not_contact: bool = False
    #: The consent purposes the customer granted.
    consents: frozenset[str] = frozenset()
    #: IANA zone of their profile, empty when unknown.
    time_zone: str = ""


@dataclass(frozen=True)
class Verdict:
    """The gate's decision on one contact."""

    allowed: bool
    reason: str = ""
    not_before: datetime | None = None


ALLOWED = Verdict(True)
UNKNOWN = Verdict(False, ContactRefusal.UNKNOWN_CUSTOMER)


def consent_refusal(purpose: str) -> str:
    """The reason for a contact without the consent its purpose needs."""
    return f"no_{purpose}_consent"


def decide(purpose: str, at: datetime, customer: Customer, counted: Sequence[datetime],
           policy: GatePolicy, *, already_made: bool = False) -> Verdict:
    """May a contact of ``purpose`` reach ``customer`` at ``at``, given the
    times of the contacts ``counted`` for them (see the module's rules)?"""
    if customer.erased:
        return Verdict(False, ContactRefusal.ERASED)
    if customer.do_not_contact:
        return Verdict(False, ContactRefusal.DO_NOT_CONTACT)
    if purpose != SERVICE_PURPOSE and purpose not in customer.consents:
        return Verdict(False, consent_refusal(purpose))
    zone = time_zone(customer.time_zone, policy.default_time_zone)
    quiet = in_quiet_hours(at.astimezone(zone).time(), policy.quiet_start, policy.quiet_end)
    if quiet and not already_made:
        return Verdict(False, ContactRefusal.QUIET_HOURS,
                       outside_quiet_hours(at, zone, policy.quiet_start, policy.quiet_end))
    cap = policy.caps[purpose]
    if busiest_window(counted, at, policy.window) >= cap:
        return Verdict(False, ContactRefusal.FREQUENCY_CAP,
                       first_free(counted, at, policy.window, cap))
    return Verdict(True, ContactRefusal.QUIET_HOURS if quiet else "")


@dataclass(frozen=True)
class Ask:
    """One contact of a request, as the gate decides it: its customer is
    the survivor of the id asked about (None: no such customer)."""

    contact_id: str
    customer_id: uuid.UUID | None
    purpose: str
    at: datetime
    already_made: bool = False


def decide_request(asks: Sequence[Ask], customers: Mapping[uuid.UUID, Customer],
                   counted: Mapping[uuid.UUID, Sequence[datetime]],
                   allowed_before: Set[str], policy: GatePolicy
                   ) -> tuple[list[Verdict], list[int]]:
    """The verdicts on a request's contacts, in order, and the indexes of
    those to record. A contact id allowed before (``allowed_before``, or
    earlier in the request) is allowed again and not recorded twice; each
    contact allowed counts for the ones after it."""
    times = {cid: list(ts) for cid, ts in counted.items()}
    allowed = set(allowed_before)
    verdicts: list[Verdict] = []
    record: list[int] = []
    for i, ask in enumerate(asks):
        if ask.contact_id in allowed:
            verdicts.append(ALLOWED)
            continue
        if ask.customer_id is None or ask.customer_id not in customers:
            verdicts.append(UNKNOWN)
            continue
        ledger = times.setdefault(ask.customer_id, [])
        verdict = decide(ask.purpose, ask.at, customers[ask.customer_id], ledger, policy,
                         already_made=ask.already_made)
        verdicts.append(verdict)
        if verdict.allowed:
            ledger.append(ask.at)
            allowed.add(ask.contact_id)
            record.append(i)
    return verdicts, record


def busiest_window(counted: Sequence[datetime], at: datetime, window: timedelta) -> int:
    """The most ``counted`` contacts one window of ``window`` holding
    ``at`` holds: windows ``[start, start + window)`` with ``start`` from
    just after ``at - window`` to ``at``. As the start moves on, a window
    only gains a contact when its end passes it (just after ``t - window``),
    so the first window and those are the ones to count."""
    near = [t for t in counted if at - window < t < at + window]
    starts = [at - window + TICK, *(t - window + TICK for t in near if t >= at)]
    return max(sum(1 for t in near if start <= t < start + window) for start in starts)


def first_free(counted: Sequence[datetime], at: datetime, window: timedelta,
               cap: int) -> datetime:
    """The first moment from ``at`` on when a contact would be within the
    cap: the count of a window only falls when a contact leaves it, exactly
    ``window`` after that contact, so those moments are the candidates (the
    last of them always is: every contact is behind it by then)."""
    for candidate in sorted({t + window for t in counted if t + window > at}):
        if busiest_window(counted, candidate, window) < cap:
            return candidate
    return at  # not reached: ``at`` itself was over the cap, so some contact leaves later

