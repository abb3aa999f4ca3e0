"""The demo story end to end: the three services over a real PostgreSQL and a
real broker, time moved through Operations/AdvanceClock, every step asserted."""

from __future__ import annotations

from contextlib import AsyncExitStack

from crm_app.demo import Demo, Targets
from crm_runtime import metrics
from crm_runtime.settings import Settings
from crm_runtime.stack import EMBEDDED_BROKER_SETTINGS, TansuBroker, free_port
from services.customers.app import SPEC as CUSTOMERS
from services.interactions.app import SPEC as INTERACTIONS
from services.loyalty.app import SPEC as LOYALTY
from tests.support.services import DEV_TOKEN, running


async def test_the_demo_story(database_url: str, broker: TansuBroker) -> None:
    settings = Settings(database_url=database_url,
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
        "repeat customer", "A year passes without a purchase"]
    changes = [(d["from_stage"], d["to_stage"], d["cause"]) for s in steps
               for _, t, d in s.events if t == "customer.stage_changed"]
    assert changes == [("potential", "one_time", "purchase"), ("one_time", "repeat", "purchase"),
                       ("repeat", "former", "churn_window")]
    breach = steps[3]
    recovery = [d for _, t, d in breach.events if t == "loyalty.discount_issued"]
    assert len(recovery) == 1
    win_back = [d for _, t, d in steps[5].events if t == "loyalty.discount_issued"]
    assert len(win_back) == 1
    assert win_back[0]["reason"] == "We miss you", win_back
    assert recovery[0]["reason"] == "Compensation for a broken promise", recovery
    assert any(k.startswith("crm_cases_breached_total") for k in breach.moved)
    assert any(k.startswith("crm_loyalty_actions_total") and "outcome=performed" in k
               for k in breach.moved), breach.moved
    redeemed = steps[4]
    assert "Compensation for a broken promise" in str(redeemed.facts["discount"]), \
        redeemed.facts  # the service-recovery discount is the one redeemed
    assert any(k.startswith("crm_loyalty_redemptions_total") and "result=redeemed" in k
               for k in redeemed.moved), redeemed.moved
    assert any("stage=former" in k for k in steps[5].moved)
    assert lines[-1].strip().startswith("The customer is now STAGE_FORMER after 2 purchases")
