"""Mystery shopping over the real service: the evaluation form of a cycle
version, evaluations recorded (scored, stored once per key, published) and
listed, and the input refused with the field it names."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from crm.interactions.v1 import interactions_pb2 as pb
from tests.integration.interactions.conftest import Pair
from tests.integration.interactions.test_interactions_service import api, events_of

#: A cycle of three moments: a yes/no requirement, a CSAT one for phone
#: and in person only, an NPS one, and a moment with no requirement.
MOMENTS: list[dict[str, Any]] = [
    {"touchpoint": "greeting", "weight": 3, "requirements": [
        {"requirement_id": "smile", "text": "Smiles", "scale": "yes_no", "weight": 2},
        {"requirement_id": "fast", "text": "Greets within a minute", "weight": 1,
         "channels": ["phone", "in_person"]}]},
    {"touchpoint": "checkout", "weight": 1, "requirements": [
        {"requirement_id": "recommend", "text": "Would recommend", "scale": "nps",
         "weight": 3}]},
    {"touchpoint": "farewell"},
]


def stamp(at: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(at)
    return t


async def define_cycle(pair: Pair, moments: list[dict[str, Any]] | None = None,
                       name: str = "") -> pb.ServiceCycle:
    """A new cycle (a unique name unless given) or a new version of ``name``."""
    request = pb.ServiceCycle(name=name or f"store-{uuid.uuid4().hex[:8]}", moments=[
        pb.MomentOfTruth(touchpoint=m["touchpoint"], name=m.get("name", ""),
                         weight=m.get("weight", 0), requirements=[
                             pb.Requirement(**r) for r in m.get("requirements", [])])
        for m in (MOMENTS if moments is None else moments)])
    reply: pb.ServiceCycle = await api(pair).DefineServiceCycle(
        request, metadata=pair.interactions.metadata)
    return reply


async def evaluate(pair: Pair, cycle: str, **fields: Any) -> pb.Evaluation:
    fields.setdefault("idempotency_key", str(uuid.uuid4()))
    fields.setdefault("evaluator", "Agency A")
    fields.setdefault("unit", "shop-1")
    fields.setdefault("channel", "in_person")
    fields.setdefault("scores", [pb.CriterionScore(requirement_id="smile", score=1)])
    reply: pb.Evaluation = await api(pair).RecordEvaluation(
        pb.RecordEvaluationRequest(cycle=cycle, **fields), metadata=pair.interactions.metadata)
    return reply


async def refused(call: Any, code: grpc.StatusCode, field: str = "") -> str:
    """The details of the error ``call`` (an awaitable) fails with."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()
    details = err.value.details() or ""
    if field:
        assert details.startswith(f"{field}:"), details
    return details


async def test_the_form_lists_each_requirement_as_a_criterion(pair: Pair) -> None:
    first = await define_cycle(pair)
    form = await api(pair).GetEvaluationForm(pb.GetEvaluationFormRequest(cycle=first.name),
                                             metadata=pair.interactions.metadata)
    assert (form.cycle, form.version) == (first.name, 1)
    assert [(c.touchpoint, c.requirement_id, c.text, c.scale, c.weight, list(c.channels))
            for c in form.criteria] == [
        ("greeting", "smile", "Smiles", "yes_no", 2, []),
        ("greeting", "fast", "Greets within a minute", "one_to_five", 1, ["phone", "in_person"]),
        ("checkout", "recommend", "Would recommend", "one_to_five", 3, [])]
    # A new version is the latest; the first stays readable.
    second = await define_cycle(pair, [{"touchpoint": "greeting", "requirements": [
        {"requirement_id": "smile", "text": "Smiles warmly", "scale": "yes_no"}]}],
        name=first.name)
    assert second.version == 2
    latest = await api(pair).GetEvaluationForm(pb.GetEvaluationFormRequest(cycle=first.name),
                                               metadata=pair.interactions.metadata)
    assert latest.version == 2
    assert [(c.requirement_id, c.text, c.weight) for c in latest.criteria] == [
        ("smile", "Smiles warmly", 1)]
    again = await api(pair).GetEvaluationForm(
        pb.GetEvaluationFormRequest(cycle=first.name, version=1),
        metadata=pair.interactions.metadata)
    assert again == form

    async def form_of(cycle: str, version: int = 0) -> Any:
        return await api(pair).GetEvaluationForm(
            pb.GetEvaluationFormRequest(cycle=cycle, version=version),
            metadata=pair.interactions.metadata)

    await refused(form_of(first.name, 3), grpc.StatusCode.NOT_FOUND)
    await refused(form_of("no-such-cycle-" + uuid.uuid4().hex), grpc.StatusCode.NOT_FOUND)
    await refused(form_of(""), grpc.StatusCode.INVALID_ARGUMENT, "cycle")
    await refused(form_of(first.name, -1), grpc.StatusCode.INVALID_ARGUMENT, "version")


async def test_an_evaluation_is_scored_stored_once_published_and_listed(pair: Pair) -> None:
    cycle = (await define_cycle(pair)).name
    unit = f"shop-{uuid.uuid4().hex[:8]}"
    visited = pair.clock.now() - timedelta(hours=2)
    key = str(uuid.uuid4())
    scores = [pb.CriterionScore(requirement_id="smile", score=1, note="warm"),
              pb.CriterionScore(requirement_id="fast", score=3),
              pb.CriterionScore(requirement_id="recommend", score=2)]
    first = await evaluate(pair, cycle, unit=unit, idempotency_key=key, scores=scores,
                           visited_at=stamp(visited), notes="Busy Saturday")
    # (2 x 1 + 1 x 0.5 + 3 x 0.25) / 6
    assert first.score == pytest.approx(54.17)
    assert (first.cycle, first.version, first.unit, first.channel, first.notes) == (
        cycle, 1, unit, "in_person", "Busy Saturday")
    assert first.visited_at.ToDatetime().replace(tzinfo=visited.tzinfo) == visited
    assert [(s.requirement_id, s.score, s.note, s.touchpoint, s.scale, s.weight)
            for s in first.scores] == [
        ("smile", 1, "warm", "greeting", "yes_no", 2),
        ("fast", 3, "", "greeting", "one_to_five", 1),
        ("recommend", 2, "", "checkout", "one_to_five", 3)]
    again = await evaluate(pair, cycle, unit=unit, idempotency_key=key, scores=scores,
                           visited_at=stamp(visited), notes="Busy Saturday")
    assert again == first
    # Published once, keyed by the unit, without the evaluator's name or notes.
    events = await events_of(pair, f"unit:{unit}", 1)
    assert [t for t, _ in events] == ["service.evaluation_recorded"]
    (_, data), = events
    assert data["evaluation_id"] == first.evaluation_id
    assert (data["cycle"], data["cycle_version"], data["unit"], data["channel"]) == (
        cycle, 1, unit, "in_person")
    assert data["score"] == pytest.approx(54.17)
    assert [(c["touchpoint"], c["requirement_id"], c["scale"], c["weight"], c["score"])
            for c in data["criteria"]] == [("greeting", "smile", "yes_no", 2, 1),
                                           ("greeting", "fast", "one_to_five", 1, 3),
                                           ("checkout", "recommend", "one_to_five", 3, 2)]
    assert "Agency" not in str(data) and "Saturday" not in str(data)

    # More visits: by phone, at another unit, a day before, and of the next version.
    phone = await evaluate(pair, cycle, unit=unit, channel="phone",
                           visited_at=stamp(visited - timedelta(hours=1)))
    other_unit = await evaluate(pair, cycle, unit=unit + "-b",
                                visited_at=stamp(visited - timedelta(hours=3)))
    older = await evaluate(pair, cycle, unit=unit, visited_at=stamp(visited - timedelta(days=1)))
    await define_cycle(pair, MOMENTS[:1], name=cycle)
    newer = await evaluate(pair, cycle, unit=unit, visited_at=stamp(visited))
    assert (newer.version, newer.score) == (2, 100.0)
    assert phone.score == 100.0

    async def listed(**fields: Any) -> list[str]:
        ids: list[str] = []
        token = ""
        while True:
            page = await api(pair).ListEvaluations(pb.ListEvaluationsRequest(
                cycle=cycle, page_size=2, page_token=token, **fields),
                metadata=pair.interactions.metadata)
            assert len(page.evaluations) <= 2
            ids += [e.evaluation_id for e in page.evaluations]
            token = page.next_page_token
            if not token:
                return ids

    # Newest visit first (the same visit time: by id), across pages.
    same_time = sorted([first.evaluation_id, newer.evaluation_id], reverse=True)
    assert await listed() == [*same_time, phone.evaluation_id, other_unit.evaluation_id,
                              older.evaluation_id]
    assert await listed(unit=unit) == [*same_time, phone.evaluation_id, older.evaluation_id]
    assert await listed(channel="phone") == [phone.evaluation_id]
    window = {"from": stamp(visited - timedelta(hours=3)), "to": stamp(visited)}
    assert await listed(**window) == [phone.evaluation_id, other_unit.evaluation_id]
    page = await api(pair).ListEvaluations(
        pb.ListEvaluationsRequest(cycle=cycle, page_size=1), metadata=pair.interactions.metadata)
    assert page.evaluations[0] == {first.evaluation_id: first,
                                   newer.evaluation_id: newer}[same_time[0]]
    await refused(api(pair).ListEvaluations(pb.ListEvaluationsRequest(page_token="x!"),
                                            metadata=pair.interactions.metadata),
                  grpc.StatusCode.INVALID_ARGUMENT, "page_token")
    await refused(api(pair).ListEvaluations(pb.ListEvaluationsRequest(channel="pigeon"),
                                            metadata=pair.interactions.metadata),
                  grpc.StatusCode.INVALID_ARGUMENT, "channel")


_BAD: list[tuple[dict[str, Any], grpc.StatusCode, str]] = [
    ({"cycle": "no-such-cycle"}, grpc.StatusCode.NOT_FOUND, ""),
    ({"version": 9}, grpc.StatusCode.NOT_FOUND, ""),
    ({"cycle": ""}, grpc.StatusCode.INVALID_ARGUMENT, "cycle"),
    ({"evaluator": " "}, grpc.StatusCode.INVALID_ARGUMENT, "evaluator"),
    ({"unit": ""}, grpc.StatusCode.INVALID_ARGUMENT, "unit"),
    ({"channel": ""}, grpc.StatusCode.INVALID_ARGUMENT, "channel"),
    ({"channel": "pigeon"}, grpc.StatusCode.INVALID_ARGUMENT, "channel"),
    ({"idempotency_key": ""}, grpc.StatusCode.INVALID_ARGUMENT, "idempotency_key"),
    ({"scores": []}, grpc.StatusCode.INVALID_ARGUMENT, "scores"),
    ({"scores": [pb.CriterionScore(requirement_id="smile", score=1),
                 pb.CriterionScore(requirement_id="nope", score=1)]},
     grpc.StatusCode.INVALID_ARGUMENT, "scores[1].requirement_id"),
    ({"scores": [pb.CriterionScore(requirement_id="smile", score=2)]},
     grpc.StatusCode.INVALID_ARGUMENT, "scores[0].score"),
    ({"scores": [pb.CriterionScore(requirement_id="smile", score=-1)]},
     grpc.StatusCode.INVALID_ARGUMENT, "scores[0].score"),
    ({"scores": [pb.CriterionScore(requirement_id="recommend", score=0)]},
     grpc.StatusCode.INVALID_ARGUMENT, "scores[0].score"),
    ({"scores": [pb.CriterionScore(requirement_id="smile", score=1),
                 pb.CriterionScore(requirement_id="smile", score=0)]},
     grpc.StatusCode.INVALID_ARGUMENT, "scores[1].requirement_id"),
    # "fast" applies on phone and in person only.
    ({"channel": "web", "scores": [pb.CriterionScore(requirement_id="fast", score=4)]},
     grpc.StatusCode.INVALID_ARGUMENT, "scores[0].requirement_id"),
]


@pytest.mark.parametrize(("fields", "code", "field"), _BAD,
                         ids=[f"{f or c.name}-{i}" for i, (_, c, f) in enumerate(_BAD)])
async def test_bad_evaluations_are_refused_naming_the_field(
        pair: Pair, fields: dict[str, Any], code: grpc.StatusCode, field: str) -> None:
    cycle = (await define_cycle(pair)).name
    unit = f"shop-{uuid.uuid4().hex[:8]}"
    details = await refused(evaluate(pair, **{"cycle": cycle, "unit": unit, **fields}), code,
                            field)
    if fields.get("channel") == "web":
        assert "web" in details
    if fields.get("cycle", cycle):
        listed = await api(pair).ListEvaluations(
            pb.ListEvaluationsRequest(cycle=fields.get("cycle", cycle)),
            metadata=pair.interactions.metadata)
        assert list(listed.evaluations) == []


async def test_visit_times_are_event_times(pair: Pair) -> None:
    cycle = (await define_cycle(pair)).name
    now = pair.clock.now()
    await refused(evaluate(pair, cycle, visited_at=stamp(now + timedelta(hours=1))),
                  grpc.StatusCode.INVALID_ARGUMENT, "visited_at")
    await refused(evaluate(pair, cycle, visited_at=stamp(datetime(1999, 12, 31))),
                  grpc.StatusCode.INVALID_ARGUMENT, "visited_at")
    # Without one, the visit is now.
    e = await evaluate(pair, cycle)
    assert e.visited_at == e.recorded_at == stamp(now)


async def test_a_key_used_for_another_evaluation_is_already_exists(pair: Pair) -> None:
    cycle = (await define_cycle(pair)).name
    key = str(uuid.uuid4())
    first = await evaluate(pair, cycle, idempotency_key=key)
    details = await refused(evaluate(pair, cycle, idempotency_key=key, unit="shop-2",
                                     scores=[pb.CriterionScore(requirement_id="smile",
                                                               score=0)]),
                            grpc.StatusCode.ALREADY_EXISTS)
    assert "unit" in details and "scores" in details and "evaluator" not in details
    # The key of an evaluation of the latest version (0) stated with version 1
    # is a different request too, and so is a visit time stated after none.
    details = await refused(evaluate(pair, cycle, idempotency_key=key, version=1),
                            grpc.StatusCode.ALREADY_EXISTS)
    assert "version" in details
    details = await refused(evaluate(pair, cycle, idempotency_key=key,
                                     visited_at=stamp(pair.clock.now() - timedelta(days=1))),
                            grpc.StatusCode.ALREADY_EXISTS)
    assert "visited_at" in details
    assert await evaluate(pair, cycle, idempotency_key=key) == first
