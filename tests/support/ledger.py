"""A tiny test-only service that exercises the runtime end to end.

It consumes ``test.entry_requested`` events, adds each amount to a balance and
records the entry, and publishes ``test.entry_booked`` through the outbox, in
the same transaction. ``applied_entries`` has the event id as primary key, so
an effect applied twice would fail loudly instead of hiding.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from crm_runtime import outbox
from crm_runtime.consumer import BatchHandler
from crm_runtime.db import Conn
from crm_runtime.events import Envelope, EventPayload, event
from crm_runtime.service import ServiceContext, ServiceParts, ServiceSpec, Subscription

MIGRATIONS = Path(__file__).parent / "ledger_migrations"


@event("test.entry_requested", topic="test.ledger.requests")
class EntryRequested(EventPayload):
    customer_id: str = Field(min_length=1)
    amount: int = Field(ge=0, le=1_000_000)


@event("test.entry_booked", topic="test.ledger.booked")
class EntryBooked(EventPayload):
    customer_id: str
    amount: int
    balance: int


def make_handler(booked_topic: str, lanes: int) -> BatchHandler:
    async def handle(conn: Conn, events: list[Envelope]) -> None:
        booked = []
        for env in events:
            data = env.data
            assert isinstance(data, EntryRequested)
            if data.amount == 666:
                raise ValueError("the handler refuses amount 666")
            await conn.execute(
                "INSERT INTO applied_entries (event_id, customer_id, amount) VALUES ($1, $2, $3)",
                env.id, data.customer_id, data.amount)
            balance = await conn.fetchval(
                """INSERT INTO balances (customer_id, total, entries) VALUES ($1, $2, 1)
                   ON CONFLICT (customer_id) DO UPDATE
                   SET total = balances.total + EXCLUDED.total, entries = balances.entries + 1
                   RETURNING total""", data.customer_id, data.amount)
            booked.append(Envelope(
                data=EntryBooked(customer_id=data.customer_id, amount=data.amount,
                                 balance=balance),
                subject=data.customer_id, source="/crm/test-ledger", topic_override=booked_topic))
        await outbox.add(conn, booked, lanes=lanes)

    return handle


def ledger_spec(name: str, requests_topic: str, booked_topic: str) -> ServiceSpec:
    def build(ctx: ServiceContext) -> ServiceParts:
        return ServiceParts(subscriptions=[Subscription(
            topics=[requests_topic],
            handlers={"test.entry_requested": make_handler(booked_topic, ctx.lanes)})])

    return ServiceSpec(name=name, migrations=MIGRATIONS, build=build)
