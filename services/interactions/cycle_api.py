"""gRPC methods of service cycles (part of the Interactions servicer):
defining a cycle's versions and reading them."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import asyncpg
import grpc
from google.protobuf.unknown_fields import UnknownFieldSet

from crm.interactions.v1 import interactions_pb2 as pb
from crm_runtime import uow
from crm_runtime.convert import page_size
from crm_runtime.convert import timestamp as ts
from crm_runtime.errors import InvalidArgument
from services.interactions import commands, cycles
from services.interactions.cycles import Defined

#: Fields of MomentOfTruth before requirements were messages (string
#: requirements, plan strings, a typed priority, generated questions).
_RETIRED_FIELDS = {2: "requirements", 3: "action_plans", 4: "priority", 5: "survey_questions"}


def moments_of(request: pb.ServiceCycle) -> list[dict[str, Any]]:
    """A request's moments as :func:`matrix.define` takes them. A client that
    still sends the retired fields is told so, rather than have its
    requirements silently dropped."""
    for i, m in enumerate(request.moments):
        unknown = UnknownFieldSet(m)
        for number in (unknown[k].field_number for k in range(len(unknown))):
            if number in _RETIRED_FIELDS:
                raise InvalidArgument(
                    f"moments[{i}].{_RETIRED_FIELDS[number]}",
                    f"field {number} is no longer read: requirements are Requirement "
                    "messages (field 8), action plans are CreateActionPlan's, priority is "
                    "computed by the scorecard")
    return [{"touchpoint": m.touchpoint, "name": m.name, "weight": m.weight,
             "requirements": [{"requirement_id": r.requirement_id, "text": r.text,
                               "channels": list(r.channels), "scale": r.scale,
                               "weight": r.weight, "question": r.question}
                              for r in m.requirements]}
            for m in request.moments]


def cycle_to_pb(d: Defined) -> pb.ServiceCycle:
    c = d.cycle
    return pb.ServiceCycle(
        name=c.name, version=c.version, defined_at=ts(d.defined_at),
        survey_every_days=d.survey_every_days, survey_segment=d.survey_segment,
        survey_channel=d.survey_channel,
        moments=[pb.MomentOfTruth(
            touchpoint=m.touchpoint, name=m.name, weight=m.weight,
            requirements=[pb.Requirement(
                requirement_id=r.requirement_id, text=r.text, channels=list(r.channels),
                scale=r.scale, weight=r.weight, question=r.question, question_id=r.question_id)
                for r in m.requirements]) for m in c.moments])


#: What a page token of ListServiceCycles starts with (then the last name).
_TOKEN = "cycle:"


def _encode_token(name: str) -> str:
    return base64.urlsafe_b64encode((_TOKEN + name).encode()).decode()


def _decode_token(token: str) -> str:
    if not token:
        return ""
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, binascii.Error):
        text = ""
    if not text.startswith(_TOKEN) or "\x00" in text or len(text) > len(_TOKEN) + 200:
        raise InvalidArgument("page_token", "is not a token this service returned")
    return text[len(_TOKEN):]


class CycleApi:
    """DefineServiceCycle, GetServiceCycle, ListServiceCycles and
    ListServiceCycleVersions; mixed into the servicer of :mod:`api`."""

    _pool: asyncpg.Pool
    _ctx: commands.Context

    async def DefineServiceCycle(self, request: pb.ServiceCycle,
                                 context: grpc.aio.ServicerContext) -> pb.ServiceCycle:
        moments = moments_of(request)
        return cycle_to_pb(await uow.run(self._pool, lambda c: cycles.define(
            c, self._ctx.clock.now(), request.name, moments,
            every_days=request.survey_every_days, segment=request.survey_segment,
            channel=request.survey_channel)))

    async def GetServiceCycle(self, request: pb.GetServiceCycleRequest,
                              context: grpc.aio.ServicerContext) -> pb.ServiceCycle:
        return cycle_to_pb(await uow.run(self._pool, lambda c: cycles.get(
            c, request.name, request.version)))

    async def ListServiceCycles(self, request: pb.ListServiceCyclesRequest,
                                context: grpc.aio.ServicerContext
                                ) -> pb.ListServiceCyclesResponse:
        size = page_size(request.page_size)
        after = _decode_token(request.page_token)
        page = await uow.run(self._pool, lambda c: cycles.latest(c, after, size))
        token = _encode_token(page[-1].cycle.name) if len(page) == size else ""
        return pb.ListServiceCyclesResponse(cycles=[cycle_to_pb(d) for d in page],
                                            next_page_token=token)

    async def ListServiceCycleVersions(self, request: pb.ListServiceCycleVersionsRequest,
                                       context: grpc.aio.ServicerContext
                                       ) -> pb.ListServiceCycleVersionsResponse:
        found = await uow.run(self._pool, lambda c: cycles.history(c, request.name))
        return pb.ListServiceCycleVersionsResponse(versions=[cycle_to_pb(d) for d in found])
