"""gRPC methods of campaigns (part of the Loyalty servicer, mixed into
:class:`services.loyalty.api.LoyaltyServicer`): CreateCampaign, GetCampaign,
ListCampaigns, PauseCampaign, ResumeCampaign, CancelCampaign and
DryRunCampaign. Protobuf in and out only: :mod:`campaigns` validates,
:mod:`campaign_runs` does the work.

A segment a request names must be one the customers service defines: it is
asked (:mod:`directory`) before the campaign is stored, outside any
transaction; unreachable, the call fails as UNAVAILABLE.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Self, TypeVar

import asyncpg
import grpc

from crm.loyalty.v1 import loyalty_pb2 as pb
from crm_runtime import uow
from crm_runtime.convert import page_size, read_time_page_token, time_page_token
from crm_runtime.convert import timestamp as ts
from crm_runtime.db import Conn
from crm_runtime.errors import InvalidArgument, NotFound
from services.loyalty import campaign_runs, campaign_store, campaigns
from services.loyalty.campaigns import Action, State
from services.loyalty.directory import Segments
from services.loyalty.unit import Context

log = logging.getLogger(__name__)

T = TypeVar("T")

#: A dry run's sample: by default, and at most.
DEFAULT_SAMPLE, MAX_SAMPLE = 20, 100


def run_to_pb(r: Any) -> pb.CampaignRun:
    return pb.CampaignRun(
        run=r["run"], state=r["state"], scheduled_for=ts(r["scheduled_for"]),
        started_at=ts(r["started_at"]), finished_at=ts(r["finished_at"]),
        targeted=r["targeted"], sent=r["sent"], suppressed=r["suppressed"],
        skipped=r["skipped"], pending=campaign_runs.pending(r),
        suppressed_by_reason=dict(r["suppressed_by_reason"]),
        skipped_by_reason=dict(r["skipped_by_reason"]))


def campaign_to_pb(c: Any, r: Any) -> pb.Campaign:
    """A campaign and its run ``r`` (None before its first)."""
    return pb.Campaign(
        campaign_id=c["campaign_id"], name=c["name"], description=c["description"],
        segment=c["segment"], action=Action.from_json(dict(c["action"])).to_pb(),
        start_at=ts(c["start_at"]), members_per_minute=c["members_per_minute"],
        repeat_every=c["repeat_every"], repeat_until=ts(c["repeat_until"]),
        include_late_joiners=c["include_late_joiners"], state=c["state"],
        next_run_at=ts(c["next_run_at"]), current_run=run_to_pb(r) if r is not None else None,
        runs=c["runs"], created_at=ts(c["created_at"]), updated_at=ts(c["updated_at"]),
        created_by=c["created_by"])


def _campaign_id(value: str) -> str:
    value = value.strip()
    if not value:
        raise InvalidArgument("campaign_id", "required")
    return value


class CampaignApi:
    """The campaign methods; the servicer provides the pool and context,
    the service's wiring the customers service's segments."""

    _pool: asyncpg.Pool
    _ctx: Context
    #: Set by the service's wiring (app.py); None: every segment check
    #: fails as UNAVAILABLE.
    segments: Segments | None = None

    def use_segments(self, segments: Segments) -> Self:
        """Ask ``segments`` (the customers service's) whether a segment exists."""
        self.segments = segments
        return self

    async def _snapshot(self, work: Callable[[Conn], Awaitable[T]]) -> T:
        """Reads from one snapshot (a campaign and its run agree)."""
        return await uow.snapshot(self._pool, work)

    async def _check_segment(self, name: str, field: str) -> None:
        if self.segments is None:
            raise ConnectionError("no customers service to ask about segments")
        if not await self.segments.exists(name):
            raise InvalidArgument(field, f"no such segment {name[:100]!r} (the customers "
                                         "service's DefineSegment defines segments)")

    async def CreateCampaign(self, request: pb.CreateCampaignRequest,
                             context: grpc.aio.ServicerContext) -> pb.Campaign:
        spec = campaigns.spec_of(request, self._ctx.clock.now(), new=False)
        found = await self._snapshot(lambda c: campaign_runs.stored(c, spec))
        if found is None:
            spec = campaigns.spec_of(request, self._ctx.clock.now())  # not in the past
            await self._check_segment(spec.segment, "segment")
            await uow.run(self._pool, lambda c: campaign_runs.create(c, self._ctx, spec))
            log.info("campaign %s created by %s: %s to segment %s", spec.campaign_id,
                     spec.created_by, spec.action.kind, spec.segment)
        c, r = await self._snapshot(lambda conn: campaign_runs.get(conn, spec.campaign_id))
        return campaign_to_pb(c, r)

    async def GetCampaign(self, request: pb.GetCampaignRequest,
                          context: grpc.aio.ServicerContext) -> pb.Campaign:
        campaign_id = _campaign_id(request.campaign_id)
        if request.run < 0:
            raise InvalidArgument("run", "0 (the latest) or a run number")
        c, r = await self._snapshot(lambda conn: campaign_runs.get(conn, campaign_id,
                                                                  request.run))
        return campaign_to_pb(c, r)

    async def ListCampaigns(self, request: pb.ListCampaignsRequest,
                            context: grpc.aio.ServicerContext) -> pb.ListCampaignsResponse:
        size = page_size(request.page_size)
        state = request.state.strip() or None
        if state is not None and state not in set(State):
            raise InvalidArgument("state", f"{state[:40]!r} is not one of "
                                           f"{[s.value for s in State]}")
        after = read_time_page_token(request.page_token) if request.page_token else None

        async def page(conn: Conn) -> tuple[list[Any], dict[tuple[str, int], Any]]:
            rows = await campaign_store.list_campaigns(conn, state, after, size)
            runs = await campaign_store.runs_of(
                conn, [(c["campaign_id"], c["runs"]) for c in rows if c["runs"]])
            return rows, runs

        rows, runs = await self._snapshot(page)
        token = (time_page_token(rows[-1]["created_at"], rows[-1]["uid"])
                 if len(rows) == size else "")
        return pb.ListCampaignsResponse(
            campaigns=[campaign_to_pb(c, runs.get((c["campaign_id"], c["runs"]))) for c in rows],
            next_page_token=token)

    async def _change(self, request: pb.CampaignStateRequest,
                      command: campaigns.Command) -> pb.Campaign:
        campaign_id = _campaign_id(request.campaign_id)
        c, r = await uow.run(self._pool, lambda conn: campaign_runs.change_state(
            conn, self._ctx, campaign_id, command))
        log.info("campaign %s: %s by %s (%s), now %s", campaign_id, command,
                 request.changed_by.strip() or "api", request.note.strip(), c["state"])
        return campaign_to_pb(c, r)

    async def PauseCampaign(self, request: pb.CampaignStateRequest,
                            context: grpc.aio.ServicerContext) -> pb.Campaign:
        return await self._change(request, "pause")

    async def ResumeCampaign(self, request: pb.CampaignStateRequest,
                             context: grpc.aio.ServicerContext) -> pb.Campaign:
        return await self._change(request, "resume")

    async def CancelCampaign(self, request: pb.CampaignStateRequest,
                             context: grpc.aio.ServicerContext) -> pb.Campaign:
        return await self._change(request, "cancel")

    async def DryRunCampaign(self, request: pb.DryRunCampaignRequest,
                             context: grpc.aio.ServicerContext) -> pb.DryRunCampaignResponse:
        sample = request.sample_size or DEFAULT_SAMPLE
        if not 1 <= sample <= MAX_SAMPLE:
            raise InvalidArgument("sample_size", f"{request.sample_size} is not 1 to "
                                                 f"{MAX_SAMPLE} (0: {DEFAULT_SAMPLE})")
        which = request.WhichOneof("campaign")
        if which is None:
            raise InvalidArgument("campaign", "give campaign_id or draft")
        if which == "draft":
            spec = campaigns.spec_of(request.draft, self._ctx.clock.now(), where="draft.",
                                     draft=True)
            await self._check_segment(spec.segment, "draft.segment")
            segment, action = spec.segment, spec.action
        else:
            campaign_id = _campaign_id(request.campaign_id)
            row = await self._snapshot(lambda c: campaign_store.get_campaign(c, campaign_id))
            if row is None:
                raise NotFound("campaign", campaign_id)
            segment, action = row["segment"], Action.from_json(dict(row["action"]))
        result = await self._snapshot(lambda c: campaign_runs.dry_run(c, segment, action,
                                                                      sample))
        t = result.tally
        return pb.DryRunCampaignResponse(
            targeted=result.targeted, sent=t.sent, suppressed=t.suppressed, skipped=t.skipped,
            suppressed_by_reason=t.suppressed_by_reason, skipped_by_reason=t.skipped_by_reason,
            sample=[pb.CampaignSample(customer_id=str(cid), outcome=v.outcome.value,
                                      reason=v.reason) for cid, v in result.sample])
