"""gRPC methods of webhooks (part of the Loyalty servicer): subscriptions,
their deliveries, and replays of parked ones. Protobuf in and out;
:mod:`webhooks` validates, :mod:`webhook_store` holds the rows.

CreateWebhook is idempotent on ``webhook_id``: the same request again
returns the stored webhook, its secret included (a caller whose first
answer was lost still learns a generated secret); a different request is
ALREADY_EXISTS naming the fields that differ. The secret is returned by
CreateWebhook only. Deleted webhooks keep their id (never reused) and their
deliveries' history until retention.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import asyncpg
import grpc

from crm.loyalty.v1 import loyalty_pb2 as pb
from crm_runtime import uow
from crm_runtime.convert import page_size, parse_uuid, read_time_page_token, time_page_token
from crm_runtime.convert import timestamp as ts
from crm_runtime.db import Conn
from crm_runtime.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    quote,
)
from services.loyalty import settings
from services.loyalty import webhook_store as hooks
from services.loyalty.webhooks import (
    BINARY,
    STATES,
    STRUCTURED,
    ContentMode,
    WebhookSpec,
    known_types,
    validate,
)

_MODES: dict[pb.ContentMode.ValueType, ContentMode] = {pb.CONTENT_MODE_UNSPECIFIED: BINARY,
                                  pb.CONTENT_MODE_BINARY: BINARY,
                                  pb.CONTENT_MODE_STRUCTURED: STRUCTURED}
_MODE_PB = {BINARY: pb.CONTENT_MODE_BINARY, STRUCTURED: pb.CONTENT_MODE_STRUCTURED}


@cache
def _default_max_attempts() -> int:
    """CRM_LOYALTY_WEBHOOK_MAX_ATTEMPTS (read once, as the service read it at start)."""
    return settings.load().webhook_max_attempts


def webhook_to_pb(row: Any, *, secret: bool = False) -> pb.Webhook:
    return pb.Webhook(
        webhook_id=row["webhook_id"], url=row["url"], event_types=list(row["event_types"]),
        customer_id=str(row["customer_id"] or ""), content_mode=_MODE_PB[row["content_mode"]],
        max_attempts=row["max_attempts"], secret=row["secret"] if secret else "",
        description=row["description"], state=row["state"], created_at=ts(row["created_at"]),
        deleted_at=ts(row["deleted_at"]), pending=row["pending"], delivered=row["delivered"],
        failed=row["failed"])


def delivery_to_pb(row: Any) -> pb.WebhookDelivery:
    return pb.WebhookDelivery(
        delivery_id=str(row["delivery_id"]), webhook_id=row["webhook_id"],
        event_id=row["event_id"], event_type=row["event_type"], subject=row["subject"],
        state=row["state"], attempts=row["attempts"], last_status_code=row["last_status_code"],
        last_error=row["last_error"], last_response=row["last_response"],
        next_attempt_at=ts(row["next_attempt_at"]) if row["state"] == "pending" else None,
        delivered_at=ts(row["delivered_at"]), created_at=ts(row["created_at"]))


def spec_of(request: pb.CreateWebhookRequest) -> WebhookSpec:
    """The subscription a request asks for; INVALID_ARGUMENT naming the field."""
    mode = _MODES.get(request.content_mode)
    if mode is None:
        raise InvalidArgument("content_mode", f"{request.content_mode} is not a ContentMode")
    return validate(webhook_id=request.webhook_id, url=request.url,
                    event_types=list(request.event_types), customer_id=request.customer_id,
                    content_mode=mode, max_attempts=request.max_attempts, secret=request.secret,
                    description=request.description,
                    default_max_attempts=_default_max_attempts(), known=known_types())


def differing(row: Any, spec: WebhookSpec) -> list[str]:
    """The fields of a stored webhook a create request states otherwise."""
    found = [name for name, stored, asked in [
        ("url", row["url"], spec.url),
        ("event_types", list(row["event_types"]), list(spec.event_types)),
        ("customer_id", row["customer_id"], spec.customer_id),
        ("content_mode", row["content_mode"], spec.content_mode),
        ("max_attempts", row["max_attempts"], spec.max_attempts),
        ("description", row["description"], spec.description)] if stored != asked]
    if (row["secret_generated"] != spec.secret_generated
            or (not spec.secret_generated and row["secret"] != spec.secret)):
        found.append("secret")
    return found


class WebhookApi:
    """CreateWebhook, ListWebhooks, DeleteWebhook, ListWebhookDeliveries and
    ReplayWebhookDeliveries; mixed into the servicer of :mod:`api`."""

    _pool: asyncpg.Pool

    async def CreateWebhook(self, request: pb.CreateWebhookRequest,
                            context: grpc.aio.ServicerContext) -> pb.Webhook:
        spec = spec_of(request)

        async def create(conn: Conn) -> Any:
            if not await hooks.insert_webhook(conn, spec):
                row = await hooks.webhook(conn, spec.webhook_id)
                changed = differing(row, spec)
                if changed:
                    raise AlreadyExists(
                        f"webhook {spec.webhook_id!r} exists with a different "
                        f"{', '.join(changed)} (webhook ids are never reused; choose another "
                        "or delete it and create a new one)")
                return row
            return await hooks.webhook(conn, spec.webhook_id)

        return webhook_to_pb(await uow.run(self._pool, create), secret=True)

    async def ListWebhooks(self, request: pb.ListWebhooksRequest,
                           context: grpc.aio.ServicerContext) -> pb.ListWebhooksResponse:
        rows = await uow.run(self._pool, lambda c: hooks.webhooks(c, request.include_deleted))
        return pb.ListWebhooksResponse(webhooks=[webhook_to_pb(r) for r in rows])

    async def DeleteWebhook(self, request: pb.DeleteWebhookRequest,
                            context: grpc.aio.ServicerContext) -> pb.Webhook:
        async def delete(conn: Conn) -> Any:
            await _existing(conn, request.webhook_id, lock=True)
            await hooks.delete_webhook(conn, request.webhook_id)
            return await hooks.webhook(conn, request.webhook_id)

        return webhook_to_pb(await uow.run(self._pool, delete))

    async def ListWebhookDeliveries(self, request: pb.ListWebhookDeliveriesRequest,
                                    context: grpc.aio.ServicerContext
                                    ) -> pb.ListWebhookDeliveriesResponse:
        size = page_size(request.page_size)
        if request.state and request.state not in STATES:
            raise InvalidArgument("state", f"{quote(request.state)} is not one of "
                                           f"{list(STATES)}")
        after = read_time_page_token(request.page_token) if request.page_token else None

        async def page(conn: Conn) -> list[Any]:
            await _existing(conn, request.webhook_id)
            return await hooks.deliveries(conn, request.webhook_id, state=request.state,
                                          subject=request.subject, after=after, limit=size)

        rows = await uow.run(self._pool, page)
        token = (time_page_token(rows[-1]["created_at"], rows[-1]["delivery_id"])
                 if len(rows) == size else "")
        return pb.ListWebhookDeliveriesResponse(deliveries=[delivery_to_pb(r) for r in rows],
                                                next_page_token=token)

    async def ReplayWebhookDeliveries(self, request: pb.ReplayWebhookDeliveriesRequest,
                                      context: grpc.aio.ServicerContext
                                      ) -> pb.ReplayWebhookDeliveriesResponse:
        asked = [parse_uuid(d, f"delivery_ids[{i}]") for i, d in enumerate(request.delivery_ids)]

        async def replay(conn: Conn) -> int:
            row = await _existing(conn, request.webhook_id, lock=True)
            if row["state"] != "active":
                raise FailedPrecondition(f"webhook {request.webhook_id!r} is deleted: it "
                                         "delivers nothing")
            if asked:
                failed = await hooks.failed_among(conn, request.webhook_id, asked)
                for i, delivery_id in enumerate(asked):
                    if delivery_id not in failed:
                        raise InvalidArgument(
                            f"delivery_ids[{i}]", f"{delivery_id} is not a failed delivery of "
                                                  f"webhook {request.webhook_id!r}")
            count = await hooks.replay(conn, request.webhook_id, asked or None)
            if count:
                await hooks.notify(conn)
            return count

        return pb.ReplayWebhookDeliveriesResponse(replayed=await uow.run(self._pool, replay))


async def _existing(conn: Conn, webhook_id: str, *, lock: bool = False) -> Any:
    if not webhook_id:
        raise InvalidArgument("webhook_id", "required")
    row = await hooks.webhook(conn, webhook_id, lock=lock)
    if row is None:
        raise NotFound("webhook", webhook_id)
    return row
