"""Event handlers of the customers service (consumer group ``crm-customers``).

Purchases arrive as ``interaction.recorded`` events of kind ``purchase``; each
is counted once (the inbox drops redeliveries, and the purchase id, the
interaction id, is unique per customer as a second guard). An event that
can never be applied (an amount beyond the per-purchase maximum or past
what the customer's total holds, a time outside the event window, an
interaction counted before with another amount) is dead-lettered with a
reason kind naming why (:func:`refusals`). The other services'
acknowledgements of an erasure (``<service>.erasure_completed``, on their
topics) complete its parts (:func:`on_erasure_completed`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from crm_contracts.interactions import (
    DissatisfactionSignal,
    InteractionRecorded,
    SurveyResponseRecorded,
)
from crm_contracts.loyalty import ConsentWithdrawn
from crm_contracts.money import OutOfRange, check_amount_minor
from crm_contracts.privacy import ErasureCompleted
from crm_contracts.times import check_event_time
from crm_runtime import logs
from crm_runtime.convert import parse_uuid
from crm_runtime.db import Conn
from crm_runtime.errors import AlreadyExists, InvalidArgument, NotFound
from crm_runtime.events import Envelope, PoisonMessage
from crm_runtime.scheduler import DueWork, WorkHandler
from crm_runtime.service import Route, on
from services.customers import commands, erasures, memberships, privacy, risk, store


def on_interaction_recorded(ctx: commands.Context) -> Route:
    """Purchases of the whole batch are counted together (one statement per
    step); a bad one makes the runtime re-run the batch record by record, and
    that one is dead-lettered with a named reason (:func:`refusals`). Each
    purchase is read in its event's log and trace context (its span, when
    tracing is on), and the events it causes continue that span."""

    async def handle(conn: Conn, events: list[Envelope[InteractionRecorded]]) -> None:
        purchases = []
        now = ctx.clock.now()
        for env in logs.each(events):
            data = env.data
            if data.kind != "purchase":
                continue
            if not data.currency:
                raise PoisonMessage("invalid_payload", "currency: required for a purchase")
            with refusals():
                check_amount_minor(data.amount_minor, "amount_minor")
                occurred_at = checked_time(data.occurred_at, now)
            purchases.append(commands.Purchase(
                customer_id=parse_uuid(data.customer_id),
                purchase_id=f"interaction:{data.interaction_id}",
                amount_minor=data.amount_minor, currency=data.currency,
                occurred_at=occurred_at, causing_event_id=env.id,
                traceparent=logs.current_traceparent()))
        if purchases:
            with refusals():
                await commands.record_purchases(conn, ctx, purchases)

    return on(InteractionRecorded, handle)


def on_dissatisfaction_signal(ctx: commands.Context) -> Route:
    async def handle(conn: Conn, events: list[Envelope[DissatisfactionSignal]]) -> None:
        for env in logs.each(events):
            data = env.data
            with refusals():
                occurred_at = checked_time(data.occurred_at, ctx.clock.now())
            await risk.record_dissatisfaction(
                conn, ctx, parse_uuid(data.customer_id), reason=data.reason,
                occurred_at=occurred_at, event_id=env.id)

    return on(DissatisfactionSignal, handle)


def on_survey_response(ctx: commands.Context) -> Route:
    async def handle(conn: Conn, events: list[Envelope[SurveyResponseRecorded]]) -> None:
        for env in logs.each(events):
            data = env.data
            with refusals():
                occurred_at = checked_time(data.occurred_at, ctx.clock.now())
            await risk.record_survey(
                conn, ctx, parse_uuid(data.customer_id), csat=data.csat, nps=data.nps,
                occurred_at=occurred_at, event_id=env.id)

    return on(SurveyResponseRecorded, handle)


def on_consent_withdrawn(ctx: commands.Context) -> Route:
    """A customer withdrew a consent through another service (an unsubscribe
    in loyalty): recorded as the customer's decision at the time they made
    it, so a grant made later is kept (:func:`privacy.set_consent`). For an
    id that is no customer: the dead letter ``unknown_customer``; for an
    erased customer there is nothing left to withdraw."""

    async def handle(conn: Conn, events: list[Envelope[ConsentWithdrawn]]) -> None:
        for env in logs.each(events):
            data = env.data
            customer_id = parse_uuid(data.customer_id)
            with refusals():
                at = checked_time(data.withdrawn_at, ctx.clock.now(), "withdrawn_at")
            try:
                rec = await store.load(conn, customer_id, full=False)
            except NotFound:
                raise PoisonMessage("unknown_customer",
                                    f"customer_id: no customer {customer_id}") from None
            if rec.erased_at is not None:
                continue
            with refusals():
                await privacy.set_consent(conn, ctx, customer_id, purpose=data.purpose,
                                          granted=False, source=data.source, at=at)

    return on(ConsentWithdrawn, handle)


def on_erasure_completed(ctx: commands.Context, payload: type[ErasureCompleted]) -> Route:
    """A service scrubbed an erased customer's data (``payload``: its
    ``<service>.erasure_completed``): its part of the erasure is complete
    (:func:`erasures.acknowledge`; one for an erasure never requested here
    is logged and ignored)."""

    async def handle(conn: Conn, events: list[Envelope[ErasureCompleted]]) -> None:
        for env in logs.each(events):
            data = env.data
            with refusals():
                customer_id = parse_uuid(data.customer_id)
                at = checked_time(data.erased_at, ctx.clock.now(), "erased_at")
            await erasures.acknowledge(conn, customer_id, data.service, at)

    return on(payload, handle)


def checked_time(value: datetime, now: datetime, field: str = "occurred_at") -> datetime:
    """An event's time, if it can be when something happened
    (:func:`crm_contracts.times.check_event_time`: from 2000 to 15 minutes
    ahead of the service's clock); :class:`~crm_contracts.money.OutOfRange`
    otherwise (a date beyond the calendar's end would overflow the churn
    window, a year-1 date is stored as ``-infinity``)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidArgument(field, "has no UTC offset")
    try:
        return check_event_time(value, now, field)
    except InvalidArgument as exc:
        raise OutOfRange(exc.field, exc.problem) from None


@contextmanager
def refusals() -> Iterator[None]:
    """What a consumed event cannot be, as the dead-letter reason it gets:
    an amount or time out of range (``out_of_range``), a purchase id counted
    before for another sale (``already_exists``), any other bad field
    (``invalid_payload``); never a ``handler_error``."""
    try:
        yield
    except OutOfRange as exc:
        raise PoisonMessage("out_of_range", str(exc)) from None
    except InvalidArgument as exc:
        raise PoisonMessage("invalid_payload", str(exc)) from None
    except AlreadyExists as exc:
        raise PoisonMessage("already_exists", str(exc)) from None


def on_churn_due(ctx: commands.Context) -> WorkHandler:
    async def run(conn: Conn, work: DueWork) -> None:
        await commands.churn(conn, ctx, parse_uuid(work.key), work.key,
                             work.payload.get("window_days"))

    return run


def on_risk_review(ctx: commands.Context) -> WorkHandler:
    async def run(conn: Conn, work: DueWork) -> None:
        await risk.review_risk(conn, ctx, parse_uuid(work.key), work.key)

    return run


def on_segment_evaluation(ctx: commands.Context) -> WorkHandler:
    """One page of a segment's pass (:func:`memberships.evaluate_page`)."""

    async def run(conn: Conn, work: DueWork) -> None:
        await memberships.evaluate_page(conn, ctx, work.key, work.payload.get("after"),
                                        work.payload.get("cause", "segment_defined"))

    return run
