"""The dashboards and alert rules against a real Prometheus.

A Prometheus server (Debian's binary) scrapes the three services, run
in-process over the real PostgreSQL and broker, every second and evaluates
deploy/prometheus/rules.yml every second, while they play the demo story and
then what a healthy story does not show: survey answers (CSAT, NPS), a case
left to breach, a contact a channel delivers twice and one it delivers
malformed (a dead letter, hence a firing alert), the customers service
unreachable from interactions (server errors), webhooks to an endpoint that
accepts, one that fails and is retried and one that is gone, and a throttled
campaign with members still pending. Then, through Prometheus' HTTP
API: every query of the Grafana dashboards and the series under every alert
rule return data, every domain metric moved, and the rule groups are loaded
and healthy."""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from crm.customers.v1 import customers_pb2 as cpb
from crm.customers.v1 import customers_pb2_grpc
from crm.interactions.v1 import interactions_pb2 as ipb
from crm.interactions.v1 import interactions_pb2_grpc
from crm.loyalty.v1 import loyalty_pb2 as lpb
from crm.loyalty.v1 import loyalty_pb2_grpc
from crm.ops.v1 import ops_pb2, ops_pb2_grpc
from crm_app import demo_cycle
from crm_app.demo import Demo, Targets
from crm_contracts.interactions import ContactReceived
from crm_contracts.topics import INTERACTIONS_INGEST
from crm_runtime import metrics
from crm_runtime.events import Envelope
from crm_runtime.settings import SERVICES, Settings
from crm_runtime.stack import EMBEDDED_BROKER_SETTINGS, TansuBroker, free_port
from services.customers import metrics as customers_metrics
from services.customers.app import SPEC as CUSTOMERS
from services.interactions import metrics as interactions_metrics
from services.interactions.app import SPEC as INTERACTIONS
from services.loyalty import metrics as loyalty_metrics
from services.loyalty.app import SPEC as LOYALTY
from tests.deploy import promql
from tests.deploy.prometheus_server import PrometheusServer
from tests.deploy.test_grafana import DASHBOARDS, panels
from tests.deploy.test_prometheus import PROMETHEUS, alert_rules
from tests.support.http_receiver import Answer, Receiver
from tests.support.kafka import produce
from tests.support.proxy import ToggleProxy
from tests.support.services import DEV_TOKEN, Running, running

#: Grafana's built-in variables, as for a board showing the last few minutes.
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__interval": "1m", "__range": "10m"}
#: Queries that cannot return data in any sane run, with the reason (where -> why).
#: Empty: the scenario below produces data for every one.
NO_DATA_EXPECTED: dict[str, str] = {}
#: Domain metrics that need not move in the scenario, with the reason (name -> why).
STILL_EXPECTED = {
    "crm_erasures_overdue": "0 while the services acknowledge erasures within "
                            "CRM_ERASURE_ACK_TIMEOUT_S, as all three running do; "
                            "tests/integration/loyalty/test_erasure_overdue.py moves it"}
#: What counts as a server error for CrmGrpcErrorRateHigh and the error ratio panel.
SERVER_ERRORS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                 grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                 grpc.StatusCode.DATA_LOSS}
DEADLINE_S = 45.0


# --- what to query ----------------------------------------------------------

def dashboard_values(dashboard: dict[str, Any]) -> dict[str, str]:
    """Every variable of the dashboard as Grafana sends it to Prometheus with
    its default selection (All for multi-value variables)."""
    values = dict(GRAFANA_BUILTINS)
    for var in dashboard["templating"]["list"]:
        if var["type"] == "datasource":
            values[var["name"]] = "prometheus"
        elif var.get("includeAll") and var.get("allValue"):
            values[var["name"]] = var["allValue"]
        elif var["type"] == "custom":
            values[var["name"]] = "(" + "|".join(v.strip() for v in var["query"].split(",")) + ")"
        else:
            raise AssertionError(f"variable {var['name']} of type {var['type']}: teach "
                                 "dashboard_values() what Grafana sends for it")
    return values


def substitute(expr: str, values: dict[str, str]) -> str:
    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        assert name in values, f"no value for ${name} in {expr!r}"
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", value, expr)


def queries() -> dict[str, str]:
    """where -> PromQL, for every dashboard query and every series an alert
    rule compares (its expression's operands without the comparison)."""
    out: dict[str, str] = {}
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        values = dashboard_values(dashboard)
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                ref = target.get("refId", "A")
                where = f"{path.name}: #{panel['id']} {panel['title']} ({ref})"
                out[where] = substitute(target["expr"], values)
    for rule in alert_rules():
        for i, operand in enumerate(promql.operands(rule["expr"]), 1):
            out[f"rules.yml: {rule['alert']} operand {i}"] = operand
    return out


def domain_series() -> list[str]:
    """One series name per domain metric of the services."""
    names = []
    for module in (customers_metrics, interactions_metrics, loyalty_metrics):
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                for family in value.describe():
                    suffix = {"counter": "_total", "summary": "_count",
                              "histogram": "_count"}.get(family.type, "")
                    names.append(family.name + suffix)
        names += [gauge.name for gauge in module.GAUGES]
    return sorted(names)


def forget_earlier_series() -> None:
    """The registry is the whole test process's: series left by earlier tests
    of the session would answer the queries. Drop them, so that every answer
    comes from this test's scenario (the code takes its labelled children
    when it counts, so nothing keeps a dropped one)."""
    for module in (metrics, customers_metrics, interactions_metrics, loyalty_metrics):
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase) and value._labelnames:
                value.clear()


def prometheus_config(metrics_address: str, prometheus_address: str) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml pointed at this test: every job
    scrapes the one /metrics endpoint of this process and keeps the series of
    its own service (as a service process's endpoint would have them);
    scrapes and rule evaluations every second."""
    config: dict[str, Any] = yaml.safe_load(
        (PROMETHEUS / "prometheus.yml").read_text(encoding="utf-8"))
    config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s",
                        "evaluation_interval": "1s"}
    config["rule_files"] = [str(PROMETHEUS / name) for name in config["rule_files"]]
    for job in config["scrape_configs"]:
        name = job["job_name"]
        if name in SERVICES:
            job["static_configs"] = [{"targets": [metrics_address]}]
            job["metric_relabel_configs"] = [
                {"source_labels": ["service"], "regex": name, "action": "keep"}]
        elif name == "prometheus":
            job["static_configs"] = [{"targets": [prometheus_address]}]
        else:
            raise AssertionError(f"scrape job {name!r}: teach prometheus_config() about it")
    assert {j["job_name"] for j in config["scrape_configs"]} >= set(SERVICES)
    return config


# --- the scenario -------------------------------------------------------------

@asynccontextmanager
async def three_services(settings: Settings) -> AsyncIterator[
        tuple[Running, Running, Running, ToggleProxy]]:
    """customers, interactions and loyalty as in tests/e2e/test_demo.py, but
    interactions reaches customers through a proxy the test can cut."""
    async with AsyncExitStack() as stack:
        customers = await stack.enter_async_context(running(CUSTOMERS, settings))
        port = customers.runner.bound_grpc_port
        # ToggleProxy forwards any TCP; the DSN only names where to.
        proxy = ToggleProxy(f"postgresql://grpc@127.0.0.1:{port}/customers")
        await proxy.up()
        stack.push_async_callback(proxy.down)
        direct = settings.model_copy(update={"customers_grpc_target": f"127.0.0.1:{port}"})
        via_proxy = settings.model_copy(
            update={"customers_grpc_target": f"127.0.0.1:{proxy.port}"})
        interactions = await stack.enter_async_context(running(INTERACTIONS, via_proxy))
        loyalty = await stack.enter_async_context(running(LOYALTY, direct))
        yield customers, interactions, loyalty, proxy


async def after_the_story(customer_id: str, services: tuple[Running, Running, Running],
                          proxy: ToggleProxy, bootstrap: str) -> None:
    """What the demo story does not show and the boards and alerts watch."""
    interactions = services[1]
    md = interactions.metadata
    stub = interactions_pb2_grpc.InteractionsStub(interactions.channel)
    run = uuid.uuid4().hex[:8]

    # Survey answers: a promoter on the web, a detractor by phone.
    for channel, csat, nps in (("web", 5, 10), ("phone", 2, 3)):
        await stub.RecordSurveyResponse(ipb.RecordSurveyResponseRequest(
            customer_id=customer_id, touchpoint="delivery", channel=channel,
            idempotency_key=f"live-{run}-survey-{channel}",
            answers=[ipb.SurveyAnswer(question="How was the delivery?", csat=csat, nps=-1),
                     ipb.SurveyAnswer(question="Would you recommend us?", nps=nps)]),
            metadata=md)

    # A mystery shopper visits now (the story's visit is a year old): the
    # service board's scores by moment.
    await stub.RecordEvaluation(ipb.RecordEvaluationRequest(
        cycle=demo_cycle.CYCLE, evaluator="Mystery shopping agency", unit="demo-store",
        channel="in_person", scores=[ipb.CriterionScore(requirement_id="greeted-quickly",
                                                         score=4)],
        idempotency_key=f"live-{run}-visit"), metadata=md)

    # A complaint nobody resolves: it breaches its promise and stays overdue.
    contact = await stub.RecordInteraction(ipb.RecordInteractionRequest(
        customer_id=customer_id, channel="in_person", kind="complaint", touchpoint="delivery",
        outcome="negative", notes="The replacement cushion is the wrong colour",
        idempotency_key=f"live-{run}-complaint"), metadata=md)
    assert contact.case_id
    for svc in services:  # the services share time, as in production
        await ops_pb2_grpc.OperationsStub(svc.channel).AdvanceClock(
            ops_pb2.AdvanceClockRequest(seconds=25 * 3600), metadata=md)
    deadline = time.monotonic() + 30
    while True:
        breached = await stub.ListCases(ipb.ListCasesRequest(
            filter="breached", customer_id=customer_id), metadata=md)
        if contact.case_id in {c.case_id for c in breached.cases}:
            break
        assert time.monotonic() < deadline, "the unresolved complaint did not breach in 30s"
        await asyncio.sleep(0.2)

    # A case that waits on the customer: its clock stops (crm_cases_paused).
    waiting = await stub.OpenCase(ipb.OpenCaseRequest(
        customer_id=customer_id, kind="support", channel="email",
        idempotency_key=f"live-{run}-waiting"), metadata=md)
    await stub.PauseCase(ipb.PauseCaseRequest(case_id=waiting.case_id,
                                              reason="waiting for the customer's photos"),
                         metadata=md)

    # A channel delivers one contact twice (at least once: same ce_id) and
    # one that does not fit the contract (dead-lettered as invalid_payload).
    now = interactions.clock.now()
    good = Envelope(data=ContactReceived(
        idempotency_key=f"live-{run}-chat", customer_id=customer_id, channel="chat",
        kind="inquiry", touchpoint="order-status", occurred_at=now),
        subject=customer_id, source="/channels/chat")
    bad = Envelope(data=good.data, subject=customer_id, source="/channels/chat")
    bad_body = json.dumps({"customer_id": customer_id, "kind": "inquiry"}).encode()
    key = customer_id.encode()
    await produce(bootstrap, [(INTERACTIONS_INGEST, key, good.body(), good.headers()),
                              (INTERACTIONS_INGEST, key, good.body(), good.headers()),
                              (INTERACTIONS_INGEST, key, bad_body, bad.headers())])

    # customers is unreachable from interactions: recording a contact of
    # someone new fails with a server error.
    await proxy.down()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.RecordInteraction(ipb.RecordInteractionRequest(
                contact_email=f"live-{run}@example.com", channel="email", kind="inquiry",
                idempotency_key=f"live-{run}-email"), metadata=md, timeout=20)
        assert failed.value.code() in SERVER_ERRORS, failed.value
    finally:
        await proxy.up()


async def before_the_story(services: tuple[Running, Running, Running],
                           hooks: dict[str, Receiver], tag: str) -> None:
    """Webhooks for every event (one endpoint that accepts, one that answers
    503 and is retried, one that is gone: 410) and a segment of three new
    customers, evaluated when after_the_story advances the clocks."""
    customers, _, loyalty = services
    stub = loyalty_pb2_grpc.LoyaltyStub(loyalty.channel)
    for name, receiver in hooks.items():
        await stub.CreateWebhook(lpb.CreateWebhookRequest(
            webhook_id=f"live-{tag}-{name}", url=receiver.url, event_types=["*"],
            max_attempts=30), metadata=loyalty.metadata)
    people = customers_pb2_grpc.CustomersStub(customers.channel)
    for i in range(3):
        await people.RegisterCustomer(cpb.RegisterCustomerRequest(
            display_name=f"Live {tag} {i}", emails=[f"live-{tag}-{i}@example.com"],
            profile=cpb.Profile(socio_economic_band=tag)),
            metadata=customers.metadata)
    await people.DefineSegment(cpb.DefineSegmentRequest(name=f"live-{tag}", filter_json=json.dumps(
        {"field": "profile.socio_economic_band", "op": "=", "value": tag})),
        metadata=customers.metadata)


async def a_campaign_under_way(loyalty: Running, tag: str) -> None:
    """A campaign over the segment, throttled to a member a minute: its first
    page goes out, the next waits for the (manual) clock, so the run stays
    running with members pending."""
    stub = loyalty_pb2_grpc.LoyaltyStub(loyalty.channel)
    request = lpb.CreateCampaignRequest(
        campaign_id=f"live-{tag}", name="Live campaign", segment=f"live-{tag}",
        action=lpb.CampaignAction(discount=lpb.CampaignDiscount(percent=10)),
        members_per_minute=1)
    deadline = time.monotonic() + 30
    while (await stub.DryRunCampaign(lpb.DryRunCampaignRequest(draft=request),
                                     metadata=loyalty.metadata)).targeted < 3:
        assert time.monotonic() < deadline, "loyalty did not learn the segment's members in 30s"
        await asyncio.sleep(0.2)
    await stub.CreateCampaign(request, metadata=loyalty.metadata)
    while True:
        run = (await stub.GetCampaign(lpb.GetCampaignRequest(campaign_id=f"live-{tag}"),
                                      metadata=loyalty.metadata)).current_run
        if run.targeted == 3 and run.pending < 3:
            break
        assert time.monotonic() < deadline, f"the campaign sent no page in 30s: {run}"
        await asyncio.sleep(0.2)


# --- the test -----------------------------------------------------------------

@pytest.mark.slow
async def test_every_dashboard_and_alert_query_has_data_in_a_real_prometheus(
        own_database: str, broker: TansuBroker, prometheus_binary: str,
        tmp_path: Path) -> None:
    settings = Settings(database_url=own_database,
                        kafka_bootstrap_servers=broker.bootstrap_servers,
                        dev_clock_control=True, retry_initial_s=0.05, retry_max_s=0.5,
                        scheduler_poll_interval_s=0.05, consumer_batch_wait_ms=20,
                        metrics_refresh_s=0.2, relay_poll_interval_s=0.2,
                        **EMBEDDED_BROKER_SETTINGS)
    expected = queries()
    moving = [name for name in domain_series() if name not in STILL_EXPECTED]
    forget_earlier_series()
    metrics_port = free_port()
    metrics.serve(metrics_port)  # one registry for the three in-process services
    prom = PrometheusServer(prometheus_binary, tmp_path)
    await asyncio.to_thread(prom.start, prometheus_config(f"127.0.0.1:{metrics_port}",
                                                          prom.address))

    async def query(expr: str, at: float | None = None) -> list[dict[str, Any]]:
        return await asyncio.to_thread(prom.query, expr, at)

    hooks = {"ok": Receiver(), "down": Receiver(), "gone": Receiver()}
    hooks["down"].default = Answer(503)
    hooks["gone"].default = Answer(410)
    try:
        async with three_services(settings) as (customers, interactions, loyalty, proxy):
            # Start from a scrape of the running services: what moves is
            # measured from there.
            ready = time.time()
            deadline = time.monotonic() + 20
            scraped = f'timestamp(up{{job=~"{"|".join(SERVICES)}"}} == 1) > {ready}'
            while len(await query(scraped)) < len(SERVICES):
                assert time.monotonic() < deadline, f"no scrape of the services:\n{prom.log()}"
                await asyncio.sleep(0.2)
            start = time.time()

            url = f"http://127.0.0.1:{metrics_port}/metrics"
            targets = Targets(
                grpc={"customers": f"127.0.0.1:{customers.runner.bound_grpc_port}",
                      "interactions": f"127.0.0.1:{interactions.runner.bound_grpc_port}",
                      "loyalty": f"127.0.0.1:{loyalty.runner.bound_grpc_port}"},
                metrics={"customers": url, "interactions": url, "loyalty": url},
                bootstrap=broker.bootstrap_servers, token=DEV_TOKEN)
            tag = uuid.uuid4().hex[:8]
            await before_the_story((customers, interactions, loyalty), hooks, tag)
            lines: list[str] = []
            demo = Demo(targets, out=lines.append)
            await demo.run()
            print("\n".join(lines))
            await after_the_story(demo.customer_id, (customers, interactions, loyalty), proxy,
                                  broker.bootstrap_servers)
            await a_campaign_under_way(loyalty, tag)

            # Let Prometheus scrape and evaluate until everything has data.
            before = {name: await query(name, start) for name in moving}
            deadline = time.monotonic() + DEADLINE_S
            while True:
                empty = {where: expr for where, expr in expected.items()
                         if where not in NO_DATA_EXPECTED and not await query(expr)}
                window = math.ceil(time.time() - start) + 2
                still = [name for name in moving
                         if not await _moved(query, name, before[name], window)]
                unhealthy = _unhealthy_rules(await asyncio.to_thread(prom.api, "rules"))
                if not (empty or still or unhealthy) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(1.0)
    finally:
        await asyncio.to_thread(prom.stop)
        for receiver in hooks.values():
            receiver.close()

    assert not empty, (f"{len(empty)} of {len(expected)} queries have no data after "
                       f"{DEADLINE_S:.0f}s:\n" + "\n".join(f"- {w}: {e}"
                                                          for w, e in empty.items()))
    assert not still, f"domain metrics that did not move during the scenario: {still}"
    assert not unhealthy, f"rule groups not loaded or not healthy: {unhealthy}"
    for where in NO_DATA_EXPECTED:
        assert where in expected, f"NO_DATA_EXPECTED names {where!r}, which is no query"
    for name in STILL_EXPECTED:
        assert name in domain_series(), f"STILL_EXPECTED names {name!r}, which is no metric"


async def _moved(query: Any, name: str, before: list[dict[str, Any]], window: int) -> bool:
    """A series of ``name`` appeared or changed value since the start."""
    seen = {json.dumps(s["metric"], sort_keys=True) for s in before}
    if any(json.dumps(s["metric"], sort_keys=True) not in seen for s in await query(name)):
        return True
    return any(float(s["value"][1]) > 0 for s in await query(f"changes({name}[{window}s])"))


def _unhealthy_rules(data: dict[str, Any]) -> list[str]:
    """Problems of /api/v1/rules: a group of rules.yml missing, a rule not
    evaluated yet or failing."""
    groups = yaml.safe_load((PROMETHEUS / "rules.yml").read_text(encoding="utf-8"))["groups"]
    loaded = {g["name"]: g for g in data["groups"]}
    problems = [f"group {g['name']} not loaded" for g in groups if g["name"] not in loaded]
    for group in loaded.values():
        problems += [f"{group['name']}/{r['name']}: {r['health']} {r.get('lastError', '')}"
                     for r in group["rules"] if r["health"] != "ok"]
        expected = next((len(g["rules"]) for g in groups if g["name"] == group["name"]), None)
        if expected is not None and len(group["rules"]) != expected:
            problems.append(f"group {group['name']}: {len(group['rules'])} rules loaded, "
                            f"{expected} in rules.yml")
    return problems


def test_the_queries_are_read_from_the_boards_and_rules() -> None:
    """The live test's list of queries: every dashboard target and two
    operands per compound alert, with every variable substituted."""
    found = queries()
    targets = sum(len(p.get("targets", [])) for path in DASHBOARDS
                  for p in panels(json.loads(path.read_text(encoding="utf-8"))))
    assert len([w for w in found if not w.startswith("rules.yml")]) == targets
    assert {w.split(" operand")[0].removeprefix("rules.yml: ")
            for w in found if w.startswith("rules.yml")} == {r["alert"] for r in alert_rules()}
    assert not [e for e in found.values() if "$" in e]
    assert found["rules.yml: CrmServiceDown operand 1"] == \
        'up{job=~"customers|interactions|loyalty"}'
    assert substitute('rate(x{s=~"$service"}[$__rate_interval])', {
        "service": ".*", "__rate_interval": "1m"}) == 'rate(x{s=~".*"}[1m])'
