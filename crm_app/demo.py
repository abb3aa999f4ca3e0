"""``crm demo``: one customer's story played against a running stack.

A potential customer asks by phone, buys on the web, complains in person; the
case breaches its promise and a service-recovery discount is issued; they
redeem it on a second purchase and become a repeat customer; on a Friday
evening they complain by phone to a store that keeps business hours, and the
promise, counted in those hours, is kept on Monday; the store runs its
service cycle (a mystery shopper's visit, the customer's answers and the
scorecard, :mod:`crm_app.demo_cycle`); a year passes on the clock and they
become former; a win-back offer goes out. Each step prints
the events it caused on the three topics, what changed for the customer (read
from the services' APIs) and the dashboard counters that moved (read once the
step's effects are counted).

The same :class:`Demo` runs in the end-to-end test, which asserts every step.
Time moves with ``Operations/AdvanceClock`` (the stack must allow it:
``CRM_DEV_CLOCK_CONTROL=true``, which ``crm up`` sets for the embedded stack).
"""

from __future__ import annotations

import asyncio
import json
import math
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from typing import Any
from zoneinfo import ZoneInfo

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
from crm_app import demo_cycle, demo_marketing
from crm_app.demo_text import (
    _brief,
    _duration,
    _human,
    _local,
    _moved,
    _next_weekday_at,
    _series,
    _stage,
    _tally,
    _words,
)
from crm_contracts.topics import CUSTOMERS, INTERACTIONS, LOYALTY
from crm_runtime.grpc_client import open_channel
from crm_runtime.settings import Settings

#: The dashboard counters the demo watches. They count for the whole stack;
#: what concerns the demo's customer alone (stage, risk, cases, discounts,
#: follow-ups) the demo reads from the services' APIs instead of the gauges
#: that sum it over every customer.
WATCHED = (
    "crm_stage_changes_total", "crm_interactions_total", "crm_cases_breached_total",
    "crm_loyalty_actions_total", "crm_loyalty_redemptions_total", "crm_csat_responses_total",
    "crm_campaign_members_total", "crm_webhook_deliveries_total",
)

#: Line width of the demo's output; longer lines wrap at word boundaries.
WIDTH = 100

#: The store of the Friday-evening complaint: a unit with business hours.
STORE_UNIT = "demo-store"
STORE_ZONE = "Europe/Madrid"
STORE_OPENS, STORE_CLOSES = "09:00", "18:00"
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday")


@dataclass(frozen=True)
class Targets:
    """Where the running stack is (``crm up`` writes it to ``.local/stack.json``)."""

    grpc: dict[str, str]
    metrics: dict[str, str]
    bootstrap: str
    token: str
    #: What the services' gRPC speaks: plaintext, TLS or mutual TLS.
    grpc_tls: str = "plaintext"


@dataclass
class Step:
    title: str
    expect: tuple[str, ...]
    #: Counters (name and label fragments) the step must move; the demo reads
    #: the counters once these moved and the rest stopped moving.
    counters: tuple[tuple[str, dict[str, str]], ...] = ()
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    #: Counters that moved, by series (``name{label=value,...}``): (before, after).
    moved: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: What changed for the demo's customer (stage, at risk, ...): (before, after).
    changed: dict[str, tuple[str, str]] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)


class DemoFailed(RuntimeError):
    pass


class Demo:
    def __init__(self, targets: Targets, out: Callable[[str], None] = print,
                 wait_s: float = 60.0, settings: Settings | None = None) -> None:
        """``settings``: the transport settings (TLS) the channels follow;
        None: plaintext."""
        self.t = targets
        self.settings = settings
        self.out = out
        self.wait_s = wait_s
        self.md = [("authorization", f"Bearer {targets.token}")]
        self.channels: dict[str, grpc.aio.Channel] = {}
        self.seen: list[tuple[str, str, str, dict[str, Any]]] = []  # topic, key, type, data
        self.customer_id = ""
        self.steps: list[Step] = []

    async def run(self) -> list[Step]:
        # Channels belong to the running event loop, so they are made here.
        self.channels = {n: open_channel(a, self.settings) for n, a in self.t.grpc.items()}
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

    def _mine(self, mark: int) -> list[tuple[str, str, dict[str, Any]]]:
        return [(t, ty, d) for t, key, ty, d in self.seen[mark:] if key == self.customer_id]

    async def _step(self, title: str, expect: tuple[str, ...], action: Callable[[], Any],
                    counters: tuple[tuple[str, dict[str, str]], ...] = ()) -> Step:
        step = Step(title, expect, counters)
        self._print(f"== {len(self.steps) + 1}. {title}", before="\n")
        before_metrics = await self._scrape()
        before_state = await self._customer_state()
        mark = len(self.seen)
        step.facts = await action() or {}
        for k, v in step.facts.items():
            self._print(f"{k}: {_human(k, v)}", indent=3)
        await self._wait_for_events(step, mark)
        step.events = self._mine(mark)
        for topic, etype, data in step.events:
            self._print(f"event  {topic:<22} {etype}", indent=3)
            if details := _brief(data):
                self._print(details, indent=10)
        after_metrics = await self._wait_for_counters(step, before_metrics)
        step.moved = {k: (before_metrics.get(k, 0.0), v) for k, v in after_metrics.items()
                      if v != before_metrics.get(k, 0.0)}
        after_state = await self._customer_state()
        step.changed = {k: (before_state.get(k, ""), v) for k, v in after_state.items()
                        if v != before_state.get(k, "")}
        for what, (was, now) in step.changed.items():
            self._print(f"customer  {what}: {f'{was} -> ' if was else ''}{now}", indent=3)
        for series, (old, new) in sorted(step.moved.items()):
            self._print(f"metric  {_series(series)}: {old:g} -> {new:g}", indent=3)
        self.steps.append(step)
        return step

    def _print(self, text: str, indent: int = 0, before: str = "") -> None:
        """One output line, wrapped at word boundaries (never inside a word)."""
        lines = textwrap.wrap(text, WIDTH, initial_indent=" " * indent,
                              subsequent_indent=" " * (indent + 2), break_long_words=False,
                              break_on_hyphens=False) or [""]
        self.out(before + "\n".join(lines))

    async def _wait_for_events(self, step: Step, mark: int) -> None:
        """Until every expected event of the customer arrived, then until its
        events stop coming (the reactions to the reactions) for a second."""
        deadline = time.monotonic() + self.wait_s
        while True:
            types = [ty for _, ty, _ in self._mine(mark)]
            missing = [e for e in step.expect if e not in types]
            if not missing:
                break
            if time.monotonic() > deadline:
                raise DemoFailed(f"step {step.title!r}: no {missing} after {self.wait_s}s; "
                                 f"saw {types}")
            await asyncio.sleep(0.2)
        quiet_until = time.monotonic() + 1.0
        count = len(self._mine(mark))
        while time.monotonic() < min(quiet_until, deadline):
            await asyncio.sleep(0.2)
            if len(self._mine(mark)) != count:
                count, quiet_until = len(self._mine(mark)), time.monotonic() + 1.0

    async def _wait_for_counters(self, step: Step, before: dict[str, float]
                                 ) -> dict[str, float]:
        """The counters once the step's own moved (each service counts its
        part when it commits it; at the deadline, as they are) and then two
        reads a moment apart agree (on a busy stack, at most a few reads)."""
        deadline = time.monotonic() + self.wait_s
        now = await self._scrape()
        while missing := [name for name, labels in step.counters
                          if not _moved(name, labels, before, now)]:
            if time.monotonic() > deadline:
                self._print(f"(no change of {', '.join(missing)} within {self.wait_s:g} s)",
                            indent=3)
                return now
            await asyncio.sleep(0.2)
            now = await self._scrape()
        for _ in range(5):
            await asyncio.sleep(0.3)
            previous, now = now, await self._scrape()
            if now == previous:
                break
        return now

    async def _scrape(self) -> dict[str, float]:
        return await asyncio.to_thread(self._scrape_now)

    def _scrape_now(self) -> dict[str, float]:
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

    async def _customer_state(self) -> dict[str, str]:
        """What the demo's customer looks like to the three services now."""
        if not self.customer_id:
            return {}
        customer = await self.customers.GetCustomer(cpb.GetCustomerRequest(
            customer_id=self.customer_id), metadata=self.md)
        cases = await self.interactions.ListCases(ipb.ListCasesRequest(
            customer_id=self.customer_id), metadata=self.md)
        profile = await self.loyalty.GetLoyaltyProfile(lpb.GetLoyaltyProfileRequest(
            customer_id=self.customer_id), metadata=self.md)
        risk = "no"
        if customer.at_risk:
            risk = f"yes ({', '.join(_words(r) for r in customer.risk_reasons)})"
        return {
            "stage": _stage(customer.stage),
            "purchases": str(customer.purchase_count),
            "at risk": risk,
            "cases": _tally(c.status for c in cases.cases),
            "discounts": _tally(d.status for d in profile.discounts),
            "follow-ups": _tally(f.status for f in profile.follow_ups),
        }

    async def _advance(self, delta: timedelta) -> datetime:
        """Move every service's clock; the loyalty service's time after it."""
        now = datetime.now(UTC)
        for name, channel in self.channels.items():
            reply = await ops_pb2_grpc.OperationsStub(channel).AdvanceClock(
                ops_pb2.AdvanceClockRequest(seconds=int(delta.total_seconds())),
                metadata=self.md)
            if name == "loyalty":
                now = reply.now.ToDatetime(tzinfo=UTC)
        return now

    async def _case(self, case_id: str) -> ipb.Case:
        """One case of the demo's customer, as the interactions service has it."""
        found = await self.interactions.ListCases(ipb.ListCasesRequest(
            filter="all", customer_id=self.customer_id, page_size=500), metadata=self.md)
        case: ipb.Case = next(c for c in found.cases if c.case_id == case_id)
        return case

    async def _advance_to(self, when: datetime) -> None:
        """Move every service's clock to ``when``: each by what it lacks (a
        second is taken to read it), as the clocks only move forward."""
        for channel in self.channels.values():
            stub = ops_pb2_grpc.OperationsStub(channel)
            reply = await stub.AdvanceClock(ops_pb2.AdvanceClockRequest(seconds=1),
                                            metadata=self.md)
            lacking = math.ceil((when - reply.now.ToDatetime(tzinfo=UTC)).total_seconds())
            if lacking > 0:
                await stub.AdvanceClock(ops_pb2.AdvanceClockRequest(seconds=lacking),
                                        metadata=self.md)

    async def _follow_ups_gone_out(self, now: datetime) -> None:
        """Until every follow-up of the customer due by ``now`` (loyalty's
        time) went out or was cancelled. One the contact gate moved to the end
        of the customer's quiet hours is due within the day: the clocks move
        on to it."""
        deadline = time.monotonic() + self.wait_s
        while True:
            profile = await self.loyalty.GetLoyaltyProfile(lpb.GetLoyaltyProfileRequest(
                customer_id=self.customer_id), metadata=self.md)
            waiting = [f.due_at.ToDatetime(tzinfo=UTC) for f in profile.follow_ups
                       if f.status == "scheduled"]
            if not any(due <= now for due in waiting):
                later = [due for due in waiting if due <= now + timedelta(days=1)]
                if not later:
                    return
                now = await self._advance(max(later) - now + timedelta(minutes=1))
            elif time.monotonic() > deadline:
                raise DemoFailed(f"follow-ups still waiting after {self.wait_s}s: {waiting}")
            await asyncio.sleep(0.2)

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
                         asks_by_phone,
                         (("crm_interactions_total", {"channel": "phone", "kind": "inquiry"}),))

        async def buys_on_the_web() -> dict[str, Any]:
            await self.interactions.RecordInteraction(ipb.RecordInteractionRequest(
                customer_id=self.customer_id, channel="web", kind="purchase",
                touchpoint="checkout", amount=ipb.Money(amount_minor=89_900, currency="EUR"),
                idempotency_key=f"demo-{run}-order-1"), metadata=self.md)
            return {"order": "899.00 EUR on the web shop"}

        await self._step("They buy on the web", ("customer.stage_changed",), buys_on_the_web,
                         (("crm_interactions_total", {"channel": "web", "kind": "purchase"}),
                          ("crm_stage_changes_total", {"from_stage": "potential",
                                                       "to_stage": "one_time"})))

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
            return {"case": case_id, "promised within": promised}

        await self._step("They complain in person", ("case.opened",), complains_in_person,
                         (("crm_interactions_total", {"channel": "in_person",
                                                      "kind": "complaint"}),))

        async def promise_breaks() -> dict[str, Any]:
            await self._advance(timedelta(hours=25))
            return {"clock": "+25 hours"}

        await self._step("Nobody resolves it: the case breaches its promise",
                         ("case.breached", "customer.dissatisfaction_signal",
                          "customer.at_risk", "loyalty.discount_issued"), promise_breaks,
                         (("crm_cases_breached_total", {}),
                          ("crm_loyalty_actions_total", {"action_type": "discount",
                                                         "outcome": "performed"})))

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
                                      "customer.stage_changed"), redeems_and_buys_again,
                         (("crm_loyalty_redemptions_total", {"result": "redeemed"}),
                          ("crm_stage_changes_total", {"from_stage": "one_time",
                                                       "to_stage": "repeat"})))

        async def friday_evening_complaint() -> dict[str, Any]:
            # The store keeps business hours: its promises count only while
            # it is open (defining the same calendar again changes nothing).
            zone = ZoneInfo(STORE_ZONE)
            await self.interactions.DefineCalendar(ipb.Calendar(
                name=STORE_UNIT, time_zone=STORE_ZONE, hours=[ipb.OpeningHours(
                    days=WEEKDAYS, opens=STORE_OPENS, closes=STORE_CLOSES)]), metadata=self.md)
            await self.interactions.SetUnitCalendar(ipb.SetUnitCalendarRequest(
                unit=STORE_UNIT, calendar=STORE_UNIT), metadata=self.md)
            now = await self._advance(timedelta(seconds=1))  # reading the clock moves it
            friday = _next_weekday_at(now, 4, clock_time(17, 30), zone)
            await self._advance_to(friday)
            contact = await self.interactions.RecordInteraction(ipb.RecordInteractionRequest(
                customer_id=self.customer_id, channel="phone", kind="complaint",
                direction="reactive", unit=STORE_UNIT, touchpoint="delivery",
                outcome="negative", notes="The new cushion cover is the wrong colour",
                idempotency_key=f"demo-{run}-friday-complaint"), metadata=self.md)
            case = await self._case(contact.case_id)
            due = {m.name: m.due_at.ToDatetime(tzinfo=UTC) for m in case.milestones}
            # Across the weekend to Monday morning: the store is closed, no
            # milestone comes due, nothing breaches.
            monday = datetime.combine(friday.date() + timedelta(days=3), clock_time(9, 30),
                                      zone)
            await self._advance_to(monday)
            weekend = await self._case(contact.case_id)
            if any(m.state == "missed" for m in weekend.milestones):
                raise DemoFailed("the Friday-evening complaint breached over the weekend")
            acknowledged = await self.interactions.AcknowledgeCase(ipb.AcknowledgeCaseRequest(
                case_id=contact.case_id, agent="ana"), metadata=self.md)
            await self._advance(timedelta(hours=1))
            resolved = await self.interactions.ResolveCase(ipb.ResolveCaseRequest(
                case_id=contact.case_id, resolution="Cover of the right colour sent today"),
                metadata=self.md)
            took = {m.name: timedelta(seconds=m.took_seconds) for m in resolved.milestones}
            states = {m.name: m.state for m in resolved.milestones}
            return {
                "store hours": f"{STORE_UNIT}: Monday to Friday {STORE_OPENS}-{STORE_CLOSES} "
                               f"({STORE_ZONE})",
                "complained": _local(case.opened_at.ToDatetime(tzinfo=UTC), zone),
                "case": contact.case_id,
                "first response due": _local(due["first_response"], zone),
                "resolution due": _local(due["resolution"], zone),
                "over the weekend": ", ".join(
                    f"{_words(m.name)} {m.state}" for m in weekend.milestones),
                "acknowledged": _local(acknowledged.acknowledged_at.ToDatetime(tzinfo=UTC),
                                       zone),
                "resolved": _local(resolved.resolved_at.ToDatetime(tzinfo=UTC), zone),
                "first response": f"{states['first_response']}, after "
                                  f"{_duration(took['first_response'])} of business hours",
                "resolution": f"{states['resolution']}, after "
                              f"{_duration(took['resolution'])} of business hours",
            }

        await self._step("On a Friday evening they complain by phone: the promise counts the "
                         "store's business hours and is kept on Monday",
                         ("case.opened", "case.acknowledged", "case.resolved"),
                         friday_evening_complaint,
                         (("crm_interactions_total", {"channel": "phone",
                                                      "kind": "complaint"}),))

        async def service_cycle() -> dict[str, Any]:
            return await demo_cycle.service_cycle(self.interactions, self.md, self.customer_id,
                                                  STORE_UNIT, run)

        await self._step("The store runs its service cycle: a mystery shopper visits, the "
                         "customer rates the delivery, and the scorecard says what to improve "
                         "first", ("survey.response_recorded",),
                         service_cycle, (("crm_csat_responses_total", {"channel": "email"}),))

        async def a_year_passes() -> dict[str, Any]:
            # The follow-ups still pending go out in the first month; the
            # win-back offer comes in a week with room in the customer's
            # contact cap.
            await self._follow_ups_gone_out(await self._advance(timedelta(days=30)))
            await self._advance(timedelta(days=336))
            return {"clock": "+366 days"}

        await self._step("A year passes without a purchase: they become former, and a "
                         "win-back offer goes out", ("customer.stage_changed",
                                                     "loyalty.discount_issued"), a_year_passes,
                         (("crm_stage_changes_total", {"from_stage": "repeat",
                                                       "to_stage": "former"}),
                          ("crm_loyalty_actions_total", {"rule": "win-back-offer",
                                                         "outcome": "performed"})))
        async def marketing() -> dict[str, Any]:
            return await demo_marketing.campaign_and_webhook(
                self.customers, self.loyalty, self.md, self.customer_id, run,
                lambda seconds: self._advance(timedelta(seconds=seconds)), self.wait_s)

        await self._step("Marketing sends the spring newsletter to the customers it misses, and "
                         "the helpdesk gets the customer's loyalty events by webhook",
                         ("customer.segment_entered", "loyalty.newsletter_issue_due"),
                         marketing,
                         (("crm_campaign_members_total", {"outcome": "sent"}),
                          ("crm_webhook_deliveries_total", {"outcome": "delivered"})))

        final = await self.customers.GetCustomer(cpb.GetCustomerRequest(
            customer_id=self.customer_id), metadata=self.md)
        self._print(f"The customer is now {_stage(final.stage)} after "
                    f"{final.purchase_count} purchases.", before="\n")


def load_targets(path: str) -> Targets:
    with open(path) as f:
        raw = json.load(f)
    return Targets(grpc=raw["grpc"], metrics=raw["metrics"], bootstrap=raw["broker"],
                   token=raw["token"], grpc_tls=raw.get("grpc_tls", "plaintext"))
