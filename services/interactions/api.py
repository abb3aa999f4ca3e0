"""gRPC servicer for ``crm.interactions.v1.Interactions``: maps protobuf in and
out and runs each command in one transaction."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from crm.interactions.v1 import interactions_pb2 as pb
from crm.interactions.v1 import interactions_pb2_grpc
from crm_contracts.contact_points import normalise_phone
from crm_runtime import uow
from crm_runtime.contact_gate import ContactDecision
from crm_runtime.convert import (
    page_size,
    parse_uuid,
    read_time_page_token,
    request_time,
    time_page_token,
)
from crm_runtime.convert import timestamp as ts
from crm_runtime.db import Conn
from crm_runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from services.interactions import (
    business_time,
    calendars,
    cases,
    commands,
    contacts,
    privacy,
    promise_store,
    promises,
    reports,
    store,
    surveys,
    trust,
)
from services.interactions.cycle_api import CycleApi
from services.interactions.directory import CustomerDirectory
from services.interactions.promises import Milestone, Policy
from services.interactions.quality_api import QualityApi

#: The longest time a promise policy may name (10 years).
_MAX_PROMISE_SECONDS = 10 * 365 * 24 * 3600

T = TypeVar("T")


@dataclass(frozen=True)
class _Unknown:
    """Customer ids a request states that this service does not know (yet)."""

    ids: frozenset[uuid.UUID]


def _uuid_or_none(value: str, field: str) -> uuid.UUID | None:
    return parse_uuid(value, field) if value else None


def interaction_to_pb(r: Any) -> pb.Interaction:
    """A contact; in the timeline of someone who took part in another
    customer's contact (requester, decision maker), without its notes and
    amount: those are the other customer's."""
    own = r.get("role", "") in ("", "customer")
    return pb.Interaction(
        interaction_id=str(r["interaction_id"]), customer_id=str(r["customer_id"]),
        channel=r["channel"], direction=r["direction"], kind=r["kind"],
        attention=pb.Attention(mode=r["attention"],
                               requester_customer_id=str(r["requester_id"] or ""),
                               decision_maker_customer_id=str(r["decision_maker_id"] or "")),
        touchpoint=r["touchpoint"], agent=r["agent"], unit=r["unit"],
        occurred_at=ts(r["occurred_at"]), outcome=r["outcome"],
        notes=r["notes"] if own else "",
        amount=pb.Money(amount_minor=r["amount_minor"], currency=r["currency"]) if own else None,
        idempotency_key=r["idempotency_key"], case_id=str(r["case_id"] or ""),
        cause=r["cause"], role=r.get("role", ""))


def case_to_pb(r: Any, transfers: list[Any], milestones: list[Milestone]) -> pb.Case:
    return pb.Case(
        case_id=str(r["case_id"]), customer_id=str(r["customer_id"]), kind=r["kind"],
        channel=r["channel"], unit=r["unit"], status=r["status"], opened_at=ts(r["opened_at"]),
        promised_earliest_at=ts(r["promised_earliest_at"]), promised_by=ts(r["promised_by"]),
        acknowledged_at=ts(r["acknowledged_at"]), resolved_at=ts(r["resolved_at"]),
        resolution=r["resolution"], breached=r["breached"], resolved_late=r["resolved_late"],
        callback_phone=r["callback_phone"], interaction_id=str(r["interaction_id"] or ""),
        summary=r["summary"],
        transfers=[pb.CaseTransfer(from_unit=t["from_unit"], to_unit=t["to_unit"],
                                   reason=t["reason"], at=ts(t["at"])) for t in transfers],
        milestones=[_milestone_to_pb(m) for m in milestones], calendar=r["calendar"],
        calendar_version=r["calendar_version"], clock=r["clock"],
        policy=pb.PromisePolicy(**r["policy"]) if r["policy"] else None,
        policy_reason=r["policy_reason"], paused=r["paused_at"] is not None,
        paused_at=ts(r["paused_at"]), pause_reason=r["pause_reason"], cause=r["cause"],
        touchpoint=r["touchpoint"])


def _milestone_to_pb(m: Milestone) -> pb.Milestone:
    f = cases.milestone_fields(m)
    return pb.Milestone(**{**f, **{k: ts(f[k]) for k in ("due_at", "warn_at", "met_at")}})


def policy_to_pb(p: Policy) -> pb.PromisePolicy:
    return pb.PromisePolicy(**cases.policy_fields(p))


def calendar_to_pb(d: calendars.Defined) -> pb.Calendar:
    cal = d.calendar
    return pb.Calendar(
        name=cal.name, time_zone=cal.time_zone, version=cal.version,
        hours=[pb.OpeningHours(**h) for h in business_time.to_hours(cal)],
        closed_dates=[pb.ClosedDate(**c) for c in business_time.to_closed_dates(cal)],
        defined_at=ts(d.defined_at), units=d.units,
        open_seconds_per_week=int(cal.open_per_week().total_seconds()))


class InteractionsServicer(CycleApi, QualityApi, interactions_pb2_grpc.InteractionsServicer):
    def __init__(self, pool: asyncpg.Pool, ctx: commands.Context,
                 directory: CustomerDirectory) -> None:
        self._pool = pool
        self._ctx = ctx
        self._directory = directory

    def _when(self, ts: Timestamp, present: bool) -> datetime:
        now = self._ctx.clock.now()
        return ts.ToDatetime(tzinfo=now.tzinfo) if present else now

    @staticmethod
    def _stated(ts: Timestamp, present: bool, field: str) -> datetime | None:
        """The time a request states, or None when it states none."""
        return request_time(ts, field) if present else None

    async def _for_customers(self, ids: Sequence[uuid.UUID | None],
                             work: Callable[[Conn], Awaitable[T]]) -> T:
        """``work`` in a unit of work of its own once every id of ``ids`` (None
        ones skipped) is a customer: known here, or else looked up with the
        customers service between two transactions (no transaction waits on
        it) and remembered. NotFound names the first id that is none;
        customers unreachable is a ConnectionError (``UNAVAILABLE``)."""
        wanted = [i for i in ids if i is not None]
        found: set[uuid.UUID] = set()

        async def attempt(conn: Conn) -> T | _Unknown:
            if found:
                await store.remember_customers(conn, found)
            missing = await store.unknown_customers(conn, wanted) if wanted else set()
            if missing:
                return _Unknown(frozenset(missing))
            return await work(conn)

        result = await uow.run(self._pool, attempt)
        if isinstance(result, _Unknown):
            found |= await self._directory.lookup(result.ids)
            for customer_id in wanted:
                if customer_id in result.ids and customer_id not in found:
                    raise NotFound("customer", str(customer_id))
            result = await uow.run(self._pool, attempt)
            if isinstance(result, _Unknown):  # erased meanwhile
                raise NotFound("customer", str(min(result.ids)))
        return result

    async def _case_reply(self, conn: Conn, case_id: uuid.UUID) -> pb.Case:
        return case_to_pb(await store.load_case(conn, case_id),
                          await store.transfers(conn, case_id),
                          list((await promise_store.milestones(conn, case_id)).values()))

    async def RecordInteraction(self, request: pb.RecordInteractionRequest,
                                context: grpc.aio.ServicerContext) -> pb.Interaction:
        stated: list[uuid.UUID | None] = []
        if request.customer_id:
            customer_id = parse_uuid(request.customer_id, "customer_id")
            stated.append(customer_id)
        else:  # asked before the transaction opens: no transaction waits on customers
            customer_id = await self._directory.identify(request.contact_email,
                                                         request.contact_phone)
        contact = contacts.check_contact(
            idempotency_key=request.idempotency_key, customer_id=customer_id,
            channel=request.channel, direction=request.direction, kind=request.kind,
            occurred_at=self._stated(request.occurred_at, request.HasField("occurred_at"),
                                     "occurred_at"),
            now=self._ctx.clock.now(), attention=request.attention.mode,
            requester_id=request.attention.requester_customer_id,
            decision_maker_id=request.attention.decision_maker_customer_id,
            touchpoint=request.touchpoint, agent=request.agent, unit=request.unit,
            outcome=request.outcome, notes=request.notes,
            amount_minor=request.amount.amount_minor, currency=request.amount.currency,
            case_id=request.case_id, cause=request.cause)

        decided: dict[str, ContactDecision] = {}
        if contact.direction == "proactive":
            # The contact gate, asked before the transaction opens.
            [decision] = await self._directory.reserve_contacts(
                [contacts.gate_request(contact)])
            decided[decision.contact_id] = decision

        async def record(conn: Conn) -> Any:
            allowed, refused = await contacts.screen(conn, self._ctx, [contact],
                                                     self._directory.reserve_contacts, decided)
            if refused:  # committed with the call's unit of work, then refused
                return refused[0]
            [(recorded, _)] = await contacts.record_contacts(conn, self._ctx, allowed)
            # The customer's own contact of the key (theirs or, merged, their survivor's).
            return await store.interaction_by_key(conn, recorded.customer_id,
                                                  recorded.idempotency_key)

        stated += [contact.requester_id, contact.decision_maker_id]
        result = await self._for_customers(stated, record)
        if isinstance(result, trust.Suppression):
            raise FailedPrecondition(f"customer {result.customer_id} may not be contacted "
                                     f"proactively: {result.reason}")
        reply = interaction_to_pb(result)
        reply.outside_quiet_hours = contact.outside_quiet_hours
        return reply

    async def GetTimeline(self, request: pb.GetTimelineRequest,
                          context: grpc.aio.ServicerContext) -> pb.GetTimelineResponse:
        customer_id = parse_uuid(request.customer_id, "customer_id")
        size = page_size(request.page_size)
        after = read_time_page_token(request.page_token) if request.page_token else None
        rows = await uow.run(self._pool, lambda c: contacts.timeline(
            c, customer_id, list(request.channels), list(request.kinds), after, size))
        token = (time_page_token(rows[-1]["occurred_at"], rows[-1]["interaction_id"])
                 if len(rows) == size else "")
        return pb.GetTimelineResponse(interactions=[interaction_to_pb(r) for r in rows],
                                      next_page_token=token)

    async def OpenCase(self, request: pb.OpenCaseRequest,
                       context: grpc.aio.ServicerContext) -> pb.Case:
        customer_id = parse_uuid(request.customer_id, "customer_id")
        interaction_id = _uuid_or_none(request.interaction_id, "interaction_id")

        async def open_(conn: Conn) -> pb.Case:
            case_id = await cases.open_case(
                conn, self._ctx, customer_id=customer_id, kind=request.kind,
                channel=request.channel, unit=request.unit, summary=request.summary,
                interaction_id=interaction_id, idempotency_key=request.idempotency_key,
                cause=request.cause, touchpoint=request.touchpoint)
            return await self._case_reply(conn, case_id)

        return await self._for_customers([customer_id], open_)

    async def RequestCallback(self, request: pb.RequestCallbackRequest,
                              context: grpc.aio.ServicerContext) -> pb.Case:
        customer_id = parse_uuid(request.customer_id, "customer_id")
        phone = normalise_phone(request.phone, "phone")

        async def open_(conn: Conn) -> pb.Case:
            case_id = await cases.open_case(
                conn, self._ctx, customer_id=customer_id, kind="callback_request",
                channel=request.channel or "phone", unit=request.unit,
                summary=request.summary, interaction_id=None,
                idempotency_key=request.idempotency_key, callback_phone=phone)
            return await self._case_reply(conn, case_id)

        return await self._for_customers([customer_id], open_)

    async def _case_command(self, case_id_text: str,
                            run: Callable[[Conn, uuid.UUID], Awaitable[None]]) -> pb.Case:
        case_id = parse_uuid(case_id_text, "case_id")

        async def work(conn: Conn) -> pb.Case:
            await run(conn, case_id)
            return await self._case_reply(conn, case_id)

        return await uow.run(self._pool, work)

    async def AcknowledgeCase(self, request: pb.AcknowledgeCaseRequest,
                              context: grpc.aio.ServicerContext) -> pb.Case:
        return await self._case_command(request.case_id, lambda c, i: cases.acknowledge(
            c, self._ctx, i, request.agent))

    async def TransferCase(self, request: pb.TransferCaseRequest,
                           context: grpc.aio.ServicerContext) -> pb.Case:
        return await self._case_command(request.case_id, lambda c, i: cases.transfer(
            c, self._ctx, i, request.to_unit, request.reason))

    async def ResolveCase(self, request: pb.ResolveCaseRequest,
                          context: grpc.aio.ServicerContext) -> pb.Case:
        return await self._case_command(request.case_id, lambda c, i: cases.resolve(
            c, self._ctx, i, request.resolution))

    async def ReopenCase(self, request: pb.ReopenCaseRequest,
                         context: grpc.aio.ServicerContext) -> pb.Case:
        return await self._case_command(request.case_id, lambda c, i: cases.reopen(
            c, self._ctx, i, request.reason))

    async def PauseCase(self, request: pb.PauseCaseRequest,
                        context: grpc.aio.ServicerContext) -> pb.Case:
        return await self._case_command(request.case_id, lambda c, i: cases.pause(
            c, self._ctx, i, request.reason))

    async def ResumeCase(self, request: pb.ResumeCaseRequest,
                         context: grpc.aio.ServicerContext) -> pb.Case:
        return await self._case_command(request.case_id, lambda c, i: cases.resume(
            c, self._ctx, i))

    async def ListCases(self, request: pb.ListCasesRequest,
                        context: grpc.aio.ServicerContext) -> pb.ListCasesResponse:
        size = page_size(request.page_size)
        customer_id = _uuid_or_none(request.customer_id, "customer_id")
        after = _uuid_or_none(_decode_token(request.page_token), "page_token")

        async def list_(conn: Conn) -> list[pb.Case]:
            rows = await cases.list_cases(conn, self._ctx, which=request.filter,
                                          unit=request.unit, customer_id=customer_id,
                                          after=after, limit=size)
            ms = await promise_store.milestones_of(conn, [r["case_id"] for r in rows])
            return [case_to_pb(r, await store.transfers(conn, r["case_id"]), ms[r["case_id"]])
                    for r in rows]

        page = await uow.run(self._pool, list_)
        token = _encode_token(page[-1].case_id) if len(page) == size else ""
        return pb.ListCasesResponse(cases=page, next_page_token=token)

    async def RecordSurveyResponse(self, request: pb.RecordSurveyResponseRequest,
                                   context: grpc.aio.ServicerContext) -> pb.SurveyResponse:
        customer_id = parse_uuid(request.customer_id, "customer_id")
        answers = [{"question": a.question, "csat": a.csat, "nps": a.nps, "comment": a.comment,
                    "question_id": a.question_id, "score": a.score} for a in request.answers]
        interaction_id = _uuid_or_none(request.interaction_id, "interaction_id")
        case_id = _uuid_or_none(request.case_id, "case_id")
        occurred_at = self._stated(request.occurred_at, request.HasField("occurred_at"),
                                   "occurred_at")
        row = await self._for_customers([customer_id], lambda c: surveys.record_survey(
            c, self._ctx, idempotency_key=request.idempotency_key, customer_id=customer_id,
            touchpoint=request.touchpoint, channel=request.channel, unit=request.unit,
            interaction_id=interaction_id, case_id=case_id, answers=answers,
            occurred_at=occurred_at))
        return pb.SurveyResponse(
            survey_response_id=str(row["survey_response_id"]),
            customer_id=str(row["customer_id"]), touchpoint=row["touchpoint"],
            csat=float(row["csat"] or 0), nps=-1 if row["nps"] is None else row["nps"],
            answers=[pb.SurveyAnswer(**a) for a in row["answers"]])

    async def GetSatisfactionReport(self, request: pb.GetSatisfactionReportRequest,
                                    context: grpc.aio.ServicerContext) -> pb.SatisfactionReport:
        now = self._ctx.clock.now()
        until = self._when(request.to, request.HasField("to"))
        since = (request.__getattribute__("from").ToDatetime(tzinfo=now.tzinfo)
                 if request.HasField("from") else until - timedelta(days=30))
        if since >= until:
            raise InvalidArgument("from", "must be before 'to'")
        rows = await uow.run(self._pool, lambda c: reports.satisfaction_report(
            c, since=since, until=until, group_by=request.group_by))
        return pb.SatisfactionReport(rows=[pb.SatisfactionRow(**r) for r in rows])

    async def SetPromisePolicy(self, request: pb.PromisePolicy,
                               context: grpc.aio.ServicerContext) -> pb.PromisePolicy:
        for field in ("min_seconds", "max_seconds", "warn_before_seconds",
                      "first_response_seconds", "first_response_warn_before_seconds"):
            # Beyond this a deadline overflows the calendar (timedelta, datetime).
            if not 0 <= getattr(request, field) <= _MAX_PROMISE_SECONDS:
                raise InvalidArgument(field, f"0 to {_MAX_PROMISE_SECONDS} (10 years)")
        policy = Policy(request.kind.strip().lower(), request.channel.strip() or "*",
                        timedelta(seconds=request.min_seconds),
                        timedelta(seconds=request.max_seconds),
                        timedelta(seconds=request.warn_before_seconds),
                        timedelta(seconds=request.first_response_seconds),
                        timedelta(seconds=request.first_response_warn_before_seconds),
                        request.clock.strip().lower() or promises.BUSINESS,
                        request.segment.strip())
        await uow.run(self._pool, lambda c: calendars.set_policy(c, self._ctx, policy))
        return policy_to_pb(policy)

    async def ListPromisePolicies(self, request: pb.ListPromisePoliciesRequest,
                                  context: grpc.aio.ServicerContext
                                  ) -> pb.ListPromisePoliciesResponse:
        found = await uow.run(self._pool, cases.policies)
        found.sort(key=lambda p: (p.kind, p.channel != "*", p.channel, p.segment))
        return pb.ListPromisePoliciesResponse(policies=[policy_to_pb(p) for p in found])

    async def DeletePromisePolicy(self, request: pb.DeletePromisePolicyRequest,
                                  context: grpc.aio.ServicerContext) -> pb.PromisePolicy:
        return policy_to_pb(await uow.run(self._pool, lambda c: calendars.delete_policy(
            c, request.kind, request.channel, request.segment)))

    async def DefineCalendar(self, request: pb.Calendar,
                             context: grpc.aio.ServicerContext) -> pb.Calendar:
        hours = [{"days": list(h.days), "opens": h.opens, "closes": h.closes}
                 for h in request.hours]
        closed = [{"date": d.date, "name": d.name} for d in request.closed_dates]
        return calendar_to_pb(await uow.run(self._pool, lambda c: calendars.define_calendar(
            c, self._ctx, name=request.name, time_zone=request.time_zone, hours=hours,
            closed_dates=closed, apply_to_open_cases=request.apply_to_open_cases)))

    async def GetCalendar(self, request: pb.GetCalendarRequest,
                          context: grpc.aio.ServicerContext) -> pb.Calendar:
        if request.version < 0:
            raise InvalidArgument("version", "0 (the latest) or a version number")
        return calendar_to_pb(await uow.run(self._pool, lambda c: calendars.get_calendar(
            c, request.name.strip(), request.version)))

    async def ListCalendars(self, request: pb.ListCalendarsRequest,
                            context: grpc.aio.ServicerContext) -> pb.ListCalendarsResponse:
        found = await uow.run(self._pool, calendars.list_calendars)
        return pb.ListCalendarsResponse(calendars=[calendar_to_pb(d) for d in found])

    async def SetUnitCalendar(self, request: pb.SetUnitCalendarRequest,
                              context: grpc.aio.ServicerContext) -> pb.UnitCalendar:
        row = await uow.run(self._pool, lambda c: calendars.set_unit_calendar(
            c, self._ctx, request.unit, request.calendar))
        return pb.UnitCalendar(unit=row["unit"], calendar=row["calendar"],
                               set_at=ts(row["set_at"]))

    async def ExportCustomerData(self, request: pb.ExportCustomerDataRequest,
                                 context: grpc.aio.ServicerContext
                                 ) -> pb.ExportCustomerDataResponse:
        customer_id = parse_uuid(request.customer_id, "customer_id")
        merged = [parse_uuid(m, f"merged_customer_ids[{i}]")
                  for i, m in enumerate(request.merged_customer_ids)]
        # One snapshot, so the part never shows a case without its contact.
        part = await uow.snapshot(self._pool,
                                  lambda conn: privacy.export(conn, customer_id, merged))
        return pb.ExportCustomerDataResponse(service=privacy.SERVICE, json=part)


def _encode_token(case_id: str) -> str:
    return base64.urlsafe_b64encode(case_id.encode()).decode()


def _decode_token(token: str) -> str:
    if not token:
        return ""
    try:
        return base64.urlsafe_b64decode(token).decode()
    except (ValueError, TypeError):
        raise InvalidArgument("page_token", "is not a token this service returned") from None
