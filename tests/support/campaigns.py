"""Helpers for tests of loyalty's segment membership and campaigns: the
segment events the customers service publishes, members made for a
segment, a campaign's request, its reads and state changes, what a campaign
published on ``crm.loyalty.v1``, and its gauges."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from crm.customers.v1 import customers_pb2 as cpb
from crm.customers.v1 import customers_pb2_grpc
from crm.loyalty.v1 import loyalty_pb2 as pb
from crm_contracts.customers import SegmentEntered, SegmentLeft
from crm_contracts.topics import LOYALTY
from crm_runtime import metrics as runtime_metrics
from crm_runtime.events import Envelope
from services.loyalty import metrics
from tests.support.gate import mirror
from tests.support.kafka import read_topic, wait_for
from tests.support.loyalty import consent, envelope, produce, registered, stub
from tests.support.services import Running

#: The event types of a campaign's actions (one per member and run).
ACTION_TYPES = ("loyalty.discount_issued", "loyalty.followup_scheduled",
                "loyalty.newsletter_issue_due", "loyalty.action_suppressed")


def entered(customer_id: str, segment: str, at: datetime, cause: str = "profile") -> Envelope:
    return envelope(SegmentEntered(customer_id=customer_id, segment=segment, changed_at=at,
                                   cause=cause), customer_id, at)


def left(customer_id: str, segment: str, at: datetime, cause: str = "profile") -> Envelope:
    return envelope(SegmentLeft(customer_id=customer_id, segment=segment, changed_at=at,
                                cause=cause), customer_id, at)


def pool_of(svc: Running) -> asyncpg.Pool:
    pool = svc.runner.pool
    assert pool is not None
    return pool


async def membership(svc: Running, segment: str, customer_id: str) -> tuple[bool, datetime] | None:
    """(member, changed_at) loyalty holds, None when it holds nothing."""
    row = await pool_of(svc).fetchrow(
        "SELECT member, changed_at FROM segment_members WHERE segment = $1 AND customer_id = $2",
        segment, uuid.UUID(customer_id))
    return None if row is None else (row["member"], row["changed_at"])


async def members_known(svc: Running, segment: str, expect: int) -> None:
    """Wait until loyalty holds ``expect`` members of ``segment``."""
    async def there() -> bool:
        n = await pool_of(svc).fetchval(
            "SELECT count(*) FROM segment_members WHERE segment = $1 AND member", segment)
        return bool(n == expect)

    await wait_for(there, what=f"{expect} members of {segment} known to loyalty")


async def processed(svc: Running, *envelopes: Envelope) -> None:
    """Wait until loyalty's consumer applied these events (its inbox holds
    them), whatever they changed."""
    event_ids = [e.id for e in envelopes]

    async def done() -> bool:
        n = await pool_of(svc).fetchval(
            "SELECT count(*) FROM inbox WHERE consumer_group = 'crm-loyalty' "
            "AND event_id = ANY($1::text[])", event_ids)
        return bool(n == len(event_ids))

    await wait_for(done, what=f"{len(event_ids)} events applied by loyalty")


def discount(percent: int = 10, purpose: str = "promotional") -> pb.CampaignAction:
    return pb.CampaignAction(discount=pb.CampaignDiscount(percent=percent, purpose=purpose))


def follow_up(template: str = "check-in", purpose: str = "service") -> pb.CampaignAction:
    return pb.CampaignAction(follow_up=pb.CampaignFollowUp(
        channel="phone", template=template, reason="a campaign's call", purpose=purpose))


def newsletter(list_name: str = "monthly", issue: str = "spring") -> pb.CampaignAction:
    return pb.CampaignAction(newsletter_issue=pb.NewsletterIssueAction(list=list_name,
                                                                       issue=issue))


def request(segment: str, action: pb.CampaignAction, **fields: Any
            ) -> pb.CreateCampaignRequest:
    """A create request for ``segment`` (a fresh campaign id unless given)."""
    fields.setdefault("campaign_id", f"c-{uuid.uuid4().hex[:12]}")
    fields.setdefault("name", "A test campaign")
    return pb.CreateCampaignRequest(segment=segment, action=action, **fields)


async def create(svc: Running, req: pb.CreateCampaignRequest) -> pb.Campaign:
    reply: pb.Campaign = await stub(svc).CreateCampaign(req, metadata=svc.metadata)
    return reply


async def get(svc: Running, campaign_id: str, run: int = 0) -> pb.Campaign:
    reply: pb.Campaign = await stub(svc).GetCampaign(
        pb.GetCampaignRequest(campaign_id=campaign_id, run=run), metadata=svc.metadata)
    return reply


async def campaign_when(svc: Running, campaign_id: str, check: Any,
                        what: str = "campaign condition") -> pb.Campaign:
    """The campaign once ``check(campaign)`` holds."""
    latest: list[pb.Campaign] = []

    async def holds() -> bool:
        latest[:] = [await get(svc, campaign_id)]
        return bool(check(latest[0]))

    await wait_for(holds, timeout=30, what=f"{campaign_id}: {what}")
    return latest[0]


async def run_done(svc: Running, campaign_id: str, run: int = 1) -> pb.Campaign:
    """The campaign with run ``run`` as its run, once that run is done."""
    latest: list[pb.Campaign] = []

    async def done() -> bool:
        try:
            latest[:] = [await get(svc, campaign_id, run)]
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return latest[0].current_run.state == "done"

    await wait_for(done, timeout=30, what=f"{campaign_id}: run {run} done")
    return latest[0]


async def refused(call: Any) -> tuple[grpc.StatusCode, str]:
    """(status code, details) of a call that must fail."""
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details() or ""
    raise AssertionError("the call succeeded")


async def due_of(svc: Running, kind: str, key: str) -> datetime | None:
    """When the scheduled item (kind, key) is due; None when there is none."""
    due: datetime | None = await pool_of(svc).fetchval(
        "SELECT due_at FROM scheduled_work WHERE kind = $1 AND item_key = $2", kind, key)
    return due


async def outcomes(svc: Running, campaign_id: str, run: int = 1
                   ) -> dict[str, tuple[str | None, str]]:
    """Each member of a run: (outcome, reason); outcome None while pending."""
    rows = await pool_of(svc).fetch(
        "SELECT customer_id, outcome, reason FROM campaign_members WHERE campaign_id = $1 "
        "AND run = $2", campaign_id, run)
    return {str(r["customer_id"]): (r["outcome"], r["reason"]) for r in rows}


@dataclass(frozen=True)
class Published:
    type: str
    id: str
    key: str
    data: dict[str, Any]


async def published(bootstrap: str, keys: set[str] | None = None, *,
                    settle: float = 0.3) -> list[Published]:
    """The records on crm.loyalty.v1 (of these keys), read from the start
    until none came for ``settle`` seconds (callers wait for what they
    expect with a deadline, then read once more to see duplicates)."""
    found: list[Published] = []
    for r in await read_topic(bootstrap, LOYALTY, expect=0, timeout=60, settle=settle):
        key = (r.key or b"").decode()
        if keys is None or key in keys:
            headers = dict(r.headers)
            found.append(Published(headers["ce_type"].decode(), headers["ce_id"].decode(),
                                   key, json.loads(r.value)))
    return found


def actions_of(events: list[Published], campaign_id: str, run: int | None = None
               ) -> list[Published]:
    """A campaign's action events (each published record once: a record the
    relay published again keeps its event id)."""
    seen: dict[str, Published] = {}
    for e in events:
        if (e.type in ACTION_TYPES and e.data.get("campaign_id") == campaign_id
                and (run is None or e.data.get("campaign_run") == run)):
            seen.setdefault(e.id, e)
    return list(seen.values())


def progress_of(events: list[Published], campaign_id: str) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.type == "loyalty.campaign_progress" and e.key == f"campaign:{campaign_id}":
            seen.setdefault(e.id, e.data)
    return list(seen.values())


# --- the campaign tests' steps ----------------------------------------------------------

CHANGE = {"pause": "PauseCampaign", "resume": "ResumeCampaign", "cancel": "CancelCampaign"}


def ts(svc: Running, later: timedelta = timedelta(0)) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(svc.clock.now() + later)
    return t


def bootstrap(svc: Running) -> str:
    servers = svc.runner.settings.kafka_bootstrap_servers
    assert servers
    return servers


async def members(svc: Running, gate: Running, segment: str, n: int,
                  *consents: tuple[str, bool]) -> list[str]:
    """``n`` customers (sorted by id: the order pages take them) known to the
    gate, with these consents, entered into ``segment`` as loyalty knows it."""
    ids = sorted(str(uuid.uuid4()) for _ in range(n))
    now = svc.clock.now()
    assert gate.runner.pool is not None
    await mirror(gate.runner.pool, [registered(cid, now) for cid in ids])
    events = [consent(cid, purpose, granted, now) for cid in ids for purpose, granted in consents]
    events += [entered(cid, segment, now) for cid in ids]
    await produce(svc, *events)
    await processed(svc, *events)
    return ids


async def define_segment(gate: Running, name: str) -> None:
    """A segment the customers service defines (its members come from the
    test's own segment events)."""
    await customers_pb2_grpc.CustomersStub(gate.channel).DefineSegment(cpb.DefineSegmentRequest(
        name=name, filter_json=json.dumps({"field": "profile.socio_economic_band", "op": "=",
                                           "value": f"none-{name}"})), metadata=gate.metadata)


async def actions(svc: Running, campaign_id: str, expect: int, run: int | None = None
                  ) -> list[Published]:
    """The campaign's action events on crm.loyalty.v1, once ``expect`` are there."""
    found: list[Published] = []

    async def there() -> bool:
        found[:] = actions_of(await published(bootstrap(svc)), campaign_id, run)
        return len(found) >= expect

    await wait_for(there, what=f"{expect} actions of {campaign_id}")
    return found


async def progress(svc: Running, campaign_id: str, expect: int) -> list[dict[str, Any]]:
    """The campaign's progress events, once ``expect`` are there."""
    found: list[dict[str, Any]] = []

    async def there() -> bool:
        found[:] = progress_of(await published(
            bootstrap(svc), {f"campaign:{campaign_id}"}), campaign_id)
        return len(found) >= expect

    await wait_for(there, what=f"{expect} progress events of {campaign_id}")
    return found


async def gauges(svc: Running) -> dict[tuple[str, tuple[str, ...]], float]:
    """The campaign gauges, refreshed now (as the runner does every few
    seconds), by (name, labels besides the service)."""
    async with pool_of(svc).acquire() as conn:
        await runtime_metrics.DB_GAUGES.refresh("campaign-test", conn, metrics.GAUGES,
                                                svc.clock.now())
    return {(family.name, tuple(v for k, v in sample.labels.items() if k != "service")):
            sample.value for family in runtime_metrics.DB_GAUGES.collect()
            if family.name.startswith("crm_campaign") for sample in family.samples
            if sample.labels["service"] == "campaign-test"}


async def change(svc: Running, command: str, campaign_id: str) -> pb.Campaign:
    """Pause, resume or cancel a campaign."""
    reply: pb.Campaign = await getattr(stub(svc), CHANGE[command])(pb.CampaignStateRequest(
        campaign_id=campaign_id, changed_by="ops", note="test"), metadata=svc.metadata)
    return reply
