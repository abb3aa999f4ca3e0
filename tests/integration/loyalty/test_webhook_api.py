"""The webhook RPCs of the running loyalty service (the package's, with its
default settings): every bad input is INVALID_ARGUMENT naming its field,
unknown ids NOT_FOUND, CreateWebhook is idempotent, and nothing answers
INTERNAL. One delivery end to end shows the service as deployed wires the
webhooks consumer and worker."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from prometheus_client import REGISTRY

from crm.loyalty.v1 import loyalty_pb2 as pb
from crm_contracts.customers import CustomerUpdated
from crm_runtime.events import Envelope
from examples.verify_webhook import verify_webhook
from tests.support.http_receiver import Receiver
from tests.support.kafka import produce_envelopes
from tests.support.loyalty import stub
from tests.support.services import Running

METHODS = ("CreateWebhook", "ListWebhooks", "DeleteWebhook", "ListWebhookDeliveries",
           "ReplayWebhookDeliveries")
#: A URL nothing listens on; the webhooks made here are limited to a customer
#: no event is about, so they never send.
NOWHERE = "http://127.0.0.1:9/hook"


@pytest.fixture(scope="module", autouse=True)
async def _clean_up(svc: Running) -> AsyncIterator[None]:
    yield
    listed = await stub(svc).ListWebhooks(pb.ListWebhooksRequest(), metadata=svc.metadata)
    for hook in listed.webhooks:
        await stub(svc).DeleteWebhook(pb.DeleteWebhookRequest(webhook_id=hook.webhook_id),
                                      metadata=svc.metadata)


def _request(**fields: Any) -> pb.CreateWebhookRequest:
    values: dict[str, Any] = {"webhook_id": f"api-{uuid.uuid4().hex[:12]}", "url": NOWHERE,
                              "event_types": ["customer.*"], "customer_id": str(uuid.uuid4())}
    values.update(fields)
    return pb.CreateWebhookRequest(**values)


async def _refused(call: Any, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()
    return err.value


def _fields(err: grpc.aio.AioRpcError) -> list[str]:
    """The fields the error's BadRequest detail names."""
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            detail = error_details_pb2.BadRequest()
            assert status.details[0].Unpack(detail)
            return [v.field for v in detail.field_violations]
    return []


def _secret(size: int) -> str:
    return "whsec_" + base64.b64encode(bytes(size)).decode()


@pytest.mark.parametrize(("fields", "field"), [
    ({"webhook_id": ""}, "webhook_id"), ({"webhook_id": "Has Spaces"}, "webhook_id"),
    ({"url": ""}, "url"), ({"url": "ftp://example.com/x"}, "url"),
    ({"url": "example.com/hook"}, "url"), ({"url": "https:///no-host"}, "url"),
    ({"url": "https://u:p@example.com/"}, "url"), ({"url": "https://example.com/#f"}, "url"),
    ({"url": "https://example.com/" + "x" * 2000}, "url"),
    ({"event_types": []}, "event_types"),
    ({"event_types": ["customer.*", "customer.teleported"]}, "event_types[1]"),
    ({"event_types": ["nothing.*"]}, "event_types[0]"),
    ({"event_types": ["contact.received"]}, "event_types[0]"),
    ({"customer_id": "not-a-uuid"}, "customer_id"),
    ({"max_attempts": 31}, "max_attempts"), ({"max_attempts": -2}, "max_attempts"),
    ({"secret": "s3cret"}, "secret"), ({"secret": "whsec_!!"}, "secret"),
    ({"secret": _secret(16)}, "secret"), ({"secret": _secret(65)}, "secret"),
    ({"content_mode": 7}, "content_mode")])
async def test_each_bad_create_names_its_field(svc: Running, fields: dict[str, Any],
                                               field: str) -> None:
    err = await _refused(stub(svc).CreateWebhook(_request(**fields), metadata=svc.metadata),
                         grpc.StatusCode.INVALID_ARGUMENT)
    assert _fields(err) == [field], err.details()


async def test_create_is_idempotent_and_names_what_differs(svc: Running) -> None:
    api = stub(svc)
    request = _request(description="POS sync")
    first = await api.CreateWebhook(request, metadata=svc.metadata)
    assert (first.state, first.max_attempts, first.description) == ("active", 8, "POS sync")
    assert first.secret.startswith("whsec_") and first.event_types == ["customer.*"]
    again = await api.CreateWebhook(request, metadata=svc.metadata)
    assert again == first  # the generated secret too: a lost answer can be asked again
    changes: list[tuple[dict[str, Any], str]] = [
        ({"url": "https://example.com/other"}, "url"), ({"max_attempts": 3}, "max_attempts"),
        ({"secret": _secret(32)}, "secret"),
        ({"content_mode": pb.CONTENT_MODE_STRUCTURED}, "content_mode")]
    for changed, named in changes:
        different = pb.CreateWebhookRequest()
        different.CopyFrom(request)
        for name, value in changed.items():
            setattr(different, name, value)
        err = await _refused(api.CreateWebhook(different, metadata=svc.metadata),
                             grpc.StatusCode.ALREADY_EXISTS)
        assert f"different {named}" in (err.details() or "")
    given = _request(secret=_secret(24), max_attempts=1)
    made = await api.CreateWebhook(given, metadata=svc.metadata)
    assert made.secret == given.secret and made.max_attempts == 1
    assert await api.CreateWebhook(given, metadata=svc.metadata) == made
    generated = pb.CreateWebhookRequest()
    generated.CopyFrom(given)
    generated.secret = ""
    err = await _refused(api.CreateWebhook(generated, metadata=svc.metadata),
                         grpc.StatusCode.ALREADY_EXISTS)
    assert "different secret" in (err.details() or "")


async def test_list_and_delete(svc: Running) -> None:
    api = stub(svc)
    hook = await api.CreateWebhook(_request(), metadata=svc.metadata)
    listed = await api.ListWebhooks(pb.ListWebhooksRequest(), metadata=svc.metadata)
    [mine] = [w for w in listed.webhooks if w.webhook_id == hook.webhook_id]
    assert mine.secret == "" and mine.url == NOWHERE
    deleted = await api.DeleteWebhook(pb.DeleteWebhookRequest(webhook_id=hook.webhook_id),
                                      metadata=svc.metadata)
    assert deleted.state == "deleted"
    active = await api.ListWebhooks(pb.ListWebhooksRequest(), metadata=svc.metadata)
    assert hook.webhook_id not in [w.webhook_id for w in active.webhooks]
    every = await api.ListWebhooks(pb.ListWebhooksRequest(include_deleted=True),
                                   metadata=svc.metadata)
    assert hook.webhook_id in [w.webhook_id for w in every.webhooks]
    # The same create again returns it as it is (deleted); ids are not reused.
    request = _request(webhook_id=hook.webhook_id, customer_id=hook.customer_id)
    assert (await api.CreateWebhook(request, metadata=svc.metadata)).state == "deleted"


async def test_unknown_ids_are_not_found(svc: Running) -> None:
    api, unknown = stub(svc), "no-such-hook"
    for call in (
            api.DeleteWebhook(pb.DeleteWebhookRequest(webhook_id=unknown), metadata=svc.metadata),
            api.ListWebhookDeliveries(pb.ListWebhookDeliveriesRequest(webhook_id=unknown),
                                      metadata=svc.metadata),
            api.ReplayWebhookDeliveries(pb.ReplayWebhookDeliveriesRequest(webhook_id=unknown),
                                        metadata=svc.metadata)):
        err = await _refused(call, grpc.StatusCode.NOT_FOUND)
        assert unknown in (err.details() or "")


async def test_bad_list_and_replay_requests_name_their_field(svc: Running) -> None:
    api = stub(svc)
    hook = await api.CreateWebhook(_request(), metadata=svc.metadata)
    for request, field in [
            (pb.ListWebhookDeliveriesRequest(webhook_id=hook.webhook_id, state="lost"), "state"),
            (pb.ListWebhookDeliveriesRequest(webhook_id=hook.webhook_id, page_token="zz"),
             "page_token"),
            (pb.ListWebhookDeliveriesRequest(webhook_id=hook.webhook_id, page_size=-1),
             "page_size"),
            (pb.ListWebhookDeliveriesRequest(), "webhook_id")]:
        err = await _refused(api.ListWebhookDeliveries(request, metadata=svc.metadata),
                             grpc.StatusCode.INVALID_ARGUMENT)
        assert _fields(err) == [field]
    for ids, field in [(["nope"], "delivery_ids[0]"),
                       ([str(uuid.uuid4()), "x"], "delivery_ids[1]"),
                       ([str(uuid.uuid4())], "delivery_ids[0]")]:
        err = await _refused(api.ReplayWebhookDeliveries(pb.ReplayWebhookDeliveriesRequest(
            webhook_id=hook.webhook_id, delivery_ids=ids), metadata=svc.metadata),
            grpc.StatusCode.INVALID_ARGUMENT)
        assert _fields(err) == [field]
    nothing = await api.ReplayWebhookDeliveries(pb.ReplayWebhookDeliveriesRequest(
        webhook_id=hook.webhook_id), metadata=svc.metadata)
    assert nothing.replayed == 0
    empty = await api.ListWebhookDeliveries(pb.ListWebhookDeliveriesRequest(
        webhook_id=hook.webhook_id, state="failed"), metadata=svc.metadata)
    assert not empty.deliveries and not empty.next_page_token


async def test_the_service_delivers(svc: Running) -> None:
    cid = str(uuid.uuid4())
    with Receiver() as receiver:
        hook = await stub(svc).CreateWebhook(_request(url=receiver.url, customer_id=cid),
                                             metadata=svc.metadata)
        event = Envelope(data=CustomerUpdated(customer_id=cid, version=1, changed=["name"]),
                         subject=cid, source="/crm/customers", time=datetime.now(UTC))
        bootstrap = svc.runner.settings.kafka_bootstrap_servers
        assert bootstrap
        await produce_envelopes(bootstrap, [event])
        [request] = await receiver.wait_for(1)
        assert verify_webhook(hook.secret, request.headers, request.body) == event.id


def test_no_webhook_call_answered_internal() -> None:
    """Runs last in this module: whatever the calls above sent."""
    for method in METHODS:
        for code in ("INTERNAL", "UNKNOWN"):
            assert not REGISTRY.get_sample_value("crm_grpc_requests_total", {
                "service": "loyalty", "method": method, "code": code}), (method, code)
    assert REGISTRY.get_sample_value("crm_grpc_requests_total", {
        "service": "loyalty", "method": "CreateWebhook", "code": "INVALID_ARGUMENT"})
