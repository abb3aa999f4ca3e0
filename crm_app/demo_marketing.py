"""The demo's marketing step: marketing defines a segment of former
customers (those who stopped buying) and sends them the spring newsletter
as a campaign (throttled,
through consent and the contact gate), and a helpdesk that cannot read
Kafka receives the demo customer's loyalty events by webhook: signed
CloudEvents POSTed to a small HTTP receiver the demo runs on localhost."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from crm.customers.v1 import customers_pb2 as cpb
from crm.customers.v1 import customers_pb2_grpc
from crm.loyalty.v1 import loyalty_pb2 as lpb
from crm.loyalty.v1 import loyalty_pb2_grpc

#: The newsletter issue the campaign sends.
NEWSLETTER_LIST, ISSUE = "monthly", "spring-2027"


@dataclass
class Helpdesk:
    """A stand-in for a helpdesk's webhook endpoint: records what it gets."""

    received: list[dict[str, str]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/crm-events"

    def start(self) -> None:
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                received.append({**{k.lower(): v for k, v in self.headers.items()},
                                 "body": body.decode()})
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


async def _until(what: str, check: Callable[[], Awaitable[bool]], wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} after {wait_s:.0f}s")
        await asyncio.sleep(0.2)


async def campaign_and_webhook(customers: customers_pb2_grpc.CustomersStub,
                               loyalty: loyalty_pb2_grpc.LoyaltyStub, md: list[tuple[str, str]],
                               customer_id: str, run: str,
                               advance: Callable[[float], Awaitable[Any]],
                               wait_s: float) -> dict[str, Any]:
    """Play the step; returns the facts the demo prints. ``advance`` moves
    the stack's clock by seconds (the segment is evaluated shortly after its
    definition, on the services' clock)."""
    helpdesk = Helpdesk()
    helpdesk.start()
    try:
        hook = await loyalty.CreateWebhook(lpb.CreateWebhookRequest(
            webhook_id=f"demo-helpdesk-{run}", url=helpdesk.url, event_types=["loyalty.*"],
            customer_id=customer_id, description="The helpdesk's inbox of loyalty events"),
            metadata=md)
        segment = f"demo-former-{run}"
        await customers.DefineSegment(cpb.DefineSegmentRequest(
            name=segment, description="Customers we miss, for the spring newsletter",
            filter_json=json.dumps({"field": "stage", "op": "=", "value": "former"})),
            metadata=md)
        await advance(15)
        draft = lpb.CreateCampaignRequest(
            campaign_id=f"demo-spring-{run}", name="Spring newsletter", segment=segment,
            action=lpb.CampaignAction(newsletter_issue=lpb.NewsletterIssueAction(
                list=NEWSLETTER_LIST, issue=ISSUE)),
            members_per_minute=500, created_by="marketing")

        async def member_known() -> bool:
            dry = await loyalty.DryRunCampaign(lpb.DryRunCampaignRequest(
                draft=draft, sample_size=100), metadata=md)
            return any(s.customer_id == customer_id for s in dry.sample)

        await _until("segment member in loyalty", member_known, wait_s)
        campaign = await loyalty.CreateCampaign(draft, metadata=md)

        async def run_done() -> bool:
            nonlocal campaign
            campaign = await loyalty.GetCampaign(lpb.GetCampaignRequest(
                campaign_id=draft.campaign_id), metadata=md)
            return bool(campaign.current_run.state == "done")

        await _until("campaign run done", run_done, wait_s)

        async def delivered() -> bool:
            return any(r.get("ce-type") == "loyalty.newsletter_issue_due"
                       for r in helpdesk.received)

        await _until("webhook delivery", delivered, wait_s)
    finally:
        helpdesk.stop()
    progress = campaign.current_run
    got = next(r for r in helpdesk.received
               if r.get("ce-type") == "loyalty.newsletter_issue_due")
    return {
        "segment": f"{segment}: stage = former",
        "campaign": f"{campaign.name} ({NEWSLETTER_LIST}, issue {ISSUE}), 500 members a minute",
        "run": f"{progress.targeted} member(s): {progress.sent} sent, "
               f"{progress.suppressed} suppressed, {progress.skipped} skipped",
        "webhook": f"{hook.webhook_id} -> {hook.url}",
        "helpdesk got": f"{got['ce-type']} (ce-id {got['ce-id']}, signed "
                        f"{got['webhook-signature'][:12]}...)",
    }
