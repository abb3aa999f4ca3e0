"""Campaigns: one action to every member of a segment, once per member and
run, paced by the throttle on the service's clock, again when it recurs;
members left or joined meanwhile, consent, do-not-contact and the contact
gate's frequency cap (the customers service beside loyalty, on the same
clock); pause, resume and cancel; the dry run; and, end to end, a segment
defined in the customers service reaching a campaign's actions on
crm.loyalty.v1.

Members come to loyalty as the customers service's segment events
(produced here, or published by the customers service itself in the end
to end test); what the contact gate asks of them is mirrored into the
customers service's tables (tests/support/gate.py)."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import asyncpg
import grpc
import pytest

from crm.customers.v1 import customers_pb2 as cpb
from crm.customers.v1 import customers_pb2_grpc
from crm.loyalty.v1 import loyalty_pb2 as pb
from crm_contracts.topics import LOYALTY
from services.customers import memberships as customer_memberships
from services.loyalty import campaign_runs, metrics
from tests.support import campaigns as c
from tests.support.gate import mirror
from tests.support.kafka import keyed_records, wait_for
from tests.support.loyalty import consent, produce, profile_when, registered, stub
from tests.support.services import Running


@pytest.fixture(autouse=True, scope="module")
def _next_noon_after(svc: Running) -> Iterator[None]:
    """The throttle's tests move the package's clock by seconds; the next
    module starts at the next noon on the hour, as the others leave it."""
    yield
    noon = svc.clock.now().replace(hour=12, minute=0, second=0, microsecond=0)
    svc.clock.set(noon + timedelta(days=1))


@pytest.fixture(autouse=True)
def _daytime(svc: Running) -> None:
    """Noon UTC unless it is day already (the package's clock only moves
    forward), so no contact falls in the default quiet hours."""
    now = svc.clock.now()
    if not 9 <= now.hour < 17:
        noon = now.replace(hour=12, minute=0, second=0, microsecond=0)
        svc.clock.set(noon if noon > now else noon + timedelta(days=1))


# --- bad input and unknown ids ----------------------------------------------------------


@pytest.mark.parametrize(("fields", "field"), [
    ({"campaign_id": "Bad Id"}, "campaign_id"),
    ({"name": ""}, "name"),
    ({"segment": ""}, "segment"),
    ({"segment": "nobody-defined-this"}, "segment"),
    ({"action": pb.CampaignAction()}, "action"),
    ({"action": pb.CampaignAction(discount=pb.CampaignDiscount(percent=0))},
     "action.discount.percent"),
    ({"action": pb.CampaignAction(follow_up=pb.CampaignFollowUp(channel="fax", template="t",
                                                                reason="r"))},
     "action.follow_up.channel"),
    ({"action": pb.CampaignAction(newsletter_issue=pb.NewsletterIssueAction(
        list="monthly", issue="Bad Issue"))}, "action.newsletter_issue.issue"),
    ({"start_at": "past"}, "start_at"),
    ({"members_per_minute": 0}, "members_per_minute"),
    ({"repeat_every": "30m"}, "repeat_every"),
    ({"repeat_until": "later"}, "repeat_until"),
    ({"name": "x" * 201}, "name"),
    ({"description": "x" * 1001}, "description"),
    ({"action": None}, "action"),
    ({"start_at": "too far"}, "start_at"),
    ({"members_per_minute": 1_000_001}, "members_per_minute"),
])
async def test_create_names_each_bad_field(svc: Running, gate: Running, fields: dict[str, Any],
                                           field: str) -> None:
    segment = f"s-{uuid.uuid4().hex[:8]}"
    await c.define_segment(gate, segment)
    if fields.get("start_at") == "past":
        fields["start_at"] = c.ts(svc, -timedelta(minutes=5))
    if fields.get("start_at") == "too far":
        fields["start_at"] = c.ts(svc, timedelta(days=800))
    if fields.get("repeat_until") == "later":
        fields["repeat_until"] = c.ts(svc, timedelta(days=3))
    req = c.request(fields.pop("segment", segment), fields.pop("action", c.discount()), **fields)
    code, details = await c.refused(stub(svc).CreateCampaign(req, metadata=svc.metadata))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.split(":")[0] == field, details


async def test_create_is_idempotent_and_names_what_differs(svc: Running, gate: Running) -> None:
    segment = f"s-{uuid.uuid4().hex[:8]}"
    await c.define_segment(gate, segment)
    req = c.request(segment, c.discount(), start_at=c.ts(svc, timedelta(days=30)),
                    description="spring")
    made = await c.create(svc, req)
    assert (made.state, made.runs, made.segment) == ("scheduled", 0, segment)
    assert not made.HasField("current_run") and made.next_run_at == req.start_at
    again = await c.create(svc, req)
    assert again == made
    other = pb.CreateCampaignRequest()
    other.CopyFrom(req)
    other.name, other.members_per_minute = "Another name", 60
    code, details = await c.refused(stub(svc).CreateCampaign(other, metadata=svc.metadata))
    assert code == grpc.StatusCode.ALREADY_EXISTS, details
    assert "(name, members_per_minute differ)" in details


async def test_a_retry_after_the_start_returns_the_stored_campaign(svc: Running,
                                                                     gate: Running) -> None:
    """The first answer lost, the same request comes again once its start
    has passed: it is the stored campaign, not a start "in the past"."""
    segment = f"s-{uuid.uuid4().hex[:8]}"
    await c.define_segment(gate, segment)
    req = c.request(segment, c.discount(), start_at=c.ts(svc, timedelta(minutes=1)))
    made = await c.create(svc, req)
    svc.clock.advance(timedelta(minutes=3))
    again = await c.create(svc, req)
    assert again.campaign_id == made.campaign_id and again.created_at == made.created_at
    fresh = pb.CreateCampaignRequest()
    fresh.CopyFrom(req)
    fresh.campaign_id = f"{req.campaign_id}-2"
    code, details = await c.refused(stub(svc).CreateCampaign(fresh, metadata=svc.metadata))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("start_at"), details


async def test_unknown_ids_and_bad_reads_are_refused(svc: Running, gate: Running) -> None:
    api, md = stub(svc), svc.metadata
    nobody = "no-such-campaign"
    for call in (api.GetCampaign(pb.GetCampaignRequest(campaign_id=nobody), metadata=md),
                 *(getattr(api, m)(pb.CampaignStateRequest(campaign_id=nobody), metadata=md)
                   for m in c.CHANGE.values()),
                 api.DryRunCampaign(pb.DryRunCampaignRequest(campaign_id=nobody), metadata=md)):
        code, details = await c.refused(call)
        assert code == grpc.StatusCode.NOT_FOUND and nobody in details, details
    segment = f"s-{uuid.uuid4().hex[:8]}"
    await c.define_segment(gate, segment)
    made = await c.create(svc, c.request(segment, c.discount(),
                                         start_at=c.ts(svc, timedelta(days=30))))
    code, _ = await c.refused(api.GetCampaign(pb.GetCampaignRequest(
        campaign_id=made.campaign_id, run=1), metadata=md))
    assert code == grpc.StatusCode.NOT_FOUND
    for call, field in [
        (api.GetCampaign(pb.GetCampaignRequest(), metadata=md), "campaign_id"),
        (api.GetCampaign(pb.GetCampaignRequest(campaign_id="x", run=-1), metadata=md), "run"),
        (api.PauseCampaign(pb.CampaignStateRequest(), metadata=md), "campaign_id"),
        (api.ListCampaigns(pb.ListCampaignsRequest(state="sleeping"), metadata=md), "state"),
        (api.ListCampaigns(pb.ListCampaignsRequest(page_token="nope"), metadata=md),
         "page_token"),
        (api.ListCampaigns(pb.ListCampaignsRequest(page_size=-1), metadata=md), "page_size"),
        (api.DryRunCampaign(pb.DryRunCampaignRequest(), metadata=md), "campaign"),
        (api.DryRunCampaign(pb.DryRunCampaignRequest(campaign_id=made.campaign_id,
                                                     sample_size=101), metadata=md),
         "sample_size"),
        (api.DryRunCampaign(pb.DryRunCampaignRequest(draft=c.request(
            segment, c.discount(), members_per_minute=0)), metadata=md),
         "draft.members_per_minute"),
        (api.DryRunCampaign(pb.DryRunCampaignRequest(draft=c.request(
            "undefined-segment", c.discount())), metadata=md), "draft.segment")]:
        code, details = await c.refused(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.split(":")[0] == field, (
            field, details)


# --- sending ------------------------------------------------------------------------------


async def test_each_member_gets_the_action_once_or_its_suppression(svc: Running,
                                                                   gate: Running) -> None:
    segment = f"s-{uuid.uuid4().hex[:8]}"
    await c.define_segment(gate, segment)
    ids = await c.members(svc, gate, segment, 5, ("promotional_offers", True))
    sent_a, sent_b, no_consent, dnc, capped = ids
    withdrawn = [consent(no_consent, "promotional_offers", False, svc.clock.now()),
                 consent(dnc, "do_not_contact", True, svc.clock.now())]
    await produce(svc, *withdrawn)
    await c.processed(svc, *withdrawn)
    # Three promotional contacts this week already (the cap): the gate refuses a fourth.
    reply = await customers_pb2_grpc.CustomersStub(gate.channel).ReserveContacts(
        cpb.ReserveContactsRequest(contacts=[cpb.ContactRequest(
            contact_id=str(uuid.uuid4()), customer_id=capped, purpose="promotional_offers",
            service="test") for _ in range(3)]), metadata=gate.metadata)
    assert all(d.allowed for d in reply.decisions), reply
    made = await c.create(svc, c.request(segment, c.discount(percent=15)))
    cid = made.campaign_id
    done = await c.run_done(svc, cid)
    run = done.current_run
    assert done.state == "done" and done.runs == 1
    assert (run.targeted, run.sent, run.suppressed, run.skipped, run.pending) == (5, 2, 3, 0, 0)
    assert dict(run.suppressed_by_reason) == {"no_promotional_consent": 1,
                                              "do_not_contact": 1, "frequency_cap": 1}
    events = await c.actions(svc, cid, 5)
    by_customer = {e.data["customer_id"]: e for e in events}
    assert len(events) == 5 and sorted(by_customer) == ids
    for customer in (sent_a, sent_b):
        e = by_customer[customer]
        assert e.type == "loyalty.discount_issued" and e.data["percent"] == 15
        assert (e.data["rule_id"], e.data["campaign_run"]) == ("", 1)
        assert e.data["discount_id"] == str(campaign_runs.action_id(cid, 1,
                                                                    uuid.UUID(customer)))
    assert {customer: (e.type, e.data.get("reason")) for customer, e in by_customer.items()
            if customer not in (sent_a, sent_b)} == {
        no_consent: ("loyalty.action_suppressed", "no_promotional_consent"),
        dnc: ("loyalty.action_suppressed", "do_not_contact"),
        capped: ("loyalty.action_suppressed", "frequency_cap")}
    assert await c.outcomes(svc, cid) == {
        sent_a: ("sent", ""), sent_b: ("sent", ""),
        no_consent: ("suppressed", "no_promotional_consent"),
        dnc: ("suppressed", "do_not_contact"), capped: ("suppressed", "frequency_cap")}
    codes = await c.pool_of(svc).fetch(
        "SELECT customer_id, rule_id FROM discounts WHERE customer_id = ANY($1::uuid[])",
        [uuid.UUID(x) for x in ids])
    assert sorted((str(r["customer_id"]), r["rule_id"]) for r in codes) == sorted(
        [(sent_a, f"campaign:{cid}"), (sent_b, f"campaign:{cid}")])
    # Progress: started, then done with the run's counts.
    progress = await c.progress(svc, cid, 2)
    assert [(p["state"], p["targeted"], p["sent"], p["pending"]) for p in progress] == [
        ("running", 5, 0, 5), ("done", 5, 2, 0)]
    assert progress[1]["suppressed_by_reason"] == dict(run.suppressed_by_reason)
    # Counted once the pages committed.
    counted = {(o, r): metrics.CAMPAIGN_MEMBERS.labels("loyalty", cid, o, r)._value.get()
               for o, r in [("sent", ""), ("suppressed", "frequency_cap"),
                            ("suppressed", "do_not_contact")]}
    assert counted == {("sent", ""): 2, ("suppressed", "frequency_cap"): 1,
                       ("suppressed", "do_not_contact"): 1}


async def test_a_newsletter_issue_to_readers_who_stayed_on_the_list(svc: Running,
                                                                      gate: Running) -> None:
    segment = f"s-{uuid.uuid4().hex[:8]}"
    await c.define_segment(gate, segment)
    reader, left_list = await c.members(svc, gate, segment, 2, ("newsletter", True))
    [no_consent] = await c.members(svc, gate, segment, 1)
    await profile_when(svc, left_list, lambda p: len(p.enrolments) == 1, "enrolled")
    await stub(svc).Unsubscribe(pb.UnsubscribeRequest(customer_id=left_list, list="monthly"),
                                metadata=svc.metadata)
    made = await c.create(svc, c.request(segment, c.newsletter("monthly", "may-2031")))
    done = await c.run_done(svc, made.campaign_id)
    assert (done.current_run.sent, dict(done.current_run.suppressed_by_reason)) == (
        1, {"unsubscribed": 1, "no_newsletter_consent": 1})
    events = {e.data["customer_id"]: e for e in await c.actions(svc, made.campaign_id, 3)}
    issue = events[reader]
    assert issue.type == "loyalty.newsletter_issue_due"
    assert {k: issue.data[k] for k in ("list", "issue", "channel", "purpose", "campaign_run",
                                       "action_id")} == {
        "list": "monthly", "issue": "may-2031", "channel": "email", "purpose": "newsletter",
        "campaign_run": 1,
        "action_id": str(campaign_runs.action_id(made.campaign_id, 1, uuid.UUID(reader)))}
    assert [(events[x].type, events[x].data["reason"]) for x in (left_list, no_consent)] == [
        ("loyalty.action_suppressed", "unsubscribed"),
        ("loyalty.action_suppressed", "no_newsletter_consent")]


async def test_the_throttle_paces_pages_on_the_clock(svc: Running, gate: Running) -> None:
    segment = f"s-{uuid.uuid4().hex[:8]}"
    await c.define_segment(gate, segment)
    await c.members(svc, gate, segment, 5)
    t0 = svc.clock.now()
    # 120 a minute: pages of 2, one a second.
    made = await c.create(svc, c.request(segment, c.follow_up(), members_per_minute=120))
    cid, key = made.campaign_id, campaign_runs.send_key(made.campaign_id, 1)

    async def decided(n: int, due: Any) -> None:
        async def there() -> bool:
            done = [o for o, _ in (await c.outcomes(svc, cid)).values() if o is not None]
            return len(done) == n and await c.due_of(svc, campaign_runs.SEND, key) == due

        await wait_for(there, what=f"{n} members reached, the next page due at {due}")

    await decided(2, t0 + timedelta(seconds=1))
    svc.clock.advance(timedelta(milliseconds=999))  # not due yet
    assert len([o for o, _ in (await c.outcomes(svc, cid)).values() if o]) == 2
    svc.clock.advance(timedelta(milliseconds=1))
    await decided(4, t0 + timedelta(seconds=2))
    svc.clock.advance(timedelta(seconds=1))
    done = await c.run_done(svc, cid)
    assert (done.current_run.sent, await c.due_of(svc, campaign_runs.SEND, key)) == (5, None)

    # Two a minute: one a page, every 30 s; progress while sending every 30 s.
    slow = await c.create(svc, c.request(segment, c.follow_up(), members_per_minute=2))
    t1, key = svc.clock.now(), campaign_runs.send_key(slow.campaign_id, 1)
    cid = slow.campaign_id
    await decided(1, t1 + timedelta(seconds=30))
    for step in range(2, 5):
        svc.clock.advance(timedelta(seconds=30))
        await decided(step, t1 + timedelta(seconds=30 * step))
    svc.clock.advance(timedelta(seconds=30))
    await c.run_done(svc, cid)
    progress = await c.progress(svc, cid, 5)
    assert [(p["state"], p["sent"]) for p in progress] == [
        ("running", 0), ("running", 2), ("running", 3), ("running", 4), ("done", 5)]


async def test_a_recurring_campaign_runs_again_once_per_member(svc: Running,
                                                               gate: Running) -> None:
    segment = f"s-{uuid.uuid4().hex[:8]}"
    await c.define_segment(gate, segment)
    ids = await c.members(svc, gate, segment, 3)
    t0 = svc.clock.now()
    made = await c.create(svc, c.request(
        segment, c.follow_up(), repeat_every="1d",
        repeat_until=c.ts(svc, timedelta(days=1, hours=1))))
    cid = made.campaign_id
    first = await c.run_done(svc, cid)
    assert first.current_run.sent == 3
    waiting = await c.campaign_when(svc, cid, lambda x: x.state == "scheduled", "scheduled")
    assert waiting.next_run_at.ToDatetime().replace(tzinfo=t0.tzinfo) == t0 + timedelta(days=1)
    assert await c.due_of(svc, campaign_runs.START, cid) == t0 + timedelta(days=1)
    svc.clock.advance(timedelta(hours=23, minutes=59))
    assert (await c.get(svc, cid)).runs == 1
    svc.clock.advance(timedelta(minutes=1))
    second = await c.run_done(svc, cid, 2)
    assert (second.current_run.targeted, second.current_run.sent) == (3, 3)
    final = await c.campaign_when(svc, cid, lambda x: x.state == "done", "done")
    assert final.runs == 2 and not final.HasField("next_run_at")
    assert await c.due_of(svc, campaign_runs.START, cid) is None
    events = await c.actions(svc, cid, 6)
    assert len(events) == 6
    assert Counter((e.data["customer_id"], e.data["campaign_run"]) for e in events) == {
        (x, r): 1 for x in ids for r in (1, 2)}
    assert len({e.data["follow_up_id"] for e in events}) == 6
    assert (await c.get(svc, cid, 1)).current_run.scheduled_for == made.start_at


async def test_late_joiners_and_members_who_left(svc: Running, gate: Running) -> None:
    segment = f"s-{uuid.uuid4().hex[:8]}"
    await c.define_segment(gate, segment)
    first, second = await c.members(svc, gate, segment, 2)
    # One a second: the first member goes at once, the second a second later.
    joining = await c.create(svc, c.request(segment, c.follow_up(), members_per_minute=60,
                                            include_late_joiners=True))
    fixed = await c.create(svc, c.request(segment, c.follow_up(), members_per_minute=60))
    for made in (joining, fixed):
        await c.campaign_when(svc, made.campaign_id, lambda x: x.current_run.sent == 1,
                              "the first member reached")
    late = str(uuid.uuid4())
    assert gate.runner.pool is not None
    await mirror(gate.runner.pool, [registered(late, svc.clock.now())])
    changes = [c.left(second, segment, svc.clock.now() + timedelta(milliseconds=1)),
               c.entered(late, segment, svc.clock.now())]
    await produce(svc, *changes)
    await c.processed(svc, *changes)
    assert (await c.get(svc, joining.campaign_id)).current_run.targeted == 3
    assert (await c.get(svc, fixed.campaign_id)).current_run.targeted == 2
    # A page each a second later: the joining campaign has one more to go.
    svc.clock.advance(timedelta(seconds=1))
    await c.campaign_when(svc, joining.campaign_id, lambda x: x.current_run.pending == 1,
                          "its second page")
    await c.run_done(svc, fixed.campaign_id)
    svc.clock.advance(timedelta(seconds=1))
    a = await c.run_done(svc, joining.campaign_id)
    b = await c.run_done(svc, fixed.campaign_id)
    assert (a.current_run.sent, dict(a.current_run.skipped_by_reason)) == (
        2, {"left_segment": 1})
    assert (b.current_run.sent, dict(b.current_run.skipped_by_reason)) == (
        1, {"left_segment": 1})
    assert await c.outcomes(svc, joining.campaign_id) == {
        first: ("sent", ""), second: ("skipped", "left_segment"), late: ("sent", "")}
    assert await c.outcomes(svc, fixed.campaign_id) == {
        first: ("sent", ""), second: ("skipped", "left_segment")}
    reached = {e.data["customer_id"] for e in await c.actions(svc, joining.campaign_id, 2)}
    assert reached == {first, late}


# --- pause, resume, cancel ---------------------------------------------------------------------


async def test_pause_resume_and_cancel(svc: Running, gate: Running) -> None:
    segment = f"s-{uuid.uuid4().hex[:8]}"
    await c.define_segment(gate, segment)
    await c.members(svc, gate, segment, 3)
    made = await c.create(svc, c.request(segment, c.follow_up(), members_per_minute=60))
    cid, key = made.campaign_id, campaign_runs.send_key(made.campaign_id, 1)
    await c.campaign_when(svc, cid, lambda x: x.current_run.sent == 1, "a page")
    paused = await c.change(svc, "pause", cid)
    assert (paused.state, paused.current_run.state) == ("paused", "paused")
    assert await c.due_of(svc, campaign_runs.SEND, key) is None
    assert await c.change(svc, "pause", cid) == paused  # a retry changes nothing
    svc.clock.advance(timedelta(seconds=5))
    assert (await c.get(svc, cid)).current_run.sent == 1
    resumed = await c.change(svc, "resume", cid)
    assert (resumed.state, resumed.current_run.state) == ("running", "running")
    await c.campaign_when(svc, cid, lambda x: x.current_run.sent == 2, "a page after resume")
    assert await c.due_of(svc, campaign_runs.SEND, key) == svc.clock.now() + timedelta(seconds=1)
    cancelled = await c.change(svc, "cancel", cid)
    run = cancelled.current_run
    assert (cancelled.state, run.state, run.sent, run.pending) == ("cancelled", "cancelled", 2, 1)
    assert run.HasField("finished_at") and await c.due_of(svc, campaign_runs.SEND, key) is None
    assert await c.change(svc, "cancel", cid) == cancelled
    for command in ("pause", "resume"):
        code, details = await c.refused(c.change(svc, command, cid))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "cancelled" in details
    progress = await c.progress(svc, cid, 4)
    assert [(p["run"], p["state"]) for p in progress] == [
        (1, "running"), (1, "paused"), (1, "running"), (1, "cancelled")]

    # A campaign waiting for its start: paused, its start waits; resumed, due again.
    later = await c.create(svc, c.request(segment, c.follow_up(),
                                          start_at=c.ts(svc, timedelta(hours=2))))
    start = later.start_at.ToDatetime().replace(tzinfo=svc.clock.now().tzinfo)
    assert await c.due_of(svc, campaign_runs.START, later.campaign_id) == start
    assert (await c.change(svc, "pause", later.campaign_id)).state == "paused"
    assert await c.due_of(svc, campaign_runs.START, later.campaign_id) is None
    assert (await c.change(svc, "resume", later.campaign_id)).state == "scheduled"
    assert await c.due_of(svc, campaign_runs.START, later.campaign_id) == start
    assert (await c.change(svc, "cancel", later.campaign_id)).state == "cancelled"
    assert await c.due_of(svc, campaign_runs.START, later.campaign_id) is None
    assert [(p["run"], p["state"]) for p in await c.progress(svc, later.campaign_id, 3)] == [
        (1, "paused"), (1, "scheduled"), (1, "cancelled")]

    # Done is final too.
    quick = await c.create(svc, c.request(segment, c.follow_up()))
    await c.run_done(svc, quick.campaign_id)
    for command in c.CHANGE:
        code, details = await c.refused(c.change(svc, command, quick.campaign_id))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "is done" in details


async def test_the_state_gauges(svc: Running, gate: Running) -> None:
    segment = f"s-{uuid.uuid4().hex[:8]}"
    await c.define_segment(gate, segment)
    await c.members(svc, gate, segment, 3)
    made = await c.create(svc, c.request(segment, c.follow_up(), members_per_minute=1))
    cid = made.campaign_id
    await c.campaign_when(svc, cid, lambda x: x.current_run.sent == 1, "the first page")
    svc.clock.advance(timedelta(seconds=30))  # the next page is due a minute after the first
    gauges = await c.gauges(svc)
    assert gauges[("crm_campaign_pending", (cid,))] == 2
    assert gauges[("crm_campaign_stalled_seconds", (cid,))] == 30
    assert gauges[("crm_campaigns", ("running",))] >= 1
    await c.change(svc, "pause", cid)
    gauges = await c.gauges(svc)
    assert gauges[("crm_campaign_pending", (cid,))] == 2  # paused: still to reach
    assert ("crm_campaign_stalled_seconds", (cid,)) not in gauges  # but not stalled
    await c.change(svc, "cancel", cid)
    gauges = await c.gauges(svc)
    assert ("crm_campaign_pending", (cid,)) not in gauges
    assert gauges[("crm_campaigns", ("cancelled",))] >= 1


# --- reading -----------------------------------------------------------------------------------


async def test_a_dry_run_predicts_and_writes_nothing(svc: Running, gate: Running) -> None:
    segment = f"s-{uuid.uuid4().hex[:8]}"
    await c.define_segment(gate, segment)
    ids = await c.members(svc, gate, segment, 4, ("promotional_offers", True))
    stop = [consent(ids[3], "promotional_offers", False, svc.clock.now()),
            c.left(ids[2], segment, svc.clock.now() + timedelta(milliseconds=1))]
    await produce(svc, *stop)
    await c.processed(svc, *stop)
    made = await c.create(svc, c.request(segment, c.discount(),
                                         start_at=c.ts(svc, timedelta(days=30))))
    keys = [x.encode() for x in ids] + [f"campaign:{made.campaign_id}".encode()]
    counts = f"""SELECT (SELECT count(*) FROM campaigns), (SELECT count(*) FROM campaign_runs),
                        (SELECT count(*) FROM campaign_members),
                        (SELECT count(*) FROM discounts WHERE customer_id = ANY($1::uuid[])),
                        (SELECT count(*) FROM outbox WHERE message_key = ANY($2::bytea[])),
                        (SELECT count(*) FROM scheduled_work WHERE item_key LIKE
                                '{made.campaign_id}%'),
                        (SELECT count(*) FROM segment_members WHERE segment = '{segment}')"""
    pool = c.pool_of(svc)
    bootstrap = svc.runner.settings.kafka_bootstrap_servers
    assert bootstrap

    async def published() -> int:
        """Events of these keys on the topic."""
        return sum([len(await keyed_records(bootstrap, LOYALTY, k)) for k in keys])

    await wait_for(lambda: _none_unsent(pool, keys), what="the keys' events sent")
    before = await pool.fetchrow(counts, [uuid.UUID(x) for x in ids], keys)
    sent_before = await published()
    stored = await stub(svc).DryRunCampaign(pb.DryRunCampaignRequest(
        campaign_id=made.campaign_id, sample_size=2), metadata=svc.metadata)
    draft = await stub(svc).DryRunCampaign(pb.DryRunCampaignRequest(
        draft=c.request(segment, c.discount(purpose="service"), campaign_id="")),
        metadata=svc.metadata)
    after = await pool.fetchrow(counts, [uuid.UUID(x) for x in ids], keys)
    assert before is not None and after is not None and tuple(after) == tuple(before)
    assert await published() == sent_before
    assert (stored.targeted, stored.sent, stored.suppressed, stored.skipped) == (3, 2, 1, 0)
    assert dict(stored.suppressed_by_reason) == {"no_promotional_consent": 1}
    assert [(s.customer_id, s.outcome) for s in stored.sample] == [
        (ids[0], "sent"), (ids[1], "sent")]
    assert (draft.targeted, draft.sent, draft.suppressed) == (3, 3, 0)
    assert len(draft.sample) == 3
    assert (await c.get(svc, made.campaign_id)).runs == 0


async def test_list_newest_first_with_pages_and_a_state_filter(svc: Running,
                                                              gate: Running) -> None:
    segment = f"s-{uuid.uuid4().hex[:8]}"
    await c.define_segment(gate, segment)
    made = []
    for _ in range(3):
        made.append((await c.create(svc, c.request(
            segment, c.discount(), start_at=c.ts(svc, timedelta(days=9))))).campaign_id)
        svc.clock.advance(timedelta(milliseconds=1))
    await c.change(svc, "cancel", made[1])
    seen: list[str] = []
    token = ""
    while True:
        page = await stub(svc).ListCampaigns(pb.ListCampaignsRequest(
            page_size=2, page_token=token), metadata=svc.metadata)
        assert len(page.campaigns) <= 2
        seen += [x.campaign_id for x in page.campaigns]
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen))
    assert set(seen) == {r["campaign_id"] for r in await c.pool_of(svc).fetch(
        "SELECT campaign_id FROM campaigns")}
    assert [x for x in seen if x in made] == made[::-1]
    cancelled = await stub(svc).ListCampaigns(pb.ListCampaignsRequest(
        state="cancelled", page_size=500), metadata=svc.metadata)
    assert made[1] in {x.campaign_id for x in cancelled.campaigns}
    assert {x.state for x in cancelled.campaigns} == {"cancelled"}


# --- end to end ------------------------------------------------------------------------------


async def test_a_segment_defined_in_customers_reaches_a_campaigns_actions(
        svc: Running, gate: Running) -> None:
    customers = customers_pb2_grpc.CustomersStub(gate.channel)
    band = f"band-{uuid.uuid4().hex[:8]}"
    reply = await customers.RegisterCustomers(cpb.RegisterCustomersRequest(customers=[
        cpb.RegisterCustomerRequest(emails=[f"{i}-{band}@example.com"],
                                    profile=cpb.Profile(socio_economic_band=band))
        for i in range(3)]), metadata=gate.metadata)
    ids = sorted(r.customer.customer_id for r in reply.results)
    for cid in ids[:2]:
        await customers.SetConsent(cpb.SetConsentRequest(
            customer_id=cid, purpose="promotional_offers", granted=True, source="web"),
            metadata=gate.metadata)
    segment = f"seg-{band}"
    await customers.DefineSegment(cpb.DefineSegmentRequest(name=segment, filter_json=json.dumps(
        {"field": "profile.socio_economic_band", "op": "=", "value": band})),
        metadata=gate.metadata)
    svc.clock.advance(customer_memberships.SETTLE)  # the segment's pass starts
    await c.members_known(svc, segment, 3)

    async def consents_known() -> bool:
        return bool(await c.pool_of(svc).fetchval(
            "SELECT count(*) FROM customer_view WHERE customer_id = ANY($1::uuid[]) AND "
            "promotional_consent", [uuid.UUID(x) for x in ids]) == 2)

    await wait_for(consents_known, what="loyalty knows the consents")
    made = await c.create(svc, c.request(segment, c.discount(percent=20)))
    done = await c.run_done(svc, made.campaign_id)
    assert (done.current_run.sent, dict(done.current_run.suppressed_by_reason)) == (
        2, {"no_promotional_consent": 1})
    events = await c.actions(svc, made.campaign_id, 3)
    assert sorted((e.data["customer_id"], e.type) for e in events) == [
        (ids[0], "loyalty.discount_issued"), (ids[1], "loyalty.discount_issued"),
        (ids[2], "loyalty.action_suppressed")]


async def _none_unsent(pool: asyncpg.Pool, keys: list[bytes]) -> bool:
    return not await pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM outbox WHERE message_key = ANY($1::bytea[]) "
        "AND sent_at IS NULL)", keys)
