"""What the customers service does, one function per command.

Each function runs inside the caller's transaction (a gRPC call or a consumed
batch), applies the pure rules from :mod:`domain`, writes through
:mod:`store`, and queues the events it causes in the outbox, so state and
events commit together. The gRPC API and the event handlers only translate
their inputs and call these.

Consent, erasure and the data-subject export are in :mod:`privacy`; links
and merges in :mod:`merges`; the at-risk state in :mod:`risk`.

Why over 500 lines: the rest of the use cases are many and small
(registration, profile edits, purchases and stages, churn, segments); each is
a few lines of orchestration over :mod:`domain` and :mod:`store`, and they
share steps (the events' segment names, the churn schedule) that splitting
them further would scatter.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from crm_contracts.customers import (
    CustomerRegistered,
    CustomerUpdated,
    CustomerWonBack,
    PurchaseRecorded,
    StageChanged,
)
from crm_contracts.money import total_overflow
from crm_contracts.times import check_event_time
from crm_contracts.vocabulary import Stage
from crm_runtime import logs, scheduler, uow
from crm_runtime.db import Conn
from crm_runtime.errors import (
    AlreadyExists,
    Conflict,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from crm_runtime.events import EventPayload
from crm_runtime.ids import read_uuid
from crm_runtime.uow import CommandContext
from services.customers import domain, memberships, metrics, segments, store
from services.customers.domain import Identity, StageChange

SOURCE = "/crm/customers"
CHURN = "customers.churn"


class SegmentCache:
    """The segment definitions, cached for a few seconds: every purchase needs
    them (churn-window overrides, the segments a stage change names), and they
    change rarely."""

    TTL_S = 5.0

    def __init__(self) -> None:
        self._rows: list[Any] = []
        self._until = 0.0

    async def get(self, conn: Conn) -> list[Any]:
        now = time.monotonic()
        if now >= self._until:
            self._rows = await store.all_segments(conn)
            self._until = now + self.TTL_S
        return self._rows

    def invalidate(self) -> None:
        """After a segment edit in this process (other replicas follow within the TTL)."""
        self._until = 0.0


@dataclass(frozen=True)
class Context(CommandContext):
    """What every command needs besides the connection."""

    source = SOURCE
    churn_window: timedelta = domain.DEFAULT_CHURN_WINDOW
    segments: SegmentCache = field(default_factory=SegmentCache)
    #: How long the other services have to acknowledge an erasure.
    erasure_ack_timeout: timedelta = timedelta(hours=1)


def _name_segments(payloads: Sequence[EventPayload], evaluation: memberships.Evaluation
                   ) -> list[EventPayload]:
    """Stage changes name the segments the customer is in after the change
    (loyalty rules match on them), as ``evaluation`` found them."""
    return [p.model_copy(update={"segment_keys": evaluation.segments_of(read_uuid(
        p.customer_id))}) if isinstance(p, StageChanged) else p for p in payloads]


async def emit_named(conn: Conn, ctx: Context, customer_id: uuid.UUID,
                     *payloads: EventPayload,
                     evaluation: memberships.Evaluation | None = None) -> None:
    """Queue the customer's events, stage changes with their segments named
    (from ``evaluation`` when the caller has evaluated the customer's
    segments already)."""
    if evaluation is None and any(isinstance(p, StageChanged) for p in payloads):
        evaluation = await memberships.evaluate(conn, ctx, [customer_id])
    if evaluation is not None:
        payloads = tuple(_name_segments(payloads, evaluation))
    await ctx.events.emit(conn, customer_id, payloads, time=ctx.clock.now())


async def register(conn: Conn, ctx: Context, *, display_name: str, identity: Identity,
                   profile: dict[str, Any], source: str,
                   referred_by: uuid.UUID | None = None, referral_code: str = "",
                   evaluate: bool = True) -> tuple[store.CustomerRecord, bool]:
    """Register a customer, or return the existing one that has any of the
    identifiers (registration is idempotent). The customer who recommended
    them is named either by id (``referred_by``, checked here) or by their
    referral code (``referral_code``, format checked here, carried on
    ``customer.registered`` for the loyalty service, which issued it, to
    resolve); loyalty rewards the referrer. A new customer's segments are
    evaluated unless ``evaluate`` is off (the caller evaluates a batch)."""
    if identity.is_empty():
        raise InvalidArgument("emails", "at least one email, phone or external id is required")
    if referral_code.strip():
        if referred_by is not None:
            raise InvalidArgument("referral_code", "give referral_code or "
                                                   "referred_by_customer_id, not both")
        referral_code = domain.normalise_referral_code(referral_code)
    else:
        referral_code = ""
    profile = domain.check_profile(profile)
    if referred_by is not None:
        referrer = await store.load(conn, referred_by, full=False)
        if referrer.erased_at is not None:
            raise FailedPrecondition(f"referrer {referred_by} was erased")
        referred_by = referrer.customer_id  # a merged referrer counts as the survivor
    # Serialise registrations of the same identifiers so two concurrent calls
    # cannot both create a customer.
    await store.lock_identifiers(conn, identity.keys())
    existing = await store.find_by_identity(conn, identity)
    if existing:
        return await store.load(conn, existing[0]), False
    now = ctx.clock.now()
    customer_id = uuid.uuid4()
    await store.insert(conn, customer_id, display_name.strip(), profile, now)
    await store.add_identifiers(conn, customer_id, identity)
    await emit_named(conn, ctx, customer_id, CustomerRegistered(
        customer_id=str(customer_id), stage=Stage.POTENTIAL.value,
        preferred_channel=profile.get("preferred_channel", ""),
        time_zone=profile.get("time_zone", ""),
        purchase_importance=profile.get("purchase_importance", ""),
        has_email=bool(identity.emails), has_phone=bool(identity.phones), source=source,
        referred_by=str(referred_by or ""), referral_code=referral_code))
    if evaluate:
        await memberships.refresh(conn, ctx, [customer_id], "registered")
    return await store.load(conn, customer_id), True


@dataclass(frozen=True)
class Registration:
    """One customer to register: :func:`register`'s arguments."""

    display_name: str
    identity: Identity
    profile: dict[str, Any]
    source: str
    referred_by: uuid.UUID | None = None
    referral_code: str = ""


async def register_many(conn: Conn, ctx: Context, registrations: Sequence[Registration]
                        ) -> list[tuple[store.CustomerRecord, bool] | InvalidArgument
                                  | DomainError]:
    """:func:`register` each, in order, in the caller's transaction: each in
    a savepoint, so one refused (its error in its place) leaves nothing
    behind and the others registered. Two with the same identifier get the
    same customer (the second finds the first's)."""
    # Lock every identifier of the call first, in the order register() takes
    # them, so two calls (or a call and a register()) cannot deadlock.
    await store.lock_identifiers(conn, set().union(*(r.identity.keys() for r in registrations)))
    results: list[tuple[store.CustomerRecord, bool] | InvalidArgument | DomainError] = []
    for r in registrations:
        try:
            async with uow.savepoint(conn):
                results.append(await register(
                    conn, ctx, display_name=r.display_name, identity=r.identity,
                    profile=r.profile, source=r.source, referred_by=r.referred_by,
                    referral_code=r.referral_code, evaluate=False))
        except (InvalidArgument, DomainError) as exc:
            results.append(exc)
    await memberships.refresh(conn, ctx, [r[0].customer_id for r in results
                                          if isinstance(r, tuple) and r[1]], "registered")
    return results


def require_active(rec: store.CustomerRecord) -> None:
    if rec.erased_at is not None:
        raise FailedPrecondition(f"customer {rec.customer_id} was erased")


async def update(conn: Conn, ctx: Context, customer_id: uuid.UUID, *, expected_version: int,
                 display_name: str | None, profile: dict[str, Any] | None,
                 add: Identity) -> store.CustomerRecord:
    rec = await store.load(conn, customer_id, lock=True)
    require_active(rec)
    if expected_version != rec.version:
        raise Conflict(f"customer {customer_id} is at version {rec.version}, "
                       f"not {expected_version}; reload and retry")
    changed = []
    if display_name is not None and display_name.strip() != rec.display_name:
        rec.display_name = display_name.strip()
        changed.append("display_name")
    if profile is not None:
        checked = domain.check_profile(profile)
        if checked != rec.profile:
            rec.profile = checked
            changed.append("profile")
    if not add.is_empty():
        taken = await store.add_identifiers(conn, customer_id, add)
        if taken:
            raise AlreadyExists(f"identifiers {taken} belong to another customer")
        changed.append("identifiers")
    if not changed:
        return rec
    version = await store.save_core(conn, rec, ctx.clock.now())
    await emit_named(conn, ctx, customer_id, CustomerUpdated(
        customer_id=str(customer_id), version=version, changed=changed))
    if "profile" in changed:
        await memberships.refresh(conn, ctx, [customer_id], "profile")
    return await store.load(conn, customer_id)


@dataclass(frozen=True)
class Purchase:
    """A sale to count for a customer, from an event or a gRPC call.

    ``time_given``: whether the caller said when the sale happened (a gRPC
    call may leave it out, meaning now); only a given time must match when
    the same purchase id comes again."""

    customer_id: uuid.UUID
    purchase_id: str
    amount_minor: int
    currency: str
    occurred_at: datetime
    causing_event_id: str
    traceparent: str = ""
    time_given: bool = True


async def record_purchase(conn: Conn, ctx: Context, customer_id: uuid.UUID, *,
                          purchase_id: str, amount_minor: int, currency: str,
                          occurred_at: datetime, causing_event_id: str,
                          time_given: bool = True) -> uuid.UUID:
    """Count one purchase (see :func:`record_purchases`); returns the id it
    counted for (a merged id's survivor)."""
    [counted_for] = await record_purchases(conn, ctx, [Purchase(
        customer_id, purchase_id, amount_minor, currency, occurred_at, causing_event_id,
        time_given=time_given)])
    return counted_for


async def record_purchases(conn: Conn, ctx: Context, purchases: list[Purchase]
                           ) -> list[uuid.UUID]:
    """Count each purchase once, move stages, schedule churn windows and queue
    the events, for a whole batch with one statement per step (so a consumed
    batch costs a handful of round trips, not a handful per purchase).
    Purchases of one customer apply in the order given. Erased customers are
    skipped: a late purchase event must not bring their data back.

    Refused (nothing of the call or batch is written): an amount beyond the
    per-purchase maximum or a time outside the event window
    (``InvalidArgument``; :class:`~crm_contracts.money.OutOfRange` for
    amounts), a purchase that would take the customer's total in its
    currency past what a 64-bit integer holds (``OutOfRange``), and a
    purchase id the customer used before for another amount, currency or
    time (``AlreadyExists``). A purchase id is the customer's own: another
    customer's sale with the same id is a different sale."""
    now = ctx.clock.now()
    checked = []
    for p in purchases:
        if not p.purchase_id:
            raise InvalidArgument("purchase_id", "required (the selling system's id of the sale)")
        check_event_time(p.occurred_at, now, "occurred_at")
        checked.append((p, domain.check_money(p.amount_minor, p.currency)))
    targets = await store.resolve_many(conn, sorted({p.customer_id for p in purchases}))
    for p in purchases:
        if p.customer_id not in targets:
            raise NotFound("customer", str(p.customer_id))
    recs = await store.lock_many(conn, sorted(set(targets.values())))
    live = [(p, cur) for p, cur in checked if recs[targets[p.customer_id]].erased_at is None]
    new = await store.insert_purchases(conn, [
        (targets[p.customer_id], p.purchase_id, p.amount_minor, cur, p.occurred_at,
         p.causing_event_id) for p, cur in live])
    await _same_sales(conn, [(targets[p.customer_id], p, cur) for p, cur in live], new)
    pending: list[tuple[uuid.UUID, list[EventPayload], str]] = []
    spend: dict[tuple[uuid.UUID, str], int] = {}
    history: list[tuple[uuid.UUID, str, str, str, str, datetime]] = []
    changed: dict[uuid.UUID, store.CustomerRecord] = {}
    for p, cur in live:
        cid = targets[p.customer_id]
        if (cid, p.purchase_id) not in new:
            continue  # counted before
        new.discard((cid, p.purchase_id))  # the same sale twice in one batch counts once
        rec = recs[cid]
        change = domain.stage_after_purchase(rec.stage, rec.purchase_count)
        rec.purchase_count += 1
        rec.first_purchase_at = min(filter(None, [rec.first_purchase_at, p.occurred_at]))
        rec.last_purchase_at = max(filter(None, [rec.last_purchase_at, p.occurred_at]))
        spend[(cid, cur)] = spend.get((cid, cur), 0) + p.amount_minor
        payloads: list[EventPayload] = [PurchaseRecorded(
            customer_id=str(cid), purchase_id=p.purchase_id, amount_minor=p.amount_minor,
            currency=cur, occurred_at=p.occurred_at, purchase_count=rec.purchase_count,
            causing_event_id=p.causing_event_id)]
        if change is not None:
            rec.closed_at = None
            payloads += _stage_changed(conn, rec, change, p.causing_event_id)
            history.append((cid, change.from_stage.value, change.to_stage.value,
                            change.cause.value, p.causing_event_id, now))
        pending.append((cid, payloads, p.traceparent or logs.current_traceparent()))
        changed[cid] = rec
    refused = await store.add_spend_many(conn, spend)
    if refused:
        cid, cur = refused[0]
        raise total_overflow(cur, f"customer {cid}")
    await store.add_stage_history_many(conn, history)
    await store.save_purchase_state_many(conn, list(changed.values()), now)
    await _schedule_churn_many(conn, ctx, list(changed.values()),
                               {cid: trace for cid, _, trace in pending})
    # One evaluation of the segments names the stage changes and settles the
    # memberships (their events after the purchases').
    evaluation = await memberships.evaluate(conn, ctx, list(changed))
    in_order = iter(_name_segments([e for _, events, _ in pending for e in events],
                                   evaluation))
    await ctx.events.write(conn, [ctx.events.envelope(cid, next(in_order), time=now,
                                                      traceparent=traceparent)
                                  for cid, events, traceparent in pending for _ in events])
    await memberships.settle(conn, ctx, evaluation, "purchase",
                             traces={cid: trace for cid, _, trace in pending})
    return [targets[p.customer_id] for p in purchases]


async def _same_sales(conn: Conn, purchases: list[tuple[uuid.UUID, Purchase, str]],
                      new: set[tuple[uuid.UUID, str]]) -> None:
    """``AlreadyExists`` naming the purchase id when a purchase repeats one
    of its customer's purchase ids (counted before, or earlier in the batch)
    with another amount, currency or (given) time: a retry must send the same
    sale. Reads only when a purchase id was seen before."""
    first: dict[tuple[uuid.UUID, str], tuple[int, str, datetime]] = {}
    repeated: list[tuple[uuid.UUID, Purchase, str]] = []
    for cid, p, cur in purchases:
        key = (cid, p.purchase_id)
        if key in new and key not in first:
            first[key] = (p.amount_minor, cur, p.occurred_at)
        else:
            repeated.append((cid, p, cur))
    if not repeated:
        return
    stored = await store.purchases_by_id(conn, sorted({(cid, p.purchase_id)
                                                      for cid, p, _ in repeated
                                                      if (cid, p.purchase_id) not in first}))
    for cid, p, cur in repeated:
        key = (cid, p.purchase_id)
        amount, currency, at = first.get(key) or stored[key]
        if (amount, currency.strip()) != (p.amount_minor, cur) or (
                p.time_given and at != p.occurred_at):
            raise AlreadyExists(
                f"purchase_id {p.purchase_id!r} of customer {cid} was recorded with "
                f"{amount} {currency.strip()} at {at.isoformat()}; this one says "
                f"{p.amount_minor} {cur}" + (f" at {p.occurred_at.isoformat()}"
                                              if p.time_given else "")
                + ": a retry sends the same sale, another sale needs another purchase_id")


async def churn_windows_for(conn: Conn, ctx: Context, ids: list[uuid.UUID]
                            ) -> dict[uuid.UUID, timedelta]:
    """The churn window of each customer: the shortest of the segments (with an
    override) they belong to now, else the default."""
    windows = {cid: ctx.churn_window for cid in ids}
    pending = set(ids)
    for seg in await ctx.segments.get(conn):  # shortest window first
        if not pending or seg["churn_window_days"] is None:
            break
        compiled = memberships.compiled(seg, ctx.clock.now())
        if compiled is None:
            continue
        for cid in await store.matching_ids(conn, sorted(pending), compiled.sql,
                                            compiled.params):
            windows[cid] = timedelta(days=seg["churn_window_days"])
            pending.discard(cid)
    return windows


async def _schedule_churn_many(conn: Conn, ctx: Context, recs: list[store.CustomerRecord],
                               traces: dict[uuid.UUID, str] | None = None) -> None:
    """Schedule each customer's churn window; it runs in the trace of the
    purchase that set it (``traces``), else of the work in progress."""
    recs = [r for r in recs if r.last_purchase_at is not None]
    if not recs:
        return
    windows = await churn_windows_for(conn, ctx, [r.customer_id for r in recs])
    due = {r.customer_id: domain.churn_due(r.last_purchase_at, windows[r.customer_id])
           for r in recs if r.last_purchase_at is not None}
    recs = [r for r in recs if due.get(r.customer_id) is not None]
    await scheduler.schedule_many(conn, CHURN, [
        (str(r.customer_id), due_at, {"window_days": windows[r.customer_id].days})
        for r in recs if (due_at := due[r.customer_id]) is not None],
        traceparents=[(traces or {}).get(r.customer_id, "") for r in recs])


async def schedule_churn(conn: Conn, ctx: Context, rec: store.CustomerRecord) -> None:
    await _schedule_churn_many(conn, ctx, [rec])


def _stage_changed(conn: Conn, rec: store.CustomerRecord, change: StageChange,
                   causing_event_id: str) -> list[EventPayload]:
    """Apply a stage change to the record; the events it causes (no I/O)."""
    rec.stage = change.to_stage
    uow.on_commit(metrics.STAGE_CHANGES.labels(
        "customers", change.from_stage.value, change.to_stage.value).inc)
    events: list[EventPayload] = [StageChanged(
        customer_id=str(rec.customer_id), from_stage=change.from_stage.value,
        to_stage=change.to_stage.value, cause=change.cause.value,
        causing_event_id=causing_event_id, purchase_count=rec.purchase_count)]
    if change.won_back:
        events.append(CustomerWonBack(customer_id=str(rec.customer_id),
                                      causing_event_id=causing_event_id))
    return events


async def change_stage(conn: Conn, ctx: Context, rec: store.CustomerRecord, change: StageChange,
                        causing_event_id: str) -> list[EventPayload]:
    """Apply a stage change and record it in the history."""
    await store.add_stage_history(conn, rec.customer_id, change.from_stage.value,
                                  change.to_stage.value, change.cause.value, causing_event_id,
                                  ctx.clock.now())
    return _stage_changed(conn, rec, change, causing_event_id)


async def churn(conn: Conn, ctx: Context, customer_id: uuid.UUID, work_key: str,
                window_days: int | None = None) -> None:
    """The churn window of a customer elapsed (run by the durable scheduler)."""
    rec = await store.load(conn, customer_id, lock=True, follow_alias=False, full=False)
    if rec.erased_at is not None or rec.merged_into is not None:
        return
    window = timedelta(days=window_days) if window_days else ctx.churn_window
    change = domain.stage_after_churn(rec.stage, rec.last_purchase_at, ctx.clock.now(), window)
    if change is None:
        return
    events = await change_stage(conn, ctx, rec, change, f"churn:{work_key}")
    await store.save_core(conn, rec, ctx.clock.now())
    evaluation = await memberships.evaluate(conn, ctx, [customer_id])
    await emit_named(conn, ctx, customer_id, *events, evaluation=evaluation)
    await memberships.settle(conn, ctx, evaluation, "stage")


async def close_relationship(conn: Conn, ctx: Context, customer_id: uuid.UUID, reason: str,
                             request_id: str) -> store.CustomerRecord:
    rec = await store.load(conn, customer_id, lock=True)
    require_active(rec)
    change = domain.stage_after_closing(rec.stage)
    if change is None:
        return rec
    rec.closed_at = ctx.clock.now()
    events = await change_stage(conn, ctx, rec, change, request_id)
    await store.save_core(conn, rec, ctx.clock.now())
    await scheduler.cancel(conn, CHURN, str(customer_id))
    evaluation = await memberships.evaluate(conn, ctx, [customer_id])
    await emit_named(conn, ctx, customer_id, *events, evaluation=evaluation)
    await memberships.settle(conn, ctx, evaluation, "stage")
    return await store.load(conn, customer_id)


# --- segments ---------------------------------------------------------------

SEGMENT_NAME = r"^[a-z][a-z0-9_-]{0,62}$"


async def define_segment(conn: Conn, ctx: Context, *, name: str, description: str,
                         definition_json: str, churn_window_days: int | None) -> int:
    """Create or edit a segment; every edit is a new version. Returns it."""
    import re

    if not re.match(SEGMENT_NAME, name):
        raise InvalidArgument("name", f"{name!r} must match {SEGMENT_NAME}")
    try:
        definition = json.loads(definition_json)
    except ValueError as exc:
        raise InvalidArgument("filter_json", f"is not JSON: {exc}") from None
    segments.validate(definition, "filter_json")
    if churn_window_days is not None and not 1 <= churn_window_days <= 3650:
        raise InvalidArgument("churn_window_days", "must be between 1 and 3650")
    version = await store.upsert_segment(conn, name, description, definition,
                                         churn_window_days, ctx.clock.now())
    uow.on_commit(ctx.segments.invalidate)
    await memberships.start_pass(conn, ctx, name)
    return version


async def segment_members(conn: Conn, ctx: Context, name: str, after: uuid.UUID | None,
                          limit: int) -> tuple[Any, list[store.CustomerRecord]]:
    seg = await store.get_segment(conn, name)
    compiled = segments.compile_sql(seg["definition"], ctx.clock.now())
    ids = await store.segment_members(conn, compiled.sql, compiled.params, after, limit)
    return seg, await store.load_many(conn, ids)
