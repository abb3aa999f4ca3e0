"""The demo story end to end: the three services over a real PostgreSQL and a
real broker, time moved through Operations/AdvanceClock, every step asserted."""

from __future__ import annotations

from contextlib import AsyncExitStack

from crm_app.demo import WIDTH, Demo, Targets
from crm_app.demo_text import _human
from crm_runtime import metrics
from crm_runtime.settings import Settings
from crm_runtime.stack import EMBEDDED_BROKER_SETTINGS, TansuBroker, free_port
from services.customers.app import SPEC as CUSTOMERS
from services.interactions.app import SPEC as INTERACTIONS
from services.loyalty.app import SPEC as LOYALTY
from tests.support.services import DEV_TOKEN, running


async def test_the_demo_story(own_database: str, broker: TansuBroker) -> None:
    settings = Settings(database_url=own_database,
                        kafka_bootstrap_servers=broker.bootstrap_servers,
                        dev_clock_control=True, retry_initial_s=0.05, retry_max_s=0.5,
                        scheduler_poll_interval_s=0.05, consumer_batch_wait_ms=20,
                        metrics_refresh_s=0.2, **EMBEDDED_BROKER_SETTINGS)
    port = free_port()
    metrics.serve(port)  # one registry for the three in-process services
    async with AsyncExitStack() as stack:
        customers = await stack.enter_async_context(running(CUSTOMERS, settings))
        target = f"127.0.0.1:{customers.runner.bound_grpc_port}"
        others = settings.model_copy(update={"customers_grpc_target": target})
        interactions = await stack.enter_async_context(running(INTERACTIONS, others))
        loyalty = await stack.enter_async_context(running(LOYALTY, others))
        for svc in (customers, interactions, loyalty):
            # running() hands each service a ManualClock; the demo moves the
            # clock the way it does on a real stack, through the Ops API.
            assert svc.runner.settings.dev_clock_control
        url = f"http://127.0.0.1:{port}/metrics"
        targets = Targets(
            grpc={"customers": target,
                  "interactions": f"127.0.0.1:{interactions.runner.bound_grpc_port}",
                  "loyalty": f"127.0.0.1:{loyalty.runner.bound_grpc_port}"},
            metrics={"customers": url, "interactions": url, "loyalty": url},
            bootstrap=broker.bootstrap_servers, token=DEV_TOKEN)
        lines: list[str] = []
        steps = await Demo(targets, out=lines.append).run()
        print("\n".join(lines))  # shown by pytest when an assertion below fails

    assert [s.title.split(":")[0] for s in steps] == [
        "A potential customer asks by phone", "They buy on the web", "They complain in person",
        "Nobody resolves it", "They redeem the discount on a second purchase and become a "
        "repeat customer", "On a Friday evening they complain by phone",
        "The store runs its service cycle", "A year passes without a purchase",
        "Marketing sends the spring newsletter to the customers it misses, and the helpdesk "
        "gets the customer's loyalty events by webhook"]
    changes = [(d["from_stage"], d["to_stage"], d["cause"]) for s in steps
               for _, t, d in s.events if t == "customer.stage_changed"]
    assert changes == [("potential", "one_time", "purchase"), ("one_time", "repeat", "purchase"),
                       ("repeat", "former", "churn_window")]
    breach = steps[3]
    recovery = [d for _, t, d in breach.events if t == "loyalty.discount_issued"]
    assert len(recovery) == 1
    win_back = [d for _, t, d in steps[7].events if t == "loyalty.discount_issued"]
    assert len(win_back) == 1
    assert win_back[0]["reason"] == "We miss you", win_back
    assert recovery[0]["reason"] == "Compensation for a broken promise", recovery
    # Counters are read once the step's effects are counted: each moves in
    # its own step, not in the next one.
    moved = [{k.partition("{")[0] + _kv(k) for k in s.moved} for s in steps]
    assert any(k.startswith("crm_interactions_total") and "channel=phone" in k
               for k in moved[0]), moved[0]
    assert any("from_stage=potential" in k and "to_stage=one_time" in k
               for k in moved[1]), moved[1]
    assert any(k.startswith("crm_cases_breached_total") for k in breach.moved), breach.moved
    assert not any(k.startswith("crm_cases_breached_total") for s in steps[4:] for k in s.moved)
    assert any(k.startswith("crm_loyalty_actions_total") and "outcome=performed" in k
               and "rule=service-recovery-breach" in k for k in breach.moved), breach.moved
    redeemed = steps[4]
    assert "Compensation for a broken promise" in str(redeemed.facts["discount"]), \
        redeemed.facts  # the service-recovery discount is the one redeemed
    assert any(k.startswith("crm_loyalty_redemptions_total") and "result=redeemed" in k
               for k in redeemed.moved), redeemed.moved
    assert any("from_stage=one_time" in k and "to_stage=repeat" in k for k in redeemed.moved)
    assert not any("to_stage=former" in k for s in steps[:7] for k in s.moved)
    assert any("from_stage=repeat" in k and "to_stage=former" in k for k in steps[7].moved)
    assert any("rule=win-back-offer" in k for k in steps[7].moved), steps[7].moved

    # What changed for the demo's own customer, read from the services (the
    # gauges sum every customer of the stack), in the step that changed it.
    stages = [s.changed.get("stage") for s in steps]
    assert stages == [("", "potential"), ("potential", "one time"), None, None,
                      ("one time", "repeat"), None, None, ("repeat", "former"), None], stages
    # A negative contact is a dissatisfaction signal of its own; the breach adds its reason.
    assert steps[2].changed["at risk"] == ("no", "yes (negative contact)"), steps[2].changed
    assert steps[3].changed["at risk"] == (
        "yes (negative contact)", "yes (breached promise, negative contact)"), steps[3].changed
    assert steps[2].changed["cases"] == ("none", "1 open"), steps[2].changed
    assert steps[4].changed["discounts"][1].count("redeemed") == 1, steps[4].changed
    assert "purchases" not in steps[3].changed and steps[4].changed["purchases"] == ("1", "2")

    # A Friday-evening complaint to a store with business hours (Monday to
    # Friday, 09:00-18:00 in Madrid): both promises fall on a Monday, nothing
    # breaches over the weekend, and it is answered and resolved on Monday in time.
    friday = steps[5]
    types = [t for _, t, _ in friday.events]
    assert "case.breached" not in types and "case.breach_warning" not in types, types
    (opened,) = [d for _, t, d in friday.events if t == "case.opened"]
    assert opened["channel"] == "phone" and opened["kind"] == "complaint", opened
    assert opened["unit"] == "demo-store" and opened["calendar"] == "demo-store", opened
    (resolved,) = [d for _, t, d in friday.events if t == "case.resolved"]
    assert resolved["late"] is False, resolved
    assert "case.acknowledged" in types, types
    facts = friday.facts
    assert facts["complained"].startswith("Friday ") and " 17:30 " in facts["complained"], facts
    assert facts["first response due"].startswith("Monday "), facts
    assert facts["first response due"].endswith(" 12:30 Europe/Madrid"), facts
    assert facts["resolution due"].startswith("Monday "), facts
    assert facts["resolution due"].endswith(" 11:30 Europe/Madrid"), facts
    assert facts["over the weekend"] == "first response pending, resolution pending", facts
    assert facts["acknowledged"].startswith("Monday "), facts
    assert facts["resolved"].startswith("Monday "), facts
    assert facts["first response"] == "hit, after 1 h of business hours", facts
    assert facts["resolution"] == "hit, after 2 h of business hours", facts
    assert not any(k.startswith("crm_cases_breached_total") for k in friday.moved)

    # The service cycle: a mystery shopper's visit and the customer's answers
    # about the delivery meet in the scorecard; the delivery, where they
    # complained twice and rated it worst, is what to improve first.
    cycle = steps[6]
    assert [d["nps"] for _, t, d in cycle.events if t == "survey.response_recorded"] == [6]
    assert any(k.startswith("crm_csat_responses_total") and "channel=email" in k
               for k in cycle.moved), cycle.moved
    facts = cycle.facts
    # 5, 4, 1 (yes) and 3 on their scales, weighted 1, 2, 1, 1: (1 + 1.5 + 1 + 0.5) / 5
    assert facts["mystery shopper"] == "80 of 100 at demo-store", facts
    assert facts["Delivery at home"].startswith("customers "), facts
    assert "evaluators -" in facts["Delivery at home"], facts  # a visit sees no delivery
    assert "2 negative contact(s), 2 complaint(s)" in facts["Delivery at home"], facts
    assert facts["Greeting at the door"].startswith("customers -, evaluators 100 "), facts
    assert facts["improve first"].startswith("Delivery at home: "), facts
    assert facts["action plan"].startswith("logistics, due "), facts
    assert "first-call (1)" in facts["touchpoints no cycle knows"], facts

    # Human values: no enum names, Python lists or timedelta, no cut words.
    text = "\n".join(lines)
    for raw in ("STAGE_", "['", "[]", "0:00:00", "day,", "True", "False", "None"):
        assert raw not in text, f"{raw!r} in the demo output:\n{text}"
    assert "promised within: 1 day" in text or "promised within: 24 h" in text, text
    assert "reasons: breached promise" in text, text
    assert all(len(line) <= WIDTH for line in text.splitlines()), text
    flowing = " ".join(text.split())
    for step in steps:  # every value shown is whole, at most wrapped between words
        for _, _, data in step.events:
            for key in ("reason", "template", "code"):
                if data.get(key):
                    assert f"{key}: {_human(key, data[key])}" in flowing, (key, data[key])
    assert lines[-1].strip() == "The customer is now former after 2 purchases."

    # Marketing: the demo customer, now former and consenting to
    # newsletters, is a member of the segment; the campaign sends them the
    # spring issue once, and the helpdesk gets it by webhook as a signed
    # CloudEvent (binary mode).
    marketing = steps[8]
    (entered,) = [d for _, t, d in marketing.events if t == "customer.segment_entered"
                  and d["customer_id"] == steps[0].facts["customer"]]
    assert entered["segment"].startswith("demo-former-"), entered
    issues = [d for _, t, d in marketing.events if t == "loyalty.newsletter_issue_due"
              and d["customer_id"] == steps[0].facts["customer"]]
    assert len(issues) == 1 and issues[0]["issue"] == "spring-2027", issues
    assert issues[0]["campaign_id"].startswith("demo-spring-"), issues
    assert "1 sent" in marketing.facts["run"], marketing.facts
    assert marketing.facts["helpdesk got"].startswith("loyalty.newsletter_issue_due (ce-id "), \
        marketing.facts
    assert "signed v1," in marketing.facts["helpdesk got"], marketing.facts
    assert any(k.startswith("crm_campaign_members_total") and "outcome=sent" in k
               for k in marketing.moved), marketing.moved
    assert any(k.startswith("crm_webhook_deliveries_total") and "outcome=delivered" in k
               for k in marketing.moved), marketing.moved


def _kv(series: str) -> str:
    return "{" + series.partition("{")[2]

