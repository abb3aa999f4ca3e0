"""The request limits (crm_runtime.limits): proto options over type defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2

from crm.common.v1 import options_pb2
from crm.customers.v1 import customers_pb2 as cpb
from crm.interactions.v1 import interactions_pb2 as ipb
from crm.loyalty.v1 import loyalty_pb2 as lpb
from crm.ops.v1 import ops_pb2
from crm_contracts.interactions import ContactReceived
from crm_contracts.money import MAX_AMOUNT_MINOR
from crm_runtime import convert, limits
from crm_runtime.errors import InvalidArgument
from crm_runtime.grpc_server import MAX_DESCRIPTION, MAX_MESSAGE, _bad_request


def _year_10000() -> ipb.RecordInteractionRequest:
    request = ipb.RecordInteractionRequest(idempotency_key="k")
    request.occurred_at.seconds = 253402300800  # 10000-01-01
    return request


def _negative_nanos() -> ipb.GetSatisfactionReportRequest:
    request = ipb.GetSatisfactionReportRequest()
    getattr(request, "from").seconds = 1_700_000_000
    getattr(request, "from").nanos = -1
    return request


@pytest.mark.parametrize(("request_", "field", "words"), [
    (_year_10000(), "occurred_at", "2100-01-01"),
    (_negative_nanos(), "from", "nanos"),
    (ipb.RecordInteractionRequest(notes="a\x00b"), "notes", "NUL"),
    (ipb.RecordInteractionRequest(idempotency_key="k" * 201), "idempotency_key", "at most 200"),
    (ipb.RecordInteractionRequest(notes="n" * 10_001), "notes", "at most 10000"),
    (cpb.RecordPurchaseRequest(amount=cpb.Money(amount_minor=10**13 + 1)),
     "amount.amount_minor", "between 0 and 10000000000000"),
    (cpb.RecordPurchaseRequest(amount=cpb.Money(amount_minor=-1)), "amount.amount_minor",
     "between"),
    (ops_pb2.AdvanceClockRequest(seconds=2**62), "seconds", "between 1 and 315360000"),
    (ipb.PromisePolicy(min_seconds=-5), "min_seconds", "between 0"),
    (ipb.RecordSurveyResponseRequest(answers=[ipb.SurveyAnswer(nps=11)]), "answers[0].nps",
     "between -1 and 10"),
    (ipb.RecordSurveyResponseRequest(answers=[ipb.SurveyAnswer()] * 51), "answers",
     "at most 50 items"),
    (ipb.GetTimelineRequest(page_size=-1), "page_size", "between 0"),
    (cpb.ListCustomersRequest(stage=42), "stage", "not one of"),  # type: ignore[arg-type]
    (cpb.UpdateCustomerRequest(profile=cpb.Profile(company_name="c\x00")),
     "profile.company_name", "NUL"),
    (ipb.ServiceCycle(name="n", moments=[ipb.MomentOfTruth(
        requirements=[ipb.Requirement(text="r" * 501)])]),
     "moments[0].requirements[0].text", "at most 500"),
])
def test_a_value_outside_its_limits_is_named(request_: Message, field: str, words: str) -> None:
    [(named, problem)] = limits.violations(request_)
    assert named == field
    assert words in problem


@pytest.mark.parametrize("request_", [
    ipb.RecordInteractionRequest(idempotency_key="k" * 200, notes="n" * 10_000,
                                 amount=ipb.Money(amount_minor=10**13)),
    ipb.RecordSurveyResponseRequest(answers=[ipb.SurveyAnswer(nps=-1, csat=5)]),
    ops_pb2.AdvanceClockRequest(seconds=86_400),
    cpb.RegisterCustomersRequest(customers=[cpb.RegisterCustomerRequest()] * 1000),
    cpb.ListCustomersRequest(stage=cpb.STAGE_FORMER, page_size=10_000),
])
def test_values_inside_their_limits_pass(request_: Message) -> None:
    assert limits.violations(request_) == []


def test_a_bad_value_is_quoted_by_a_short_prefix_only() -> None:
    [(_, problem)] = limits.violations(ipb.RecordInteractionRequest(notes="x\x00" + "y" * 9000))
    assert len(problem) < 100


def test_an_error_status_stays_far_below_grpcs_trailer_limit() -> None:
    status = _bad_request([(f"f{i}", "z" * 10_000) for i in range(1000)])
    assert len(status.SerializeToString()) < 16 * 1024 // 2
    assert len(status.message) <= MAX_MESSAGE
    detail = error_details_pb2.BadRequest()
    status.details[0].Unpack(detail)
    assert len(detail.field_violations) == 21  # 20 and one saying how many more
    assert detail.field_violations[-1].description == "980 more violations"
    assert all(len(v.description) <= MAX_DESCRIPTION for v in detail.field_violations)


def _own_limits_table() -> list[str]:
    """The doc's rows for every request field with its own limits, from the contracts."""
    rows = []
    for module in (cpb, ipb, lpb, ops_pb2):
        for message in module.DESCRIPTOR.message_types_by_name.values():
            for field in message.fields:
                if not field.GetOptions().HasExtension(options_pb2.limits):
                    continue
                own = field.GetOptions().Extensions[options_pb2.limits]
                parts = []
                if own.HasField("max_length"):
                    parts.append(f"at most {own.max_length} characters")
                if own.HasField("min") or own.HasField("max"):
                    parts.append(f"{limits.limits_of(field).min} to {limits.limits_of(field).max}")
                if own.HasField("max_items"):
                    parts.append(f"at most {own.max_items} items")
                rows.append(f"| `{message.full_name}.{field.name}` | {', '.join(parts)} |")
    return rows


def test_the_integration_guide_lists_every_field_with_its_own_limits() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "integration.md").read_text()
    table = text.split("<!-- limits:begin -->")[1].split("<!-- limits:end -->")[0]
    documented = table.strip().splitlines()[2:]
    expected = _own_limits_table()
    assert documented == expected, "docs/integration.md (Limits) should read:\n" + "\n".join(
        expected)


def test_the_documented_defaults_are_the_codes() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "integration.md").read_text()
    assert f"at most {limits.MAX_STRING} characters, no NUL" in text
    assert f"| integer | {limits.INT_MIN} to {limits.INT_MAX} " in text
    assert f"| repeated field | at most {limits.MAX_ITEMS} items |" in text


def test_page_sizes_default_and_are_cut_to_the_maximum() -> None:
    assert convert.page_size(0) == convert.DEFAULT_PAGE_SIZE
    assert convert.page_size(7) == 7
    assert convert.page_size(10**6) == convert.MAX_PAGE_SIZE
    with pytest.raises(InvalidArgument, match="must not be negative"):
        convert.page_size(-1)


@pytest.mark.parametrize("money", [cpb.Money, ipb.Money, lpb.Money])
def test_every_money_in_the_contracts_has_the_one_maximum(money: type[Message]) -> None:
    field = money.DESCRIPTOR.fields_by_name["amount_minor"]
    assert (limits.limits_of(field).min, limits.limits_of(field).max) == (0, MAX_AMOUNT_MINOR)


#: ContactReceived's fields and their gRPC twins in RecordInteractionRequest.
_TWINS = {"amount_minor": "amount.amount_minor", "currency": "amount.currency",
          "attention": "attention.mode",
          "requester_customer_id": "attention.requester_customer_id",
          "decision_maker_customer_id": "attention.decision_maker_customer_id"}


def _proto_field(path: str) -> FieldDescriptor:
    desc: Any = ipb.RecordInteractionRequest.DESCRIPTOR
    *parents, name = path.split(".")
    for parent in parents:
        desc = desc.fields_by_name[parent].message_type
    field: FieldDescriptor = desc.fields_by_name[name]
    return field


@pytest.mark.parametrize("name", sorted(set(ContactReceived.model_fields) - {"occurred_at"}))
def test_the_ingest_topic_has_the_limits_of_record_interaction(name: str) -> None:
    """The same contact is bounded the same way on both ways in."""
    own = limits.limits_of(_proto_field(_TWINS.get(name, name)))
    metadata = ContactReceived.model_fields[name].metadata
    bounds = {type(m).__name__: m for m in metadata}
    if name == "amount_minor":
        assert (bounds["Ge"].ge, bounds["Le"].le) == (own.min, own.max)
    else:
        assert bounds["MaxLen"].max_length == own.max_length
