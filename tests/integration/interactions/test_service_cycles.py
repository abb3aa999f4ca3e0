"""Versioned service cycles over the running interactions service: versions,
history and the list of active cycles; what a definition may not say; and
the touchpoints no active cycle knows, counted as contacts and cases name
them."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import pytest

from crm.interactions.v1 import interactions_pb2 as pb
from services.interactions import cycles
from tests.integration.interactions.conftest import Pair
from tests.integration.interactions.test_interactions_service import (
    _samples,
    api,
    new_customer,
    record,
)


def _name(prefix: str = "cycle") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _key() -> str:
    """A touchpoint no other test names."""
    return f"t{uuid.uuid4().hex[:12]}"


def _cycle(name: str, *moments: pb.MomentOfTruth, **fields: Any) -> pb.ServiceCycle:
    return pb.ServiceCycle(name=name, moments=list(moments) or [
        pb.MomentOfTruth(touchpoint="greeting", requirements=[
            pb.Requirement(requirement_id="smile", text="a smile")])], **fields)


async def _define(pair: Pair, cycle: pb.ServiceCycle) -> pb.ServiceCycle:
    reply: pb.ServiceCycle = await api(pair).DefineServiceCycle(
        cycle, metadata=pair.interactions.metadata)
    return reply


async def _get(pair: Pair, name: str, version: int = 0) -> pb.ServiceCycle:
    reply: pb.ServiceCycle = await api(pair).GetServiceCycle(
        pb.GetServiceCycleRequest(name=name, version=version),
        metadata=pair.interactions.metadata)
    return reply


async def _versions(pair: Pair, name: str) -> list[pb.ServiceCycle]:
    reply = await api(pair).ListServiceCycleVersions(
        pb.ListServiceCycleVersionsRequest(name=name), metadata=pair.interactions.metadata)
    return list(reply.versions)


async def test_versions_history_and_an_unchanged_definition(pair: Pair) -> None:
    name = _name()
    v1 = await _define(pair, _cycle(name))
    assert v1.version == 1
    # The same definition again (a retry) is the same version: none added.
    assert await _define(pair, _cycle(name)) == v1
    changed = _cycle(name, pb.MomentOfTruth(touchpoint="greeting", requirements=[
        pb.Requirement(requirement_id="smile", text="a smile", weight=3)]))
    v2 = await _define(pair, changed)
    assert v2.version == 2
    # Only the periodic survey changes: a version too.
    v3 = await _define(pair, _cycle(name, *changed.moments, survey_every_days=30,
                                    survey_segment=_name("nobody")))
    assert (v3.version, v3.survey_every_days, v3.survey_channel) == (3, 30, "email")
    assert await _define(pair, _cycle(name, *changed.moments, survey_every_days=30,
                                      survey_segment=v3.survey_segment)) == v3
    assert [v.version for v in await _versions(pair, name)] == [3, 2, 1]
    assert await _versions(pair, name) == [v3, v2, v1]
    assert await _get(pair, name) == v3 and await _get(pair, name, 1) == v1
    # A requirement's question is per version.
    ids = [(await _get(pair, name, v)).moments[0].requirements[0].question_id
           for v in (1, 2, 3)]
    assert len(set(ids)) == 3
    # The matrix as stored: a question per requirement, for answers to name.
    rows = await pair.pool.fetch(
        "SELECT question_id::text, version, touchpoint, requirement_id, scale, text "
        "FROM survey_questions WHERE cycle = $1 ORDER BY version", name)
    assert [tuple(r) for r in rows] == [
        (ids[v - 1], v, "greeting", "smile", "csat", "How satisfied were you with: a smile?")
        for v in (1, 2, 3)]
    # Back to no periodic survey: a version, and the runs stop. The pending
    # run is gone, unless the scheduler had it in hand at that moment and
    # put the next one back: that one finds no periodic survey and ends.
    v4 = await _define(pair, changed)
    assert v4.version == 4 and v4.survey_every_days == 0
    left = await pair.pool.fetch(
        "SELECT payload FROM scheduled_work WHERE kind = 'surveys.periodic' "
        "AND item_key = $1", name)
    assert all(r["payload"]["survey"] == [30, v3.survey_segment, "email"] for r in left)
    async with pair.pool.acquire() as conn:  # what a run reads
        assert (await cycles.get(conn, name)).survey_every_days == 0


async def test_concurrent_definitions_of_one_cycle_get_versions_in_order(pair: Pair) -> None:
    name = _name()
    defined = await asyncio.gather(*(
        _define(pair, _cycle(name, pb.MomentOfTruth(touchpoint="greeting", weight=w)))
        for w in range(1, 6)))
    assert sorted(d.version for d in defined) == [1, 2, 3, 4, 5]
    assert [v.version for v in await _versions(pair, name)] == [5, 4, 3, 2, 1]


async def test_list_pages_the_active_cycles_by_name(pair: Pair) -> None:
    prefix = _name("list")
    names = [f"{prefix}-{i}" for i in range(3)]
    for name in reversed(names):
        await _define(pair, _cycle(name))
    await _define(pair, _cycle(names[1], pb.MomentOfTruth(touchpoint="other")))
    seen: list[pb.ServiceCycle] = []
    token = ""
    pages = 0
    while True:
        reply = await api(pair).ListServiceCycles(pb.ListServiceCyclesRequest(
            page_size=2, page_token=token), metadata=pair.interactions.metadata)
        assert len(reply.cycles) <= 2
        seen += reply.cycles
        pages += 1
        token = reply.next_page_token
        if not token:
            break
    listed = [c.name for c in seen]
    assert len(set(listed)) == len(listed)  # each once, whatever the collation
    mine = [c for c in seen if c.name.startswith(prefix)]
    assert [(c.name, c.version) for c in mine] == [(names[0], 1), (names[1], 2), (names[2], 1)]
    assert mine[1].moments[0].touchpoint == "other"  # the latest version
    assert pages >= 2
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api(pair).ListServiceCycles(pb.ListServiceCyclesRequest(page_token="%%%"),
                                          metadata=pair.interactions.metadata)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_unknown_cycles_and_versions_are_not_found(pair: Pair) -> None:
    name = _name()
    await _define(pair, _cycle(name))
    for request in (pb.GetServiceCycleRequest(name=_name("nothing")),
                    pb.GetServiceCycleRequest(name=name, version=2)):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api(pair).GetServiceCycle(request, metadata=pair.interactions.metadata)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "version 2" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _versions(pair, _name("nothing"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    for call in (_get(pair, " "), _versions(pair, "")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith("name:")


def _m(touchpoint: str = "a", **fields: Any) -> pb.MomentOfTruth:
    return pb.MomentOfTruth(touchpoint=touchpoint, **fields)


def _r(rid: str = "r1", **fields: Any) -> pb.Requirement:
    fields.setdefault("text", "fast payment")
    return pb.Requirement(requirement_id=rid, **fields)


@pytest.mark.parametrize(("moments", "fields", "field"), [
    ([_m("a"), _m("a")], {}, "moments[1].touchpoint"),
    ([_m("a", requirements=[_r("x")]), _m("b", requirements=[_r("x")])], {},
     "moments[1].requirements[0].requirement_id"),
    ([_m("Check Out")], {}, "moments[0].touchpoint"),
    ([_m("a", requirements=[_r("r 1")])], {}, "moments[0].requirements[0].requirement_id"),
    ([_m("a", requirements=[_r(scale="stars")])], {}, "moments[0].requirements[0].scale"),
    ([_m("a", requirements=[_r(channels=["fax"])])], {},
     "moments[0].requirements[0].channels[0]"),
    ([_m("a", requirements=[_r(text="")])], {}, "moments[0].requirements[0].text"),
    ([_m("a", weight=-2)], {}, "moments[0].weight"),
    ([_m("a", requirements=[_r(weight=-1)])], {}, "moments[0].requirements[0].weight"),
    ([_m("a")], {"survey_every_days": 30}, "survey_segment"),
    ([_m("a")], {"survey_every_days": -1, "survey_segment": "vip"}, "survey_every_days"),
    ([_m("a")], {"survey_every_days": 7, "survey_segment": "vip", "survey_channel": "fax"},
     "survey_channel"),
])
async def test_a_bad_definition_is_invalid_argument_naming_the_field(
        pair: Pair, moments: list[pb.MomentOfTruth], fields: dict[str, Any],
        field: str) -> None:
    name = _name("bad")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _define(pair, pb.ServiceCycle(name=name, moments=moments, **fields))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(f"{field}:"), err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _get(pair, name)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND  # nothing was stored


# --- touchpoints no cycle knows ----------------------------------------------------

def _unmapped(record_kind: str) -> float:
    key = (("record", record_kind), ("service", "interactions"))
    return _samples("crm_touchpoints_unmapped_total").get(key, 0.0)


async def test_touchpoints_no_active_cycle_knows_are_counted(pair: Pair) -> None:
    known, unknown = _key(), _key()
    await _define(pair, _cycle(_name(), _m(known)))  # active at once in this process
    cid = await new_customer(pair)
    contacts, cases = _unmapped("contact"), _unmapped("case")
    await record(pair, customer_id=cid, touchpoint=known)
    await record(pair, customer_id=cid)  # no touchpoint: nothing to map
    assert _unmapped("contact") == contacts
    key = str(uuid.uuid4())
    for _ in range(2):  # a retry is counted once
        await record(pair, customer_id=cid, touchpoint=unknown, idempotency_key=key)
    assert _unmapped("contact") == contacts + 1
    await api(pair).OpenCase(pb.OpenCaseRequest(
        customer_id=cid, kind="support", channel="web", touchpoint=unknown,
        idempotency_key=str(uuid.uuid4())), metadata=pair.interactions.metadata)
    await api(pair).OpenCase(pb.OpenCaseRequest(
        customer_id=cid, kind="support", channel="web", touchpoint=known,
        idempotency_key=str(uuid.uuid4())), metadata=pair.interactions.metadata)
    assert _unmapped("case") == cases + 1
    # Once a cycle knows it, it is mapped.
    await _define(pair, _cycle(_name(), _m(unknown)))
    await record(pair, customer_id=cid, touchpoint=unknown)
    assert _unmapped("contact") == contacts + 1


async def test_a_client_still_sending_string_requirements_is_told_so(pair: Pair) -> None:
    # An older client's moment: field 2 held the requirements as strings.
    old = pb.MomentOfTruth.FromString(
        pb.MomentOfTruth(touchpoint="greeting").SerializeToString() + b"\x12\x07a smile")
    cycle = pb.ServiceCycle(name=_name("old-client"))
    cycle.moments.add().MergeFrom(old)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _define(pair, cycle)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("moments[0].requirements:")
