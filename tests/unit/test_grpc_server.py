"""Unit tests for the pure parts of crm_runtime.grpc_server (no server is started)."""

from __future__ import annotations

import hashlib

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status

from crm.ops.v1 import ops_pb2
from crm_runtime.grpc_server import (
    ApiInterceptor,
    _bad_request,
    _Refused,
    required_scopes,
    scope_granted,
)
from crm_runtime.settings import ApiToken

OPERATIONS = ops_pb2.DESCRIPTOR.services_by_name["Operations"]
GET_STATUS = "/crm.ops.v1.Operations/GetStatus"


# --- scopes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("granted", "needed"),
    [
        (["*"], "customers:write"),
        (["customers:read"], "customers:read"),
        (["loyalty:read", "customers:read"], "customers:read"),
        (["customers:*"], "customers:write"),
        (["ops:*"], "ops:read"),
    ],
)
def test_scope_granted(granted: list[str], needed: str) -> None:
    assert scope_granted(granted, needed)


@pytest.mark.parametrize(
    ("granted", "needed"),
    [
        ([], "customers:read"),
        (["customers:read"], "customers:write"),
        (["loyalty:*"], "customers:read"),
        (["customers"], "customers:read"),
        (["*:read"], "customers:read"),
        (["customers:read:extra"], "customers:read"),
        (["Customers:read"], "customers:read"),
        ([""], "customers:read"),
        (["customers:re"], "customers:read"),
    ],
)
def test_scope_refused(granted: list[str], needed: str) -> None:
    assert not scope_granted(granted, needed)


def test_scope_granted_accepts_any_iterable() -> None:
    assert scope_granted(iter(["customers:read"]), "customers:read")
    assert scope_granted(("ops:*",), "ops:read")


def test_required_scopes_of_operations() -> None:
    assert required_scopes([OPERATIONS]) == {
        GET_STATUS: "ops:read", "/crm.ops.v1.Operations/AdvanceClock": "ops:clock"}


def test_methods_without_a_scope_are_left_out() -> None:
    health = health_pb2.DESCRIPTOR.services_by_name["Health"]
    assert required_scopes([health]) == {}
    assert required_scopes([health, OPERATIONS]) == required_scopes([OPERATIONS])
    assert required_scopes([]) == {}


# --- BadRequest status ------------------------------------------------------------------------


def test_bad_request_carries_field_violations() -> None:
    status = _bad_request([("email", "is not an e-mail address"), ("name", "must not be empty")])

    assert isinstance(status, status_pb2.Status)
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert status.message == "email: is not an e-mail address; name: must not be empty"
    assert len(status.details) == 1
    detail = error_details_pb2.BadRequest()
    assert status.details[0].Is(error_details_pb2.BadRequest.DESCRIPTOR)
    assert status.details[0].Unpack(detail)
    assert [(v.field, v.description) for v in detail.field_violations] == [
        ("email", "is not an e-mail address"), ("name", "must not be empty")]


def test_bad_request_survives_the_grpc_trailer_round_trip() -> None:
    rich = rpc_status.to_status(_bad_request([("customer_id", "unknown format")]))
    assert rich.code == grpc.StatusCode.INVALID_ARGUMENT
    assert rich.details == "customer_id: unknown format"
    [value] = [v for k, v in rich.trailing_metadata if k == "grpc-status-details-bin"]
    parsed = status_pb2.Status.FromString(value)
    detail = error_details_pb2.BadRequest()
    parsed.details[0].Unpack(detail)
    assert detail.field_violations[0].field == "customer_id"


# --- authorisation (the interceptor's pure part) ----------------------------------------------


OPS_TOKEN = "ops-token-0123456789abcdef"
POS_TOKEN = "pos-token-0123456789abcdef"


def interceptor() -> ApiInterceptor:
    tokens = [ApiToken(system="monitor", scopes=["ops:read"], token=OPS_TOKEN),
              ApiToken(system="pos", scopes=["customers:*"], token=POS_TOKEN)]
    return ApiInterceptor(service="unit", tokens={t.digest(): t for t in tokens},
                          scopes=required_scopes([OPERATIONS]))


@pytest.mark.parametrize("header", [f"Bearer {OPS_TOKEN}", f"bearer {OPS_TOKEN}",
                                    f"BEARER  {OPS_TOKEN} "])
def test_authorise_accepts_a_bearer_token_with_the_scope(header: str) -> None:
    caller = interceptor()._authorise(GET_STATUS, {"authorization": header})
    assert caller.system == "monitor"


@pytest.mark.parametrize(
    ("metadata", "code", "message"),
    [
        ({}, grpc.StatusCode.UNAUTHENTICATED, "missing 'authorization: Bearer <token>'"),
        ({"authorization": OPS_TOKEN}, grpc.StatusCode.UNAUTHENTICATED, "missing"),
        ({"authorization": "Basic b3BzOm9wcw=="}, grpc.StatusCode.UNAUTHENTICATED, "missing"),
        ({"authorization": "Bearer "}, grpc.StatusCode.UNAUTHENTICATED, "missing"),
        ({"authorization": "Bearer not-a-known-token-at-all"},
         grpc.StatusCode.UNAUTHENTICATED, "unknown bearer token"),
        ({"authorization": f"Bearer {hashlib.sha256(OPS_TOKEN.encode()).hexdigest()}"},
         grpc.StatusCode.UNAUTHENTICATED, "unknown bearer token"),
        ({"authorization": f"Bearer {POS_TOKEN}"},
         grpc.StatusCode.PERMISSION_DENIED, "token of 'pos' lacks scope 'ops:read'"),
    ],
)
def test_authorise_refuses(metadata: dict[str, str], code: grpc.StatusCode,
                           message: str) -> None:
    with pytest.raises(_Refused) as info:
        interceptor()._authorise(GET_STATUS, metadata)
    assert info.value.code == code
    assert message in info.value.message


def test_authorise_refuses_a_method_without_a_declared_scope() -> None:
    with pytest.raises(_Refused) as info:
        interceptor()._authorise("/crm.ops.v1.Operations/Undeclared",
                                 {"authorization": f"Bearer {OPS_TOKEN}"})
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "declares no scope" in info.value.message
