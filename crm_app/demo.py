"""``crm demo``: one customer's story played against a running stack.

A potential customer asks by phone, buys on the web, complains in person; the
case breaches its promise and a service-recovery discount is issued; they
redeem it on a second purchase and become a repeat customer; a year passes on
the clock and they become former; a win-back offer goes out. Each step prints
the events it caused on the three topics and the dashboard numbers that moved.

The same :class:`Demo` runs in the end-to-end test, which asserts every step.
Time moves with ``Operations/AdvanceClock`` (the stack must allow it:
``CRM_DEV_CLOCK_CONTROL=true``, which ``crm up`` sets for the embedded stack).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import grpc
from aiokafka import AIOKafkaConsumer
from prometheus_client.parser import text_string_to_metric_families

from crm.customers.v1 import customers_pb2 as cpb
from crm.customers.v1 import customers_pb2_grpc
from crm.interactions.v1 import interactions_pb2 as ipb
from crm.interactions.v1 import interactions_pb2_grpc
from crm.loyalty.v1 import loyalty_pb2 as lpb
from crm.loyalty.v1 import loyalty_pb2_grpc
from crm.ops.v1 import ops_pb2, ops_pb2_grpc
from crm_contracts.topics import CUSTOMERS, INTERACTIONS, LOYALTY

#: The dashboard numbers the demo watches (name, labels that must match).
WATCHED = (
    "crm_customers_by_stage", "crm_stage_changes_total", "crm_interactions_total",
    "crm_cases_open", "crm_cases_breached_total", "crm_customers_at_risk",
    "crm_messages_published_total", "crm_loyalty_actions_total",
    "crm_loyalty_redemptions_total", "crm_loyalty_discounts", "crm_loyalty_follow_ups",
)


@dataclass(frozen=True)
class Targets:
    """Where the running stack is (``crm up`` writes it to ``.local/stack.json``)."""

    grpc: dict[str, str]
    metrics: dict[str, str]
    bootstrap: str
    token: str


@dataclass
class Step:
    title: str
    expect: tuple[str, ...]
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    moved: dict[str, tuple[float, float]] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)


class DemoFailed(RuntimeError):
    pass


class Demo:
    def __init__(self, targets: Targets, out: Callable[[str], None] = print,
                 wait_s: float = 60.0) -> None:
        self.t = targets
        self.out = out
        self.wait_s = wait_s
        self.md = [("authorization", f"Bearer {targets.token}")]
        self.channels: dict[str, grpc.aio.Channel] = {}
        self.seen: list[tuple[str, str, str, dict[str, Any]]] = []  # topic, key, type, data
        self.customer_id = ""
        self.steps: list[Step] = []

    async def run(self) -> list[Step]:
        # Channels belong to the running event loop, so they are made here.
        self.channels = {n: grpc.aio.insecure_channel(a) for n, a in self.t.grpc.items()}
        self.customers = customers_pb2_grpc.CustomersStub(self.channels["customers"])
        self.interactions = interactions_pb2_grpc.InteractionsStub(self.channels["interactions"])
        self.loyalty = loyalty_pb2_grpc.LoyaltyStub(self.channels["loyalty"])
        watcher = AIOKafkaConsumer(CUSTOMERS, INTERACTIONS, LOYALTY,
                                   bootstrap_servers=self.t.bootstrap, group_id=None,
                                   auto_offset_reset="latest", enable_auto_commit=False)
        await watcher.start()
        await watcher.seek_to_end()
        reader = asyncio.create_task(self._read(watcher))
        try:
            await self._story()
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await watcher.stop()
            for ch in self.channels.values():
                await ch.close()
        return self.steps

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for r in records:
                    headers = dict(r.headers or ())
                    self.seen.append((r.topic, (r.key or b"").decode(),
                                      headers.get("ce_type", b"?").decode(),
                                      json.loads(r.value or b"{}")))

    async def _step(self, title: str, expect: tuple[str, ...], action: Callable[[], Any]) -> Step:
        step = Step(title, expect)
        self.out(f"\n== {len(self.steps) + 1}. {title}")
        before_metrics = self._scrape()
        mark = len(self.seen)
        step.facts = await action() or {}
        for k, v in step.facts.items():
            self.out(f"   {k}: {v}")
        deadline = time.monotonic() + self.wait_s
        while True:
            mine = [(t, ty, d) for t, key, ty, d in self.seen[mark:]
                    if key == self.customer_id]
            types = [ty for _, ty, _ in mine]
            missing = [e for e in expect if e not in types]
            if not missing:
                break
            if time.monotonic() > deadline:
                raise DemoFailed(f"step {title!r}: no {missing} after {self.wait_s}s; saw {types}")
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # let the rest of the reactions land
        step.events = [(t, ty, d) for t, key, ty, d in self.seen[mark:]
                       if key == self.customer_id]
        for topic, etype, data in step.events:
            self.out(f"   event  {topic:<22} {etype:<32} {_brief(data)}")
        after_metrics = self._scrape()
        step.moved = {k: (before_metrics.get(k, 0.0), v) for k, v in after_metrics.items()
                      if v != before_metrics.get(k, 0.0)}
        for name, (old, new) in sorted(step.moved.items()):
            self.out(f"   metric {name}: {old:g} -> {new:g}")
        self.steps.append(step)
        return step

    def _scrape(self) -> dict[str, float]:
        values: dict[str, float] = {}
        for url in sorted(set(self.t.metrics.values())):
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    text = response.read().decode()
            except OSError:
                continue
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    if s.name in WATCHED:
                        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                        values[f"{s.name}{{{labels}}}"] = s.value
        return values

    async def _advance(self, delta: timedelta) -> None:
        for channel in self.channels.values():
            await ops_pb2_grpc.OperationsStub(channel).AdvanceClock(
                ops_pb2.AdvanceClockRequest(seconds=int(delta.total_seconds())),
                metadata=self.md)

    async def _story(self) -> None:
        phone = f"+3491{uuid.uuid4().int % 10_000_000:07d}"
        run = uuid.uuid4().hex[:8]

        async def asks_by_phone() -> dict[str, Any]:
            contact = await self.interactions.RecordInteraction(ipb.RecordInteractionRequest(
                contact_phone=phone, channel="phone", kind="inquiry", direction="reactive",
                touchpoint="first-call", notes="Asks whether the sofa comes in green",
                idempotency_key=f"demo-{run}-call"), metadata=self.md)
            self.customer_id = contact.customer_id
            for purpose in ("newsletter", "promotional_offers"):
                await self.customers.SetConsent(cpb.SetConsentRequest(
                    customer_id=contact.customer_id, purpose=purpose, granted=True,
                    source="phone-call"), metadata=self.md)
            return {"customer": contact.customer_id, "phone": phone}

        await self._step("A potential customer asks by phone",
                         ("interaction.recorded", "customer.registered",
                          "customer.consent_changed", "loyalty.followup_scheduled"),
                         asks_by_phone)

        async def buys_on_the_web() -> dict[str, Any]:
            await self.interactions.RecordInteraction(ipb.RecordInteractionRequest(
                customer_id=self.customer_id, channel="web", kind="purchase",
                touchpoint="checkout", amount=ipb.Money(amount_minor=89_900, currency="EUR"),
                idempotency_key=f"demo-{run}-order-1"), metadata=self.md)
            return {"order": "899.00 EUR on the web shop"}

        await self._step("They buy on the web", ("customer.stage_changed",), buys_on_the_web)

        case_id = ""

        async def complains_in_person() -> dict[str, Any]:
            nonlocal case_id
            contact = await self.interactions.RecordInteraction(ipb.RecordInteractionRequest(
                customer_id=self.customer_id, channel="in_person", kind="complaint",
                touchpoint="delivery", outcome="negative",
                notes="The sofa arrived with a torn cushion",
                idempotency_key=f"demo-{run}-complaint"), metadata=self.md)
            case_id = contact.case_id
            case = await self.interactions.ListCases(ipb.ListCasesRequest(
                customer_id=self.customer_id), metadata=self.md)
            promised = case.cases[0].promised_by.ToDatetime() - case.cases[0].opened_at.ToDatetime()
            return {"case": case_id, "promised within": str(promised)}

        await self._step("They complain in person", ("case.opened",), complains_in_person)

        async def promise_breaks() -> dict[str, Any]:
            await self._advance(timedelta(hours=25))
            return {"clock": "+25 hours"}

        await self._step("Nobody resolves it: the case breaches its promise",
                         ("case.breached", "customer.dissatisfaction_signal",
                          "customer.at_risk", "loyalty.discount_issued"), promise_breaks)

        async def redeems_and_buys_again() -> dict[str, Any]:
            await self.interactions.ResolveCase(ipb.ResolveCaseRequest(
                case_id=case_id, resolution="Cushion replaced at home"), metadata=self.md)
            profile = await self.loyalty.GetLoyaltyProfile(lpb.GetLoyaltyProfileRequest(
                customer_id=self.customer_id), metadata=self.md)
            active = [d for d in profile.discounts if d.status == "active"]
            if not active:
                raise DemoFailed("no active service-recovery discount to redeem")
            code = active[0].code
            order = lpb.Money(amount_minor=45_000, currency="EUR")
            check = await self.loyalty.ValidateDiscount(lpb.ValidateDiscountRequest(
                code=code, customer_id=self.customer_id, order_amount=order), metadata=self.md)
            redemption = await self.loyalty.RedeemDiscount(lpb.RedeemDiscountRequest(
                code=code, order_id=f"demo-{run}-order-2", customer_id=self.customer_id,
                order_amount=order), metadata=self.md)
            paid = order.amount_minor - redemption.discount_amount.amount_minor
            await self.interactions.RecordInteraction(ipb.RecordInteractionRequest(
                customer_id=self.customer_id, channel="web", kind="purchase",
                touchpoint="checkout", amount=ipb.Money(amount_minor=paid, currency="EUR"),
                idempotency_key=f"demo-{run}-order-2"), metadata=self.md)
            return {"discount": f"{code} ({active[0].reason})", "valid": check.valid,
                    "took off": f"{redemption.discount_amount.amount_minor / 100:.2f} EUR"}

        await self._step("They redeem the discount on a second purchase and become a repeat "
                         "customer", ("case.resolved", "loyalty.discount_redeemed",
                                      "customer.stage_changed"), redeems_and_buys_again)

        async def a_year_passes() -> dict[str, Any]:
            await self._advance(timedelta(days=366))
            return {"clock": "+366 days"}

        await self._step("A year passes without a purchase: they become former, and a "
                         "win-back offer goes out", ("customer.stage_changed",
                                                     "loyalty.discount_issued"), a_year_passes)
        final = await self.customers.GetCustomer(cpb.GetCustomerRequest(
            customer_id=self.customer_id), metadata=self.md)
        self.out(f"\nThe customer is now {cpb.Stage.Name(final.stage)} after "
                 f"{final.purchase_count} purchases.")


def _brief(data: dict[str, Any]) -> str:
    keys = ("from_stage", "to_stage", "cause", "kind", "channel", "reason", "reasons",
            "promised_by", "code", "template", "purpose", "list", "late")
    parts = [f"{k}={data[k]}" for k in keys if k in data and data[k] not in ("", None)]
    return " ".join(parts)[:110]


def load_targets(path: str) -> Targets:
    with open(path) as f:
        raw = json.load(f)
    return Targets(grpc=raw["grpc"], metrics=raw["metrics"], bootstrap=raw["broker"],
                   token=raw["token"])
