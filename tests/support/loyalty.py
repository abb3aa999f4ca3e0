"""Helpers for tests of the loyalty service: the customer and interaction
events it consumes, its gRPC stub, and its events read back from
``crm.loyalty.v1``."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from crm.loyalty.v1 import loyalty_pb2 as pb
from crm.loyalty.v1 import loyalty_pb2_grpc
from crm_contracts.customers import (
    ConsentChanged,
    CustomerAtRisk,
    CustomerErased,
    CustomerRegistered,
    CustomerRiskCleared,
    CustomersMerged,
    PurchaseRecorded,
    StageChanged,
)
from crm_contracts.interactions import CaseBreached, CaseResolved
from crm_contracts.topics import LOYALTY
from crm_runtime.events import Envelope, EventPayload
from tests.support.gate import mirror
from tests.support.kafka import produce_envelopes, read_topic, wait_for
from tests.support.services import Running


def stub(svc: Running) -> loyalty_pb2_grpc.LoyaltyStub:
    return loyalty_pb2_grpc.LoyaltyStub(svc.channel)


def envelope(data: EventPayload, customer_id: str, at: datetime) -> Envelope:
    source = "/crm/customers" if data.event_type.startswith("customer.") else "/crm/interactions"
    return Envelope(data=data, subject=customer_id, source=source, time=at)


def registered(customer_id: str, at: datetime, *, referred_by: str = "",
               preferred_channel: str = "email", referral_code: str = "") -> Envelope:
    return envelope(CustomerRegistered(customer_id=customer_id, stage="potential",
                                       preferred_channel=preferred_channel, has_email=True,
                                       source="test", referred_by=referred_by,
                                       referral_code=referral_code),
                    customer_id, at)


def consent(customer_id: str, purpose: str, granted: bool, at: datetime, *,
            changed_at: datetime | None = None) -> Envelope:
    """The customer's decision, published at ``at`` and made at ``changed_at``
    (default ``at``)."""
    return envelope(ConsentChanged(customer_id=customer_id, purpose=purpose, granted=granted,
                                   source="test", changed_at=changed_at or at), customer_id, at)


def stage_changed(customer_id: str, from_stage: str, to_stage: str, count: int,
                  at: datetime, cause: str = "purchase") -> Envelope:
    return envelope(StageChanged(customer_id=customer_id, from_stage=from_stage,
                                 to_stage=to_stage, cause=cause,
                                 causing_event_id=str(uuid.uuid4()), purchase_count=count),
                    customer_id, at)


def purchase_recorded(customer_id: str, amount: int, count: int, at: datetime) -> Envelope:
    return envelope(PurchaseRecorded(customer_id=customer_id, purchase_id=str(uuid.uuid4()),
                                     amount_minor=amount, currency="EUR", occurred_at=at,
                                     purchase_count=count), customer_id, at)


def at_risk(customer_id: str, at: datetime) -> Envelope:
    return envelope(CustomerAtRisk(customer_id=customer_id, reasons=["low_csat"],
                                   causing_event_id=str(uuid.uuid4())), customer_id, at)


def risk_cleared(customer_id: str, at: datetime) -> Envelope:
    return envelope(CustomerRiskCleared(customer_id=customer_id,
                                        causing_event_id=str(uuid.uuid4())), customer_id, at)


def erased(customer_id: str, at: datetime) -> Envelope:
    return envelope(CustomerErased(customer_id=customer_id), customer_id, at)


def merged(survivor: str, other: str, at: datetime, stage: str = "repeat",
           count: int = 2) -> Envelope:
    return envelope(CustomersMerged(customer_id=survivor, merged_customer_id=other,
                                    stage=stage, purchase_count=count), survivor, at)


def case_breached(customer_id: str, at: datetime, kind: str = "complaint") -> Envelope:
    return envelope(CaseBreached(case_id=str(uuid.uuid4()), customer_id=customer_id, kind=kind,
                                 channel="phone", unit="support", promised_by=at),
                    customer_id, at)


def case_resolved(customer_id: str, at: datetime, late: bool,
                  kind: str = "complaint") -> Envelope:
    return envelope(CaseResolved(case_id=str(uuid.uuid4()), customer_id=customer_id, kind=kind,
                                 channel="phone", unit="support", resolved_at=at,
                                 promised_by=at, late=late), customer_id, at)


async def produce(svc: Running, *envelopes: Envelope) -> None:
    """Produce the events loyalty consumes; what they say of customers is
    mirrored into the customers service's tables first, for the contact gate
    (:func:`tests.support.gate.mirror`)."""
    bootstrap = svc.runner.settings.kafka_bootstrap_servers
    assert bootstrap and svc.runner.pool is not None
    await mirror(svc.runner.pool, envelopes)
    await produce_envelopes(bootstrap, envelopes)


async def loyalty_events(svc: Running, customer_id: str, expect: int, *, settle: float = 0.5,
                         timeout: float = 30) -> list[tuple[str, dict[str, Any]]]:
    """(type, data) of this customer's events on crm.loyalty.v1, once there
    are at least ``expect`` of them (then ``settle`` seconds more, so
    duplicates would show)."""
    bootstrap = svc.runner.settings.kafka_bootstrap_servers
    assert bootstrap
    found: list[tuple[str, dict[str, Any]]] = []

    async def enough() -> bool:
        records = await read_topic(bootstrap, LOYALTY, expect=0, timeout=5, settle=0.2)
        found[:] = [(dict(r.headers)["ce_type"].decode(), json.loads(r.value))
                    for r in records if r.key == customer_id.encode()]
        return len(found) >= expect

    await wait_for(enough, timeout=timeout, what=f"{expect} loyalty events of {customer_id}")
    if settle:
        records = await read_topic(bootstrap, LOYALTY, expect=0, timeout=5, settle=settle)
        found[:] = [(dict(r.headers)["ce_type"].decode(), json.loads(r.value))
                    for r in records if r.key == customer_id.encode()]
    return found


def of_type(events: list[tuple[str, dict[str, Any]]], event_type: str) -> list[dict[str, Any]]:
    return [d for t, d in events if t == event_type]


async def profile(svc: Running, customer_id: str) -> pb.LoyaltyProfile:
    reply: pb.LoyaltyProfile = await stub(svc).GetLoyaltyProfile(
        pb.GetLoyaltyProfileRequest(customer_id=customer_id), metadata=svc.metadata)
    return reply


async def profile_when(svc: Running, customer_id: str, check: Any,
                       what: str = "profile condition") -> pb.LoyaltyProfile:
    """The profile once ``check(profile)`` holds (NOT_FOUND counts as not yet)."""
    import grpc

    latest: list[pb.LoyaltyProfile] = []

    async def holds() -> bool:
        try:
            p = await profile(svc, customer_id)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        latest[:] = [p]
        return bool(check(p))

    await wait_for(holds, timeout=30, what=what)
    return latest[0]


def new_id() -> str:
    return str(uuid.uuid4())
