"""Loyalty's view of segment membership, from customer.segment_entered /
customer.segment_left as the customers service publishes them (produced
here to the topic): the latest change per customer and segment wins, a
fresh change runs the rules it triggers once, a merged id's changes stay
its own, and erasure forgets the memberships (the export lists them
before)."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

from crm.loyalty.v1 import loyalty_pb2 as pb
from tests.support.campaigns import entered, left, membership, pool_of, processed
from tests.support.loyalty import (
    erased,
    loyalty_events,
    merged,
    new_id,
    of_type,
    produce,
    profile_when,
    registered,
    stub,
)
from tests.support.services import Running


async def _segments_of(svc: Running, customer_id: str) -> list[str]:
    """The ``segments`` of the customer's view."""
    row = await pool_of(svc).fetchval(
        "SELECT segments FROM customer_view WHERE customer_id = $1", uuid.UUID(customer_id))
    return sorted(row or [])


async def test_the_latest_change_per_customer_and_segment_wins(svc: Running) -> None:
    tag = uuid.uuid4().hex[:8]
    seg, other = f"vip-{tag}", f"other-{tag}"
    cid, t0 = new_id(), svc.clock.now()
    first = entered(cid, seg, t0 + timedelta(seconds=2))
    await produce(svc, first)
    await processed(svc, first)
    assert await membership(svc, seg, cid) == (True, t0 + timedelta(seconds=2))
    assert await _segments_of(svc, cid) == [seg]
    # Older and equally old changes (a late relay, a replay) change nothing.
    stale = [left(cid, seg, t0 + timedelta(seconds=1)), left(cid, seg, t0 + timedelta(seconds=2)),
             entered(cid, other, t0)]
    await produce(svc, *stale)
    await processed(svc, *stale)
    assert await membership(svc, seg, cid) == (True, t0 + timedelta(seconds=2))
    assert await membership(svc, other, cid) == (True, t0)
    assert await _segments_of(svc, cid) == sorted([seg, other])
    # A newer one is kept.
    newer = left(cid, seg, t0 + timedelta(seconds=3))
    await produce(svc, newer)
    await processed(svc, newer)
    assert await membership(svc, seg, cid) == (False, t0 + timedelta(seconds=3))
    assert await _segments_of(svc, cid) == [other]
    # A left for a segment loyalty never heard of is kept too (not a member).
    unheard = left(cid, f"never-{tag}", t0)
    await produce(svc, unheard)
    await processed(svc, unheard)
    assert await membership(svc, f"never-{tag}", cid) == (False, t0)


async def test_a_fresh_change_runs_the_rules_once(svc: Running) -> None:
    tag = uuid.uuid4().hex[:8]
    seg = f"gold-{tag}"
    rules = [
        {"id": f"enter-{tag}", "trigger": "customer.segment_entered", "when": {"segment": seg},
         "actions": [{"type": "follow_up", "channel": "phone", "template": "welcome-gold",
                      "reason": "Entered gold"}]},
        {"id": f"leave-{tag}", "trigger": "customer.segment_left",
         "when": {"segment": seg, "cause": "purchase"},
         "actions": [{"type": "follow_up", "channel": "phone", "template": "goodbye-gold",
                      "reason": "Left gold"}]}]
    for rule in rules:
        await stub(svc).UpsertRule(pb.UpsertRuleRequest(definition=json.dumps(rule)),
                                   metadata=svc.metadata)
    cid, t0 = new_id(), svc.clock.now()
    # Entered; the same change again (a replay under a new event id), an
    # older one; left with another cause (no rule), entered again, left.
    await produce(svc, entered(cid, seg, t0), entered(cid, seg, t0),
                  entered(cid, seg, t0 - timedelta(minutes=1)),
                  left(cid, seg, t0 + timedelta(seconds=1), cause="profile"),
                  entered(cid, seg, t0 + timedelta(seconds=2)),
                  left(cid, seg, t0 + timedelta(seconds=3), cause="purchase"))
    events = await loyalty_events(svc, cid, 3, settle=1.0)
    scheduled = of_type(events, "loyalty.followup_scheduled")
    assert sorted((e["rule_id"], e["template"]) for e in scheduled) == [
        (f"enter-{tag}", "welcome-gold"), (f"enter-{tag}", "welcome-gold"),
        (f"leave-{tag}", "goodbye-gold")]
    assert await membership(svc, seg, cid) == (False, t0 + timedelta(seconds=3))

    # A merged id's changes are kept under it and run no rule: the survivor
    # enters on its own (the merged id leaves with cause merge).
    survivor, alias = new_id(), new_id()
    now = svc.clock.now()
    before = [registered(survivor, now), registered(alias, now), entered(alias, seg, now)]
    await produce(svc, *before)
    await processed(svc, *before)
    await produce(svc, merged(survivor, alias, now))
    await profile_when(svc, alias, lambda p: p.customer_id == survivor, "the merge applied")
    late = [entered(alias, seg, now + timedelta(seconds=1)),
            left(alias, seg, now + timedelta(seconds=2), cause="purchase")]
    await produce(svc, *late)
    await processed(svc, *late)
    assert await membership(svc, seg, alias) == (False, now + timedelta(seconds=2))
    assert await membership(svc, seg, survivor) is None
    mine = [e for e in of_type(await loyalty_events(svc, survivor, 0, settle=0.5),
                               "loyalty.followup_scheduled") if e["rule_id"].endswith(tag)]
    alias_own = [e for e in of_type(await loyalty_events(svc, alias, 0, settle=0),
                                    "loyalty.followup_scheduled") if e["rule_id"].endswith(tag)]
    # The alias entered once before the merge (its rule ran then); nothing since.
    assert mine == [] and [e["template"] for e in alias_own] == ["welcome-gold"]


async def test_erasure_forgets_memberships_and_the_export_lists_them(svc: Running) -> None:
    tag = uuid.uuid4().hex[:8]
    cid, t0 = new_id(), svc.clock.now()
    known = [entered(cid, f"a-{tag}", t0), entered(cid, f"b-{tag}", t0),
             left(cid, f"b-{tag}", t0 + timedelta(seconds=1))]
    await produce(svc, *known)
    await processed(svc, *known)
    part = json.loads((await stub(svc).ExportCustomerData(
        pb.ExportCustomerDataRequest(customer_id=cid), metadata=svc.metadata)).json)
    assert [(m["segment"], m["member"]) for m in part["segment_memberships"]] == [
        (f"a-{tag}", True), (f"b-{tag}", False)]
    assert part["view"]["segments"] == [f"a-{tag}"]
    await produce(svc, erased(cid, t0 + timedelta(seconds=2)))
    await profile_when(svc, cid, lambda p: p.erased, "erased")
    assert await pool_of(svc).fetchval(
        "SELECT count(*) FROM segment_members WHERE customer_id = $1", uuid.UUID(cid)) == 0
    # Nothing more is kept of an erased customer.
    later = entered(cid, f"a-{tag}", t0 + timedelta(seconds=3))
    await produce(svc, later)
    await processed(svc, later)
    assert await membership(svc, f"a-{tag}", cid) is None
    part = json.loads((await stub(svc).ExportCustomerData(
        pb.ExportCustomerDataRequest(customer_id=cid), metadata=svc.metadata)).json)
    assert part["segment_memberships"] == [] and part["view"]["segments"] == []
