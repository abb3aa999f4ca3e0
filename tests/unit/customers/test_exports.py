"""How the export across the services reads the other services' answers and
reports a missing part (no servers: the wire is in
tests/integration/test_data_subject_export.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import grpc
from google.rpc import code_pb2, error_details_pb2

from services.customers.exports import DOMAIN, REASON, Missing, PartMissing, _read_part


def _reply(service: str, text: str) -> SimpleNamespace:
    return SimpleNamespace(service=service, json=text)


def test_a_part_is_a_json_object_of_the_service_asked() -> None:
    part = {"customer_id": "c", "discounts": []}
    assert _read_part("loyalty", _reply("loyalty", json.dumps(part))) == part
    for reply, problem in [(_reply("loyalty", "[]"), "not a JSON object"),
                           (_reply("loyalty", "{"), "not JSON"),
                           (_reply("interactions", "{}"), "the part of 'interactions'")]:
        missing = _read_part("loyalty", reply)
        assert isinstance(missing, Missing) and missing.service == "loyalty"
        assert problem in missing.message


def test_a_missing_part_names_each_service_in_the_message_and_the_details() -> None:
    late = Missing("loyalty", grpc.StatusCode.DEADLINE_EXCEEDED,
                   "loyalty did not answer the export within 10 s")
    down = Missing("interactions", grpc.StatusCode.UNAVAILABLE,
                   "interactions failed the export: UNAVAILABLE connection refused")
    assert PartMissing([late]).code == grpc.StatusCode.DEADLINE_EXCEEDED
    both = PartMissing([down, late])
    assert both.code == grpc.StatusCode.UNAVAILABLE
    status = both.status()
    assert status.code == code_pb2.UNAVAILABLE
    assert status.message == (
        "interactions failed the export: UNAVAILABLE connection refused; loyalty did not "
        "answer the export within 10 s; no partial export is returned")
    infos = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        assert detail.Unpack(info)
        infos.append((info.reason, info.domain, dict(info.metadata)))
    assert infos == [(REASON, DOMAIN, {"service": "interactions", "code": "UNAVAILABLE"}),
                     (REASON, DOMAIN, {"service": "loyalty", "code": "DEADLINE_EXCEEDED"})]
