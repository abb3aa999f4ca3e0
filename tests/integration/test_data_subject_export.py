"""The data-subject export across the product, over real PostgreSQL and
Kafka with the three services running on one clock: ``Customers/ExportCustomer``
returns, in one document, what customers, interactions and loyalty hold about
a customer (merged records included); a service that is down or does not
answer fails the call naming it, within the timeout; an unknown id is
NOT_FOUND, an erased customer the erased stub; the scope is enforced; and
each service's ``ExportCustomerData`` works on its own.

interactions and loyalty are reached by the customers service through relays
the tests take down (connections refused, as with a stopped service) or stall
(accepted and never answered)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from crm.customers.v1 import customers_pb2 as cpb
from crm.customers.v1 import customers_pb2_grpc
from crm.interactions.v1 import interactions_pb2 as ipb
from crm.interactions.v1 import interactions_pb2_grpc
from crm.loyalty.v1 import loyalty_pb2 as lpb
from crm.loyalty.v1 import loyalty_pb2_grpc
from crm_runtime.clock import ManualClock
from crm_runtime.settings import ApiToken, Settings
from crm_runtime.stack import EMBEDDED_BROKER_SETTINGS, TansuBroker
from services.customers.app import SPEC as CUSTOMERS
from services.interactions import privacy as interactions_privacy
from services.interactions.app import SPEC as INTERACTIONS
from services.loyalty import privacy as loyalty_privacy
from services.loyalty.app import SPEC as LOYALTY
from tests.conftest import fresh_database
from tests.support.customers import START
from tests.support.kafka import wait_for
from tests.support.proxy import ToggleProxy
from tests.support.services import Running, running

#: How long the customers service waits for each part here.
TIMEOUT_S = 3.0
#: A token of a system that may read and write customers, but not export.
CRM_TOKEN = "crm-reader-token-0123456789"


@dataclass
class Stack:
    customers: Running
    interactions: Running
    loyalty: Running
    relays: dict[str, ToggleProxy]

    def customers_api(self) -> customers_pb2_grpc.CustomersStub:
        return customers_pb2_grpc.CustomersStub(self.customers.channel)

    def interactions_api(self) -> interactions_pb2_grpc.InteractionsStub:
        return interactions_pb2_grpc.InteractionsStub(self.interactions.channel)

    def loyalty_api(self) -> loyalty_pb2_grpc.LoyaltyStub:
        return loyalty_pb2_grpc.LoyaltyStub(self.loyalty.channel)

    async def export(self, customer_id: str,
                     metadata: list[tuple[str, str]] | None = None) -> dict[str, Any]:
        reply = await self.customers_api().ExportCustomer(
            cpb.ExportCustomerRequest(customer_id=customer_id),
            metadata=metadata or self.customers.metadata)
        document: dict[str, Any] = json.loads(reply.json)
        return document


@pytest.fixture(scope="module")
async def stack(pg_admin_dsn: str,
                tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """The three services on a database and a broker of this module's own:
    the session's carry what earlier modules left for the same consumer
    groups, which these services would have to work through first."""
    broker = TansuBroker(log_path=tmp_path_factory.mktemp("export") / "tansu.log").start()
    try:
        async with fresh_database(pg_admin_dsn, "crm_export") as database_url:
            async for running_stack in _stack(database_url, broker):
                yield running_stack
    finally:
        broker.stop()


async def _stack(database_url: str, broker: TansuBroker) -> AsyncIterator[Stack]:
    settings = Settings(
        database_url=database_url, kafka_bootstrap_servers=broker.bootstrap_servers,
        retry_initial_s=0.05, retry_max_s=0.5, scheduler_poll_interval_s=0.05,
        relay_poll_interval_s=0.05, consumer_batch_wait_ms=20, export_timeout_s=TIMEOUT_S,
        api_tokens=[ApiToken(system="crm", scopes=["customers:read", "customers:write"],
                             token=CRM_TOKEN)],
        **EMBEDDED_BROKER_SETTINGS)
    clock = ManualClock(START)
    # The relays' ports are known before the services they lead to start.
    relays = {name: ToggleProxy("postgresql://grpc@127.0.0.1:1/relay")
              for name in ("interactions", "loyalty")}
    async with AsyncExitStack() as stack:
        customers = await stack.enter_async_context(running(CUSTOMERS, settings.model_copy(
            update={f"{name}_grpc_target": f"127.0.0.1:{relay.port}"
                    for name, relay in relays.items()}), clock=clock))
        # Both reach the customers service (registrations, the contact gate).
        to_customers = settings.model_copy(
            update={"customers_grpc_target": f"127.0.0.1:{customers.runner.bound_grpc_port}"})
        interactions = await stack.enter_async_context(running(INTERACTIONS, to_customers,
                                                               clock=clock))
        loyalty = await stack.enter_async_context(running(LOYALTY, to_customers, clock=clock))
        for name, service in (("interactions", interactions), ("loyalty", loyalty)):
            relays[name].retarget(service.runner.bound_grpc_port)
            await relays[name].up()
            stack.push_async_callback(relays[name].down)
        yield Stack(customers, interactions, loyalty, relays)


@dataclass
class Ana:
    """A customer with something in every table that holds customer data."""

    customer_id: str
    merged_id: str
    referrer_id: str
    code: str
    order_id: str


async def _register(stack: Stack, name: str, **fields: Any) -> str:
    email = f"{name.lower().replace(' ', '.')}-{uuid.uuid4().hex[:8]}@example.com"
    reply = await stack.customers_api().RegisterCustomer(cpb.RegisterCustomerRequest(
        display_name=name, emails=[email], **fields), metadata=stack.customers.metadata)
    return str(reply.customer.customer_id)


async def _consent(stack: Stack, customer_id: str, purpose: str) -> None:
    await stack.customers_api().SetConsent(cpb.SetConsentRequest(
        customer_id=customer_id, purpose=purpose, granted=True, source="web"),
        metadata=stack.customers.metadata)


async def _contact(stack: Stack, customer_id: str, **fields: Any) -> ipb.Interaction:
    fields.setdefault("channel", "web")
    fields.setdefault("kind", "inquiry")
    reply: ipb.Interaction = await stack.interactions_api().RecordInteraction(
        ipb.RecordInteractionRequest(customer_id=customer_id,
                                     idempotency_key=str(uuid.uuid4()), **fields),
        metadata=stack.interactions.metadata)
    return reply


async def _export_when(stack: Stack, customer_id: str, holds: Any, what: str) -> dict[str, Any]:
    """The export of ``customer_id`` once ``holds(document)`` (the services
    apply each other's events as they come)."""
    latest: list[dict[str, Any]] = []

    async def ready() -> bool:
        latest[:] = [await stack.export(customer_id)]
        return bool(holds(latest[0]))

    await wait_for(ready, timeout=60, what=what)
    return latest[0]


def _loyalty_ready(doc: dict[str, Any]) -> bool:
    part = doc["services"]["loyalty"]
    return bool(part["view"] and part["view"]["referred_by"] and part["discounts"]
                and part["enrolments"] and part["referral_rewards"]
                and part["view"]["promotional_consent"])


@pytest.fixture(scope="module")
async def ana(stack: Stack) -> Ana:
    api = stack.interactions_api()
    md = stack.interactions.metadata
    # A segment Ana enters with her newsletter consent (interactions keeps
    # the segments it hears of for the entitlements of her cases).
    await stack.customers_api().DefineSegment(cpb.DefineSegmentRequest(
        name="newsletter-readers",
        filter_json='{"field": "consent.newsletter", "op": "=", "value": true}'),
        metadata=stack.customers.metadata)
    referrer = await _register(stack, "Rosa")
    await _consent(stack, referrer, "promotional_offers")
    cid = await _register(stack, "Ana", phones=["+34600111222"],
                          referred_by_customer_id=referrer)
    dup = await _register(stack, "Ana Dup")
    await _contact(stack, dup, notes="asked under a second email")
    await stack.customers_api().MergeCustomers(cpb.MergeCustomersRequest(
        survivor_customer_id=cid, merged_customer_id=dup), metadata=stack.customers.metadata)
    await _consent(stack, cid, "promotional_offers")
    await _consent(stack, cid, "newsletter")
    await _contact(stack, cid, notes="which size fits me")
    await _contact(stack, referrer, attention=ipb.Attention(
        mode="indirect", requester_customer_id=cid, decision_maker_customer_id=referrer))
    case = await api.OpenCase(ipb.OpenCaseRequest(
        customer_id=cid, kind="complaint", channel="phone", summary="the parcel arrived broken",
        idempotency_key=str(uuid.uuid4())), metadata=md)
    await api.TransferCase(ipb.TransferCaseRequest(case_id=case.case_id, to_unit="returns",
                                                   reason="a return"), metadata=md)
    await api.RequestCallback(ipb.RequestCallbackRequest(
        customer_id=cid, phone="+34 600 999 888", summary="call me after six",
        idempotency_key=str(uuid.uuid4())), metadata=md)
    # One answer is to a question of a service cycle's matrix (survey_answers).
    cycle = await api.DefineServiceCycle(ipb.ServiceCycle(
        name=f"delivery-{uuid.uuid4().hex[:8]}", moments=[ipb.MomentOfTruth(
            touchpoint="delivery", requirements=[ipb.Requirement(
                requirement_id="on-time", text="arriving on time", scale="yes_no")])]),
        metadata=md)
    await api.RecordSurveyResponse(ipb.RecordSurveyResponseRequest(
        customer_id=cid, touchpoint="delivery", channel="web", case_id=case.case_id,
        answers=[ipb.SurveyAnswer(question="How was the delivery?", csat=2,
                                  comment="late and broken"),
                 ipb.SurveyAnswer(question_id=cycle.moments[0].requirements[0].question_id,
                                  score=0)],
        idempotency_key=str(uuid.uuid4())), metadata=md)
    # Resolved: the survey it would ask for is stopped (no surveys consent).
    await api.ResolveCase(ipb.ResolveCaseRequest(case_id=case.case_id,
                                                 resolution="sent a new one"), metadata=md)
    # Wait for loyalty to know the consents before the purchases that use them.
    await _export_when(stack, cid, lambda d: (d["services"]["loyalty"]["view"] or {}).get(
        "promotional_consent"), "loyalty to know the consent")
    for amount in (2500, 4000):
        await _contact(stack, cid, kind="purchase", amount=ipb.Money(amount_minor=amount,
                                                                     currency="EUR"))
    doc = await _export_when(stack, cid, _loyalty_ready, "the discount, enrolment and reward")
    code = doc["services"]["loyalty"]["discounts"][0]["code"]
    order_id = f"web-{uuid.uuid4().hex[:8]}"
    await stack.loyalty_api().RedeemDiscount(lpb.RedeemDiscountRequest(
        code=code, order_id=order_id, customer_id=cid,
        order_amount=lpb.Money(amount_minor=50000, currency="EUR")),
        metadata=stack.loyalty.metadata)
    # A campaign to the segment reaches her (once loyalty knows she is in it).
    await _export_when(stack, cid, lambda d: any(
        m["segment"] == "newsletter-readers" and m["member"]
        for m in d["services"]["loyalty"]["segment_memberships"]), "loyalty knows the segment")
    await stack.loyalty_api().CreateCampaign(lpb.CreateCampaignRequest(
        campaign_id="spring-issue", name="Spring issue", segment="newsletter-readers",
        action=lpb.CampaignAction(newsletter_issue=lpb.NewsletterIssueAction(
            list="monthly", issue="spring"))), metadata=stack.loyalty.metadata)
    await _export_when(stack, cid, lambda d: d["services"]["loyalty"]["campaigns"],
                       "the campaign reaching her")
    return Ana(cid, dup, referrer, code, order_id)


def _resolves(part: Any, path: str) -> bool:
    """Whether ``path`` (``key``, ``key[]``, ``key[].field``, ``key.field``) has
    a value in ``part``: for a list, in at least one of its entries."""
    head, _, rest = path.partition(".")
    key, is_list = head.removesuffix("[]"), head.endswith("[]")
    if not isinstance(part, dict) or key not in part:
        return False
    value = part[key]
    if is_list:
        return isinstance(value, list) and any(not rest or _resolves(e, rest) for e in value)
    return _resolves(value, rest) if rest else True


def _unresolved(part: dict[str, Any], columns: Mapping[str, Mapping[str, str]]) -> list[str]:
    return [f"{table}.{column} -> {path}" for table, mapped in columns.items()
            for column, path in mapped.items() if not _resolves(part, path)]


async def test_one_document_holds_what_every_service_keeps(stack: Stack, ana: Ana) -> None:
    doc = await _export_when(
        stack, ana.customer_id, lambda d: d["services"]["interactions"]["aliases"]
        and d["services"]["interactions"]["segments"]
        and d["services"]["loyalty"]["merged_views"]
        and any(x["redemption"] for x in d["services"]["loyalty"]["discounts"]),
        "the merge, the segment and the redemption")
    assert set(doc) == {"customer_id", "exported_at", "services"}
    assert doc["customer_id"] == ana.customer_id and doc["exported_at"]
    assert set(doc["services"]) == {"customers", "interactions", "loyalty"}
    ours, contacts, loyalty = (doc["services"][s]
                               for s in ("customers", "interactions", "loyalty"))
    assert ours["display_name"] == "Ana" and ours["merged_aliases"] == [ana.merged_id]
    assert ours["stage"] == "repeat" and len(ours["purchases"]) == 2
    # interactions: contacts (the merged id's too), the case with its transfer,
    # the callback, the survey, and another customer's contact naming Ana.
    assert contacts["customer_id"] == ana.customer_id
    assert {a["merged_customer_id"] for a in contacts["aliases"]} == {ana.merged_id}
    notes = {c["notes"] for c in contacts["interactions"]}
    assert {"which size fits me", "asked under a second email"} <= notes
    assert sorted(c["kind"] for c in contacts["interactions"]) == [
        "inquiry", "inquiry", "purchase", "purchase"]
    assert {c["customer_id"] for c in contacts["interactions"]} == {ana.customer_id}
    by_kind = {c["kind"]: c for c in contacts["cases"]}
    assert by_kind["complaint"]["summary"] == "the parcel arrived broken"
    assert [(t["to_unit"], t["reason"]) for t in by_kind["complaint"]["transfers"]] == [
        ("returns", "a return")]
    assert by_kind["callback_request"]["callback_phone"] == "+34600999888"
    [survey] = contacts["survey_responses"]
    assert survey["csat"] == 2 and survey["answers"][0]["comment"] == "late and broken"
    assert [(n["customer_id"], n["as"]) for n in contacts["named_in_interactions"]] == [
        (ana.referrer_id, "requester")]
    assert ana.customer_id in contacts["known_customer_ids"]
    assert [(m["segment"], m["member"]) for m in contacts["segments"]] == [
        ("newsletter-readers", True)]
    # loyalty: the view, actions, follow-ups, enrolment, discount and its
    # redemption, the referral reward, and the merged id's view.
    assert loyalty["view"]["customer_id"] == ana.customer_id
    assert loyalty["view"]["referred_by"] == ana.referrer_id
    assert [v["customer_id"] for v in loyalty["merged_views"]] == [ana.merged_id]
    assert {"welcome", "thank_you_first_purchase"} <= {f["template"]
                                                       for f in loyalty["follow_ups"]}
    assert [(e["list"], e["status"]) for e in loyalty["enrolments"]] == [("monthly", "enrolled")]
    [discount] = loyalty["discounts"]
    assert discount["code"] == ana.code and discount["percent"] == 10
    assert discount["redemption"]["order_id"] == ana.order_id
    assert discount["redemption"]["order_minor"] == 50000
    assert [(r["as"], r["referrer_id"]) for r in loyalty["referral_rewards"]] == [
        ("referred", ana.referrer_id)]
    assert "repeat-buyer-discount" in {a["rule_id"] for a in loyalty["actions"]}
    # Every column the two services claim to export is in their part.
    assert not _unresolved(contacts, interactions_privacy.EXPORT_COLUMNS)
    assert not _unresolved(loyalty, loyalty_privacy.EXPORT_COLUMNS)


async def test_each_service_answers_its_part_alone(stack: Stack, ana: Ana) -> None:
    request = {"customer_id": ana.merged_id}  # a merged id: the survivor's part
    part = await stack.interactions_api().ExportCustomerData(
        ipb.ExportCustomerDataRequest(**request), metadata=stack.interactions.metadata)
    assert part.service == "interactions"
    contacts = json.loads(part.json)
    assert contacts["customer_id"] == ana.customer_id and len(contacts["interactions"]) == 4
    part = await stack.loyalty_api().ExportCustomerData(
        lpb.ExportCustomerDataRequest(**request), metadata=stack.loyalty.metadata)
    assert part.service == "loyalty"
    loyalty = json.loads(part.json)
    assert loyalty["customer_id"] == ana.customer_id and loyalty["discounts"]
    # An id a service holds nothing for: an empty part, not NOT_FOUND.
    nobody = str(uuid.uuid4())
    part = await stack.interactions_api().ExportCustomerData(
        ipb.ExportCustomerDataRequest(customer_id=nobody), metadata=stack.interactions.metadata)
    empty = json.loads(part.json)
    assert empty["customer_id"] == nobody
    assert not any(empty[k] for k in ("interactions", "cases", "survey_responses", "aliases",
                                      "known_customer_ids", "named_in_interactions"))
    part = await stack.loyalty_api().ExportCustomerData(
        lpb.ExportCustomerDataRequest(customer_id=nobody), metadata=stack.loyalty.metadata)
    empty = json.loads(part.json)
    assert empty["view"] is None and not any(
        empty[k] for k in ("merged_views", "actions", "follow_ups", "enrolments", "discounts",
                           "referral_rewards"))


async def test_an_unknown_customer_is_not_found(stack: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.export(str(uuid.uuid4()))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_an_erased_customer_exports_the_erased_stub(stack: Stack) -> None:
    tag = uuid.uuid4().hex[:8]
    cid = await _register(stack, f"Eva{tag}")  # her email holds the tag too
    await _contact(stack, cid, notes=f"private note {tag}")
    await stack.customers_api().EraseCustomer(cpb.EraseCustomerRequest(customer_id=cid),
                                              metadata=stack.customers.metadata)
    doc = await _export_when(stack, cid, lambda d: (
        tag not in json.dumps(d["services"]["interactions"])
        and (d["services"]["loyalty"]["view"] or {}).get("erased_at")), "erasure applied")
    ours = doc["services"]["customers"]
    assert ours["erased_at"] and ours["display_name"] == "" and ours["emails"] == []
    # What the other services keep of an erased customer is there, scrubbed.
    assert [c["notes"] for c in doc["services"]["interactions"]["interactions"]] == [""]
    assert tag not in json.dumps(doc), "personal data left after erasure"


@pytest.mark.parametrize("method", ["customers", "interactions", "loyalty"])
async def test_a_caller_without_privacy_export_is_denied(stack: Stack, method: str) -> None:
    metadata = [("authorization", f"Bearer {CRM_TOKEN}")]
    cid = str(uuid.uuid4())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        if method == "customers":
            await stack.export(cid, metadata)
        elif method == "interactions":
            await stack.interactions_api().ExportCustomerData(
                ipb.ExportCustomerDataRequest(customer_id=cid), metadata=metadata)
        else:
            await stack.loyalty_api().ExportCustomerData(
                lpb.ExportCustomerDataRequest(customer_id=cid), metadata=metadata)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "privacy:export" in (err.value.details() or "")


def _missing_services(err: grpc.aio.AioRpcError) -> list[str]:
    """The services the ErrorInfo details of a failed export name."""
    status = rpc_status.from_call(err)
    assert status is not None
    named = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        assert detail.Unpack(info)
        assert info.reason == "EXPORT_PART_MISSING"
        named.append(info.metadata["service"])
    return named


@pytest.mark.parametrize("service", ["interactions", "loyalty"])
async def test_a_service_that_is_down_fails_the_export_naming_it(stack: Stack, ana: Ana,
                                                                 service: str) -> None:
    await stack.relays[service].down()
    try:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stack.export(ana.customer_id)
        assert time.monotonic() - started < TIMEOUT_S + 2
    finally:
        await stack.relays[service].up()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert (err.value.details() or "").startswith(f"{service} failed the export: UNAVAILABLE")
    assert _missing_services(err.value) == [service]
    assert (await stack.export(ana.customer_id))["services"][service]  # back


async def test_a_service_that_does_not_answer_fails_the_export_in_time(stack: Stack,
                                                                       ana: Ana) -> None:
    relay = stack.relays["loyalty"]
    relay.stalled = True
    try:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stack.export(ana.customer_id)
        elapsed = time.monotonic() - started
    finally:
        relay.stalled = False
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert (err.value.details() or "").startswith(
        f"loyalty did not answer the export within {TIMEOUT_S:g} s")
    assert _missing_services(err.value) == ["loyalty"]
    assert TIMEOUT_S <= elapsed < TIMEOUT_S + 2
    assert (await stack.export(ana.customer_id))["services"]["loyalty"]["discounts"]
