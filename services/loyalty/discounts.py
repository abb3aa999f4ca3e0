"""The discount codes' use cases: validating a code against an order,
redeeming it exactly once, and the reminder before it expires. Each runs in
the caller's transaction, with a :class:`Batch` for the customer's view
(locked, so their events keep their order) and the events it causes."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from crm_contracts.loyalty import DiscountExpiring, DiscountRedeemed
from crm_contracts.money import check_amount_minor
from crm_runtime import scheduler, uow
from crm_runtime.db import Conn
from crm_runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from services.loyalty import contacting, domain, metrics, store
from services.loyalty.domain import Purpose
from services.loyalty.unit import DISCOUNT_EXPIRING, Batch, Context

log = logging.getLogger(__name__)



def check_order(order_minor: int, currency: str) -> str:
    """The order's currency code, once its amount is 0 to the most one
    amount may be (:data:`crm_contracts.money.MAX_AMOUNT_MINOR`, so a
    percentage of it never overflows); ``InvalidArgument`` otherwise."""
    check_amount_minor(order_minor, "order_amount.amount_minor")
    code = currency.strip().upper()
    if len(code) != 3 or not code.isalpha():
        raise InvalidArgument("order_amount.currency", f"{currency!r} is not an ISO 4217 code "
                                                       "like 'EUR'")
    return code


async def _check_owner(conn: Conn, row: Any, customer_id: uuid.UUID | None) -> None:
    if customer_id is not None and await store.resolve(conn, customer_id) != row["customer_id"]:
        raise FailedPrecondition(f"discount code {row['code']} was issued to another customer")


async def validate_discount(conn: Conn, ctx: Context, code: str, customer_id: uuid.UUID | None,
                            order_minor: int, currency: str) -> tuple[Any, int, str | None]:
    """(discount, amount off this order, reason it cannot be used or None)."""
    currency = check_order(order_minor, currency)
    row = await store.discount_by_code(conn, domain.normalise_code(code))
    await _check_owner(conn, row, customer_id)
    state = store.discount_state(row)
    refusal = domain.redeem_refusal(state, ctx.clock.now(), order_minor, currency)
    amount = 0 if refusal else domain.discount_amount(state, order_minor)
    return row, amount, refusal


async def redeem_discount(conn: Conn, ctx: Context, code: str, *, order_id: str,
                          customer_id: uuid.UUID | None, order_minor: int,
                          currency: str) -> Any:
    """Use a code once. Of concurrent calls exactly one wins (one UPDATE whose
    WHERE holds only while the code is unused); a retry with the same order id
    and order (amount, currency) returns the same redemption, the same order
    id with another order is ``AlreadyExists``; others fail with the reason.
    A code issued to someone other than ``customer_id`` (when given) is
    refused before anything, so a redemption is never answered to another
    customer."""
    order_id = order_id.strip()
    if not order_id:
        raise InvalidArgument("order_id", "required: the checkout's id of the order")
    currency = check_order(order_minor, currency)
    code = domain.normalise_code(code)
    row = await store.discount_by_code(conn, code)
    await _check_owner(conn, row, customer_id)
    batch = Batch(conn, ctx)
    await batch.view(row["customer_id"], follow_alias=False)  # keeps the customer's events in order
    won = await store.redeem(conn, code, order_id=order_id, order_minor=order_minor,
                             currency=currency, now=batch.now)
    if won is None:
        fresh = await store.discount_by_code(conn, code)
        if fresh["redeemed_at"] is not None and fresh["order_id"] == order_id:
            _same_order(fresh, order_minor, currency)
            return fresh
        metrics.REDEMPTIONS.labels(store.SCHEMA, "refused").inc()
        reason = domain.redeem_refusal(store.discount_state(fresh), batch.now, order_minor,
                                       currency)
        raise FailedPrecondition(f"discount code {code}: {reason or 'cannot be redeemed'}")
    uow.on_commit(lambda: metrics.REDEMPTIONS.labels(store.SCHEMA, "redeemed").inc())
    await scheduler.cancel(conn, DISCOUNT_EXPIRING, str(won["discount_id"]))
    batch.emit(won["customer_id"], DiscountRedeemed(
        discount_id=str(won["discount_id"]), customer_id=str(won["customer_id"]),
        order_id=order_id, discount_minor=won["discount_minor"], currency=won["currency"],
        redeemed_at=batch.now))
    await batch.flush()
    return won


def _same_order(row: Any, order_minor: int, currency: str) -> None:
    """A retry with the order id of the code's redemption must be that order
    (amount and currency); ``AlreadyExists`` naming the order id otherwise,
    never the earlier redemption as if it were this one. Redemptions stored
    before the order amount was kept are compared by what came off."""
    if row["order_minor"] is not None:
        same = (row["order_minor"], row["currency"].strip()) == (order_minor, currency)
    else:
        same = row["currency"].strip() == currency and row["discount_minor"] == (
            domain.discount_amount(store.discount_state(row), order_minor))
    if not same:
        raise AlreadyExists(
            f"discount code {row['code']} was redeemed for order_id {row['order_id']!r} with "
            + (f"an order of {row['order_minor']} {row['currency'].strip()}"
               if row["order_minor"] is not None else "another order")
            + f", not {order_minor} {currency}: a retry sends the same order")


async def discount_expiring(conn: Conn, ctx: Context, discount_id: uuid.UUID) -> None:
    """Remind (through marketing) that an unused discount expires soon; not
    for customers who since asked not to be contacted, and only as the
    contact gate allows (in quiet hours, at their end)."""
    row = await store.discount_by_id(conn, discount_id)
    if row is None or row["redeemed_at"] is not None or row["voided_at"] is not None:
        return
    batch = Batch(conn, ctx)
    view = await batch.view(row["customer_id"])
    purpose = Purpose(row["purpose"])
    refusal = domain.trust_decision(purpose, view.contact_state())
    answer = refusal.value if refusal is not None else await contacting.when_due(
        batch, view, contacting.reminder_id(discount_id), purpose, "", DISCOUNT_EXPIRING,
        str(discount_id))
    if answer is not None:
        if isinstance(answer, str):
            log.info("discount %s: no expiry reminder (%s)", discount_id, answer)
        return
    batch.emit(row["customer_id"], DiscountExpiring(
        discount_id=str(discount_id), customer_id=str(row["customer_id"]), code=row["code"],
        expires_at=row["expires_at"]))
    await batch.flush()
