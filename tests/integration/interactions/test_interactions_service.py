"""The interactions service over a real PostgreSQL and broker, with the
customers service it registers unknown contacts with."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from typing import Any

import grpc
import pytest

from crm.customers.v1 import customers_pb2 as cpb
from crm.customers.v1 import customers_pb2_grpc
from crm.interactions.v1 import interactions_pb2 as pb
from crm.interactions.v1 import interactions_pb2_grpc
from crm_contracts.customers import ConsentChanged
from crm_contracts.interactions import ContactReceived
from crm_contracts.topics import INTERACTIONS, INTERACTIONS_INGEST
from crm_runtime.consumer import dlq_topic
from crm_runtime.events import Envelope
from tests.integration.interactions.conftest import Pair
from tests.support.gate import mirror
from tests.support.kafka import produce, produce_envelopes, read_topic, wait_for


def api(pair: Pair) -> interactions_pb2_grpc.InteractionsStub:
    return interactions_pb2_grpc.InteractionsStub(pair.interactions.channel)


def customers(pair: Pair) -> customers_pb2_grpc.CustomersStub:
    return customers_pb2_grpc.CustomersStub(pair.customers.channel)


async def new_customer(pair: Pair) -> str:
    reply = await customers(pair).RegisterCustomer(cpb.RegisterCustomerRequest(
        emails=[f"{uuid.uuid4().hex[:10]}@example.com"]), metadata=pair.customers.metadata)
    return str(reply.customer.customer_id)


async def consent(pair: Pair, customer_id: str, purpose: str = "surveys", granted: bool = True,
                  at: datetime | None = None) -> None:
    """``customer.consent_changed`` for the customer, as the customers service
    publishes it (decided ``at``, default now), once the interactions
    service has applied it; the customers service holds the decision too
    (the contact gate decides with it)."""
    env = Envelope(data=ConsentChanged(customer_id=customer_id, purpose=purpose,
                                       granted=granted, source="test",
                                       changed_at=at or pair.clock.now()),
                   subject=customer_id, source="/crm/customers")
    pool = pair.interactions.runner.pool
    assert pool is not None
    await mirror(pool, [env])
    await produce_envelopes(pair.interactions.runner.settings.kafka_bootstrap_servers or "",
                            [env])

    async def applied() -> bool:
        return bool(await pool.fetchval("SELECT count(*) FROM inbox WHERE event_id = $1",
                                        env.id))

    await wait_for(applied, what=f"consent_changed of {customer_id} consumed")


async def record(pair: Pair, **fields: Any) -> pb.Interaction:
    fields.setdefault("idempotency_key", str(uuid.uuid4()))
    fields.setdefault("channel", "web")
    fields.setdefault("kind", "inquiry")
    reply: pb.Interaction = await api(pair).RecordInteraction(
        pb.RecordInteractionRequest(**fields), metadata=pair.interactions.metadata)
    return reply


async def events_of(pair: Pair, customer_id: str, expect: int,
                    topic: str = INTERACTIONS) -> list[tuple[str, dict[str, Any]]]:
    bootstrap = pair.interactions.runner.settings.kafka_bootstrap_servers or ""
    found: list[tuple[str, dict[str, Any]]] = []

    async def enough() -> bool:
        records = await read_topic(bootstrap, topic, expect=0, timeout=5, settle=0.3)
        found[:] = [(dict(r.headers)["ce_type"].decode(), json.loads(r.value))
                    for r in records if r.key == customer_id.encode()]
        return len(found) >= expect

    await wait_for(enough, timeout=30, what=f"{expect} events of {customer_id}")
    return found


async def test_the_same_contact_twice_is_stored_once(pair: Pair) -> None:
    cid = await new_customer(pair)
    at = pair.clock.now()
    first = await record(pair, customer_id=cid, idempotency_key="web-1-" + cid, notes="hi",
                         occurred_at=_ts(at))
    again = await record(pair, customer_id=cid, idempotency_key="web-1-" + cid, notes="hi",
                         occurred_at=_ts(at))
    assert first.interaction_id == again.interaction_id
    # The same contact from the ingest topic: the same request, so the same record.
    ingest = ContactReceived(idempotency_key="web-1-" + cid, customer_id=cid, channel="web",
                             kind="inquiry", occurred_at=at, notes="hi")
    env = Envelope(data=ingest, subject=cid, source="/shop")
    await produce_envelopes(pair.interactions.runner.settings.kafka_bootstrap_servers or "",
                            [env, env])
    pool = pair.interactions.runner.pool
    assert pool is not None

    async def consumed() -> bool:
        return bool(await pool.fetchval("SELECT count(*) FROM inbox WHERE event_id = $1", env.id))

    await wait_for(consumed, what="ingest consumed")
    timeline = await api(pair).GetTimeline(pb.GetTimelineRequest(customer_id=cid),
                                           metadata=pair.interactions.metadata)
    assert len(timeline.interactions) == 1
    recorded = [t for t, _ in await events_of(pair, cid, 1) if t == "interaction.recorded"]
    assert recorded == ["interaction.recorded"]


async def test_unknown_contact_becomes_a_potential_customer(pair: Pair) -> None:
    email = f"new-{uuid.uuid4().hex[:8]}@example.com"
    first = await record(pair, contact_email=email.upper(), channel="phone", kind="inquiry")
    second = await record(pair, contact_email=email, channel="chat", kind="doubt")
    assert first.customer_id == second.customer_id
    known = await customers(pair).GetCustomer(cpb.GetCustomerRequest(
        customer_id=first.customer_id), metadata=pair.customers.metadata)
    assert known.stage == cpb.STAGE_POTENTIAL and list(known.emails) == [email]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await record(pair, contact_phone="123", channel="phone")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("contact_phone:")


@pytest.mark.parametrize(("fields", "field"), [
    ({"channel": "fax"}, "channel"),
    ({"kind": "gossip"}, "kind"),
    ({"idempotency_key": ""}, "idempotency_key"),
    ({"kind": "purchase", "amount": pb.Money(amount_minor=100, currency="EURO")},
     "amount.currency"),
    ({"outcome": "great"}, "outcome"),
])
async def test_bad_contacts_are_invalid_argument_naming_the_field(
        pair: Pair, fields: dict[str, Any], field: str) -> None:
    cid = await new_customer(pair)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await record(pair, customer_id=cid, **fields)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(f"{field}:")


async def test_timeline_newest_first_filtered_and_paginated(pair: Pair) -> None:
    cid = await new_customer(pair)
    for i, (channel, kind) in enumerate([("web", "inquiry"), ("phone", "doubt"),
                                         ("web", "suggestion"), ("chat", "inquiry")]):
        await record(pair, customer_id=cid, channel=channel, kind=kind,
                     occurred_at=_ts(pair.clock.now() + timedelta(minutes=i)))
    page = await api(pair).GetTimeline(pb.GetTimelineRequest(customer_id=cid, page_size=3),
                                       metadata=pair.interactions.metadata)
    assert [i.channel for i in page.interactions] == ["chat", "web", "phone"]
    rest = await api(pair).GetTimeline(pb.GetTimelineRequest(
        customer_id=cid, page_size=3, page_token=page.next_page_token),
        metadata=pair.interactions.metadata)
    assert [i.kind for i in rest.interactions] == ["inquiry"] and not rest.next_page_token
    web = await api(pair).GetTimeline(pb.GetTimelineRequest(customer_id=cid, channels=["web"]),
                                      metadata=pair.interactions.metadata)
    assert [i.kind for i in web.interactions] == ["suggestion", "inquiry"]


def _ts(value: Any) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


async def test_a_case_breaches_on_the_scheduler_clock(pair: Pair) -> None:
    cid = await new_customer(pair)
    complaint = await record(pair, customer_id=cid, channel="phone", kind="complaint",
                             notes="the parcel arrived broken")
    assert complaint.case_id
    case = await api(pair).AcknowledgeCase(pb.AcknowledgeCaseRequest(
        case_id=complaint.case_id, agent="ana"), metadata=pair.interactions.metadata)
    assert case.promised_by.ToDatetime() - case.opened_at.ToDatetime() == timedelta(hours=48)
    case = await api(pair).TransferCase(pb.TransferCaseRequest(
        case_id=complaint.case_id, to_unit="logistics", reason="damaged in transit"),
        metadata=pair.interactions.metadata)
    assert case.unit == "logistics" and [t.to_unit for t in case.transfers] == ["logistics"]
    pair.clock.advance(timedelta(hours=41))
    await events_of(pair, cid, 5)  # ... recorded, opened, acknowledged, transferred, warning
    types = [t for t, _ in await events_of(pair, cid, 5)]
    assert "case.breach_warning" in types and "case.breached" not in types
    pair.clock.advance(timedelta(hours=8))
    found = await events_of(pair, cid, 7)
    types = [t for t, _ in found]
    assert "case.breached" in types
    signal = [d for t, d in found if t == "customer.dissatisfaction_signal"]
    assert [s["reason"] for s in signal] == ["breached_promise"]
    case = await api(pair).ResolveCase(pb.ResolveCaseRequest(
        case_id=complaint.case_id, resolution="replaced the item"),
        metadata=pair.interactions.metadata)
    assert case.breached and case.resolved_late and case.status == "resolved"
    breaching = await api(pair).ListCases(pb.ListCasesRequest(filter="breached",
                                                              customer_id=cid),
                                          metadata=pair.interactions.metadata)
    assert [c.case_id for c in breaching.cases] == [complaint.case_id]

    # The breach reached the customers service: the customer is at risk.
    async def at_risk() -> bool:
        c = await customers(pair).GetCustomer(cpb.GetCustomerRequest(customer_id=cid),
                                              metadata=pair.customers.metadata)
        return bool(c.at_risk)

    await wait_for(at_risk, what="the customer marked at risk")


async def test_callback_request_has_a_short_promise(pair: Pair) -> None:
    cid = await new_customer(pair)
    case = await api(pair).RequestCallback(pb.RequestCallbackRequest(
        customer_id=cid, phone="+34 600 123 456", idempotency_key=str(uuid.uuid4())),
        metadata=pair.interactions.metadata)
    assert case.kind == "callback_request" and case.callback_phone == "+34600123456"
    assert case.promised_by.ToDatetime() - case.opened_at.ToDatetime() == timedelta(hours=2)


async def test_surveys_signals_and_report(pair: Pair) -> None:
    cid = await new_customer(pair)
    tp = f"checkout-{uuid.uuid4().hex[:6]}"
    for csat, nps in ((5, 10), (2, 3)):
        await api(pair).RecordSurveyResponse(pb.RecordSurveyResponseRequest(
            customer_id=cid, touchpoint=tp, channel="web", idempotency_key=str(uuid.uuid4()),
            answers=[pb.SurveyAnswer(question="speed", csat=csat, nps=-1),
                     pb.SurveyAnswer(question="recommend", nps=nps)]),
            metadata=pair.interactions.metadata)
    found = await events_of(pair, cid, 4)
    reasons = sorted(d["reason"] for t, d in found if t == "customer.dissatisfaction_signal")
    assert reasons == ["low_csat", "low_nps"]
    report = await api(pair).GetSatisfactionReport(pb.GetSatisfactionReportRequest(),
                                                   metadata=pair.interactions.metadata)
    row = next(r for r in report.rows if r.key == tp)
    assert row.responses == 2 and row.csat == pytest.approx(3.5) and row.nps == 0.0


async def test_erasure_scrubs_notes_but_keeps_counts(pair: Pair) -> None:
    cid = await new_customer(pair)
    await record(pair, customer_id=cid, notes="lives at Calle Mayor 1", kind="complaint",
                 channel="in_person")
    await customers(pair).EraseCustomer(cpb.EraseCustomerRequest(customer_id=cid),
                                        metadata=pair.customers.metadata)

    async def scrubbed() -> bool:
        t = await api(pair).GetTimeline(pb.GetTimelineRequest(customer_id=cid),
                                        metadata=pair.interactions.metadata)
        return len(t.interactions) == 1 and t.interactions[0].notes == ""

    await wait_for(scrubbed, what="notes scrubbed after erasure")
    cases = await api(pair).ListCases(pb.ListCasesRequest(filter="all", customer_id=cid),
                                      metadata=pair.interactions.metadata)
    assert len(cases.cases) == 1 and cases.cases[0].summary == ""


async def test_ingest_dead_letters_bad_contacts_and_processes_the_rest(pair: Pair) -> None:
    cid = await new_customer(pair)
    bootstrap = pair.interactions.runner.settings.kafka_bootstrap_servers or ""
    good = [Envelope(data=ContactReceived(
        idempotency_key=f"pos-{cid}-{i}", customer_id=cid, channel="in_person",
        kind="purchase", occurred_at=pair.clock.now(), amount_minor=1000 + i, currency="EUR"),
        subject=cid, source="/pos") for i in range(3)]
    bad_channel = Envelope(data=ContactReceived(
        idempotency_key=f"pos-{cid}-bad", customer_id=cid, channel="pigeon", kind="inquiry",
        occurred_at=pair.clock.now()), subject=cid, source="/pos")
    await produce(bootstrap, [
        (INTERACTIONS_INGEST, cid.encode(), good[0].body(), good[0].headers()),
        (INTERACTIONS_INGEST, cid.encode(), b"\x00 not json", good[1].headers()),
        (INTERACTIONS_INGEST, cid.encode(), bad_channel.body(), bad_channel.headers()),
        (INTERACTIONS_INGEST, cid.encode(), good[1].body(), good[1].headers()),
        (INTERACTIONS_INGEST, cid.encode(), good[2].body(), good[2].headers()),
    ])
    dead = await read_topic(bootstrap, dlq_topic(INTERACTIONS_INGEST), expect=0, timeout=5)

    async def two_dead() -> bool:
        nonlocal dead
        dead = [r for r in await read_topic(bootstrap, dlq_topic(INTERACTIONS_INGEST), expect=0,
                                            timeout=5, settle=0.2) if r.key == cid.encode()]
        return len(dead) == 2

    await wait_for(two_dead, what="two dead letters")
    reasons = sorted(dict(r.headers)["dlq_error_reason"].decode() for r in dead)
    assert reasons[0].startswith("body is not JSON")
    assert reasons[1].startswith("channel: 'pigeon' is not one of")
    # The purchases flowed on: the customers service counted all three.
    async def three_purchases() -> bool:
        c = await customers(pair).GetCustomer(cpb.GetCustomerRequest(customer_id=cid),
                                              metadata=pair.customers.metadata)
        return bool(c.purchase_count == 3 and c.stage == cpb.STAGE_REPEAT)

    await wait_for(three_purchases, what="purchases counted by the customers service")


def _samples(name: str) -> dict[tuple[tuple[str, str], ...], float]:
    from prometheus_client import REGISTRY

    out = {}
    for family in REGISTRY.collect():
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


async def test_domain_metrics_follow_committed_work(pair: Pair) -> None:
    def interactions(channel: str, kind: str) -> float:
        key = (("channel", channel), ("kind", kind), ("service", "interactions"))
        return _samples("crm_interactions_total").get(key, 0.0)

    cid = await new_customer(pair)
    before = interactions("chat", "suggestion")
    key = str(uuid.uuid4())
    for _ in range(3):  # a retried call is counted once
        await record(pair, customer_id=cid, channel="chat", kind="suggestion",
                     idempotency_key=key)
    assert interactions("chat", "suggestion") == before + 1
    with pytest.raises(grpc.aio.AioRpcError):
        await record(pair, customer_id=cid, channel="chat", kind="nonsense")
    assert interactions("chat", "suggestion") == before + 1

    async def gauges_fresh() -> bool:
        stages = _samples("crm_customers_by_stage")
        open_cases = _samples("crm_cases_open")
        return bool(stages) and bool(open_cases)

    await wait_for(gauges_fresh, what="state gauges refreshed")
    potential = _samples("crm_customers_by_stage")[(("service", "customers"),
                                                   ("stage", "potential"))]
    assert potential >= 1


async def _purchase_through_both(pair: Pair, traceparent: str) -> tuple[str, Any, Any]:
    """A purchase on the ingest topic carrying ``traceparent``; returns the
    customer, the ``interaction.recorded`` and the ``customer.stage_changed``
    it caused, as read from the topics."""
    from crm_contracts.topics import CUSTOMERS

    cid = await new_customer(pair)
    env = Envelope(data=ContactReceived(
        idempotency_key=f"trace-{cid}", customer_id=cid, channel="web", kind="purchase",
        occurred_at=pair.clock.now(), amount_minor=990, currency="EUR"),
        subject=cid, source="/shop", traceparent=traceparent)
    bootstrap = pair.interactions.runner.settings.kafka_bootstrap_servers or ""
    await produce_envelopes(bootstrap, [env])
    recorded: list[Any] = []
    changed: list[Any] = []

    async def both() -> bool:
        recorded[:] = [r for r in await read_topic(bootstrap, INTERACTIONS, expect=0, timeout=5,
                                                   settle=0.2) if r.key == cid.encode()]
        changed[:] = [r for r in await read_topic(bootstrap, CUSTOMERS, expect=0, timeout=5,
                                                  settle=0.2)
                      if r.key == cid.encode()
                      and dict(r.headers)["ce_type"] == b"customer.stage_changed"]
        return bool(recorded) and bool(changed)

    await wait_for(both, what="the purchase seen by both services")
    return cid, recorded[0], changed[0]


async def test_one_trace_follows_a_purchase_across_services(pair: Pair) -> None:
    from crm_runtime.logs import new_traceparent, trace_id

    parent = new_traceparent()
    _, recorded, changed = await _purchase_through_both(pair, parent)
    for record in (recorded, changed):
        carried = dict(record.headers)["ce_traceparent"].decode()
        assert trace_id(carried) == trace_id(parent) and carried != parent


async def test_with_tracing_on_each_hop_is_a_span_and_the_next_event_its_child(
        pair: Pair) -> None:
    """With an exporter, customers opens a ``process interaction.recorded``
    span for the purchase (child of the span interactions put on the event),
    and the ``customer.stage_changed`` it causes names that span as parent."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from crm_runtime import tracing
    from crm_runtime.logs import new_traceparent

    exporter = InMemorySpanExporter()
    tracing.configure("none", "test", span_exporter=exporter)  # the services share it
    try:
        cid, recorded, changed = await _purchase_through_both(pair, new_traceparent())
    finally:
        tracing.configure("none", "test")

    def span_id(record: Any) -> str:
        return str(dict(record.headers)["ce_traceparent"].decode().split("-")[2])

    spans = {format(s.context.span_id, "016x"): s for s in exporter.get_finished_spans()}
    hop = spans.get(span_id(changed))
    assert hop is not None, "customer.stage_changed names a span that was never exported"
    assert hop.name == "process interaction.recorded"
    assert hop.parent is not None and format(hop.parent.span_id, "016x") == span_id(recorded)
    assert dict(hop.attributes or {})["crm.customer_id"] == cid


@pytest.mark.parametrize("group_by", ["channel", "unit"])
async def test_report_by_channel_and_unit_within_its_window(pair: Pair, group_by: str) -> None:
    """Only responses inside [from, to] count, grouped by the chosen key."""
    from datetime import UTC, datetime

    cid = await new_customer(pair)
    # A window of its own, long ago, so other tests' responses are not in it.
    base = datetime(2019, 1, 1, tzinfo=UTC) + timedelta(minutes=uuid.uuid4().int % 500_000)
    unit = f"unit-{uuid.uuid4().hex[:6]}"
    answers = [  # (minutes after base, channel, unit, csat, nps)
        (10, "phone", unit, 2, 3), (20, "chat", unit, 5, 10), (30, "phone", unit, 4, 9),
        (90, "phone", unit, 1, 0),  # after the window
        (-5, "chat", unit, 1, 0),  # before it
    ]
    for minutes, channel, in_unit, csat, nps in answers:
        await api(pair).RecordSurveyResponse(pb.RecordSurveyResponseRequest(
            customer_id=cid, touchpoint="report-window", channel=channel, unit=in_unit,
            idempotency_key=str(uuid.uuid4()), occurred_at=_ts(base + timedelta(minutes=minutes)),
            answers=[pb.SurveyAnswer(question="overall", csat=csat, nps=-1),
                     pb.SurveyAnswer(question="recommend", nps=nps)]),
            metadata=pair.interactions.metadata)
    request = pb.GetSatisfactionReportRequest(group_by=group_by, to=_ts(base + timedelta(hours=1)))
    getattr(request, "from").CopyFrom(_ts(base))
    report = await api(pair).GetSatisfactionReport(request, metadata=pair.interactions.metadata)
    rows = {r.key: r for r in report.rows}
    if group_by == "channel":
        assert set(rows) == {"phone", "chat"}
        assert rows["phone"].responses == 2 and rows["phone"].csat == pytest.approx(3.0)
        assert rows["phone"].nps == pytest.approx(0.0)  # one detractor, one promoter
        assert rows["chat"].responses == 1 and rows["chat"].nps == pytest.approx(100.0)
    else:
        assert set(rows) == {unit}
        assert rows[unit].responses == 3
        assert rows[unit].csat == pytest.approx(11 / 3)
        assert rows[unit].nps == pytest.approx(100 * (2 - 1) / 3)
