"""The service-cycle matrix's pure rules: what a definition may say, the
defaults it gets, its questions' ids, scales and the round trip through
storage; and a periodic survey's settings."""

from __future__ import annotations

from typing import Any

import pytest

from crm_runtime.errors import InvalidArgument
from services.interactions import cycles, matrix


def _req(rid: str = "r1", **fields: Any) -> dict[str, Any]:
    return {"requirement_id": rid, "text": "fast payment", **fields}


@pytest.mark.parametrize(("name", "moments", "field"), [
    ("", [{"touchpoint": "a"}], "name"),
    ("x" * 201, [{"touchpoint": "a"}], "name"),
    ("c", [], "moments"),
    ("c", [{"touchpoint": "a"}, {"touchpoint": "a"}], "moments[1].touchpoint"),
    ("c", [{"touchpoint": "Greeting"}], "moments[0].touchpoint"),
    ("c", [{"touchpoint": "pay now"}], "moments[0].touchpoint"),
    ("c", [{"touchpoint": "_a"}], "moments[0].touchpoint"),
    ("c", [{"touchpoint": "a" * 64}], "moments[0].touchpoint"),
    ("c", [{"touchpoint": "a", "weight": 6}], "moments[0].weight"),
    ("c", [{"touchpoint": "a", "weight": -1}], "moments[0].weight"),
    ("c", [{"touchpoint": "a", "requirements": [_req(), _req()]}],
     "moments[0].requirements[1].requirement_id"),
    ("c", [{"touchpoint": "a", "requirements": [_req()]},
           {"touchpoint": "b", "requirements": [_req()]}],
     "moments[1].requirements[0].requirement_id"),  # unique in the cycle, not the moment
    ("c", [{"touchpoint": "a", "requirements": [_req("")]}],
     "moments[0].requirements[0].requirement_id"),
    ("c", [{"touchpoint": "a", "requirements": [_req(text=" ")]}],
     "moments[0].requirements[0].text"),
    ("c", [{"touchpoint": "a", "requirements": [_req(scale="stars")]}],
     "moments[0].requirements[0].scale"),
    ("c", [{"touchpoint": "a", "requirements": [_req(channels=["web", "fax"])]}],
     "moments[0].requirements[0].channels[1]"),
    ("c", [{"touchpoint": "a", "requirements": [_req(weight=9)]}],
     "moments[0].requirements[0].weight"),
])
def test_a_bad_definition_names_the_field(name: str, moments: list[dict[str, Any]],
                                          field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        matrix.define(name, 1, moments)
    assert err.value.field == field


def test_defaults_and_questions() -> None:
    cycle = matrix.define(" phone support ", 3, [
        {"touchpoint": "greeting", "requirements": [
            _req("r1", text="a warm welcome"),
            _req("r2", text="no wait", scale="YES_NO", channels=["Phone", "phone"]),
            _req("r3", text="the agent", scale="nps", weight=4),
            _req("r4", text="speed", question=" How fast was it? ")]},
        {"touchpoint": "close", "name": "Closing", "weight": 5}])
    assert cycle.name == "phone support" and cycle.version == 3
    greeting, close = cycle.moments
    assert (greeting.name, greeting.weight, close.name, close.weight) == (
        "greeting", 1, "Closing", 5)
    r1, r2, r3, r4 = greeting.requirements
    assert (r1.scale, r1.weight, r1.channels) == ("csat", 1, ())
    assert r1.question == "How satisfied were you with: a warm welcome?"
    assert (r2.scale, r2.channels, r2.question) == ("yes_no", ("phone",), "Was this so: no wait?")
    assert r3.question == "After this, how likely are you to recommend us (the agent)?"
    assert r3.weight == 4 and r4.question == "How fast was it?"
    # A question's id is per cycle, version and requirement.
    assert r1.question_id == matrix.question_id("phone support", 3, "r1")
    assert len({r.question_id for r in greeting.requirements}) == 4
    assert matrix.question_id("phone support", 4, "r1") != r1.question_id
    # Channels: none is every channel.
    assert r1.applies_to("email") and r2.applies_to("phone") and not r2.applies_to("email")
    assert cycle.requirement("r3") == (greeting, r3) and cycle.requirement("x") is None
    assert cycle.moment("close") is close and cycle.moment("x") is None


def test_storage_round_trip_and_same_matrix() -> None:
    moments = [{"touchpoint": "a", "requirements": [_req(channels=["web"], scale="nps")]}]
    v1 = matrix.define("c", 1, moments)
    assert matrix.from_json("c", 1, matrix.to_json(v1)) == v1
    v2 = matrix.define("c", 2, moments)
    assert v2 != v1 and matrix.same_matrix(v1, v2)  # ids aside, the same
    v3 = matrix.define("c", 3, [{"touchpoint": "a", "requirements": [_req(scale="nps")]}])
    assert not matrix.same_matrix(v2, v3)


def test_scales() -> None:
    assert matrix.check_score("nps", 0, "s") == 0
    for scale, bad in (("csat", 0), ("csat", 6), ("nps", 11), ("yes_no", 2), ("yes_no", -1)):
        with pytest.raises(InvalidArgument) as err:
            matrix.check_score(scale, bad, "answers[0].score")
        assert err.value.field == "answers[0].score"
    assert matrix.normalise("csat", 1) == 0 and matrix.normalise("nps", 10) == 1
    assert matrix.criterion_scale("yes_no") == "yes_no"
    assert matrix.criterion_scale("nps") == "one_to_five"


def test_periodic_survey_settings() -> None:
    assert cycles.check_survey(0, "", "") == (0, "", "")
    assert cycles.check_survey(30, " vip ", "") == (30, "vip", "email")
    assert cycles.check_survey(7, "vip", " Phone ") == (7, "vip", "phone")
    for args, field in (((367, "vip", ""), "survey_every_days"),
                        ((-1, "vip", ""), "survey_every_days"),
                        ((30, " ", ""), "survey_segment"),
                        ((30, "vip", "fax"), "survey_channel")):
        with pytest.raises(InvalidArgument) as err:
            cycles.check_survey(*args)
        assert err.value.field == field


def test_questions_of_a_version_on_a_channel() -> None:
    cycle = matrix.define("c", 2, [
        {"touchpoint": "a", "requirements": [_req("r1"), _req("r2", channels=["phone"])]},
        {"touchpoint": "b", "requirements": [_req("r3", scale="yes_no")]}])
    on_web = cycles.questions(cycle, "web")
    assert [(q.touchpoint, q.requirement_id, q.scale, q.cycle_version) for q in on_web] == [
        ("a", "r1", "csat", 2), ("b", "r3", "yes_no", 2)]
    assert [q.requirement_id for q in cycles.questions(cycle, "phone", ["a"])] == ["r1", "r2"]
    assert cycles.questions(cycle, "web", ["zzz"]) == []


def test_a_cycle_has_at_most_its_maximum_of_requirements() -> None:
    def moment(i: int, n: int) -> dict[str, Any]:
        return {"touchpoint": f"m{i}", "requirements": [
            {"requirement_id": f"r{i}-{j}", "text": "x"} for j in range(n)]}

    full = [moment(i, 50) for i in range(4)]  # 200: the most
    assert sum(len(m.requirements) for m in matrix.define("c", 1, full).moments) == 200
    with pytest.raises(InvalidArgument) as err:
        matrix.define("c", 1, [*full, moment(4, 1)])
    assert err.value.field == "moments[4].requirements"
