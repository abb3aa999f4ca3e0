"""gRPC servicer for ``crm.loyalty.v1.Loyalty``: a thin adapter that maps
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

from crm.loyalty.v1 import loyalty_pb2 as pb
from crm.loyalty.v1 import loyalty_pb2_grpc
from crm_runtime import uow
from crm_runtime.convert import page_size, parse_uuid
from crm_runtime.convert import timestamp as ts
from crm_runtime.db import Conn
from crm_runtime.errors import InvalidArgument
from services.loyalty import commands, discounts, domain, privacy, rulebook, store
from services.loyalty.campaign_api import CampaignApi
from services.loyalty.rulebook import StoredRule
from services.loyalty.webhook_api import WebhookApi

T = TypeVar("T")



def rule_to_pb(stored: StoredRule) -> pb.Rule:
    rule = stored.rule
    return pb.Rule(rule_id=rule.id, version=stored.version, enabled=rule.enabled,
                   trigger=rule.trigger, description=rule.description,
                   definition_json=json.dumps(rule.definition(), sort_keys=True),
                   origin=stored.origin, updated_at=ts(stored.updated_at),
                   updated_by=stored.updated_by)


def follow_up_to_pb(row: Any) -> pb.FollowUp:
    return pb.FollowUp(
        follow_up_id=str(row["follow_up_id"]), customer_id=str(row["customer_id"]),
        rule_id=row["rule_id"], channel=row["channel"], template=row["template"],
        reason=row["reason"], purpose=row["purpose"], status=row["status"],
        due_at=ts(row["due_at"]), closed_at=ts(row["closed_at"]), outcome=row["outcome"],
        note=row["note"], list=row["list"])


def discount_status(row: Any, now: datetime) -> str:
    if row["redeemed_at"] is not None:
        return "redeemed"
    if row["voided_at"] is not None:
        return "withdrawn"
    return "expired" if now >= row["expires_at"] else "active"


def discount_to_pb(row: Any, now: datetime) -> pb.Discount:
    amount = (pb.Money(amount_minor=row["amount_minor"], currency=row["currency"])
              if row["amount_minor"] is not None else None)
    return pb.Discount(
        discount_id=str(row["discount_id"]), customer_id=str(row["customer_id"]),
        code=row["code"], kind=row["kind"], percent=row["percent"] or 0, amount=amount,
        min_purchase_minor=row["min_purchase_minor"], currency=row["currency"],
        issued_at=ts(row["issued_at"]), expires_at=ts(row["expires_at"]),
        status=discount_status(row, now), rule_id=row["rule_id"], reason=row["reason"],
        redeemed_at=ts(row["redeemed_at"]))


class LoyaltyServicer(CampaignApi, WebhookApi, loyalty_pb2_grpc.LoyaltyServicer):
    def __init__(self, pool: asyncpg.Pool, ctx: commands.Context) -> None:
        self._pool = pool
        self._ctx = ctx

    async def _tx(self, work: Callable[[Conn], Awaitable[T]]) -> T:
        await self._ctx.rules.sync_file(self._pool, self._ctx.clock.now())
        return await uow.run(self._pool, work)

    async def _read(self, work: Callable[[Conn], Awaitable[T]]) -> T:
        """Reads of several tables from one snapshot (repeatable read), so a
        profile never shows a discount without the stage change that caused it."""
        await self._ctx.rules.sync_file(self._pool, self._ctx.clock.now())
        return await uow.snapshot(self._pool, work)

    def _now(self) -> datetime:
        return self._ctx.clock.now()

    async def ListRules(self, request: pb.ListRulesRequest,
                        context: grpc.aio.ServicerContext) -> pb.ListRulesResponse:
        rules = await self._read(self._ctx.rules.current)
        return pb.ListRulesResponse(rules=[rule_to_pb(r) for r in rules
                                           if not request.trigger
                                           or r.rule.trigger == request.trigger])

    async def UpsertRule(self, request: pb.UpsertRuleRequest,
                         context: grpc.aio.ServicerContext) -> pb.Rule:
        if not request.definition.strip():
            raise InvalidArgument("definition", "required: the rule as YAML or JSON")
        if request.expected_version < 0:
            raise InvalidArgument("expected_version", "must not be negative")
        rule = rulebook.parse_definition(request.definition)

        async def upsert(conn: Conn) -> StoredRule:
            await rulebook.upsert(conn, rule, expected_version=request.expected_version,
                                  actor=request.changed_by.strip() or "api",
                                  note=request.note, now=self._now())
            return await self._ctx.rules.get(conn, rule.id)

        return rule_to_pb(await self._tx(upsert))

    async def DisableRule(self, request: pb.DisableRuleRequest,
                          context: grpc.aio.ServicerContext) -> pb.Rule:
        if not request.rule_id:
            raise InvalidArgument("rule_id", "required")

        async def disable(conn: Conn) -> StoredRule:
            await rulebook.disable(conn, request.rule_id,
                                   actor=request.changed_by.strip() or "api",
                                   note=request.note, now=self._now())
            return await self._ctx.rules.get(conn, request.rule_id)

        return rule_to_pb(await self._tx(disable))

    async def DryRunRule(self, request: pb.DryRunRuleRequest,
                         context: grpc.aio.ServicerContext) -> pb.DryRunRuleResponse:
        customer_id = parse_uuid(request.customer_id)
        which = request.WhichOneof("rule")
        if which is None:
            raise InvalidArgument("rule", "give rule_id or definition")
        facts: dict[str, Any] = {}
        if request.trigger_facts_json.strip():
            try:
                facts = json.loads(request.trigger_facts_json)
            except ValueError as exc:
                raise InvalidArgument("trigger_facts_json", f"is not JSON: {exc}") from None
            if not isinstance(facts, dict):
                raise InvalidArgument("trigger_facts_json", "must be a JSON object")
        draft = rulebook.parse_definition(request.definition) if which == "definition" else None

        async def run(conn: Conn) -> commands.DryRun:
            rule = draft or (await self._ctx.rules.get(conn, request.rule_id)).rule
            return await commands.dry_run(conn, self._ctx, rule, customer_id, facts)

        result = await self._read(run)
        return pb.DryRunRuleResponse(
            matched=result.evaluation.matched, failed_conditions=result.evaluation.failed,
            actions=[pb.PlannedAction(
                action_type=d.action_type, purpose=d.purpose.value, outcome=d.outcome.value,
                reason=d.reason, for_customer_id=str(d.target.customer_id) if d.target else "")
                for d in result.decisions],
            facts_json=json.dumps(result.facts, sort_keys=True, default=str))

    async def GetLoyaltyProfile(self, request: pb.GetLoyaltyProfileRequest,
                                context: grpc.aio.ServicerContext) -> pb.LoyaltyProfile:
        customer_id = parse_uuid(request.customer_id)
        prof = await self._read(lambda c: commands.profile(c, customer_id))
        v, now = prof.view, self._now()
        return pb.LoyaltyProfile(
            customer_id=str(v.customer_id), stage=v.stage, referral_code=v.referral_code or "",
            newsletter_consent=v.newsletter_consent, promotional_consent=v.promotional_consent,
            do_not_contact=v.do_not_contact, erased=v.erased_at is not None,
            discounts=[discount_to_pb(r, now) for r in prof.discounts],
            follow_ups=[follow_up_to_pb(r) for r in prof.follow_ups],
            enrolments=[pb.Enrolment(list=r["list"], status=r["status"],
                                     enrolled_at=ts(r["enrolled_at"]),
                                     unsubscribed_at=ts(r["unsubscribed_at"]))
                        for r in prof.enrolments],
            suppressed=[pb.SuppressedAction(
                action_id=str(r["action_id"]), rule_id=r["rule_id"],
                action_type=r["action_type"], purpose=r["purpose"], reason=r["reason"],
                trigger_event_id=r["trigger_event_id"], at=ts(r["at"]))
                for r in prof.suppressed],
            referrals=[pb.Referral(referred_customer_id=str(r["referred_customer_id"]),
                                   discount_id=str(r["discount_id"]), at=ts(r["at"]))
                       for r in prof.referrals],
            referred_by_customer_id=str(v.referred_by or ""))

    @staticmethod
    def _optional_customer(value: str) -> uuid.UUID | None:
        return parse_uuid(value) if value else None

    async def ValidateDiscount(self, request: pb.ValidateDiscountRequest,
                               context: grpc.aio.ServicerContext
                               ) -> pb.ValidateDiscountResponse:
        if not request.HasField("order_amount"):
            raise InvalidArgument("order_amount", "required")
        customer_id = self._optional_customer(request.customer_id)
        row, amount, refusal = await self._read(lambda c: discounts.validate_discount(
            c, self._ctx, request.code, customer_id, request.order_amount.amount_minor,
            request.order_amount.currency))
        return pb.ValidateDiscountResponse(
            valid=refusal is None, reason=refusal or "",
            discount=discount_to_pb(row, self._now()),
            discount_amount=pb.Money(amount_minor=amount, currency=row["currency"]))

    async def RedeemDiscount(self, request: pb.RedeemDiscountRequest,
                             context: grpc.aio.ServicerContext) -> pb.Redemption:
        if not request.HasField("order_amount"):
            raise InvalidArgument("order_amount", "required")
        customer_id = self._optional_customer(request.customer_id)
        row = await self._tx(lambda c: discounts.redeem_discount(
            c, self._ctx, request.code, order_id=request.order_id, customer_id=customer_id,
            order_minor=request.order_amount.amount_minor,
            currency=request.order_amount.currency))
        return pb.Redemption(
            discount=discount_to_pb(row, self._now()), order_id=row["order_id"],
            discount_amount=pb.Money(amount_minor=row["discount_minor"],
                                     currency=row["currency"]),
            redeemed_at=ts(row["redeemed_at"]))

    async def CompleteFollowUp(self, request: pb.CompleteFollowUpRequest,
                               context: grpc.aio.ServicerContext) -> pb.FollowUp:
        follow_up_id = parse_uuid(request.follow_up_id, "follow_up_id")
        row = await self._tx(lambda c: commands.complete_follow_up(
            c, self._ctx, follow_up_id, request.outcome, request.note))
        return follow_up_to_pb(row)

    async def CancelFollowUp(self, request: pb.CancelFollowUpRequest,
                             context: grpc.aio.ServicerContext) -> pb.FollowUp:
        follow_up_id = parse_uuid(request.follow_up_id, "follow_up_id")
        row = await self._tx(lambda c: commands.cancel_follow_up(
            c, self._ctx, follow_up_id, request.reason))
        return follow_up_to_pb(row)

    async def Unsubscribe(self, request: pb.UnsubscribeRequest,
                          context: grpc.aio.ServicerContext) -> pb.UnsubscribeResponse:
        customer_id = parse_uuid(request.customer_id)
        lists, cancelled = await self._tx(lambda c: commands.unsubscribe(
            c, self._ctx, customer_id, request.list))
        return pb.UnsubscribeResponse(lists=lists, cancelled_follow_ups=cancelled)

    async def ListDueFollowUps(self, request: pb.ListDueFollowUpsRequest,
                               context: grpc.aio.ServicerContext
                               ) -> pb.ListDueFollowUpsResponse:
        size = page_size(request.page_size)
        if request.channel and request.channel not in domain.CHANNELS:
            raise InvalidArgument("channel", f"{request.channel!r} is not one of "
                                             f"{list(domain.CHANNELS)}")
        after = _decode_token(request.page_token) if request.page_token else None
        rows = await self._read(lambda c: store.due_follow_ups(c, request.channel or None, after,
                                                             size))
        token = _encode_token(rows[-1]["due_at"], rows[-1]["follow_up_id"]) \
            if len(rows) == size else ""
        return pb.ListDueFollowUpsResponse(follow_ups=[follow_up_to_pb(r) for r in rows],
                                           next_page_token=token)

    async def ExportCustomerData(self, request: pb.ExportCustomerDataRequest,
                                 context: grpc.aio.ServicerContext
                                 ) -> pb.ExportCustomerDataResponse:
        customer_id = parse_uuid(request.customer_id)
        merged = [parse_uuid(m, f"merged_customer_ids[{i}]")
                  for i, m in enumerate(request.merged_customer_ids)]
        part = await self._read(lambda c: privacy.export(c, customer_id, merged))
        return pb.ExportCustomerDataResponse(service=privacy.SERVICE, json=part)


def _encode_token(due_at: datetime, follow_up_id: uuid.UUID) -> str:
    raw = json.dumps([due_at.isoformat(), str(follow_up_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        due, ident = json.loads(raw)
        return datetime.fromisoformat(due), uuid.UUID(ident)
    except (ValueError, TypeError):
        raise InvalidArgument("page_token", "is not a token this service returned") from None
