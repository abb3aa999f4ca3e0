"""What promises count on: business-hours calendars, the calendar of each
unit, and promise policies (with their entitlements), one function per
command, each in the caller's transaction.

A calendar is versioned: defining it again adds a version, and a case keeps
counting on the version it opened under, unless the operator moves the
open cases to the new one (``apply_to_open_cases``; the business time they
have used is kept): scheduled work moves them a page at a time
(:func:`move_open_cases`). Nothing about a calendar may make a promise
unreachable: a calendar on which a business-time policy's longest
milestone would end more than :data:`business_time.REACH` ahead is refused
when defined, and so is such a policy when set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from crm_runtime import scheduler
from crm_runtime.db import Conn
from crm_runtime.errors import InvalidArgument, NotFound
from crm_runtime.scheduler import DueWork
from services.interactions import business_time, cases, domain, promises
from services.interactions import promise_store as pstore
from services.interactions.business_time import ALWAYS, Calendar
from services.interactions.commands import Context
from services.interactions.promises import Policy


@dataclass(frozen=True)
class Defined:
    """A calendar version as stored, with the units whose cases count on it."""

    calendar: Calendar
    defined_at: datetime | None  # None: the built-in ``always``
    units: list[str]


#: Scheduled work: move a page of a calendar's open cases to its latest
#: version (key: the calendar's name; payload: ``version``).
MOVE = "calendars.move_open_cases"
#: Cases a run of :data:`MOVE` moves, each with its own schedule and event.
MOVE_PAGE = 200


async def move_open_cases(conn: Conn, ctx: Context, work: DueWork) -> None:
    """One page of the open cases on older versions of a calendar moved to
    the version the operator applied, in the transaction that removes the
    work; the next page is scheduled in it too, until none is left. A crash
    repeats a page at most, and a case moved already is not on older
    versions any more: each case moves once. A newer application replaces
    the work (the schedule is an upsert) and moves them to its version."""
    version = int(work.payload["version"])
    row = await pstore.calendar_row(conn, work.key, version)
    if row is None:
        return
    cal = pstore.to_calendar(row)
    page = await pstore.open_cases_on(conn, cal.name, cal.version, MOVE_PAGE)
    for case_id in page:
        await cases.move_to_calendar(conn, ctx, case_id, cal)
    if len(page) == MOVE_PAGE:
        await scheduler.schedule(conn, MOVE, cal.name, ctx.clock.now(), work.payload)


def _years(cal: Calendar) -> str:
    return f"{business_time.REACH.days // 365} years"


def _unreachable(p: Policy, cal: Calendar, now: datetime) -> bool:
    return p.clock == promises.BUSINESS and not business_time.reachable(cal, now, p.longest())


async def define_calendar(conn: Conn, ctx: Context, *, name: str, time_zone: str,
                          hours: Sequence[Mapping[str, Any]],
                          closed_dates: Sequence[Mapping[str, Any]],
                          apply_to_open_cases: bool) -> Defined:
    """A new version of the calendar (its first: version 1); the same
    definition as the latest version returns that version (a retry adds
    none). With ``apply_to_open_cases``, open cases on older versions count
    the rest of their promise on this one."""
    cal = business_time.calendar(name, time_zone, hours, closed_dates)
    await pstore.lock_calendar_name(conn, cal.name)
    latest = await pstore.calendar_row(conn, cal.name)
    now = ctx.clock.now()
    if latest is not None and replace(cal, version=latest["version"]) == pstore.to_calendar(
            latest):
        row = latest
    else:
        cal = replace(cal, version=(latest["version"] if latest is not None else 0) + 1)
        for p in await cases.policies(conn):
            if _unreachable(p, cal, now):
                raise InvalidArgument("hours", (
                    f"the {p.kind}/{p.channel} policy promises {p.longest()} of business "
                    f"time, which these hours do not give within {_years(cal)}: open more "
                    "hours or shorten the policy"))
        row = await pstore.insert_calendar(conn, cal, now)
    stored = pstore.to_calendar(row)
    if apply_to_open_cases:
        await scheduler.schedule(conn, MOVE, stored.name, now, {"version": stored.version})
    units = (await pstore.units_by_calendar(conn)).get(stored.name, [])
    return Defined(stored, row["defined_at"], units)


async def get_calendar(conn: Conn, name: str, version: int) -> Defined:
    """A version of a calendar (0: the latest); NotFound when there is none."""
    units = await pstore.units_by_calendar(conn)
    if name == ALWAYS.name and version in (0, ALWAYS.version):
        return Defined(ALWAYS, None, units.get(ALWAYS.name, []))
    row = await pstore.calendar_row(conn, name, version) if name else None
    if row is None:
        raise NotFound("calendar", f"{name} version {version}" if version else name)
    return Defined(pstore.to_calendar(row), row["defined_at"], units.get(name, []))


async def list_calendars(conn: Conn) -> list[Defined]:
    """``always`` and the latest version of every calendar, by name."""
    units = await pstore.units_by_calendar(conn)
    return [Defined(ALWAYS, None, units.get(ALWAYS.name, [])),
            *(Defined(pstore.to_calendar(r), r["defined_at"], units.get(r["name"], []))
              for r in await pstore.latest_calendars(conn))]


async def set_unit_calendar(conn: Conn, ctx: Context, unit: str, calendar: str) -> Any:
    """The calendar the unit's new cases count on (``*``: every unit without
    one of its own). Its open cases keep the calendar they count on."""
    unit, calendar = unit.strip(), calendar.strip()
    if not unit:
        raise InvalidArgument("unit", "required (or '*' for every unit without a calendar)")
    if not calendar:
        raise InvalidArgument("calendar", "required: a defined calendar, or 'always'")
    if calendar != ALWAYS.name and await pstore.calendar_row(conn, calendar) is None:
        raise NotFound("calendar", calendar)
    return await pstore.set_unit_calendar(conn, unit, calendar, ctx.clock.now())


# --- policies --------------------------------------------------------------------------

def check_policy_names(kind: str, channel: str) -> tuple[str, str]:
    kind = domain.check_choice("kind", kind, domain.CASE_KINDS)
    if channel != "*":
        channel = domain.check_choice("channel", channel, domain.CHANNELS)
    return kind, channel


async def set_policy(conn: Conn, ctx: Context, policy: Policy) -> Policy:
    """Set the policy of its kind, channel and segment. A business-time
    policy must be reachable on every calendar defined (their latest
    versions) within :data:`business_time.REACH`."""
    check_policy_names(policy.kind, policy.channel)
    now = ctx.clock.now()
    for row in await pstore.latest_calendars(conn):
        cal = pstore.to_calendar(row)
        if _unreachable(policy, cal, now):
            field = "max_seconds"
            raise InvalidArgument(field, (
                f"{policy.longest()} of business time is not reached within {_years(cal)} "
                f"on calendar {cal.name!r}: shorten it or count calendar time"))
    await pstore.upsert_policy(conn, policy)
    return policy


async def delete_policy(conn: Conn, kind: str, channel: str, segment: str) -> Policy:
    """Remove a policy set before; NotFound when none was."""
    kind, channel = check_policy_names(kind, channel.strip() or "*")
    deleted = await pstore.delete_policy(conn, kind, channel, segment.strip())
    if deleted is None:
        raise NotFound("promise policy", f"{kind}/{channel}" + (f"/{segment}" if segment else ""))
    return deleted
