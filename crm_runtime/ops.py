"""The ``crm.ops.v1.Operations`` servicer every service serves: a snapshot of
the process's pipelines for operators and health dashboards."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from crm.ops.v1 import ops_pb2, ops_pb2_grpc
from crm_contracts import times
from crm_runtime.clock import Clock, ManualClock, OffsetClock
from crm_runtime.errors import FailedPrecondition, InvalidArgument
from crm_runtime.version import VERSION


class OperationsServicer(ops_pb2_grpc.OperationsServicer):
    def __init__(self, pool: asyncpg.Pool, service: str, schema: str,
                 clock: Clock | None = None) -> None:
        self._pool = pool
        self._service = service
        self._schema = schema
        self._clock = clock  # set only when clock control is allowed

    async def AdvanceClock(self, request: ops_pb2.AdvanceClockRequest,
                           context: grpc.aio.ServicerContext) -> ops_pb2.AdvanceClockResponse:
        if not isinstance(self._clock, OffsetClock | ManualClock):
            raise FailedPrecondition("clock control is disabled; it exists for development "
                                     "and demos (CRM_DEV_CLOCK_CONTROL=true)")
        if request.seconds <= 0:
            raise InvalidArgument("seconds", f"must be positive, got {request.seconds}")
        step = timedelta(seconds=request.seconds)
        if self._clock.now() + step >= times.LATEST:
            raise InvalidArgument("seconds", f"would move the clock past {times.LATEST:%Y-%m-%d}, "
                                             "the latest time the product accepts")
        self._clock.advance(step)
        now = Timestamp()
        now.FromDatetime(self._clock.now())
        return ops_pb2.AdvanceClockResponse(now=now)

    async def GetStatus(self, request: ops_pb2.GetStatusRequest,
                        context: grpc.aio.ServicerContext) -> ops_pb2.GetStatusResponse:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                """SELECT (SELECT count(*) FROM outbox WHERE sent_at IS NULL) AS backlog,
                          (SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)
                             FROM outbox WHERE sent_at IS NULL) AS oldest,
                          (SELECT count(*) FROM dead_letters) AS dead,
                          (SELECT count(*) FROM scheduled_work) AS scheduled,
                          (SELECT min(due_at) FROM scheduled_work) AS next_due""")
            migrations = await conn.fetch(
                "SELECT source, version, name FROM schema_migrations"
                " ORDER BY applied_at, source, version")
        assert row is not None
        reply = ops_pb2.GetStatusResponse(
            service=self._service, version=VERSION, schema=self._schema,
            outbox_backlog=row["backlog"], outbox_oldest_age_seconds=float(row["oldest"]),
            dead_letters=row["dead"], scheduled_work=row["scheduled"],
            migrations=[f"{m['source']}/{m['version']:03d}_{m['name']}" for m in migrations])
        if row["next_due"] is not None:
            ts = Timestamp()
            ts.FromDatetime(row["next_due"])
            reply.next_due.CopyFrom(ts)
        return reply
