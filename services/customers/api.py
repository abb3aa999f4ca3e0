"""gRPC servicer for ``crm.customers.v1.Customers``: a thin adapter that maps
protobuf in and out and runs each command in one transaction."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
import grpc
from grpc_status import rpc_status

from crm.customers.v1 import customers_pb2 as pb
from crm.customers.v1 import customers_pb2_grpc
from crm_contracts.times import EVENT_EARLIEST, check_event_time
from crm_contracts.vocabulary import ACTION_CHANNELS, CONTACT_PURPOSES, DO_NOT_CONTACT, Stage
from crm_runtime import limits, uow
from crm_runtime.convert import page_size, parse_uuid, request_time
from crm_runtime.convert import timestamp as ts
from crm_runtime.db import Conn
from crm_runtime.errors import InvalidArgument
from crm_runtime.settings import DEFAULT_CONTACT_CAPS
from services.customers import (
    commands,
    domain,
    erasures,
    exports,
    merges,
    privacy,
    reservations,
    store,
)
from services.customers.domain import Identity
from services.customers.gate import GatePolicy

T = TypeVar("T")

_STAGE_TO_PB = {Stage.POTENTIAL: pb.STAGE_POTENTIAL, Stage.ONE_TIME: pb.STAGE_ONE_TIME,
                Stage.REPEAT: pb.STAGE_REPEAT, Stage.FORMER: pb.STAGE_FORMER}
_PB_TO_STAGE = {v: k for k, v in _STAGE_TO_PB.items()}

_PROFILE_FIELDS = ("birth_year", "sex", "buyer_type", "company_name", "socio_economic_band",
                   "personality_notes", "prior_experience_notes", "product_knowledge",
                   "preferred_channel", "time_zone", "purchase_importance")



def profile_from_pb(p: pb.Profile) -> dict[str, Any]:
    out: dict[str, Any] = {f: getattr(p, f) for f in _PROFILE_FIELDS}
    out["concomitant_needs"] = sorted({n.strip().lower() for n in p.concomitant_needs
                                       if n.strip()})
    return out


def registration_from_pb(request: pb.RegisterCustomerRequest) -> commands.Registration:
    """The registration a request asks for, its fields parsed (InvalidArgument
    names the first bad one)."""
    identity = Identity.parse(list(request.emails), list(request.phones),
                              list(request.external_ids))
    profile = profile_from_pb(request.profile)
    referrer = (parse_uuid(request.referred_by_customer_id, "referred_by_customer_id")
                if request.referred_by_customer_id else None)
    return commands.Registration(display_name=request.display_name, identity=identity,
                                 profile=profile, source=request.source, referred_by=referrer,
                                 referral_code=request.referral_code)


def _refused(index: int, field: str, problem: str) -> pb.RegisterCustomersResult:
    """The result of item ``index`` of a RegisterCustomers call, refused."""
    where = f"customers[{index}].{field}" if field else f"customers[{index}]"
    return pb.RegisterCustomersResult(error=pb.FieldViolation(field=where, description=problem))


def customer_to_pb(rec: store.CustomerRecord, this_year: int) -> pb.Customer:
    prof = rec.profile
    profile = pb.Profile(**{f: prof[f] for f in _PROFILE_FIELDS if f in prof},
                         concomitant_needs=prof.get("concomitant_needs", []),
                         age_band=domain.age_band(prof.get("birth_year"), this_year))
    msg = pb.Customer(
        customer_id=str(rec.customer_id), display_name=rec.display_name, emails=rec.emails,
        phones=rec.phones, external_ids=rec.external_ids, profile=profile,
        stage=_STAGE_TO_PB[rec.stage], purchase_count=rec.purchase_count,
        first_purchase_at=ts(rec.first_purchase_at), last_purchase_at=ts(rec.last_purchase_at),
        total_spent=[pb.Money(amount_minor=a, currency=c) for c, a in rec.spend.items()],
        consents=[pb.Consent(purpose=c.purpose, granted=c.granted, at=ts(c.at), source=c.source)
                  for c in rec.consents if c.purpose != DO_NOT_CONTACT],
        do_not_contact=rec.do_not_contact, version=rec.version, created_at=ts(rec.created_at),
        updated_at=ts(rec.updated_at), erased=rec.erased_at is not None, at_risk=rec.at_risk,
        risk_reasons=rec.risk_reasons, last_csat=rec.last_csat or 0,
        last_nps=-1 if rec.last_nps is None else rec.last_nps,
        links=[pb.Link(other_customer_id=str(other), role=role, **{"as": side})
               for side, other, role in rec.links])
    return msg


def erasure_status_to_pb(status: erasures.ErasureStatus) -> pb.GetErasureStatusResponse:
    return pb.GetErasureStatusResponse(
        customer_id=str(status.customer_id), erased=status.erased,
        requested_at=ts(status.requested_at), complete=status.complete,
        services=[pb.ServiceErasure(
            name=p.service, completed_at=ts(p.completed_at),
            state=pb.ERASURE_STATE_COMPLETE if p.complete else pb.ERASURE_STATE_PENDING)
            for p in status.parts])


def segment_to_pb(row: Any) -> pb.Segment:
    return pb.Segment(name=row["name"], version=row["version"], description=row["description"],
                      filter_json=json.dumps(row["definition"]),
                      churn_window_days=row["churn_window_days"] or 0)


def contact_from_pb(item: pb.ContactRequest, index: int,
                    now: datetime) -> reservations.Contact:
    """Item ``index`` of a ReserveContacts call, checked (InvalidArgument
    names its field, e.g. ``contacts[2].purpose``); ``at`` unset is now."""
    where = f"contacts[{index}]"
    contact_id = item.contact_id.strip()
    if not contact_id:
        raise InvalidArgument(f"{where}.contact_id", "required: the contact's stable id")
    if item.purpose not in CONTACT_PURPOSES:
        raise InvalidArgument(f"{where}.purpose",
                              f"{item.purpose!r} is not one of {list(CONTACT_PURPOSES)}")
    if item.channel and item.channel not in ACTION_CHANNELS:
        raise InvalidArgument(f"{where}.channel",
                              f"{item.channel!r} is not one of {list(ACTION_CHANNELS)}")
    at = request_time(item.at, f"{where}.at") if item.HasField("at") else now
    if not EVENT_EARLIEST <= at <= now + reservations.AHEAD:
        raise InvalidArgument(f"{where}.at", f"must be from {EVENT_EARLIEST:%Y-%m-%d} to at "
                                             f"most {reservations.AHEAD.days} days ahead")
    return reservations.Contact(
        contact_id=contact_id,
        customer_id=parse_uuid(item.customer_id, f"{where}.customer_id"),
        purpose=item.purpose, channel=item.channel, at=at,
        service=item.service.strip(), already_made=item.already_made)


class CustomersServicer(customers_pb2_grpc.CustomersServicer):
    def __init__(self, pool: asyncpg.Pool, ctx: commands.Context, peers: exports.Peers,
                 gate: GatePolicy | None = None) -> None:
        self._pool = pool
        self._ctx = ctx
        self._peers = peers
        self._gate = gate or GatePolicy(caps=dict(DEFAULT_CONTACT_CAPS))

    async def _read(self, work: Callable[[Conn], Awaitable[T]]) -> T:
        """Single-statement reads need no explicit transaction (one round trip)."""
        async with self._pool.acquire() as conn:
            return await work(conn)

    def _out(self, rec: store.CustomerRecord) -> pb.Customer:
        return customer_to_pb(rec, self._ctx.clock.now().year)

    async def RegisterCustomer(self, request: pb.RegisterCustomerRequest,
                               context: grpc.aio.ServicerContext) -> pb.RegisterCustomerResponse:
        r = registration_from_pb(request)
        rec, created = await uow.run(self._pool, lambda c: commands.register(
            c, self._ctx, display_name=r.display_name, identity=r.identity, profile=r.profile,
            source=r.source, referred_by=r.referred_by, referral_code=r.referral_code))
        return pb.RegisterCustomerResponse(customer=self._out(rec), created=created)

    async def RegisterCustomers(self, request: pb.RegisterCustomersRequest,
                                context: grpc.aio.ServicerContext
                                ) -> pb.RegisterCustomersResponse:
        # The count is checked with the request (customers.proto); each item's
        # own limits here, so one bad item is refused alone.
        count = len(request.customers)
        results: dict[int, pb.RegisterCustomersResult] = {}
        parsed: list[tuple[int, commands.Registration]] = []
        for i, item in enumerate(request.customers):
            bad = limits.violations(item)
            if bad:
                results[i] = _refused(i, *bad[0])
                continue
            try:
                parsed.append((i, registration_from_pb(item)))
            except InvalidArgument as exc:
                results[i] = _refused(i, exc.field, exc.problem)
        outcomes = await uow.run(self._pool, lambda c: commands.register_many(
            c, self._ctx, [r for _, r in parsed])) if parsed else []
        for (i, _), outcome in zip(parsed, outcomes, strict=True):
            if isinstance(outcome, InvalidArgument):
                results[i] = _refused(i, outcome.field, outcome.problem)
            elif isinstance(outcome, Exception):  # the item as a whole: a referrer, say
                results[i] = _refused(i, "", str(outcome))
            else:
                rec, created = outcome
                results[i] = pb.RegisterCustomersResult(customer=self._out(rec), created=created)
        return pb.RegisterCustomersResponse(results=[results[i] for i in range(count)])

    async def GetCustomer(self, request: pb.GetCustomerRequest,
                          context: grpc.aio.ServicerContext) -> pb.Customer:
        customer_id = parse_uuid(request.customer_id)
        return self._out(await self._read(lambda c: store.load(c, customer_id)))

    async def FindCustomers(self, request: pb.FindCustomersRequest,
                            context: grpc.aio.ServicerContext) -> pb.FindCustomersResponse:
        by = request.WhichOneof("by")
        if by is None:
            raise InvalidArgument("by", "give one of email, phone or external_id")
        value = getattr(request, by)
        identity = Identity.parse([value] if by == "email" else [],
                                  [value] if by == "phone" else [],
                                  [value] if by == "external_id" else [])

        async def find(conn: Conn) -> list[store.CustomerRecord]:
            return await store.load_many(conn, await store.find_by_identity(conn, identity))

        found = await uow.run(self._pool, find)
        return pb.FindCustomersResponse(customers=[self._out(r) for r in found])

    async def UpdateCustomer(self, request: pb.UpdateCustomerRequest,
                             context: grpc.aio.ServicerContext) -> pb.Customer:
        customer_id = parse_uuid(request.customer_id)
        if request.expected_version <= 0:
            raise InvalidArgument("expected_version", "required: the version you last read")
        add = Identity.parse(list(request.add_emails), list(request.add_phones),
                             list(request.add_external_ids))
        profile = profile_from_pb(request.profile) if request.HasField("profile") else None
        rec = await uow.run(self._pool, lambda c: commands.update(
            c, self._ctx, customer_id, expected_version=request.expected_version,
            display_name=request.display_name or None, profile=profile, add=add))
        return self._out(rec)

    async def ListCustomers(self, request: pb.ListCustomersRequest,
                            context: grpc.aio.ServicerContext) -> pb.ListCustomersResponse:
        size = page_size(request.page_size)
        after = _decode_token(request.page_token) if request.page_token else None
        stage = _stage_filter(request.stage)

        async def page(conn: Conn) -> list[store.CustomerRecord]:
            return await store.load_many(conn, await store.list_page(conn, stage, after, size))

        found = await uow.run(self._pool, page)
        token = _encode_token(found[-1].customer_id) if len(found) == size else ""
        return pb.ListCustomersResponse(customers=[self._out(r) for r in found],
                                        next_page_token=token)

    async def RecordPurchase(self, request: pb.RecordPurchaseRequest,
                             context: grpc.aio.ServicerContext) -> pb.Customer:
        customer_id = parse_uuid(request.customer_id)
        if not request.HasField("amount"):
            raise InvalidArgument("amount", "required")
        now = self._ctx.clock.now()
        given = request.HasField("occurred_at")
        occurred = check_event_time(request_time(request.occurred_at, "occurred_at"), now,
                                    "occurred_at") if given else now

        async def purchase(conn: Conn) -> store.CustomerRecord:
            counted_for = await commands.record_purchase(
                conn, self._ctx, customer_id, purchase_id=request.purchase_id,
                amount_minor=request.amount.amount_minor, currency=request.amount.currency,
                occurred_at=occurred, causing_event_id=f"grpc:purchase:{request.purchase_id}",
                time_given=given)
            return await store.load(conn, counted_for)

        return self._out(await uow.run(self._pool, purchase))

    async def SetConsent(self, request: pb.SetConsentRequest,
                         context: grpc.aio.ServicerContext) -> pb.Customer:
        customer_id = parse_uuid(request.customer_id)
        rec = await uow.run(self._pool, lambda c: privacy.set_consent(
            c, self._ctx, customer_id, purpose=request.purpose, granted=request.granted,
            source=request.source))
        return self._out(rec)

    async def CloseRelationship(self, request: pb.CloseRelationshipRequest,
                                context: grpc.aio.ServicerContext) -> pb.Customer:
        customer_id = parse_uuid(request.customer_id)
        rec = await uow.run(self._pool, lambda c: commands.close_relationship(
            c, self._ctx, customer_id, request.reason, f"grpc:close:{uuid.uuid4()}"))
        return self._out(rec)

    async def LinkCustomers(self, request: pb.LinkCustomersRequest,
                            context: grpc.aio.ServicerContext) -> pb.Customer:
        requester = parse_uuid(request.requester_customer_id, "requester_customer_id")
        decider = parse_uuid(request.decision_maker_customer_id,
                                 "decision_maker_customer_id")
        rec = await uow.run(self._pool, lambda c: merges.link(c, self._ctx, requester, decider,
                                                     request.role))
        return self._out(rec)

    async def MergeCustomers(self, request: pb.MergeCustomersRequest,
                             context: grpc.aio.ServicerContext) -> pb.Customer:
        survivor = parse_uuid(request.survivor_customer_id, "survivor_customer_id")
        merged = parse_uuid(request.merged_customer_id, "merged_customer_id")
        rec = await uow.run(self._pool, lambda c: merges.merge(c, self._ctx, survivor, merged,
                                                      f"grpc:merge:{merged}"))
        return self._out(rec)

    async def DefineSegment(self, request: pb.DefineSegmentRequest,
                            context: grpc.aio.ServicerContext) -> pb.Segment:
        async def define(conn: Conn) -> Any:
            await commands.define_segment(
                conn, self._ctx, name=request.name, description=request.description,
                definition_json=request.filter_json,
                churn_window_days=request.churn_window_days or None)
            return await store.get_segment(conn, request.name)

        return segment_to_pb(await uow.run(self._pool, define))

    async def ListSegmentMembers(self, request: pb.ListSegmentMembersRequest,
                                 context: grpc.aio.ServicerContext
                                 ) -> pb.ListSegmentMembersResponse:
        size = page_size(request.page_size)
        after = _decode_token(request.page_token) if request.page_token else None
        seg, found = await uow.run(self._pool, lambda c: commands.segment_members(
            c, self._ctx, request.name, after, size))
        token = _encode_token(found[-1].customer_id) if len(found) == size else ""
        return pb.ListSegmentMembersResponse(segment=segment_to_pb(seg),
                                             customers=[self._out(r) for r in found],
                                             next_page_token=token)

    async def GetStageHistory(self, request: pb.GetStageHistoryRequest,
                              context: grpc.aio.ServicerContext) -> pb.GetStageHistoryResponse:
        customer_id = parse_uuid(request.customer_id)

        async def history(conn: Conn) -> list[Any]:
            await store.load(conn, customer_id)  # NOT_FOUND for unknown ids
            return await store.stage_history(conn, customer_id)

        rows = await uow.run(self._pool, history)
        return pb.GetStageHistoryResponse(transitions=[pb.StageTransition(
            from_stage=_STAGE_TO_PB[Stage(r["from_stage"])],
            to_stage=_STAGE_TO_PB[Stage(r["to_stage"])], cause=r["cause"],
            causing_event_id=r["causing_event_id"], at=ts(r["at"])) for r in rows])

    async def ExportCustomer(self, request: pb.ExportCustomerRequest,
                             context: grpc.aio.ServicerContext) -> pb.ExportCustomerResponse:
        customer_id = parse_uuid(request.customer_id)
        try:
            document = await exports.export(self._pool, self._ctx, self._peers, customer_id)
        except exports.PartMissing as missing:
            await context.abort_with_status(rpc_status.to_status(missing.status()))
        return pb.ExportCustomerResponse(json=document)

    async def EraseCustomer(self, request: pb.EraseCustomerRequest,
                            context: grpc.aio.ServicerContext) -> pb.EraseCustomerResponse:
        customer_id = parse_uuid(request.customer_id)
        await uow.run(self._pool, lambda c: privacy.erase(c, self._ctx, customer_id))
        return pb.EraseCustomerResponse(customer_id=str(customer_id))

    async def ReserveContacts(self, request: pb.ReserveContactsRequest,
                              context: grpc.aio.ServicerContext) -> pb.ReserveContactsResponse:
        now = self._ctx.clock.now()
        contacts = [contact_from_pb(item, i, now) for i, item in enumerate(request.contacts)]
        verdicts = await uow.run(self._pool, lambda c: reservations.reserve(
            c, contacts, self._gate, now))
        return pb.ReserveContactsResponse(decisions=[
            pb.ContactDecision(contact_id=c.contact_id, allowed=v.allowed, reason=v.reason,
                               not_before=ts(v.not_before))
            for c, v in zip(contacts, verdicts, strict=True)])

    async def GetErasureStatus(self, request: pb.GetErasureStatusRequest,
                               context: grpc.aio.ServicerContext
                               ) -> pb.GetErasureStatusResponse:
        customer_id = parse_uuid(request.customer_id)
        found = await uow.run(self._pool, lambda c: erasures.status(c, customer_id))
        return erasure_status_to_pb(found)



def _stage_filter(value: pb.Stage.ValueType) -> str | None:
    """The stage to list (None: any); a number that is no Stage is refused
    (proto3 enums let unknown numbers through)."""
    if not value:
        return None
    if value not in _PB_TO_STAGE:
        raise InvalidArgument("stage", f"{value} is not a Stage; expected one of "
                                       f"{sorted(_PB_TO_STAGE)} or 0 for any")
    return _PB_TO_STAGE[value].value


def _encode_token(last: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(last.bytes).decode().rstrip("=")


def _decode_token(token: str) -> uuid.UUID:
    try:
        return uuid.UUID(bytes=base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, TypeError):
        raise InvalidArgument("page_token", "is not a token this service returned") from None
